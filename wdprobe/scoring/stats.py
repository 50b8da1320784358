"""Uncertainty over items: bootstrap intervals for item means, micro and macro (SCIENCE.md §9).

Every headline is a mean over items, so the unit of resampling is the item: an item's prompts (its orders,
its two forms) are summarised into its one value first and resampled together. Macro means (over domains)
are recomputed on each resample from the resampled items of each domain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from wdprobe.errors import InputError

__all__ = ["Interval", "bootstrap_interval", "bootstrap_indices", "mean_with_interval", "LEVEL", "N_BOOT"]

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval and the number of items behind it."""

    value: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def excludes(self, x: float) -> bool:
        """Whether ``x`` lies outside the interval."""
        return x < self.low or x > self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_indices(n: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` item indices drawn with replacement (seeded, so a report is reproducible)."""
    if n < 1:
        raise InputError("a bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _tails(stats: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1, not {level}")
    stats = stats[np.isfinite(stats)]
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def bootstrap_interval(values: Sequence[float], *, statistic: Callable[[np.ndarray], float] = np.mean,
                       n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over items (one value per item)."""
    x = np.asarray(values, dtype=np.float64)
    idx = bootstrap_indices(x.size, n_boot=n_boot, seed=seed)
    return _tails(np.array([statistic(x[i]) for i in idx]), level)


def mean_with_interval(values: Sequence[float], groups: Sequence[str] | None = None, *, n_boot: int = N_BOOT,
                       level: float = LEVEL, seed: int = 0) -> dict[str, Interval]:
    """The item mean (``micro``) and, with ``groups`` (e.g. domains), the mean of group means (``macro``), each
    with its bootstrap interval; resampling is vectorised, so 2000 resamples of 1225 items take milliseconds."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"one value per item expected, got shape {x.shape}")
    idx = bootstrap_indices(x.size, n_boot=n_boot, seed=seed)
    lo, hi = _tails(x[idx].mean(axis=1), level)
    out = {"micro": Interval(float(x.mean()), lo, hi, int(x.size))}
    if groups is not None:
        g = np.asarray(list(groups))
        if g.shape != x.shape:
            raise InputError(f"{g.size} group labels for {x.size} items")
        names = sorted(set(g.tolist()))
        point = float(np.mean([x[g == name].mean() for name in names]))
        sums = np.zeros((idx.shape[0], len(names)))
        counts = np.zeros_like(sums)
        for j, name in enumerate(names):
            member = (g == name)[idx]
            sums[:, j] = np.where(member, x[idx], 0.0).sum(axis=1)
            counts[:, j] = member.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group = sums / counts  # a group absent from a resample is left out of that resample's macro
        macro = np.nanmean(per_group, axis=1)
        lo, hi = _tails(macro, level)
        out["macro"] = Interval(point, lo, hi, int(x.size))
    return out
