"""Logit-lens readings of a scored run in each answer format: trajectories from captured residuals (by letter in the
shown order, in content space over every order) or from the cloze prompts at their decision point, and the files one
reading writes. The read-outs (:mod:`wdprobe.stages.readouts`) call these; the lens stage (:mod:`wdprobe.stages.lens`)
runs every read-out of the run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.option_scoring import decision_point, last_residuals
from wdprobe.errors import InputError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.lens import (
    LensTrajectory,
    canonical_logodds,
    cross_fitted,
    lens_logits,
    lens_logits_per_row,
    order_averaged,
)
from wdprobe.stages.capture import paired_forms


def trajectory_from_activations(lm, acts, token_ids: Sequence[int]) -> LensTrajectory:
    """Lens readings of captured final-position residuals (two-option items, word and deed paired)."""

    if acts.position != "last":
        raise InputError(f"the logit lens reads the final position, not {acts.position!r}")
    word, deed, items = paired_forms(acts)
    meta = acts.meta
    two = (meta["n_options"] == 2).to_numpy()
    orders = {f: meta[two & (meta["form"] == f).to_numpy()]["order"].astype(str).tolist() for f in ("word", "deed")}
    lw = canonical_logodds(lens_logits(lm, word, token_ids[:2]), orders["word"])
    ld = canonical_logodds(lens_logits(lm, deed, token_ids[:2]), orders["deed"])
    return LensTrajectory(lw, ld, items, tuple(acts.layers))


def content_trajectory(lm, acts, token_ids: Sequence[int]) -> LensTrajectory:
    """Lens readings in content space: every order's canonical log-odds per layer, averaged over the orders of each
    (item, form), so the letter preference cancels; items carry their content choices and content consistency."""
    import pandas as pd

    meta = acts.meta
    keep = ((meta["n_options"] == 2) & (meta["in_content"] == 1)).to_numpy()
    if not keep.any():
        raise InputError("a content-space lens needs the activations of every order: score with --orders cyclic")
    sub = meta[keep].reset_index(drop=True)
    logodds = canonical_logodds(lens_logits(lm, acts.array[keep], token_ids[:2]), sub["order"].astype(str).tolist())
    keys, mean = order_averaged(logodds, list(zip(sub["id"], sub["form"])))
    row = {k: i for i, k in enumerate(keys)}
    first = sub.drop_duplicates(["id", "form"]).set_index(["id", "form"])
    ids = [i for i in dict.fromkeys(sub["id"]) if (i, "word") in row and (i, "deed") in row]
    items = pd.DataFrame({"id": ids, "domain": [first.loc[(i, "word"), "domain"] for i in ids],
                          "y_word": [int(first.loc[(i, "word"), "content_choice"]) for i in ids],
                          "y_deed": [int(first.loc[(i, "deed"), "content_choice"]) for i in ids],
                          "consistent": [int(first.loc[(i, "word"), "content_consistent"]) for i in ids]})
    return LensTrajectory(mean[[row[(i, "word")] for i in ids]], mean[[row[(i, "deed")] for i in ids]], items,
                          tuple(acts.layers))


TUNED_MIN_ITEMS = 10  # fewer items than this cannot cross-fit a trained lens in 5 folds with anything to fit on


def cloze_trajectories(lm, prompts: Sequence[Any], layers: Sequence[int] | None = None, batch_size: int = 16,
                       lenses: Sequence[str] = ("logit", "tuned")) -> tuple[dict[str, LensTrajectory], list[str]]:
    """Lens readings of a run's cloze prompts (:func:`wdprobe.stages.score.scored_cloze_prompts`): per layer, the
    log-odds of option 1 over option 0 at their decision point — the prompt plus the tokens both options share
    ("You decide to ..."), where the first distinguishing token is predicted (:func:`decision_point`). The last
    layer's reading is that step of the cloze choice (which scores whole continuations). Items whose options never
    part at one position are returned by id and left out. One residual pass serves every lens kind in ``lenses``
    (:data:`~wdprobe.methods.lens.LENS_KINDS`); a trained kind is cross-fitted over items (5 folds: no item read
    through translators fitted on it) to the last block's residual, and is skipped below :data:`TUNED_MIN_ITEMS`."""
    import pandas as pd

    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    two = [p for p in prompts if p.view.item.n_options == 2]
    points = {(p.view.item.id, p.form): decision_point(lm.tokenizer, p.text, p.view.item.options(p.form)) for p in two}
    unreadable = sorted({iid for (iid, _), d in points.items() if d is None})
    kept = [p for p in two if p.view.item.id not in set(unreadable)]
    seqs = [points[(p.view.item.id, p.form)].sequence for p in kept]
    tokens = np.array([points[(p.view.item.id, p.form)].tokens for p in kept]).reshape(-1, 2)
    resid = last_residuals(lm, seqs, layers, batch_size=batch_size) if kept else np.zeros((0, len(layers), lm.d_model))
    row = {(p.view.item.id, p.form): k for k, p in enumerate(kept)}
    by_id = {p.view.item.id: p for p in kept if p.form == "word"}
    ids = [i for i in by_id if (i, "deed") in row]
    deed_choice = {p.view.item.id: p.choice for p in kept if p.form == "deed"}
    items = pd.DataFrame({"id": ids, "domain": [by_id[i].view.item.domain for i in ids],
                          "y_word": [by_id[i].choice for i in ids], "y_deed": [deed_choice[i] for i in ids],
                          "consistent": [int(by_id[i].choice == deed_choice[i]) for i in ids]})
    out: dict[str, LensTrajectory] = {}
    for kind in lenses:
        if kind == "logit":
            read = resid
        else:
            if layers[-1] != lm.n_layers - 1:
                raise InputError(f"a {kind} lens is fitted to the last block's residual: read layers up to "
                                 f"{lm.n_layers - 1}, not {layers[-1]}")
            if len(ids) < TUNED_MIN_ITEMS:
                continue
            read = cross_fitted(kind, resid, resid[:, -1], [p.view.item.id for p in kept])
        logits = lens_logits_per_row(lm, read, tokens) if kept else np.zeros((0, len(layers), 2))
        logodds = logits[..., 1] - logits[..., 0]
        out[kind] = LensTrajectory(logodds[[row[(i, "word")] for i in ids]].reshape(len(ids), len(layers)),
                                   logodds[[row[(i, "deed")] for i in ids]].reshape(len(ids), len(layers)), items,
                                   tuple(layers))
    return out, unreadable


def write_trajectory(out: Path, name: str, traj: LensTrajectory, title: str, heading: str, *, lens: str = "logit",
                     **extra: Any) -> tuple[dict[str, Any], dict[str, Any], list]:
    """One named lens reading (``content``, ``cloze``) as ``{name}-trajectory.csv``, ``{name}-summary.json`` (with
    ``extra``), ``lens-{name}.html`` and its PNGs; returns its summary, its headline part and the PNG paths."""
    atomic_write_text(out / f"{name}-trajectory.csv", traj.to_frame().to_csv(index=False))
    summary = dict(traj.summary(), **extra)
    atomic_write_text(out / f"{name}-summary.json", json.dumps(summary, indent=2) + "\n")
    figs = localise_plots.lens_figures(traj, title, lens)
    plots.write_html(figs, out / f"lens-{name}.html", heading=heading)
    pngs = [plots.write_png(f, out / f"lens-{name}-{i}.png") for i, f in enumerate(figs)]
    head = {g: {k: summary[g].get(k) for k in ("n", "curve_divergence_layer", "item_divergence_layer_median")}
            for g in ("all", "consistent", "inconsistent")}
    return summary, head, pngs
