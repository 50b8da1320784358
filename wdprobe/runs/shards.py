"""Deterministic shards of a run's items, so one stage can be split over processes or machines.

An item belongs to shard ``i`` of ``n`` when ``sha256(item id) mod n == i``: the split depends on the
id alone (not on order, selection or machine), so a shard that dies is rerun alone and lands on the same
items. Each shard writes a complete run directory of its own under ``RUN/shards/<stage>/<i>-of-<n>/``;
:func:`wdprobe.pipeline.merge.merge_run` combines them into ``RUN`` as if the stage had run unsharded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TypeVar

from wdprobe.errors import MergeError, ShardSpecError
from wdprobe.runs.rundir import RunDir


def _stage_of(path: Path, stage: str) -> dict[str, Any]:
    entry = RunDir(path).stage_entry(stage)
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

T = TypeVar("T")




@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: an item belongs to it when sha256(item id) mod count == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardSpecError(f"shard {self.index}/{self.count}: need 0 <= i < n (shards are numbered from 0)")

    @classmethod
    def parse(cls, text: "str | Shard | None") -> "Shard | None":
        if text is None or isinstance(text, Shard):
            return text
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ShardSpecError(f"--shard {text!r}: write it as i/n, e.g. 0/4 for the first of four shards") from None
        return cls(i, n)

    def holds(self, item_id: str) -> bool:
        return int(hashlib.sha256(str(item_id).encode("utf-8")).hexdigest(), 16) % self.count == self.index

    def select(self, items: Iterable[T], key=lambda it: it.id) -> list[T]:
        return [it for it in items if self.holds(key(it))]

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_dir(run_dir: str | Path, stage: str, shard: Shard) -> Path:
    """The run directory a shard of a stage writes into."""
    return Path(run_dir) / "shards" / stage / shard.name


def shard_dirs(run_dir: str | Path, stage: str) -> list[Path]:
    """Every shard directory of a stage that exists so far."""
    root = Path(run_dir) / "shards" / stage
    return sorted(p for p in root.glob("*-of-*") if p.is_dir()) if root.is_dir() else []
