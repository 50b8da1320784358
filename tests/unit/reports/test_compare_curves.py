"""The comparison page's steering panel reads whichever form a run steered in."""
import json

import pandas as pd

from wdprobe.reports.compare import run_curves


def _steering_grid(path, prefix: str, n_items: int) -> pd.DataFrame:
    rows = [(cond, layer, alpha, 0.1 * layer + 0.01 * alpha + (0.3 if cond == "stance" else 0.0))
            for cond in ("random", "stance") for layer in (0, 1, 2) for alpha in (1.0, 4.0)]
    grid = pd.DataFrame(rows, columns=["condition", "layer", "alpha", "cs"])
    (path / "steering").mkdir(parents=True, exist_ok=True)
    grid.to_csv(path / "steering" / f"{prefix}steering_summary.csv", index=False)
    (path / "steering" / f"{prefix}steering_headline.json").write_text(json.dumps({"n_items": n_items}))
    (path / "lens").mkdir(exist_ok=True)
    (path / "lens" / "summary.json").write_text(json.dumps({"all": {"lens_cs": [0.5, 0.5, 0.5], "n": 40}}))
    return grid


def test_a_cloze_only_run_fills_the_steering_panel_from_its_cloze_grid(tmp_path):
    _steering_grid(tmp_path, "cloze_", 40)
    curves = run_curves(tmp_path, "cloze only")
    assert list(curves.steer_cs.index) == [0, 1, 2]
    # the best alpha's CS at each layer (stance rows only; by hand: 0.1 * layer + 0.04 + 0.3)
    assert curves.steer_cs["value"].round(6).tolist() == [0.34, 0.44, 0.54]
    assert (curves.steer_cs["low"] < curves.steer_cs["value"]).all() and (curves.steer_cs["high"] > curves.steer_cs["value"]).all()


def test_a_letter_run_keeps_its_letter_grid_when_both_exist(tmp_path):
    _steering_grid(tmp_path, "cloze_", 40)
    letter = _steering_grid(tmp_path, "", 40)
    letter.loc[letter.condition == "stance", "cs"] = 0.9
    letter.to_csv(tmp_path / "steering" / "steering_summary.csv", index=False)
    assert run_curves(tmp_path, "both").steer_cs["value"].tolist() == [0.9, 0.9, 0.9]
