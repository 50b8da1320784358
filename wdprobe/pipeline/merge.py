"""Combine the shards of a run's stages (``RUN/shards/<stage>/i-of-n``) into the run directory itself.

The merged files are what the unsharded stage would have written: rows in the selection's order, the
metrics recomputed over all of them, one manifest entry without the shard. Each stage's merger is
declared with the stage in the registry; merging refuses shards that disagree on settings, a missing or
unfinished shard (naming it), or an item scored by two shards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from wdprobe.errors import MergeError
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.runs.rundir import RunDir


def study_of(run_dir: str | Path) -> str:
    """Which study made a run directory (a PCT run records its settings under the 'pct' stage)."""
    return "pct" if RunDir(run_dir).stage_entry("pct") else "wdct"


def mergers(study: str) -> dict[str, Callable[[Path], Mapping[str, Any]]]:
    """Merge functions of ``study`` by the stage name their shards are saved under, in pipeline order."""
    return REGISTRY.mergeable(study)


def merge_run(run_dir: str | Path) -> dict[str, Any]:
    """Merge every sharded stage found under ``run_dir/shards/``; returns per stage its headline."""
    root = Path(run_dir) / "shards"
    stages = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not stages:
        raise MergeError(f"{run_dir}: nothing to merge (no shards/ folder); run a stage with --shard i/n first")
    available = mergers(study_of(run_dir))
    unknown = [s for s in stages if s not in available]
    if unknown:
        raise MergeError(f"{run_dir}: no merger for stage(s) {unknown}; mergeable: {sorted(available)}")
    out: dict[str, Any] = {}
    done: set[int] = set()
    for name, merge in available.items():  # pipeline order: later stages read the merged earlier ones
        if name in stages and id(merge) not in done:
            done.add(id(merge))
            result = merge(Path(run_dir))
            out.update(result if set(result) <= set(available) and result else {name: result})
    return out


def main_summary(result: dict[str, Any]) -> str:
    """The merged stages' headline numbers as JSON, for the command line."""
    return json.dumps({s: {k: v for k, v in m.items() if k in ("n_items", "cs_micro", "pcs_micro", "n_prompts", "n_inconsistent")}
                       for s, m in result.items()}, indent=2)
