"""Sharded stages: a deterministic split by item id, and merges identical to the unsharded run."""
from __future__ import annotations

import json

import pytest
from tiny import write_two_option_copies

from wdprobe.errors import ShardSpecError
from wdprobe.runs.shards import Shard


def _flat(d, prefix=""):
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, (dict, list)) else {f"{prefix}{k}": v})
    return out


def assert_same_numbers(a, b, tol: float = 1e-9) -> None:
    """Two JSON trees with the same keys and numbers equal to ``tol`` (NaN equals NaN)."""
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    diffs = {k: (fa[k], fb[k]) for k in fa if fa[k] != pytest.approx(fb[k], abs=tol, nan_ok=True)}
    assert not diffs


def _captured_twins(lm, tmp_path) -> None:
    """A scored and captured run ``a`` and an identical copy ``b`` (one stage to run unsharded, one sharded)."""
    import shutil

    from wdprobe.stages.capture import capture_wdct
    from wdprobe.stages.score import score_wdct

    score_wdct(tmp_path / "a", lm=lm, data=write_two_option_copies(tmp_path / "w.csv"), progress=False)
    capture_wdct(tmp_path / "a", lm=lm, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")


def test_shards_partition_items_by_id_alone():
    ids = [f"item-{k}" for k in range(200)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s.index for s in shards if s.holds(i)] for i in ids]
    assert all(len(o) == 1 for o in owners)  # every item in exactly one shard
    sizes = [sum(o == [k] for o in owners) for k in range(4)]
    assert min(sizes) > 30  # and the split is not degenerate
    # the owner of an id depends on nothing else: order, the rest of the list
    assert Shard(1, 4).select(list(reversed(ids)), key=str) == [i for i in reversed(ids) if Shard(1, 4).holds(i)]
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard(2, 4)) == "2/4" and Shard(2, 4).name == "2-of-4"
    for bad in ("4/4", "1-4", "x/2", "-1/3"):
        with pytest.raises(ShardSpecError):
            Shard.parse(bad)


def test_sharded_scoring_merges_to_the_unsharded_run(tiny_lm, tmp_path):
    from wdprobe.cli import main
    from wdprobe.errors import MergeError
    from wdprobe.pipeline.merge import merge_run
    from wdprobe.runs.rundir import read_csv
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=5)
    whole = score_wdct(tmp_path / "whole", lm=tiny_lm, data=data, progress=False, batch_size=4)
    sharded = tmp_path / "sharded"
    score_wdct(sharded, lm=tiny_lm, data=data, progress=False, batch_size=4, shard="0/3")
    with pytest.raises(MergeError, match="1/3, 2/3 of 'score' not run yet"):
        merge_run(sharded)
    score_wdct(sharded, lm=tiny_lm, data=data, progress=False, batch_size=4, shard="2/3")
    # the CLI runs the missing shard and merges
    assert main(["score", "--model", tiny_lm.path, "--data", str(data), "--out", str(sharded), "--shard", "1/3",
                 "--batch-size", "4", "--quiet"]) == 0
    assert main(["merge", str(sharded)]) == 0
    a, b = read_csv(tmp_path / "whole" / "items.csv"), read_csv(sharded / "items.csv")
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:  # probabilities and log-likelihoods may differ in the last float bits (other batches)
            if "." in ra[k] or "e-" in ra[k]:
                assert ra[k] == rb[k] or abs(float(ra[k]) - float(rb[k])) < 1e-6, (ra["id"], k)
            else:
                assert ra[k] == rb[k], (ra["id"], k)
    ma = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    mb = json.loads((sharded / "metrics.json").read_text())
    assert ma.keys() == mb.keys() and all(ma[k] == pytest.approx(mb[k]) for k in ma if isinstance(ma[k], float))
    manifest = json.loads((sharded / "manifest.json").read_text())["stages"]["score"]
    assert manifest["complete"] and "shard" not in manifest["config"] and len(manifest["merged_from"]) == 3
    # downstream stages read the merged run like any other
    from wdprobe.stages.score import load_score

    assert len(load_score(sharded).rows) == len(whole.rows)


def test_merge_refuses_disagreeing_shards(tiny_lm, tmp_path):
    from wdprobe.errors import MergeError
    from wdprobe.pipeline.merge import merge_run
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=3)
    run = tmp_path / "run"
    score_wdct(run, lm=tiny_lm, data=data, progress=False, shard="0/2", seed=0)
    score_wdct(run, lm=tiny_lm, data=data, progress=False, shard="1/2", seed=1)
    with pytest.raises(MergeError, match=r"1-of-2: settings differ from shard 0-of-2 in \['seed'\]"):
        merge_run(run)
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_run(tmp_path / "empty")


