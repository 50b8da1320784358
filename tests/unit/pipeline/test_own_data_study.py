"""A user's own items, with their own domain names, through `wdprobe run` and the Python API."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.tiny import build_tiny_model_dir
from wdprobe.cli import main
from wdprobe.errors import MissingInputError, WDCTFormatError
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.stages.score import load_score

EXAMPLE = Path(__file__).resolve().parents[3] / "data" / "examples" / "say-do-20.jsonl"
QUICK = ["score", "capture", "probes", "lens", "report"]


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    records = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    words = " ".join(" ".join([r["word"], r["deed"], *r["word_options"], *r["deed_options"]]) for r in records)
    return build_tiny_model_dir(tmp_path_factory.mktemp("own-model"), extra_text=words)


def test_own_jsonl_runs_through_wdprobe_run(own_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", str(own_model), "--data", str(EXAMPLE), "--out", str(out), "--stages",
                 ",".join(QUICK), "--quiet", "--domain", "Honesty", "--domain", "Risk"]) == 0
    scored = load_score(out)
    assert {r["domain"] for r in scored.rows} == {"Honesty", "Risk"} and len(scored.rows) == 10
    assert list(scored.metrics["per_domain"]) == ["Honesty", "Risk"]
    report = out / "report"  # the default report folder is inside the run directory
    text = (report / "README.md").read_text()
    assert "10 items" in text and "WDCT items" not in text and "Beside the paper" not in text
    assert "| Honesty | 5 |" in (report / "scores.md").read_text()
    assert (out / "probes" / "resid_post-last.csv").is_file()


def test_own_dataframe_runs_through_the_python_api(own_model, tmp_path):
    frame = pd.read_json(EXAMPLE, lines=True)
    cfg = StudyConfig(model=str(own_model), out=str(tmp_path / "run"), stages=["score", "report"], format="cloze",
                      png=False)
    page = run_study(cfg, items=frame, progress=False)
    kept = tmp_path / "run" / "data" / "items.jsonl"
    assert page.is_file() and kept.is_file()
    scored = load_score(tmp_path / "run")
    assert len(scored.rows) == 20 and {r["domain"] for r in scored.rows} == {"Honesty", "Privacy", "Fairness", "Risk"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["score"]["data"]["path"] == str(kept)


def test_bad_input_fails_before_the_model_loads_or_a_folder_appears(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MissingInputError, match="items file not found: /nonexistent.csv"):
        run_study(StudyConfig(model="/no/such/model", data="/nonexistent.csv", out=str(out)), progress=False)
    with pytest.raises(MissingInputError, match="model directory not found: /no/such/model"):
        run_study(StudyConfig(model="/no/such/model", data=str(EXAMPLE), out=str(out)), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(WDCTFormatError, match=r"bad.jsonl: line 1: item 'a': no 'domain' field"):
        run_study(StudyConfig(model="/no/such/model", data=str(bad), out=str(out)), progress=False)
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['Opinion'\]"):
        run_study(StudyConfig(model="/no/such/model", data=str(EXAMPLE), out=str(out), domains=["Opinion"]),
                  progress=False)
    assert main(["run", "--data", "/nonexistent.csv", "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
