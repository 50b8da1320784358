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
from wdprobe.methods.lens import LensTrajectory, canonical_logodds, lens_logits
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
    run.mark_done("lens", headline=head, png=[str(p) for p in pngs if p])
    return summary
