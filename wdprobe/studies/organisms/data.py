"""The items an organism is trained and measured on: WDCT items with a known correct option (EthV, Theory), two
options each, split once by a seeded permutation of their ids (never shared between train and held out)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wdprobe.data.wdct import Item
from wdprobe.errors import InputError


@dataclass(frozen=True)
class PlantedSplit:
    """Train and held-out items of an organism, by id."""

    train: tuple[Item, ...]
    held_out: tuple[Item, ...]
    seed: int
    train_share: float

    def set_of(self, item_id: str) -> str:
        return "train" if item_id in {i.id for i in self.train} else "held_out"

    def rows(self) -> list[dict[str, object]]:
        """One row per item: id, domain, set, correct option (canonical index)."""
        return [{"id": i.id, "domain": i.domain, "set": s, "correct": i.correct}
                for s, items in (("train", self.train), ("held_out", self.held_out)) for i in items]


def planted_split(items: Sequence[Item], *, seed: int = 0, train_share: float = 0.6,
                  limit: int | None = None) -> PlantedSplit:
    """The two-option items with a correct option, in a seeded order of their sorted ids; the first ``train_share``
    train. ``limit`` keeps only the first ``limit`` of that order (a smaller organism for a quick look or a test)."""
    if not 0 < train_share < 1:
        raise InputError(f"train_share must be between 0 and 1, not {train_share}")
    known = sorted((i for i in items if i.correct is not None and i.n_options == 2), key=lambda i: i.id)
    if len(known) < 4:
        raise InputError(f"{len(known)} two-option items with a correct option (EthV, Theory): an organism needs at least 4")
    order = [known[k] for k in np.random.default_rng(seed).permutation(len(known))]
    if limit is not None:
        order = order[:limit]
    cut = max(1, min(len(order) - 1, round(train_share * len(order))))
    return PlantedSplit(tuple(order[:cut]), tuple(order[cut:]), seed, train_share)
