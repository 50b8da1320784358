"""Steering: add alpha x the word-stance direction to the deed run, and see whether deeds follow words.

At layer l the deed run's final-position residual gets ``alpha * scale_l * s_i * u_l``: ``u_l`` the unit
word-stance direction (difference of means of word residuals by the word answer, cross-fitted so an
item is never steered by a direction fitted on it), ``s_i = +1/-1`` pointing toward item i's word
answer, ``scale_l`` the length of that mean difference (alpha = 1 moves a residual by the whole gap
between the two word-answer groups, the usual contrastive-steering unit). Each *control* (:data:`STEERING_CONTROLS`,
one class per kind) adds a direction of the same norm and sign that should carry no stance: an isotropic random
direction (``random``), which can leave the span activations take and break the answer format, and the difference of
two other items' residuals with the same word answer (``pair-random``), which stays in that span, so that "beats the
control" compares against a model that still answers. Outcome: CS (the deed now picks the word answer) and the answer
format's mass (letters, or the options' decision tokens), as a mean and as each item's ratio to its clean run.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from wdprobe.errors import InterventionError
from wdprobe.methods.interventions import Intervention, Row, run_interventions

MIN_MASS_RATIO = 0.5  # a setting keeps the answer format while its answer-format mass stays >= this share of clean
PAIR_SEED_OFFSET = 104729  # the pair-random control's seed, offset from the run's


class SteeringControl(ABC):
    """A direction per item and layer that should carry no stance, scaled and signed as the stance direction is:
    what a steering gain is compared against. ``directions`` returns unit vectors ``[n_items, n_layers, d]``."""

    name: ClassVar[str]
    meaning: ClassVar[str]

    @abstractmethod
    def directions(self, sources: np.ndarray, y: np.ndarray, random_unit: np.ndarray, seed: int) -> np.ndarray:
        """Unit directions from the residuals the stance is fitted on (``sources [n_items, n_layers, d]``), the items'
        word answers ``y`` (0/1) and the run's seeded random unit direction per layer (``random_unit [n_layers, d]``)."""


class IsotropicControl(SteeringControl):
    """One seeded random unit direction per layer, the same for every item (the first release's control)."""

    name = "random"
    meaning = "an isotropic random direction of equal norm"

    def directions(self, sources: np.ndarray, y: np.ndarray, random_unit: np.ndarray, seed: int) -> np.ndarray:
        if random_unit.shape != sources.shape[1:]:
            raise InterventionError(f"random directions {random_unit.shape} do not match the sources {sources.shape}")
        return np.broadcast_to(random_unit[None], sources.shape)


class ActivationPairControl(SteeringControl):
    """Per item, the difference of two *other* items' residuals that share a word answer (a seeded pair of the same
    answer, so no stance difference is in it by construction), normalised: a direction in the span activations take,
    as the stance direction is, so the format survives it as it survives the stance. Pairs with equal residuals
    (duplicated prompts) are passed over; only where every same-answer pair is one does the pair come from any two
    other items."""

    name = "pair-random"
    meaning = "the difference of two other same-answer items' residuals, of equal norm"

    def directions(self, sources: np.ndarray, y: np.ndarray, random_unit: np.ndarray, seed: int) -> np.ndarray:
        y = np.asarray(y).astype(int)
        if len(y) != len(sources):
            raise InterventionError(f"{len(y)} word answers for {len(sources)} items' residuals")
        if len(y) < 3:
            raise InterventionError(f"the pair-random control needs at least 3 items (it has {len(y)}): each item's "
                                    "pair is two other items")
        rng = np.random.default_rng(seed + PAIR_SEED_OFFSET)
        out = np.empty(sources.shape, dtype=np.float64)
        for i in range(len(y)):
            others = np.arange(len(y)) != i
            same = rng.permutation(np.flatnonzero((y == y[i]) & others))
            direction = self._pair_direction(sources, same)
            if direction is None:  # every same-answer pair is a duplicate: any two other items, stance difference and all
                direction = self._pair_direction(sources, rng.permutation(np.flatnonzero(others)))
            if direction is None:
                raise InterventionError(f"every pair of items other than item {i} has identical residuals at some "
                                        "layer: no pair direction (are the items' prompts duplicates?)")
            out[i] = direction
        return out

    @staticmethod
    def _pair_direction(sources: np.ndarray, order: np.ndarray) -> np.ndarray | None:
        """The first pair in a seeded order whose residuals differ at every layer (duplicated prompts have equal
        residuals and give no direction), as unit vectors per layer; None when no pair differs."""
        for k, a in enumerate(order):
            for b in order[k + 1:]:
                diff = sources[a].astype(np.float64) - sources[b].astype(np.float64)
                norm = np.linalg.norm(diff, axis=-1, keepdims=True)
                if np.all(norm > 0):
                    return diff / norm
        return None


