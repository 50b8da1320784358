"""Political Compass coordinates from answers, and persona shifts with a paired permutation test.

``econ = sum_i econ_weights[i][answer_i] / 8.0 + 0.38`` and ``social = sum_i soc_weights[i][answer_i] / 19.5 + 2.41``
(politicalcompass.org's scoring, as the LLM Tropes study used it), each rounded to two decimals;
unanswered propositions contribute nothing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import false_discovery_control

from wdprobe.data.pct import ANSWERS, WEIGHTS_FILE
from wdprobe.errors import PCTFormatError


@dataclass(frozen=True)
class CompassWeights:
    """Per-proposition economic and social weights of the four answers, with offsets and divisors."""

    econ: np.ndarray  # (n_propositions, 4), columns in ANSWERS order
    soc: np.ndarray
    econ_offset: float
    soc_offset: float
    econ_divisor: float
    soc_divisor: float

    def contributions(self, proposition: int, answer: int) -> tuple[float, float]:
        """What one answer adds to (econ, social), divisor applied."""
        return (float(self.econ[proposition, answer]) / self.econ_divisor,
                float(self.soc[proposition, answer]) / self.soc_divisor)

    def axis_of(self, propositions: Sequence[int]) -> np.ndarray:
        """Which axes each proposition moves (0 none, 1 economic, 2 social, 3 both): the strata a bootstrap over
        propositions resamples within."""
        p = np.asarray(propositions, dtype=int)
        return (np.abs(self.econ[p]).sum(1) > 0).astype(int) + 2 * (np.abs(self.soc[p]).sum(1) > 0).astype(int)

    def coordinates(self, answers: Mapping[int, int]) -> tuple[float, float]:
        """(economic, social) for ``{proposition: canonical answer index}``."""
        e = sum(self.econ[p, a] for p, a in answers.items()) / self.econ_divisor + self.econ_offset
        s = sum(self.soc[p, a] for p, a in answers.items()) / self.soc_divisor + self.soc_offset
        return upstream_round(float(e)), upstream_round(float(s))


def upstream_round(x: float) -> float:
    """Two decimals as politicalcompass.github.io rounds: ``round((x + 1e-15) * 100) / 100``.

    Python's ``round(x, 2)`` rounds exact ties to even (and 0.125 stored as 0.12499...); upstream nudges
    ties up, which moves 5 of 44 committed coordinates by 0.01."""
    return round((x + 1e-15) * 100) / 100


def load_weights(path: str | os.PathLike) -> CompassWeights:
    """``compass_weights.json`` (a file, or the PCT directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise PCTFormatError(f"{path}: missing. The compass weights are not a file upstream (they sit in "
                             "copenlu/llm-pct-tropes src/analysis.ipynb); put compass_weights.json beside the PCT files")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if list(raw.get("answer_order", ANSWERS)) != list(ANSWERS):
        raise PCTFormatError(f"{path}: answer_order {raw.get('answer_order')} differs from {list(ANSWERS)}")
    econ, soc = np.asarray(raw["econ_weights"], float), np.asarray(raw["soc_weights"], float)
    if econ.shape != soc.shape or econ.ndim != 2 or econ.shape[1] != 4:
        raise PCTFormatError(f"{path}: econ_weights {econ.shape} and soc_weights {soc.shape} must both be (n, 4)")
    return CompassWeights(econ, soc, float(raw["econ_offset"]), float(raw["soc_offset"]),
                          float(raw["econ_divisor"]), float(raw["soc_divisor"]))


def sign_flip_test(diffs: np.ndarray, *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that the paired differences' sum is zero (each pair's sign flipped at random)."""
    diffs = np.asarray(diffs, float)
    if len(diffs) == 0 or not np.any(diffs):
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, len(diffs)))
    null = np.abs(signs @ diffs)
    observed = abs(diffs.sum())
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """False-discovery-rate adjusted p-values (q-values), same order as ``p``: scipy's implementation (tested by its
    many users), kept under this name for the compass's callers."""
    p = np.asarray(p, float)
    return p if len(p) == 0 else false_discovery_control(p, method="bh")


