"""Combine the shards of a stage (``RUN/shards/<stage>/i-of-n``) into the run directory itself.

The merged files are what the unsharded stage would have written: rows in the selection's order, the
metrics recomputed over all of them, one manifest entry without the shard. Merging refuses shards that
disagree on settings, a missing or unfinished shard (naming it), or an item scored by two shards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .runs import RunDir, read_csv
from .shards import shard_dirs


class MergeError(RuntimeError):
    """Shards that cannot be merged; the message names the shard and what is wrong."""


def _stage_of(path: Path, stage: str) -> dict[str, Any]:
    manifest = RunDir(path).read_manifest()
    entry = manifest.get("stages", {}).get(stage)
    if not entry:
        raise MergeError(f"{path}: no '{stage}' stage in its manifest")
    return entry


def checked_shards(run_dir: Path, stage: str) -> list[tuple[Path, dict[str, Any]]]:
    """The shard directories of ``stage`` with their manifest entries, once all n exist, finished, with
    the same settings (every stage's merger starts here)."""
    dirs = shard_dirs(run_dir, stage)
    if not dirs:
        raise MergeError(f"{run_dir}: no shards of '{stage}' under shards/{stage}/ (run the stage with --shard i/n)")
    entries = [(d, _stage_of(d, stage)) for d in dirs]
    counts = {int(d.name.split("-of-")[1]) for d, _ in entries}
    if len(counts) != 1:
        raise MergeError(f"{run_dir}/shards/{stage}: shards of different counts {sorted(counts)}; keep one split")
    n = counts.pop()
    have = {int(d.name.split("-of-")[0]) for d, _ in entries}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise MergeError(f"{run_dir}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} of '{stage}' not run yet")
    unfinished = [d.name for d, e in entries if not e.get("complete")]
    if unfinished:
        raise MergeError(f"{run_dir}: shard(s) {', '.join(unfinished)} of '{stage}' did not finish; rerun them "
                         f"(the same command resumes)")
    base = {k: v for k, v in entries[0][1]["config"].items() if k != "shard"}
    for d, e in entries[1:]:
        other = {k: v for k, v in e["config"].items() if k != "shard"}
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            raise MergeError(f"{d}: settings differ from shard {entries[0][0].name} in {diff}; shards must share settings")
    return entries


def merge_score(run_dir: str | Path) -> dict[str, Any]:
    """Merge the scoring shards into ``run_dir/items.csv``, ``metrics.json`` and the manifest."""
    from .cache import atomic_write_json
    from .evaluate import ITEM_COLUMNS, STAGE, _typed, wdct_metrics

    run = RunDir(run_dir)
    entries = checked_shards(run.path, STAGE)
    order = entries[0][1].get("selection_ids")
    if not order:
        raise MergeError(f"{entries[0][0]}: the manifest lacks selection_ids (written by sharded scoring)")
    rows: dict[str, dict[str, Any]] = {}
    for d, _ in entries:
        for r in read_csv(d / "items.csv"):
            if r["id"] in rows:
                raise MergeError(f"item {r['id']} appears in two shards ({d.name} and another)")
            rows[r["id"]] = _typed(r)
    missing = [i for i in order if i not in rows]
    if missing:
        raise MergeError(f"{len(missing)} selected items are in no shard, e.g. {missing[:3]}")
    merged = [rows[i] for i in order]
    metrics = wdct_metrics(merged)
    run.write_table("items.csv", merged, ITEM_COLUMNS)
    atomic_write_json(run.path / "metrics.json", metrics)
    first = entries[0][1]
    config = {k: v for k, v in first["config"].items() if k != "shard"}
    manifest = run.read_manifest()
    manifest.setdefault("environment", RunDir(entries[0][0]).read_manifest().get("environment"))
    timings: dict[str, float] = {}
    for _, e in entries:
        for k, v in e.get("timings", {}).items():
            timings[k] = round(timings.get(k, 0.0) + v, 3)
    manifest.setdefault("stages", {})[STAGE] = {
        "config": config, "letters": first["letters"], "model": first.get("model"),
        "data": dict(first.get("data", {}), n_items=len(merged)), "batch_size": first.get("batch_size"),
        "timings": timings, "complete": True,
        "merged_from": [str(d.relative_to(run.path)) for d, _ in entries]}
    run.write_manifest(manifest)
    return metrics


def _merge_capture(run_dir: str | Path) -> dict[str, Any]:
    from .capture import merge_capture

    return merge_capture(run_dir)


def _merge_cross_patch(run_dir: str | Path) -> dict[str, Any]:
    from .localise import merge_cross_patch

    return merge_cross_patch(run_dir)


def _merge_steering(run_dir: str | Path) -> dict[str, Any]:
    from .localise import merge_steering

    return merge_steering(run_dir)


def _merge_pct(stage: str):
    def merge(run_dir: str | Path) -> dict[str, Any]:
        from .pct import merge_pct_stage

        return merge_pct_stage(run_dir, stage)
    return merge


def _merge_positional(stage: str):
    def merge(run_dir: str | Path) -> dict[str, Any]:
        from .localise import merge_positional

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
