"""Sweeps: planning, the local executor, resuming, and a local Ray instance giving the same results."""
from __future__ import annotations

import json

import pytest
from tiny import write_two_option_copies

from wdprobe.errors import SweepConfigError
from wdprobe.pipeline.sweep import load_sweep, run_sweep


def _write_sweep(tmp_path, model_dir, data, out: str, shards: int = 2, fixed: str = "") -> "Path":  # noqa: F821
    p = tmp_path / f"{out}.toml"
    p.write_text(f"""
[sweep]
out = "{tmp_path / out}"
models = ["{model_dir}"]
data = "{data}"
shards = {shards}

[grid]
seed = [0, 1]

[fixed]
batch_size = 4
{fixed}
""")
    return p


def test_sweep_plan_and_errors(tmp_path, tiny_model_dir):
    data = write_two_option_copies(tmp_path / "w.csv", copies=2)
    spec = load_sweep(_write_sweep(tmp_path, tiny_model_dir, data, "plan", shards=3))
    tasks = spec.tasks()
    assert len(tasks) == 2 * 3 and len({t.key for t in tasks}) == 6
    assert {dict(t.settings)["seed"] for t in tasks} == {0, 1} and {t.shard for t in tasks} == {"0/3", "1/3", "2/3"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nmodels = ["m"]\nshards = 2\n[grid]\nlearning_rate = [1]\n')
    with pytest.raises(SweepConfigError, match=r"bad.toml: \[grid\] key\(s\) \['learning_rate'\]"):
        load_sweep(bad)
    bad.write_text('[sweep]\nmodels = []\n')
    with pytest.raises(SweepConfigError, match="models must be a non-empty list"):
        load_sweep(bad)


def test_local_sweep_resumes_and_merges(tmp_path, tiny_model_dir, tiny_lm):
    from wdprobe.runs.rundir import read_csv
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=3)
    cfg = _write_sweep(tmp_path, tiny_model_dir, data, "local")
    first = run_sweep(cfg, executor="local", progress=False)
    assert len(first.tasks) == 4 and len(first.runs) == 2
    again = run_sweep(cfg, executor="local", progress=False)  # a finished sweep runs nothing
    assert again.tasks == [] and again.runs == first.runs
    # a merged run equals scoring the same settings unsharded
    whole = score_wdct(tmp_path / "whole", lm=tiny_lm, data=data, seed=1, batch_size=4, progress=False)
    merged = read_csv(first.out / f"{tiny_model_dir.name}-seed1" / "items.csv")
    assert [r["word_choice"] for r in merged] == [str(r["word_choice"]) for r in whole.rows]
    table = read_csv(first.out / "sweep.csv")
    assert [r["seed"] for r in table] == ["0", "1"]
    # a lost shard is rerun alone
    import shutil

    shutil.rmtree(first.out / f"{tiny_model_dir.name}-seed0" / "shards" / "score" / "1-of-2")
    third = run_sweep(cfg, executor="local", progress=False)
    assert [t["task"] for t in third.tasks] == [f"{tiny_model_dir.name}-seed0[1/2]"]
    assert third.runs == first.runs


def test_ray_executor_equals_local(tmp_path, tiny_model_dir):
    ray = pytest.importorskip("ray")
    from wdprobe.runs.rundir import read_csv

    data = write_two_option_copies(tmp_path / "w.csv", copies=3)
    local = run_sweep(_write_sweep(tmp_path, tiny_model_dir, data, "local"), executor="local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(_write_sweep(tmp_path, tiny_model_dir, data, "ray"), executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert len(remote.tasks) == 4
    for a, b in zip(local.runs, remote.runs):
        assert {k: v for k, v in a.items()} == {k: v for k, v in b.items()}
        ra = read_csv(local.out / a["run"] / "items.csv")
        rb = read_csv(remote.out / b["run"] / "items.csv")
        assert [(r["id"], r["word_choice"], r["deed_choice"]) for r in ra] == \
               [(r["id"], r["word_choice"], r["deed_choice"]) for r in rb]
        assert all(abs(float(x["pcs"]) - float(y["pcs"])) < 1e-6 for x, y in zip(ra, rb))
    info = json.loads((remote.out / "sweep.json").read_text())
    assert info["executor"] == "ray" and info["ran"] == 4


def test_sweep_runs_later_stages_on_merged_shards(tmp_path, tiny_model_dir, tiny_lm):
    import numpy as np

    from wdprobe.stages.capture import capture_wdct, load_activations
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=3)
    cfg = tmp_path / "stages.toml"
    cfg.write_text(f'[sweep]\nout = "{tmp_path / "out"}"\nmodels = ["{tiny_model_dir}"]\ndata = "{data}"\nshards = 2\n'
                   f'stages = ["score", "capture"]\n')
    res = run_sweep(cfg, executor="local", progress=False)
    assert sorted(t["stage"] for t in res.tasks) == ["capture", "capture", "score", "score"]
    score_wdct(tmp_path / "whole", lm=tiny_lm, data=data, progress=False)
    capture_wdct(tmp_path / "whole", lm=tiny_lm, progress=False)
    a = load_activations(tmp_path / "whole")
    b = load_activations(res.out / tiny_model_dir.name)
    assert np.array_equal(a.array, b.array)
    cfg.write_text(cfg.read_text().replace('["score", "capture"]', '["capture"]'))
    with pytest.raises(SweepConfigError, match="stages must start with 'score'"):
        load_sweep(cfg)


def test_sweep_passes_orders_and_format_to_scoring(tmp_path, tiny_model_dir):
    from wdprobe.stages.score import load_score

    data = write_two_option_copies(tmp_path / "w.csv", copies=2)
    cfg = _write_sweep(tmp_path, tiny_model_dir, data, "paper", shards=1, fixed='orders = "shown"\nformat = "letter"')
    done = run_sweep(cfg, executor="local", progress=False)
    for run in done.runs:
        res = load_score(done.out / run["run"])
        assert len(res.prompt_rows) == 2 * len(res.rows)  # one seeded order per form, letters only
        assert set(res.metrics["readings"]) == {"shown"}