STEERING_CONTROLS: dict[str, SteeringControl] = {c.name: c for c in (IsotropicControl(), ActivationPairControl())}
DEFAULT_CONTROLS = ("random", "pair-random")


def checked_controls(names: Sequence[str]) -> list[str]:
    """Control names, each once and in order; an unknown name (or none at all) is refused with the known ones."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in STEERING_CONTROLS]
    if unknown or not names:
        raise InterventionError(f"unknown steering control(s) {unknown or names}: choose from {sorted(STEERING_CONTROLS)}")
    return names


def control_key(name: str) -> str:
    """A control's name as a key of the held-out tests (``beats_random``, ``beats_pair_random``)."""
    return "beats_" + name.replace("-", "_")


def control_directions(names: Sequence[str], sources: np.ndarray, y: np.ndarray, random_unit: np.ndarray,
                       seed: int) -> dict[str, np.ndarray]:
    """Unit directions of each named control (an unknown name is refused with the known ones)."""
    return {n: STEERING_CONTROLS[n].directions(sources, y, random_unit, seed) for n in checked_controls(names)}


def steering_rows(n_items: int, layers: Sequence[int], alphas: Sequence[float], stance_vecs: np.ndarray,
                  controls: Mapping[str, np.ndarray] | np.ndarray, *,
                  hook_kind: str = "resid_post") -> tuple[list[Row], list[dict[str, Any]]]:
    """A clean row per item, then one row per (condition, layer, alpha), the stance and then each control;
    vectors ``[n_items, n_layers_listed, d]`` are the *unit-alpha* steering vectors (already scaled and signed). A bare
    array for ``controls`` is the ``random`` control."""
    controls = {"random": controls} if isinstance(controls, np.ndarray) else dict(controls)
    for name, vecs in {"stance": stance_vecs, **controls}.items():
        if vecs.shape != stance_vecs.shape or stance_vecs.shape[:2] != (n_items, len(layers)):
            raise InterventionError(f"steering vectors of {name!r} {vecs.shape} do not match {n_items} items x "
                                    f"{len(layers)} layers (stance {stance_vecs.shape})")
    rows, keys = [], []
    for i in range(n_items):
        rows.append(Row(i))
        keys.append({"item": i, "condition": "clean", "layer": -1, "alpha": 0.0})
        for cond, vecs in (("stance", stance_vecs), *controls.items()):
            for k, layer in enumerate(layers):
                for a in alphas:
                    v = torch.as_tensor(np.asarray(vecs[i, k] * a, dtype=np.float32))
                    rows.append(Row(i, [Intervention(f"blocks.{layer}.hook_{hook_kind}", -1, "add", v)]))
                    keys.append({"item": i, "condition": cond, "layer": int(layer), "alpha": float(a)})
    return rows, keys


def steer(lm, deed_prompts: Sequence[str], stance_vecs: np.ndarray, controls: Mapping[str, np.ndarray] | np.ndarray,
          toward: Sequence[int],
          away: Sequence[int], token_ids: Sequence[int], layers: Sequence[int], alphas: Sequence[float], *,
          hook_kind: str = "resid_post", batch_size: int = 64, progress: Callable[[int], None] | None = None):
    """Run every (condition, layer, alpha) on every deed prompt; frame: item, condition, layer, alpha,
    toward_word (deed log-odds toward the word answer), letter_mass."""
    import pandas as pd

    rows, keys = steering_rows(len(deed_prompts), layers, alphas, stance_vecs, controls, hook_kind=hook_kind)
    lp = run_interventions(lm, deed_prompts, rows, token_ids, batch_size=batch_size, progress=progress)
    frame = pd.DataFrame(keys)
    it = frame["item"].to_numpy()
    r = np.arange(len(rows))
    frame["toward_word"] = lp[r, np.asarray(toward)[it]] - lp[r, np.asarray(away)[it]]
    frame["letter_mass"] = np.exp(lp[:, :2]).sum(1)
    return frame


