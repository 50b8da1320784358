import collections
import csv

import pytest

from wdprobe.data.wdct import (
    LETTERS,
    load_wdct,
    parse_rows,
    present,
    resolve_wdct_path,
    select,
    split_question,
)
from wdprobe.errors import WDCTFormatError


def _row(iid="x1", speak="Q?\nA. one\nB. two", act="S?\nA. do one\nB. do two", typ="Opinion", ans=""):
    return {"Type": typ, "id": iid, "speak": speak, "act": act, "correct_answer": ans}


def test_real_file_parses_with_domain_counts(shared_data):
    items = load_wdct(shared_data / "wdct" / "WDCT.csv")
    assert len(items) == 1225
    assert collections.Counter(i.domain for i in items) == {"Opinion": 509, "NonEthV": 115, "EthV": 500, "Theory": 101}
    k = collections.Counter(i.n_options for i in items)
    assert k == {2: 1211, 3: 13, 4: 1}
    # correct answers only on EthV/Theory, always canonical option A there
    assert {i.domain for i in items if i.correct is not None} == {"EthV", "Theory"}
    assert {i.correct for i in items if i.correct is not None} == {0}
    # no option or stem keeps trailing whitespace or a label
    for it in items:
        for form in ("word", "deed"):
            assert it.stem(form) == it.stem(form).strip()
            assert all(o and o == o.strip() for o in it.options(form))
            assert not any(o[:2] in {f"{c}." for c in LETTERS} for o in it.options(form))


def test_multi_option_item_round_trips(shared_data):
    items = {i.id: i for i in load_wdct(shared_data / "wdct" / "WDCT.csv")}
    four = [i for i in items.values() if i.n_options == 4]
    assert len(four) == 1
    pres = present(four, seed=None)[0]
    q = pres.question("word")
    assert q.splitlines()[-4:] == [f"{c}. {o}" for c, o in zip("ABCD", four[0].word_options)]


def test_trailing_spaces_and_newlines_are_ignored():
    stem, opts = split_question("Stem line\nA. one  \nB. two \n\n  ", item_id="t", form="word", source="s")
    assert stem == "Stem line" and opts == ("one", "two")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.update(speak="Q?\nA. only one"), "only one option"),
    (lambda r: r.update(act=""), "empty deed question"),
    (lambda r: r.update(speak="A. one\nB. two"), "empty question text"),
    (lambda r: r.update(act="S?\nA. x\nB. y\nC. z"), "word question has 2 options but deed question has 3"),
    (lambda r: r.update(Type="Other"), "unknown domain"),
])
def test_malformed_items_name_the_item(mutate, fragment):
    bad = _row(iid="bad-7")
    mutate(bad)
    with pytest.raises(WDCTFormatError) as e:
        parse_rows([_row(iid="ok-1"), bad], source="f.csv")
    assert "bad-7" in str(e.value) and fragment in str(e.value) and "f.csv" in str(e.value)


def test_duplicate_id_is_rejected():
    with pytest.raises(WDCTFormatError, match="'d1': duplicate id"):
        parse_rows([_row(iid="d1"), _row(iid="d1")])


def test_missing_column_is_rejected(tmp_path):
    p = tmp_path / "w.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "id", "speak", "correct_answer"])
        w.writerow(["Opinion", "a", "Q?\nA. x\nB. y", ""])
    with pytest.raises(WDCTFormatError, match=r"missing column\(s\) \['act'\]"):
        load_wdct(p)


def test_shuffling_invariants(wdct_csv):
    items = load_wdct(wdct_csv)
    a, b = present(items, seed=3), present(items, seed=3)
    assert a == b  # reproducible
    for p in a:
        k = p.item.n_options
        for form in ("word", "deed"):
            assert sorted(p.order(form)) == list(range(k))
            lines = p.question(form).splitlines()[-k:]
            for j, line in enumerate(lines):  # letter j shows canonical option order[j]
                assert line == f"{LETTERS[j]}. {p.item.options(form)[p.order(form)[j]]}"
                assert p.canonical_of(form, LETTERS[j]) == p.order(form)[j]
                assert p.letter_of(form, p.order(form)[j]) == LETTERS[j]
    # stable under subsetting: an item is shuffled the same wherever it sits
    sub = present(items[2:4], seed=3)
    assert sub == a[2:4]
    assert present(items, seed=None)[0].word_order == (0, 1)


def test_shuffling_is_independent_per_form_and_varies_with_seed(shared_data):
    items = load_wdct(shared_data / "wdct" / "WDCT.csv")
    pres = present(items, seed=0)
    swapped_word = sum(p.word_order != tuple(range(p.item.n_options)) for p in pres) / len(pres)
    swapped_deed = sum(p.deed_order != tuple(range(p.item.n_options)) for p in pres) / len(pres)
    both = sum((p.word_order == (1, 0)) and (p.deed_order == (1, 0)) for p in pres if p.item.n_options == 2)
    two = sum(p.item.n_options == 2 for p in pres)
    assert 0.45 < swapped_word < 0.55 and 0.45 < swapped_deed < 0.55
    assert 0.2 < both / two < 0.3  # independence: P(both swapped) ~ 1/4
    other = present(items, seed=1)
    assert sum(p.word_order != q.word_order for p, q in zip(pres, other)) > 400


def test_subsets(shared_data):
    items = load_wdct(shared_data / "wdct" / "WDCT.csv")
    ne = select(items, subset="WDCT_NE")
    assert len(ne) == 624 and {i.domain for i in ne} == {"Opinion", "NonEthV"}
    assert len(select(items, domains=["Theory"])) == 101
    s1, s2 = select(items, sample=50, seed=7), select(items, sample=50, seed=7)
    assert [i.id for i in s1] == [i.id for i in s2] and len(s1) == 50
    assert [i.id for i in select(items, sample=50, seed=8)] != [i.id for i in s1]
    assert len(select(items, limit=5)) == 5
    with pytest.raises(ValueError, match="unknown subset"):
        select(items, subset="nope")


def test_data_path_resolution_prefers_flag_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WDPROBE_WDCT", str(tmp_path / "env.csv"))
    assert resolve_wdct_path(tmp_path / "flag.csv") == tmp_path / "flag.csv"
    assert resolve_wdct_path(None) == tmp_path / "env.csv"


def test_download_failure_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    from wdprobe.data import download

    monkeypatch.delenv("WDPROBE_WDCT", raising=False)
    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path))
    bad = download.PinnedFile("WDCT.csv", "http://127.0.0.1:9/none.csv", "0" * 64, "WDPROBE_WDCT", "--data")
    with pytest.raises(download.DataUnavailableError, match="--data /path/to/WDCT.csv or set WDPROBE_WDCT"):
        download.fetch(bad, timeout=2)


def test_cached_download_is_verified_by_checksum(monkeypatch, tmp_path):
    import hashlib

    from wdprobe.data import download

    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path))
    payload = b"Type,id,speak,act,correct_answer\n"
    sha = hashlib.sha256(payload).hexdigest()
    pinned = download.PinnedFile("x.csv", "http://127.0.0.1:9/x.csv", sha, "X", "--x")
    target = tmp_path / "data" / sha[:12] / "x.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    assert download.fetch(pinned) == target  # no network: the cached copy matches
    target.write_bytes(payload + b"tampered")
    with pytest.raises(download.DataUnavailableError):
        download.fetch(pinned, timeout=2)
