"""Combine the shards of a stage (``RUN/shards/<stage>/i-of-n``) into the run directory itself.

The merged files are what the unsharded stage would have written: rows in the selection's order, the
metrics recomputed over all of them, one manifest entry without the shard. Merging refuses shards that
disagree on settings, a missing or unfinished shard (naming it), or an item scored by two shards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import MergeError
from wdprobe.stages.score import merge_score


def _merge_capture(run_dir: str | Path) -> dict[str, Any]:
    from wdprobe.stages.capture import merge_capture

    return merge_capture(run_dir)


def _merge_cross_patch(run_dir: str | Path) -> dict[str, Any]:
    from wdprobe.stages.patching import merge_cross_patch

    return merge_cross_patch(run_dir)


def _merge_steering(run_dir: str | Path) -> dict[str, Any]:
    from wdprobe.stages.steering import merge_steering

    return merge_steering(run_dir)


def _merge_pct(stage: str):
    def merge(run_dir: str | Path) -> dict[str, Any]:
        from wdprobe.studies.pct.stages import merge_pct_stage

        return merge_pct_stage(run_dir, stage)
    return merge


def _merge_positional(stage: str):
    def merge(run_dir: str | Path) -> dict[str, Any]:
        from wdprobe.stages.patching import merge_positional

        return merge_positional(run_dir, stage)
    return merge


MERGERS = {"score": merge_score, "capture": _merge_capture, "patch_cross": _merge_cross_patch, "steer": _merge_steering,
           "patch_positional_deed": _merge_positional("patch_positional_deed"),
           "patch_positional_word": _merge_positional("patch_positional_word")}
PCT_MERGERS = {stage: _merge_pct(stage) for stage in ("closed", "open", "judge", "capture")}


def merge_run(run_dir: str | Path) -> dict[str, Any]:
    """Merge every sharded stage found under ``run_dir/shards/``; returns per stage its headline."""
    root = Path(run_dir) / "shards"
    stages = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not stages:
        raise MergeError(f"{run_dir}: nothing to merge (no shards/ folder); run a stage with --shard i/n first")
    is_pct = "pct" in RunDir(run_dir).read_manifest().get("stages", {})
    mergers = PCT_MERGERS if is_pct else MERGERS
    unknown = [s for s in stages if s not in mergers]
    if unknown:
        raise MergeError(f"{run_dir}: no merger for stage(s) {unknown}; mergeable: {sorted(mergers)}")
    order = [s for s in mergers if s in stages]  # pipeline order: later stages read the merged earlier ones
    return {s: mergers[s](run_dir) for s in order}


def main_summary(result: dict[str, Any]) -> str:
    return json.dumps({s: {k: v for k, v in m.items() if k in ("n_items", "cs_micro", "pcs_micro", "n_prompts", "n_inconsistent")}
                       for s, m in result.items()}, indent=2)
