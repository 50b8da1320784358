"""Deterministic shards of a run's items, so one stage can be split over processes or machines.

An item belongs to shard ``i`` of ``n`` when ``sha256(item id) mod n == i``: the split depends on the
id alone (not on order, selection or machine), so a shard that dies is rerun alone and lands on the same
items. Each shard writes a complete run directory of its own under ``RUN/shards/<stage>/<i>-of-<n>/``;
:func:`wdprobe.merge.merge_run` combines them into ``RUN`` as if the stage had run unsharded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TypeVar

T = TypeVar("T")


class ShardSpecError(ValueError):
    """A ``--shard`` value that is not ``i/n`` with 0 <= i < n."""


@dataclass(frozen=True)
class Shard:
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
    return Path(run_dir) / "shards" / stage / shard.name


def shard_dirs(run_dir: str | Path, stage: str) -> list[Path]:
    root = Path(run_dir) / "shards" / stage
    return sorted(p for p in root.glob("*-of-*") if p.is_dir()) if root.is_dir() else []