def summarise_steering(frame, items, *, population_consistency: float | None = None, mass: str = "letter_mass") -> Any:
    """Per condition x layer x alpha: CS on the items, flip and break rates, their mean ``cs_balanced`` (the CS a
    sample with as many consistent as inconsistent items would have), the answer-format mass (column ``mass``:
    letter mass, or the option tokens' mass in the cloze form), its ratio to clean (``mass_ratio``: of the means) and
    the median over items of each item's ratio to its own clean run (``mass_ratio_median``), and (given the full run's CS)
    the CS the whole benchmark would have: ``p_c (1 - break) + (1 - p_c) flip``."""
    import pandas as pd

    f = frame.merge(items[["consistent"]], left_on="item", right_index=True)
    clean = f[f.condition == "clean"]
    clean_mass = float(clean[mass].mean())
    clean_of_item = clean.groupby("item")[mass].mean()
    out = []
    for (cond, layer, alpha), g in f[f.condition != "clean"].groupby(["condition", "layer", "alpha"]):
        inc, con = g[g.consistent == 0], g[g.consistent == 1]
        rec = {"condition": cond, "layer": int(layer), "alpha": float(alpha), "cs": float((g["toward_word"] > 0).mean()),
               "flip_rate": float((inc["toward_word"] > 0).mean()) if len(inc) else np.nan,
               "break_rate": float((con["toward_word"] < 0).mean()) if len(con) else np.nan,
               mass: float(g[mass].mean())}
        rec["cs_balanced"] = (rec["flip_rate"] + 1 - rec["break_rate"]) / 2
        rec["mass_ratio"] = rec[mass] / clean_mass if clean_mass > 0 else np.nan
        per_item = g.groupby("item")[mass].mean() / clean_of_item.reindex(g["item"].unique())
        rec["mass_ratio_median"] = float(np.nanmedian(per_item.to_numpy())) if len(per_item) else np.nan
        if population_consistency is not None:
            p = population_consistency
            rec["cs_population"] = p * (1 - rec["break_rate"]) + (1 - p) * rec["flip_rate"]
        out.append(rec)
    table = pd.DataFrame(out).sort_values(["condition", "layer", "alpha"]).reset_index(drop=True)
    table.attrs["clean_cs"] = float((clean["toward_word"] > 0).mean())
    table.attrs[f"clean_{mass}"] = clean_mass
    return table


def best_setting(table, *, min_mass_ratio: float = MIN_MASS_RATIO, key: str = "cs") -> dict[str, Any] | None:
    """The stance setting with the highest ``key`` whose letter mass stays >= ``min_mass_ratio`` of clean,
    with every control at the same (layer, alpha), under its condition's name. Where ``key`` is undefined everywhere (balanced CS on a sample
    with no inconsistent or no consistent item) the plain CS ranks the cells, and ``selected_by`` says so."""
    ok = table[(table.condition == "stance") & (table.mass_ratio >= min_mass_ratio)]
    if not len(ok):
        return None
    if ok[key].isna().all():
        key = "cs"
    best = ok.loc[ok[key].idxmax()]
    rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.to_dict().items()}
    for name in [c for c in table.condition.unique() if c != "stance"]:
        ctrl = table[(table.condition == name) & (table.layer == best.layer) & (table.alpha == best.alpha)]
        rec[name] = {k: (v.item() if hasattr(v, "item") else v) for k, v in ctrl.iloc[0].to_dict().items()} \
            if len(ctrl) else None
    rec.setdefault("random", None)
    rec["min_mass_ratio"] = min_mass_ratio
    rec["selected_by"] = key
    return rec
