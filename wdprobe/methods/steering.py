"""Steering: add alpha x the word-stance direction to the deed run, and see whether deeds follow words.

At layer l the deed run's final-position residual gets ``alpha * scale_l * s_i * u_l``: ``u_l`` the unit
word-stance direction (difference of means of word residuals by the word answer, cross-fitted so an
item is never steered by a direction fitted on it), ``s_i = +1/-1`` pointing toward item i's word
answer, ``scale_l`` the length of that mean difference (alpha = 1 moves a residual by the whole gap
between the two word-answer groups, the usual contrastive-steering unit). The control adds a random unit
direction with the same norm and sign. Outcome: CS (the deed
now picks the word answer) and letter mass (the model still answers with a letter at all).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from wdprobe.errors import InterventionError
from wdprobe.methods.interventions import Intervention, Row, run_interventions

MIN_MASS_RATIO = 0.5  # a setting keeps the answer format while its answer-format mass stays >= this share of clean


def steering_rows(n_items: int, layers: Sequence[int], alphas: Sequence[float], stance_vecs: np.ndarray,
                  random_vecs: np.ndarray, *, hook_kind: str = "resid_post") -> tuple[list[Row], list[dict[str, Any]]]:
    """A clean row per item, then one row per (condition, layer, alpha); vectors ``[n_items, n_layers_listed, d]``
    are the *unit-alpha* steering vectors (already scaled and signed)."""
    if stance_vecs.shape != random_vecs.shape or stance_vecs.shape[:2] != (n_items, len(layers)):
        raise InterventionError(f"steering vectors {stance_vecs.shape} / {random_vecs.shape} do not match "
                                f"{n_items} items x {len(layers)} layers")
    rows, keys = [], []
    for i in range(n_items):
        rows.append(Row(i))
        keys.append({"item": i, "condition": "clean", "layer": -1, "alpha": 0.0})
        for cond, vecs in (("stance", stance_vecs), ("random", random_vecs)):
            for k, layer in enumerate(layers):
                for a in alphas:
                    v = torch.as_tensor(np.asarray(vecs[i, k] * a, dtype=np.float32))
                    rows.append(Row(i, [Intervention(f"blocks.{layer}.hook_{hook_kind}", -1, "add", v)]))
                    keys.append({"item": i, "condition": cond, "layer": int(layer), "alpha": float(a)})
    return rows, keys


def steer(lm, deed_prompts: Sequence[str], stance_vecs: np.ndarray, random_vecs: np.ndarray, toward: Sequence[int],
          away: Sequence[int], token_ids: Sequence[int], layers: Sequence[int], alphas: Sequence[float], *,
          hook_kind: str = "resid_post", batch_size: int = 64, progress: Callable[[int], None] | None = None):
    """Run every (condition, layer, alpha) on every deed prompt; frame: item, condition, layer, alpha,
    toward_word (deed log-odds toward the word answer), letter_mass."""
    import pandas as pd

    rows, keys = steering_rows(len(deed_prompts), layers, alphas, stance_vecs, random_vecs, hook_kind=hook_kind)
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
    letter mass, or the option tokens' mass in the cloze form) and its ratio to clean, and (given the full run's CS)
    the CS the whole benchmark would have: ``p_c (1 - break) + (1 - p_c) flip``."""
    import pandas as pd

    f = frame.merge(items[["consistent"]], left_on="item", right_index=True)
    clean = f[f.condition == "clean"]
    clean_mass = float(clean[mass].mean())
    out = []
    for (cond, layer, alpha), g in f[f.condition != "clean"].groupby(["condition", "layer", "alpha"]):
        inc, con = g[g.consistent == 0], g[g.consistent == 1]
        rec = {"condition": cond, "layer": int(layer), "alpha": float(alpha), "cs": float((g["toward_word"] > 0).mean()),
               "flip_rate": float((inc["toward_word"] > 0).mean()) if len(inc) else np.nan,
               "break_rate": float((con["toward_word"] < 0).mean()) if len(con) else np.nan,
               mass: float(g[mass].mean())}
        rec["cs_balanced"] = (rec["flip_rate"] + 1 - rec["break_rate"]) / 2
        rec["mass_ratio"] = rec[mass] / clean_mass if clean_mass > 0 else np.nan
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
    with the random control at the same (layer, alpha). Where ``key`` is undefined everywhere (balanced CS on a sample
    with no inconsistent or no consistent item) the plain CS ranks the cells, and ``selected_by`` says so."""
    ok = table[(table.condition == "stance") & (table.mass_ratio >= min_mass_ratio)]
    if not len(ok):
        return None
    if ok[key].isna().all():
        key = "cs"
    best = ok.loc[ok[key].idxmax()]
    ctrl = table[(table.condition == "random") & (table.layer == best.layer) & (table.alpha == best.alpha)]
    rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.to_dict().items()}
    rec["random"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in ctrl.iloc[0].to_dict().items()} if len(ctrl) else None
    rec["min_mass_ratio"] = min_mass_ratio
    rec["selected_by"] = key
    return rec
