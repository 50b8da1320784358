"""The logit-lens stage: read the captured residuals of a scored run through the final norm and
unembedding, per layer, word vs deed; write tidy tables, a headline and figures under ``lens/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.model import load_for_run
from wdprobe.errors import InputError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.lens import LensTrajectory, canonical_logodds, lens_logits, order_averaged
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_entry
from wdprobe.stages.capture import load_activations, paired_forms


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


def run_lens(run_dir: str | Path, *, lm=None, progress: bool = True) -> dict[str, Any]:
    """The lens stage: captured ``resid_post`` at the final position -> ``lens/`` (CSV, JSON, HTML, PNG)."""
    import json

    run = RunDir(run_dir)
    acts = load_activations(run.path, hook="resid_post", position="last")
    manifest = run.read_manifest()
    if lm is None:
        lm = load_for_run(manifest)
    ids = scored_entry(RunDir(run_dir))["letters"]["ids"]
    traj = trajectory_from_activations(lm, acts, ids)
    out = run.path / "lens"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "trajectory.csv", traj.to_frame().to_csv(index=False))
    summary = traj.summary()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    model = manifest["stages"]["score"]["config"]["model"]
    figs = localise_plots.lens_figures(traj, model)
    plots.write_html(figs, out / "lens.html", heading=f"wdprobe logit lens: {model}, {len(traj.items)} two-option items")
    pngs = [plots.write_png(f, out / f"lens-{i}.png") for i, f in enumerate(figs)]
    head = {g: {k: summary[g].get(k) for k in ("n", "curve_divergence_layer", "item_divergence_layer_median")}
            for g in ("all", "consistent", "inconsistent")}
    all_orders = load_activations(run.path, hook="resid_post", position="last", orders="all")
    if (all_orders.meta["in_content"] == 1).any():
        content = content_trajectory(lm, all_orders, ids)
        atomic_write_text(out / "content-trajectory.csv", content.to_frame().to_csv(index=False))
        summary["content"] = content.summary()
        atomic_write_text(out / "content-summary.json", json.dumps(summary["content"], indent=2) + "\n")
        cfigs = localise_plots.lens_figures(content, f"{model}, content space (log-odds averaged over option orders)")
        plots.write_html(cfigs, out / "lens-content.html",
                         heading=f"wdprobe logit lens in content space: {model}, {len(content.items)} two-option items")
        pngs += [plots.write_png(f, out / f"lens-content-{i}.png") for i, f in enumerate(cfigs)]
        head["content"] = {g: {k: summary["content"][g].get(k) for k in ("n", "curve_divergence_layer",
                                                                          "item_divergence_layer_median")}
                           for g in ("all", "consistent", "inconsistent")}
    run.mark_done("lens", headline=head, png=[str(p) for p in pngs if p])
    return summary
