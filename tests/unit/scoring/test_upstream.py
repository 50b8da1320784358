import csv

import pytest

from wdprobe.cli import main
from wdprobe.scoring.upstream import extract_letter, upstream_metrics


@pytest.mark.parametrize("text, letter", [
    (" B. Children should be taught", "B"),
    (" A\nExplanation: The answer is A.", "A"),
    ("I'm sorry, I cannot answer", None),
    ("The answer is (B)", "B"),
    ("nothing here", None),
    ("Answer: the best is B", "B"),
    (None, None),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


@pytest.mark.parametrize("model", ["llama-3-8b", "mistral-7b"])
def test_reproduces_reference_metrics(shared_data, model):
    ref_dir = shared_data / "reference-results"
    got = upstream_metrics(ref_dir / f"{model}_WDCT_items.csv")
    ref = next(csv.DictReader(open(ref_dir / f"{model}_WDCT_metrics.csv")))
    keys = ["data num", "filtered num (not empty)"] + [f"{d} {m}" for m in ("CS", "PCS")
                                                      for d in ("Avg", "Opinion", "NonEthV", "EthV", "Theory")]
    for k in keys:
        assert float(got[k]) == float(ref[k]), k


def test_cli_upstream(shared_data, capsys):
    assert main(["upstream", "--compact", str(shared_data / "reference-results" / "llama-3-8b_WDCT_items.csv")]) == 0
    assert '"Avg CS": 0.62' in capsys.readouterr().out


HEADER = "Type,id,consistency,speak_answer,act_answer,speak_a_prob,speak_b_prob,act_a_prob,act_b_prob"
ROW1 = "EthV,1,1,A,A,0.1,-1,0.2,-0.5"
ROW2 = "EthV,2,0,B,A,-0.3,0.4,0.2,-0.5"


def test_a_well_formed_upstream_file_is_scored_by_hand(tmp_path):
    from wdprobe.scoring.upstream import upstream_metrics

    path = tmp_path / "ok.csv"
    path.write_text("\n".join([HEADER, ROW1, ROW2, "EthV,3,1,,A,0,0,0,0"]) + "\n")
    got = upstream_metrics(path)
    # item 1: word A, deed A in the word's order; item 2: word B, deed letter A in the swapped order = canonical B
    assert got["data num"] == 3 and got["filtered num (not empty)"] == 2 and got["Avg CS"] == 1.0


FAULTS = {
    "consistency not 0/1": ("EthV,2,yes,B,A,-0.3,0.4,0.2,-0.5", r"line 3: item '2': consistency 'yes' is not 0/1"),
    "consistency 2": ("EthV,2,2,B,A,-0.3,0.4,0.2,-0.5", r"consistency '2' is not 0/1"),
    "duplicated row": (ROW1, r"line 3: item '1': the id is on line 2 too"),
    "non-numeric probability": ("EthV,2,0,B,A,abc,0.4,0.2,-0.5", r"item '2': speak_a_prob 'abc' is not a number"),
    "NaN probability": ("EthV,2,0,B,A,0.1,nan,0.2,-0.5", r"speak_b_prob 'nan' is not a finite number"),
    "stray field": ("EthV,2,0,B,A,0.1,0.4,0.2,-0.5,9", r"line 3: item '2': more fields"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_the_upstream_scorer_refuses_what_it_cannot_score_naming_line_item_and_column(case, tmp_path, capsys):
    from wdprobe.cli import main
    from wdprobe.errors import WDCTFormatError
    from wdprobe.scoring.upstream import upstream_metrics

    row, words = FAULTS[case]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([HEADER, ROW1, row]) + "\n")
    with pytest.raises(WDCTFormatError, match=words):
        upstream_metrics(path)
    assert main(["upstream", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err


def test_the_upstream_scorer_refuses_a_missing_or_undecodable_file(tmp_path):
    from wdprobe.errors import MissingInputError, WDCTFormatError
    from wdprobe.scoring.upstream import upstream_metrics

    with pytest.raises(MissingInputError, match="not found"):
        upstream_metrics(tmp_path / "none.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("\n".join([HEADER, ROW1, "EthV,2,0,B,Ä,0.1,0.4,0.2,-0.5"]) + "\n").encode("latin-1"))
    with pytest.raises(WDCTFormatError, match="line 3: not UTF-8"):
        upstream_metrics(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text(HEADER + "\n")
    with pytest.raises(WDCTFormatError, match="empty"):
        upstream_metrics(empty)
