"""Consistency metrics: CS and PCS (SCIENCE.md §3), in canonical option space.

CS: an item is consistent when word and deed choices are the same canonical option.
PCS: 1 - JSD(p_word, p_deed), log base 2, so it lies in [0, 1].
Both are reported as the *micro* mean over items (upstream's "Avg") and the *macro* mean over
domains (the paper's table), plus per domain, with counts.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from wdprobe.data.wdct import domains_of
from wdprobe.errors import InputError


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    s = p.sum(axis=-1, keepdims=True)
    if np.any(s <= 0):
        raise InputError("a distribution sums to zero")
    return p / s


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence with log base 2 (in [0, 1]); works row-wise on 2-D arrays."""
    p, q = _normalise(p), _normalise(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log2(a) - np.log2(b)), 0.0)
        return terms.sum(axis=-1)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0)


def pcs(p_word: Sequence[float] | np.ndarray, p_deed: Sequence[float] | np.ndarray) -> np.ndarray:
    """Probabilistic consistency: 1 - JSD_2(p_word, p_deed)."""
    return 1.0 - js_divergence(p_word, p_deed)


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else None


def summarise(rows: Sequence[Mapping], *, domains: Sequence[str] | None = None, ndigits: int | None = None) -> dict:
    """Aggregate per-item rows (keys ``domain``, ``consistent``, ``pcs``) into CS/PCS metrics.

    Returns ``cs_micro``, ``cs_macro``, ``pcs_micro``, ``pcs_macro``, ``n_items`` and ``per_domain``
    (``{domain: {"n", "cs", "pcs"}}``). Macro means average only the domains that have items.
    ``ndigits`` rounds every mean (upstream rounds to 2).
    """
    def rnd(x: float | None) -> float | None:
        return x if x is None or ndigits is None else round(x, ndigits)

    domains = domains_of(rows) if domains is None else domains
    per_domain = {}
    for d in domains:
        sub = [r for r in rows if r["domain"] == d]
        if not sub:
            continue
        cs = _mean(int(r["consistent"]) for r in sub)
        pc = _mean(float(r["pcs"]) for r in sub)
        per_domain[d] = {"n": len(sub), "cs": rnd(cs), "pcs": rnd(pc)}
    unknown = sorted({r["domain"] for r in rows} - set(domains))
    if unknown:
        raise InputError(f"rows have domains {unknown} outside {list(domains)}")
    cs_micro = _mean(int(r["consistent"]) for r in rows)
    pcs_micro = _mean(float(r["pcs"]) for r in rows)
    # macro over unrounded per-domain means
    raw_cs = [_mean(int(r["consistent"]) for r in rows if r["domain"] == d) for d in per_domain]
    raw_pcs = [_mean(float(r["pcs"]) for r in rows if r["domain"] == d) for d in per_domain]
    out = {
        "n_items": len(rows),
        "cs_micro": cs_micro, "cs_macro": _mean(raw_cs),
        "pcs_micro": pcs_micro, "pcs_macro": _mean(raw_pcs),
        "per_domain": per_domain,
    }
    if ndigits is not None:
        for k in ("cs_micro", "cs_macro", "pcs_micro", "pcs_macro"):
            out[k] = rnd(out[k])
    return out
