"""Run(path): every finished stage's results as labelled DataFrames and dicts in one call."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.tiny import write_two_option_copies
from wdprobe import Run
from wdprobe.errors import InputError, MissingInputError, StageNotFinishedError
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.stages.score import load_score


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("results")
    cfg = StudyConfig(model=str(tiny_model_dir), data=str(write_two_option_copies(tmp / "w.csv")), out=str(tmp / "run"),
                      stages=["score", "capture", "probes", "lens", "patch_cross"], png=False)
    cfg.probes.kinds, cfg.probes.folds, cfg.patch_cross.items = ["diffmean"], 3, 8
    run_study(cfg, progress=False, lm=tiny_lm)
    return cfg.out_dir


def test_each_finished_stage_loads_as_labelled_tables(run_dir):
    run = Run(run_dir)
    assert run.finished[:5] == ["score", "capture", "probes", "lens", "patch_cross"]
    scored = load_score(run_dir)
    assert len(run.items) == len(scored.rows) and list(run.items["id"]) == [r["id"] for r in scored.rows]
    assert run.metrics == scored.metrics and run.score["prompts"].shape[0] == len(scored.prompt_rows)
    content = run.probes["content-last"]  # long form: one row per analysis and layer, labels in columns
    assert {"analysis", "layer", "value", "low", "high", "threshold"} <= set(content.columns)
    assert content.equals(pd.read_csv(run_dir / "probes" / "content-last.csv"))
    assert run.probes["content-summary"] == json.loads((run_dir / "probes" / "content-summary.json").read_text())
    lens = run.lens["trajectory"]
    assert set(lens["layer"]) == {0, 1} and set(lens["form"]) == {"word", "deed"}
    grid = lens.pivot_table(index="id", columns=["form", "layer"], values="logodds")  # item x (form, layer)
    assert grid.shape == (len(run.items), 4)
    patched = run.patch_cross["cross_form"]
    assert {"id", "condition", "layer", "toward_word"} <= set(patched.columns)
    assert "cross_form_summary" in run.patch_cross.tables and run.patch_cross.result
    acts = run.activations(position="last")
    assert acts.array.shape[0] == len(acts.meta) and acts.layers == (0, 1)
    np.testing.assert_array_equal(acts.meta["id"].unique(), run.items["id"])


def test_unfinished_unknown_and_missing_are_refused_by_name(run_dir, tmp_path):
    run = Run(run_dir)
    with pytest.raises(StageNotFinishedError, match=r"stage 'steer' has not finished \(finished: \['score'"):
        run.steer
    with pytest.raises(InputError, match=r"unknown stage 'probe'"):
        run.stage("probe")
    with pytest.raises(AttributeError, match="no attribute 'probe'"):
        run.probe
    with pytest.raises(KeyError, match=r"stage 'lens' has no result 'missing'"):
        run.lens["missing"]
    with pytest.raises(MissingInputError, match="not a run directory"):
        Run(tmp_path)
