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