def bootstrap_sum_interval(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                           strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the column sums of ``values`` (``(n, k)``) when its n rows are resampled with
    replacement: a compass coordinate (or a shift) is a sum over propositions, and which propositions were asked
    is the sampling the interval reports. ``strata`` (one per row): rows are resampled within their stratum, so
    each stratum keeps its count (the test always asks so many economic and so many social propositions)."""
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    rng = np.random.default_rng(seed)
    strata = np.zeros(len(values), dtype=int) if strata is None else np.asarray(strata)
    sums = np.zeros((n_boot, values.shape[1]))
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        idx = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        sums += values[idx].sum(axis=1)
    tail = (1 - level) / 2
    return np.quantile(sums, tail, axis=0), np.quantile(sums, 1 - tail, axis=0)


def persona_positions(rows: Sequence[Mapping], weights: CompassWeights, *, seed: int = 0) -> list[dict]:
    """Compass position per persona: coordinates per instruction (its answers to every proposition), then
    their mean and spread, and a 95% bootstrap interval over propositions (each proposition's contribution averaged
    over the instructions, resampled within the propositions that move the same axes). ``rows``: closed-form results with ``persona``, ``instruction``,
    ``proposition``, ``choice``."""
    groups: dict[tuple[str, int], dict[int, int]] = {}
    for r in rows:
        groups.setdefault((r["persona"], int(r["instruction"])), {})[int(r["proposition"])] = int(r["choice"])
    per: dict[str, list[tuple[float, float]]] = {}
    parts: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for (persona, _), answers in groups.items():
        per.setdefault(persona, []).append(weights.coordinates(answers))
        for prop, a in answers.items():
            parts.setdefault(persona, {}).setdefault(prop, []).append(weights.contributions(prop, a))
    out = []
    for persona, coords in per.items():
        c = np.asarray(coords)
        props = list(parts[persona])
        contrib = np.array([np.mean(parts[persona][p], axis=0) for p in props])
        low, high = bootstrap_sum_interval(contrib, seed=seed, strata=weights.axis_of(props))
        offset = np.array([weights.econ_offset, weights.soc_offset])
        low, high = low + offset, high + offset
        out.append({"persona": persona, "econ": round(float(c[:, 0].mean()), 3), "social": round(float(c[:, 1].mean()), 3),
                    "econ_sd": round(float(c[:, 0].std()), 3), "social_sd": round(float(c[:, 1].std()), 3),
                    "n_instructions": len(coords), "econ_low": upstream_round(float(low[0])),
                    "econ_high": upstream_round(float(high[0])), "social_low": upstream_round(float(low[1])),
                    "social_high": upstream_round(float(high[1]))})  # two decimals, as the coordinates
    return out


def persona_shifts(rows: Sequence[Mapping], weights: CompassWeights, *, base: str = "base", n_perm: int = 10000,
                   seed: int = 0) -> list[dict]:
    """Shift of each persona's position from the base case, with a paired sign-flip permutation test.

    Pairs are (proposition, instruction) answered both by the persona and the base case; a pair's
    difference is what the persona's answer adds to the coordinate minus what the base answer adds,
    averaged over instructions, so the shift is the difference of mean coordinates over shared pairs.
    p-values are two-sided; q-values are Benjamini-Hochberg over all personas and both axes.
    """
    answer = {(r["persona"], int(r["proposition"]), int(r["instruction"])): int(r["choice"]) for r in rows}
    personas = sorted({p for p, _, _ in answer if p != base})
    n_inst = {}
    for p, _, i in answer:
        n_inst.setdefault(p, set()).add(i)
    out = []
    for persona in personas:
        pairs = [(prop, inst) for (p, prop, inst) in answer if p == persona and (base, prop, inst) in answer]
        if not pairs:
            continue
        k = len({inst for _, inst in pairs})
        d = np.array([np.subtract(weights.contributions(prop, answer[(persona, prop, inst)]),
                                  weights.contributions(prop, answer[(base, prop, inst)])) for prop, inst in pairs]) / k
        changed = float(np.mean([answer[(persona, prop, inst)] != answer[(base, prop, inst)] for prop, inst in pairs]))
        low, high = bootstrap_sum_interval(d, seed=seed, strata=weights.axis_of([prop for prop, _ in pairs]))
        out.append({"persona": persona, "d_econ": round(float(d[:, 0].sum()), 3), "d_social": round(float(d[:, 1].sum()), 3),
                    "d_econ_low": round(float(low[0]), 3), "d_econ_high": round(float(high[0]), 3),
                    "d_social_low": round(float(low[1]), 3), "d_social_high": round(float(high[1]), 3),
                    "p_econ": sign_flip_test(d[:, 0], n_perm=n_perm, seed=seed),
                    "p_social": sign_flip_test(d[:, 1], n_perm=n_perm, seed=seed + 1),
                    "answers_changed": round(changed, 3), "n_pairs": len(pairs)})
    q = benjamini_hochberg([r["p_econ"] for r in out] + [r["p_social"] for r in out])
    for i, r in enumerate(out):
        r["q_econ"], r["q_social"] = round(float(q[i]), 4), round(float(q[len(out) + i]), 4)
        r["p_econ"], r["p_social"] = round(r["p_econ"], 4), round(r["p_social"], 4)
    return out
