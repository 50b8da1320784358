"""Side-by-side comparison of runs (base vs instruct, two seeds, two datasets) on one HTML page.

Each run contributes its headline numbers to one table and its layer curves (lens CS, probe
accuracies, IC, cross-form flip rate, steering CS) to overlaid plots. Runs of models with different
depths are drawn against relative depth (layer / (n_layers - 1)) so curves line up.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError, MissingInputError
from wdprobe.reports.html import CSS, table_html
from wdprobe.reports.study import study_numbers
from wdprobe.runs.rundir import RunDir

PALETTE = ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c", "#e67700", "#495057", "#c2255c", "#0b7285"]


@dataclass
class RunCurves:
    """Layer curves of one run, each a Series indexed by layer (missing stages: None)."""

    label: str
    n_layers: int | None
    lens_cs: pd.Series | None
    probes: pd.DataFrame | None
    cross_flip: pd.Series | None
    steer_cs: pd.Series | None


def _layer_count(p: Path) -> int | None:
    """Model depth as recorded by the lens or capture stage."""
    import json

    lens = p / "lens" / "summary.json"
    if lens.is_file():
        return len(json.loads(lens.read_text())["all"]["lens_cs"])
    layers = RunDir(p).stage_entry("capture").get("layers")
    return max(layers) + 1 if layers else None


def run_curves(run_dir: str | Path, label: str) -> RunCurves:
    """Read the layer curves a comparison overlays from a run directory."""
    import json

    p = Path(run_dir)
    lens = p / "lens" / "summary.json"
    lens_cs = pd.Series(json.loads(lens.read_text())["all"]["lens_cs"]) if lens.is_file() else None
    probes_csv = p / "probes" / "resid_post-last-summary.csv"
    probes = pd.read_csv(probes_csv) if probes_csv.is_file() else None
    cross_csv = p / "patching" / "cross_form_summary.csv"
    cross = None
    if cross_csv.is_file():
        c = pd.read_csv(cross_csv)
        cross = c[c.condition == "full"].set_index("layer")["flip_rate"]
    steer_csv = p / "steering" / "steering_summary.csv"
    steer = None
    if steer_csv.is_file():
        s = pd.read_csv(steer_csv)
        s = s[s.condition == "stance"]
        steer = s.groupby("layer")["cs"].max()  # best alpha per layer
    return RunCurves(label, _layer_count(p), lens_cs, probes, cross, steer)


def headline_row(run_dir: str | Path, numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The numbers a comparison table puts side by side, for one run."""
    n = numbers or study_numbers(run_dir)
    m = n["metrics"] or {}
    row: dict[str, Any] = {"model": n["model"], "items": m.get("n_items"), "CS micro": m.get("cs_micro"),
                           "CS macro": m.get("cs_macro"), "PCS micro": m.get("pcs_micro"),
                           "letter-copy baseline CS": m.get("cs_letter_copy_baseline"),
                           "letter mass word": m.get("word_letter_mass_mean"),
                           "letter mass deed": m.get("deed_letter_mass_mean")}
    for d, v in (m.get("per_domain") or {}).items():
        row[f"CS {d}"] = v["cs"]
    head = n["probes"].get("resid_post-last") or {}
    kind = "logreg" if "logreg" in head else ("diffmean" if "diffmean" in head else None)
    if kind:
        row.update({f"probe word ({kind})": head[kind]["word->word"], f"probe deed ({kind})": head[kind]["deed->deed_best"],
                    f"probe word->deed ({kind})": head[kind]["word->deed_best"]})
    if n["lens"] and n["lens"]["inconsistent"]["n"]:
        row["deed leaves word at layer (median)"] = n["lens"]["inconsistent"].get("item_divergence_layer_median")
    if n["cross"] and "full" in n["cross"]:
        row["patch: best flip rate"] = n["cross"]["full"]["flip_rate"]
        row["patch: break rate there"] = n["cross"]["full"]["break_rate"]
    st = n["steer"] or {}
    if st.get("validation"):
        row["steer: held-out CS"] = st["validation"]["stance"]["cs"]
        row["steer: held-out clean CS"] = st["validation"]["cs_clean"]
        row["steer: held-out random CS"] = st["validation"]["random"]["cs"]
    return row


def _labels(run_dirs: Sequence[str | Path], labels: Sequence[str] | None, models: Sequence[str]) -> list[str]:
    if labels:
        if len(labels) != len(run_dirs):
            raise InputError(f"{len(labels)} labels for {len(run_dirs)} runs")
        return list(labels)
    return [f"{n} ({Path(r).name})" if list(models).count(n) > 1 else n for n, r in zip(models, run_dirs)]