def test_sharded_capture_merges_to_the_unsharded_capture(tiny_lm, tmp_path):
    import shutil

    import numpy as np

    from wdprobe.pipeline.merge import merge_run
    from wdprobe.stages.capture import capture_wdct, load_activations
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=4)
    score_wdct(tmp_path / "a", lm=tiny_lm, data=data, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    capture_wdct(tmp_path / "a", lm=tiny_lm, progress=False, chunk_prompts=8)
    for i in (1, 0, 2):  # any order
        capture_wdct(tmp_path / "b", lm=tiny_lm, progress=False, chunk_prompts=8, shard=f"{i}/3")
    assert set(merge_run(tmp_path / "b")) == {"capture"}
    for position in ("last", "question_mean"):
        a = load_activations(tmp_path / "a", position=position)
        b = load_activations(tmp_path / "b", position=position)
        assert np.array_equal(a.array, b.array)
        assert a.meta.drop(columns=["shard", "row"]).equals(b.meta.drop(columns=["shard", "row"]))


def test_sharded_cross_patching_merges_to_the_unsharded_stage(tiny_lm, tmp_path):
    import pandas as pd

    from wdprobe.cli import main
    from wdprobe.stages.patching import run_cross_patch

    _captured_twins(tiny_lm, tmp_path)
    whole = run_cross_patch(tmp_path / "a", n_items=12, lm=tiny_lm, progress=False)
    for i in range(3):
        assert main(["patch", "--run", str(tmp_path / "b"), "--kind", "cross", "--items", "12", "--shard", f"{i}/3",
                     "--quiet"]) == 0
    assert main(["merge", str(tmp_path / "b")]) == 0
    merged = json.loads((tmp_path / "b" / "patching" / "cross_form_headline.json").read_text())
    assert_same_numbers(json.loads(json.dumps(whole)), merged)
    key = ["id", "condition", "layer"]
    fa = pd.read_csv(tmp_path / "a" / "patching" / "cross_form.csv").sort_values(key).reset_index(drop=True)
    fb = pd.read_csv(tmp_path / "b" / "patching" / "cross_form.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(fa.drop(columns=["item"]), fb.drop(columns=["item"]), atol=1e-6)


def test_sharded_steering_merges_to_the_unsharded_stage(tiny_lm, tmp_path):
    import pandas as pd

    from wdprobe.cli import main
    from wdprobe.stages.steering import run_steering

    _captured_twins(tiny_lm, tmp_path)
    whole = run_steering(tmp_path / "a", n_items=12, alphas=(0, 1, 4), lm=tiny_lm, progress=False)
    for i in range(2):
        assert main(["steer", "--run", str(tmp_path / "b"), "--items", "12", "--alphas", "0,1,4", "--shard", f"{i}/2",
                     "--quiet"]) == 0
    assert main(["merge", str(tmp_path / "b")]) == 0
    merged = json.loads((tmp_path / "b" / "steering" / "steering_headline.json").read_text())
    assert_same_numbers(json.loads(json.dumps(whole)), merged)  # best setting and its validation included
    key = ["id", "condition", "layer", "alpha"]
    fa = pd.read_csv(tmp_path / "a" / "steering" / "steering.csv").sort_values(key).reset_index(drop=True)
    fb = pd.read_csv(tmp_path / "b" / "steering" / "steering.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(fa.drop(columns=["item"]), fb.drop(columns=["item"]), atol=1e-6)


def test_sharded_exact_positional_patching_merges_to_the_unsharded_stage(tiny_lm, tmp_path):
    import pandas as pd

    from wdprobe.cli import main

    _captured_twins(tiny_lm, tmp_path)
    args = ["--kind", "positional", "--positional-items", "4", "--exact-items", "3", "--min-effect", "0", "--quiet"]
    assert main(["patch", "--run", str(tmp_path / "a")] + args) == 0
    for i in range(2):
        assert main(["patch", "--run", str(tmp_path / "b"), "--shard", f"{i}/2"] + args) == 0
    saved = list((tmp_path / "b" / "shards").rglob("positional-deed-exact/*.json"))
    assert len(saved) == 3  # every exact item once, across the two shards
    assert main(["merge", str(tmp_path / "b")]) == 0
    ha = json.loads((tmp_path / "a" / "patching" / "positional-deed-headline.json").read_text())
    hb = json.loads((tmp_path / "b" / "patching" / "positional-deed-headline.json").read_text())
    drop = ("seconds_attribution", "seconds_exact")
    assert_same_numbers({k: v for k, v in ha.items() if k not in drop}, {k: v for k, v in hb.items() if k not in drop},
                        tol=1e-6)
    fa, fb = (pd.read_csv(tmp_path / r / "patching" / "positional-deed.csv") for r in ("a", "b"))
    pd.testing.assert_frame_equal(fa, fb, atol=1e-6)
    assert main(["patch", "--run", str(tmp_path / "b"), "--kind", "both", "--shard", "0/2", "--quiet"]) == 2
