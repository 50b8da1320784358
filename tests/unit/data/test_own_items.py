"""Your own items: the schema read from CSV, JSONL, JSON, a DataFrame and a list of dicts, with named errors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from wdprobe.data.items import item_record, items_path, read_items, write_items_jsonl
from wdprobe.data.prompts import cloze_prompt, normal_prompt
from wdprobe.data.wdct import domains_of, present, select
from wdprobe.errors import MissingInputError, WDCTFormatError
from wdprobe.scoring.metrics import summarise

EXAMPLE = Path(__file__).resolve().parents[3] / "data" / "examples"


def _record(**over):
    rec = {"id": "x1", "domain": "Honesty", "word": "Should you lie?", "word_options": ["No.", "Yes."],
           "deed": "A friend asks. What do you do?", "deed_options": ["You tell the truth.", "You lie."]}
    rec.update(over)
    return rec


def test_the_example_file_reads_the_same_in_every_format(tmp_path):
    jsonl = read_items(EXAMPLE / "say-do-20.jsonl")
    assert len(jsonl) == 20 and domains_of(jsonl) == ["Honesty", "Privacy", "Fairness", "Risk"]
    assert read_items(EXAMPLE / "say-do-20.csv") == jsonl
    assert read_items(pd.read_json(EXAMPLE / "say-do-20.jsonl", lines=True)) == jsonl  # empty 'correct' cells: NaN
    records = [json.loads(line) for line in (EXAMPLE / "say-do-20.jsonl").read_text().splitlines()]
    assert read_items(records) == jsonl
    (tmp_path / "items.json").write_text(json.dumps(records))
    assert read_items(tmp_path / "items.json") == jsonl
    (tmp_path / "again.jsonl").write_text(write_items_jsonl(jsonl))  # the run directory's copy reads back equal
    assert read_items(tmp_path / "again.jsonl") == jsonl
    first = jsonl[0]
    assert first.correct == 0 and first.deed_options[0].startswith("You tell the buyer")
    assert sum(it.correct is None for it in jsonl) == 4  # items without a known answer stay without one


def test_a_wdct_file_is_recognised_by_its_header(wdct_csv):
    items = read_items(wdct_csv)
    assert {it.domain for it in items} <= {"Opinion", "NonEthV", "EthV", "Theory"} and len(items) == 6


def test_domains_are_any_string_and_select_names_the_present_ones():
    items = read_items([_record(id="a", domain="Honesty"), _record(id="b", domain="Zeta domain")])
    assert [it.id for it in select(items, domains=["Zeta domain"])] == ["b"]
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['Opinion'\]; the items' domains are \['Honesty', 'Zeta domain'\]"):
        select(items, domains=["Opinion"])
    rows = [{"domain": it.domain, "consistent": 1, "pcs": 1.0} for it in items]
    assert list(summarise(rows)["per_domain"]) == ["Honesty", "Zeta domain"]


@pytest.mark.parametrize("over, message", [
    ({"id": ""}, r"<records>: record 0: empty id"),
    ({"domain": " "}, r"record 0: item 'x1': empty domain"),
    ({"word": ""}, r"item 'x1': empty word question"),
    ({"word_options": ["only one"]}, r"item 'x1': 1 word options; an item needs 2-4"),
    ({"word_options": "Yes | No"}, r"item 'x1': word_options is one string"),
    ({"deed_options": ["a", "b", "c"]}, r"item 'x1': 2 word options but 3 deed options"),
    ({"deed_options": ["same", "same"]}, r"two deed options have the same text"),
    ({"correct": "C"}, r"item 'x1': correct 'C' is not one of its option letters \['A', 'B'\]"),
    ({"template": "no placeholder"}, r"template must contain \{question\}"),
    ({"template": "{question} {other}"}, r"template has a placeholder other than \{question\}"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"corect": "A"}, r"unknown field\(s\) \['corect'\] \(did you mean 'correct'\?\)"),
    ({"id": ["x1"]}, r"record 0: id is a list"),
    ({"domain": True}, r"item 'x1': domain is a bool"),
    ({"word": 3.5}, r"item 'x1': word is a float"),
    ({"word_options": ["Yes.", 2]}, r"item 'x1': word option B is a int"),
    ({"deed_options": {"A": "x", "B": "y"}}, r"item 'x1': deed_options is a dict"),
    ({"deed_options": ["You go.\nB. You stay.", "You lie."]}, r"deed option\(s\) \['A'\] span more than one line"),
    ({"word": "Should you lie?\nB. Never"}, r"the word question has a line that reads as an option line \('B.'"),
    ({"correct": 1}, r"item 'x1': correct is a int"),
])
def test_bad_records_are_refused_with_the_item_named(over, message):
    with pytest.raises(WDCTFormatError, match=message):
        read_items([_record(**over)])


def test_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "mine.jsonl"
    bad.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(id="x2", deed_options=["a"])) + "\n")
    with pytest.raises(WDCTFormatError, match=r"mine.jsonl: line 2: item 'x2': 1 deed options"):
        read_items(bad)
    bad.write_text(json.dumps(_record()) + "\n{not json\n")
    with pytest.raises(WDCTFormatError, match=r"mine.jsonl: line 2: not JSON"):
        read_items(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(_record()) + "\n" + json.dumps(_record()) + "\n")
    with pytest.raises(WDCTFormatError, match=r"dup.jsonl: line 2: item 'x1': duplicate id"):
        read_items(dup)
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("id,domain,word,deed,word_option_A,word_option_B,deed_option_A,deed_option_B\n"
                        "a,D,w?,d?,Yes.,No.,You do.,\n")
    with pytest.raises(WDCTFormatError, match=r"mine.csv: line 2: item 'a': 1 deed options"):
        read_items(csv_path)
    csv_path.write_text("id,domain,question\n")
    with pytest.raises(WDCTFormatError, match=r"mine.csv: missing column\(s\) \['word', 'deed'"):
        read_items(csv_path)
    with pytest.raises(MissingInputError, match="items file not found"):
        read_items(tmp_path / "absent.jsonl")
    (tmp_path / "items.txt").write_text("x")
    with pytest.raises(WDCTFormatError, match=r"unknown item file type '.txt'"):
        read_items(tmp_path / "items.txt")


def test_a_template_frames_both_answer_formats():
    item = read_items([_record(template="You are an assistant.\n{question}\nYour answer:")])[0]
    (view,) = present([item], seed=None)
    assert normal_prompt(view, "deed") == ("You are an assistant.\nA friend asks. What do you do?\nA. You tell the "
                                           "truth.\nB. You lie.\nYour answer:")
    assert cloze_prompt(item, "deed") == "You are an assistant.\nA friend asks. What do you do?\nYour answer:"
    assert item_record(item)["template"] == item.template


def test_in_memory_items_are_kept_in_the_run_directory(tmp_path):
    frame = pd.DataFrame([_record(id="a"), _record(id="b", correct="B")])
    path = items_path(frame, tmp_path / "run" / "data" / "items.jsonl")
    assert path == tmp_path / "run" / "data" / "items.jsonl" and read_items(path) == read_items(frame)
    assert items_path("some/file.csv", tmp_path / "x.jsonl") is None and not (tmp_path / "x.jsonl").exists()
    with pytest.raises(WDCTFormatError):  # invalid items are refused before anything is written
        items_path([_record(id="")], tmp_path / "bad" / "items.jsonl")
    assert not (tmp_path / "bad").exists()
    assert items_path(frame, path) == path  # the same items again: the run resumes
    from wdprobe.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match="already holds other in-memory items"):  # one run, one item set
        items_path([_record(id="c")], path)
    assert read_items(path) == read_items(frame)  # the run's items are untouched


def test_an_items_file_edited_after_scoring_is_refused_by_every_later_stage(tiny_lm, tmp_path):
    from tiny import write_two_option_copies

    from wdprobe.errors import RunMismatchError
    from wdprobe.stages.capture import capture_wdct
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    score_wdct(run, data=data, lm=tiny_lm, progress=False)
    scored_bytes = data.read_bytes()
    data.write_bytes(scored_bytes.replace(b"?", b"??", 1))  # one question edited between score and capture
    with pytest.raises(RunMismatchError, match="changed since the run was scored"):
        capture_wdct(run, layers="0", lm=tiny_lm, progress=False)
    assert not (run / "capture").exists()
    data.write_bytes(scored_bytes)  # the scored bytes back: capture runs
    capture_wdct(run, layers="0", lm=tiny_lm, progress=False)


def test_a_whole_number_id_is_read_as_its_text_and_csv_columns_are_checked(tmp_path):
    assert read_items([_record(id=7)])[0].id == "7"
    csv_path = tmp_path / "mine.csv"
    head = "id,domain,word,deed,word_option_A,word_option_B,deed_option_A,deed_option_B"
    csv_path.write_text(head + ",corect\na,D,w?,d?,Yes.,No.,You do.,You don't.,A\n")
    with pytest.raises(WDCTFormatError, match=r"mine.csv: unknown column\(s\) \['corect'\] \(did you mean 'correct'\?\)"):
        read_items(csv_path)
    csv_path.write_text(head + ",word_option_E\na,D,w?,d?,Yes.,No.,You do.,You don't.,Maybe.\n")
    with pytest.raises(WDCTFormatError, match=r"unknown column\(s\) \['word_option_E'\]"):
        read_items(csv_path)
    csv_path.write_text(head + ",correct\na,D,w?,d?,Yes.,No.,You do.,You don't.,B\n")
    assert read_items(csv_path)[0].correct == 1