def curves_figure(curves: Sequence[RunCurves]) -> go.Figure:
    """Overlaid layer curves: lens CS, probe accuracies, IC, cross-form flip rate, steering CS."""
    depths = {c.n_layers for c in curves if c.n_layers}
    relative = len(depths) > 1

    def x_of(index, c: RunCurves):
        idx = pd.Index(index).astype(float)
        return idx / (c.n_layers - 1) if relative and c.n_layers else idx

    titles = ["Logit-lens CS (all items)", "Word probe (solid) / deed probe (dash), balanced acc.",
              "Word->deed transfer probe", "Internal consistency IC(l)", "Full patch: inconsistent items flipped",
              "Steering: CS at the best alpha"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.16)
    for k, c in enumerate(curves):
        col = PALETTE[k % len(PALETTE)]

        def line(x, y, row, cl, dash="solid", show=False):
            fig.add_scatter(x=list(x), y=list(y), mode="lines+markers", marker=dict(size=4), name=c.label,
                            legendgroup=c.label, showlegend=show, line=dict(color=col, dash=dash), row=row, col=cl)

        first = True
        if c.lens_cs is not None:
            line(x_of(c.lens_cs.index, c), c.lens_cs.values, 1, 1, show=first)
            first = False
        if c.probes is not None:
            kind = "logreg" if (c.probes.probe == "logreg").any() else "diffmean"
            p = c.probes[c.probes.probe == kind]

            def metric(name):
                return p[p.metric == name].set_index("layer")["mean"]

            for name, r, cl, dash in (("word->word", 1, 2, "solid"), ("deed->deed", 1, 2, "dash"),
                                      ("word->deed", 1, 3, "solid"), ("ic", 2, 1, "solid")):
                s = metric(name)
                if len(s):
                    line(x_of(s.index, c), s.values, r, cl, dash, show=first)
                    first = False
        if c.cross_flip is not None:
            line(x_of(c.cross_flip.index, c), c.cross_flip.values, 2, 2, show=first)
            first = False
        if c.steer_cs is not None:
            line(x_of(c.steer_cs.index, c), c.steer_cs.values, 2, 3, show=first)
    for r, cl in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 3)):
        fig.add_hline(y=0.5, line=dict(color="grey", dash="dot", width=1), row=r, col=cl)
    fig.update_xaxes(title_text="relative depth" if relative else "layer")
    fig.update_layout(template="plotly_white", height=720, width=1180, legend=dict(orientation="h", y=-0.12),
                      title="Layer curves, overlaid" + (" (different depths: x is layer / (n_layers - 1))" if relative else ""))
    return fig


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Write ``out`` (an HTML page) and ``out`` with ``.csv`` (the table) comparing the runs."""
    if len(run_dirs) < 2:
        raise InputError("compare needs at least two run directories")
    for r in run_dirs:
        if not (Path(r) / "manifest.json").is_file() or not (Path(r) / "metrics.json").is_file():
            raise MissingInputError(f"{r} is not a scored run directory (no manifest.json / metrics.json)")
    numbers = [study_numbers(r) for r in run_dirs]
    names = _labels(run_dirs, labels, [n["model"] for n in numbers])
    rows = [headline_row(r, n) for r, n in zip(run_dirs, numbers)]
    table = pd.DataFrame(rows, index=names).T
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), table.to_csv(index_label="metric"))
    fig = curves_figure([run_curves(r, n) for r, n in zip(run_dirs, names)])

    def cell(v, key: str):
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        if isinstance(v, float):
            return f"{v:.0f}" if "layer" in key else f"{v:.3f}"
        return v

    body = table_html(["metric"] + names, [[k] + [cell(v, k) for v in table.loc[k]] for k in table.index])
    sources = "".join(f"<li>{html.escape(n)}: <code>{html.escape(str(Path(r).resolve()))}</code></li>"
                      for n, r in zip(names, run_dirs))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe compare</title><style>{CSS}</style>"
            f"</head><body><h1>wdprobe: {' vs '.join(html.escape(n) for n in names)}</h1><ul>{sources}</ul>"
            f"<h2>Numbers</h2>{body}<h2>Layer curves</h2><div class='fig'>"
            + fig.to_html(full_html=False, include_plotlyjs=True) + "</div></body></html>")
    atomic_write_text(out, page)
    return out
