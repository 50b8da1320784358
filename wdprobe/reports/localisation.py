"""The localisation part of the study report: lens, patching and steering figures and tables, copied
from a run directory into a report folder, with a markdown summary.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wdprobe.errors import StageNotFinishedError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.lens import trajectory_from_frame
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_model_name
from wdprobe.stages.patching import SEGMENT_ORDER
from wdprobe.stages.readouts import READOUTS

# ---- one page for a reader -------------------------------------------------------------------------

def localisation_figures(run_dir: str | Path) -> list[tuple[str, str, Any]]:
    """Every lens / patching / steering figure of a run, redrawn from its saved tables, as
    ``(section, name, figure)``; stages not run yet are left out."""
    import pandas as pd

    run = RunDir(run_dir)
    model = scored_model_name(run)
    figs: list[tuple[str, str, Any]] = []
    lens_csv = run.path / "lens" / "trajectory.csv"
    if lens_csv.is_file():
        traj = trajectory_from_frame(pd.read_csv(lens_csv))
        figs += [("lens", n, f) for n, f in zip(["lens-curves", "lens-divergence"], localise_plots.lens_figures(traj, model))]
    for name, what in (("content", "content space (log-odds averaged over option orders)"),
                       ("cloze", "cloze form (log-odds where the two options part)")):
        csv = run.path / "lens" / f"{name}-trajectory.csv"
        if csv.is_file():
            traj = trajectory_from_frame(pd.read_csv(csv))
            figs += [("lens", n, f) for n, f in zip([f"lens-{name}-curves", f"lens-{name}-divergence"],
                                                     localise_plots.lens_figures(traj, f"{model}, {what}"))]
    pdir = run.path / "patching"
    for ro in READOUTS.values():  # each read-out redraws its own cross-form patching figures from its tables
        if (run.path / ro.result_file("patch", "summary")).is_file():
            summary = pd.read_csv(run.path / ro.result_file("patch", "summary"))
            head = json.loads((run.path / ro.result_file("patch")).read_text())
            figs += [("patching", n, f) for n, f in ro.redraw_patch(run.path, summary, head, model)]
    for form in ("deed", "word"):
        if (pdir / f"positional-{form}.csv").is_file():
            frame = pd.read_csv(pdir / f"positional-{form}.csv")
            seg = pd.read_csv(pdir / f"positional-{form}-segments.csv")
            layers = sorted(frame["layer"].unique())
            n_ex = frame[frame.method == "exact"]["id"].nunique()
            pf = localise_plots.positional_figures(frame, seg, layers, SEGMENT_ORDER,
                                                   f"{model}, {form} prompts, options swapped (A<->B)", n_show=min(n_ex, 2))
            figs += [("positional", f"positional-{form}-{i}", f) for i, f in enumerate(pf)]
    for ro in READOUTS.values():
        if (run.path / ro.result_file("steer", "summary")).is_file():
            table = pd.read_csv(run.path / ro.result_file("steer", "summary"))
            head = json.loads((run.path / ro.result_file("steer")).read_text())
            figs += [("steering", n, f) for n, f in ro.redraw_steer(table, head, model)]
    return figs


LOCALISATION_TABLES = ["lens/summary.json", "lens/cloze-summary.json",
                       *(ro.result_file("patch", k) for ro in READOUTS.values() for k in ("summary", "headline")),
                       "patching/cross_form_letter_split_summary.csv",
                       "patching/positional-deed-segments.csv", "patching/positional-deed-headline.json",
                       "patching/positional-word-segments.csv", "patching/positional-word-headline.json",
                       *(ro.result_file("steer", k) for ro in READOUTS.values() for k in ("summary", "headline"))]


def copy_localisation_tables(run_dir: str | Path, dest: str | Path) -> None:
    """The small summary tables behind the figures, beside a report (the big per-row tables stay in the run)."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in LOCALISATION_TABLES:
        src = Path(run_dir) / rel
        if src.is_file():
            name = "lens-summary.json" if rel == "lens/summary.json" else src.name
            shutil.copy(src, dest / name)


def write_localisation_report(run_dir: str | Path, out_dir: str | Path, *, png: bool = True) -> Path:
    """Redraw every lens / patching / steering figure of a run from its saved tables into one offline HTML
    page (``localisation.html``, plotly inlined once), with PNGs and the summary tables beside it."""

    out = Path(out_dir)
    figs = localisation_figures(run_dir)
    if not figs:
        raise StageNotFinishedError(f"{run_dir} has no lens, patching or steering results yet")
    copy_localisation_tables(run_dir, out / "localisation")
    model = scored_model_name(RunDir(run_dir))
    page = plots.write_html([f for _, _, f in figs], out / "localisation.html",
                            heading=f"wdprobe: where {model}'s deeds leave its words — lens, patching, steering")
    if png:
        for _, n, f in figs:
            plots.write_png(f, out / "localisation" / f"{n}.png")
    return page
