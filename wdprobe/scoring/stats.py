"""Uncertainty over items: bootstrap intervals and the tests findings are worded from (SCIENCE.md §9).

Every headline is a mean over items, so the unit of resampling is the item: an item's prompts (its orders,
its two forms) are summarised into its one value first and resampled together. Macro means (over domains)
are recomputed on each resample from the resampled items of each domain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from wdprobe.errors import InputError, NonFiniteError

__all__ = ["Interval", "Evidence", "finite_values", "bootstrap_interval", "bootstrap_indices", "mean_with_interval", "chance_agreement_test",
           "sign_flip_max_test", "paired_difference_test", "wilson_interval", "LEVEL", "N_BOOT"]

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


def wilson_interval(share: Any, n: Any, *, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (vectorised over layers; statsmodels' ``proportion_confint``): right at 0
    and 1 and for small n, where the normal approximation gives bounds outside [0, 1]. For curves saved with only a
    share and a count; a share of no items has no interval (NaN)."""
    from statsmodels.stats.proportion import proportion_confint

    p, n = np.broadcast_arrays(np.asarray(share, dtype=np.float64), np.asarray(n, dtype=np.float64))
    low, high = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    ok = (n > 0) & np.isfinite(p)
    if ok.any():
        low[ok], high[ok] = proportion_confint(p[ok] * n[ok], n[ok], alpha=1 - level, method="wilson")
    return low, high


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


def finite_values(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` when every value is a finite number; else an error naming the first bad entry (item row, and setting
    column for a matrix). A NaN would otherwise make a mean NaN, and a permutation test compares nothing with it:
    ``null >= NaN`` is always false, so the p-value would come out at its smallest, a finding from a missing number."""
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        at = f"item row {where[0]}" + (f", setting column {where[1]}" if x.ndim > 1 else "")
        raise NonFiniteError(f"{what} hold a NaN or infinite value ({at}; {int(bad.sum())} in all): no statistic is "
                             "computed from them")
    return x


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
    finite_values(x, "the values averaged")
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


@dataclass(frozen=True)
class Evidence:
    """The evidence for one claim: the effect with its interval, the p-value, and what was tested against what.

    ``effect`` is the observed statistic minus its null reference (so 0 is "no effect"); ``setting`` names the
    layer or setting a selection-corrected test picked (None when nothing was picked)."""

    effect: float
    low: float
    high: float
    p_value: float
    n: int
    reference: float
    setting: int | None = None
    level: float = LEVEL

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.level

    def direction(self) -> int:
        """+1 or -1 when significant (the sign of the effect), 0 when inconclusive."""
        return 0 if not self.significant else (1 if self.effect > 0 else -1)

    def to_json(self) -> dict[str, Any]:
        return {"effect": self.effect, "low": self.low, "high": self.high, "p_value": self.p_value, "n": self.n,
                "reference": self.reference, "setting": self.setting, "significant": self.significant}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Evidence":
        return cls(d["effect"], d["low"], d["high"], d["p_value"], d["n"], d["reference"], d.get("setting"))


def chance_agreement_test(word: Sequence[int], deed: Sequence[int], strata: Sequence[str] | None = None, *,
                          n_perm: int = 2000, seed: int = 0) -> Evidence:
    """Is word-deed agreement (CS) different from what the same answers give when paired with random items?

    Deed answers are permuted among items of the same stratum (e.g. domain and number of options), which keeps
    each form's answer rates: the null is "answers do not depend on which item's word they meet". Two-sided."""
    w, d = np.asarray(word), np.asarray(deed)
    if w.shape != d.shape or w.ndim != 1 or w.size == 0:
        raise InputError(f"word and deed answers need the same length, got {w.shape} and {d.shape}")
    s = np.zeros(w.size, dtype=int) if strata is None else np.unique(np.asarray(list(strata)), return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    observed = float(np.mean(w == d))
    null = np.empty(n_perm)
    members = [np.flatnonzero(s == k) for k in np.unique(s)]
    for b in range(n_perm):
        perm = d.copy()
        for m in members:
            perm[m] = d[rng.permutation(m)]
        null[b] = np.mean(w == perm)
    reference = float(null.mean())
    p = float(min(1.0, 2 * min(np.mean(null >= observed), np.mean(null <= observed)) + 1 / (n_perm + 1)))
    agree = (w == d).astype(float)
    lo, hi = bootstrap_interval(agree, seed=seed)
    return Evidence(observed - reference, lo - reference, hi - reference, p, int(w.size), reference)


def sign_flip_max_test(diffs: np.ndarray, *, n_perm: int = 2000, seed: int = 0, n_boot: int = N_BOOT) -> Evidence:
    """Is the best of several settings (columns) better than no effect? ``diffs`` (n_items, n_settings): per item,
    the paired difference (e.g. consistent after patching minus consistent before) at each setting.

    Under the null each item's differences are symmetric about 0, so flipping an item's sign (the same flip for all
    its settings) leaves them as likely; the null of the *maximum* column mean over those flips accounts for
    picking the best setting. The interval is a bootstrap over items of the picked column (optimistic where the
    test is not: read it as the size, the p-value as the evidence)."""
    x = np.asarray(diffs, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"paired differences need shape (items, settings), got {np.asarray(diffs).shape}")
    finite_values(x, "the paired differences")
    rng = np.random.default_rng(seed)
    means = x.mean(axis=0)
    best = int(np.argmax(means))
    signs = rng.choice([-1.0, 1.0], size=(n_perm, x.shape[0]))
    null_max = (signs @ x / x.shape[0]).max(axis=1)
    p = float((1 + np.sum(null_max >= means[best])) / (1 + n_perm))
    lo, hi = bootstrap_interval(x[:, best], n_boot=n_boot, seed=seed)
    return Evidence(float(means[best]), lo, hi, p, int(x.shape[0]), 0.0, best)


def paired_difference_test(diffs: Sequence[float], *, n_perm: int = 2000, seed: int = 0) -> Evidence:
    """One setting, no selection: mean paired difference, bootstrap interval, two-sided sign-flip p-value."""
    x = np.asarray(diffs, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"paired differences need one value per item, got shape {x.shape}")
    finite_values(x, "the paired differences")
    rng = np.random.default_rng(seed)
    null = rng.choice([-1.0, 1.0], size=(n_perm, x.size)) @ x / x.size
    p = float(min(1.0, (1 + np.sum(np.abs(null) >= abs(x.mean()))) / (1 + n_perm)))
    lo, hi = bootstrap_interval(x, seed=seed)
    return Evidence(float(x.mean()), lo, hi, p, int(x.size), 0.0)


def proportion_difference(k1: int, n1: int, k2: int, n2: int, *, level: float = LEVEL) -> Evidence:
    """``k1/n1 − k2/n2`` with Newcombe's hybrid score interval (from the two Wilson intervals) and Fisher's exact
    two-sided p-value: e.g. alignment's *following*, the share of the other form's answers that moved onto the target
    minus the share that moved off it (with two options both are "changed", so only their difference is a stance)."""
    from scipy.stats import fisher_exact
    from statsmodels.stats.proportion import confint_proportions_2indep

    if n1 <= 0 or n2 <= 0:
        return Evidence(float("nan"), float("nan"), float("nan"), 1.0, int(max(n1, 0) + max(n2, 0)), 0.0, level=level)
    d = k1 / n1 - k2 / n2
    low, high = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff", alpha=1 - level)
    p = float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1])
    return Evidence(float(d), float(low), float(high), p, int(n1 + n2), 0.0, level=level)
