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

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError, MissingInputError
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import rgba
from wdprobe.reports.html import CSS, table_html
from wdprobe.reports.study import study_numbers
from wdprobe.runs.rundir import RunDir
from wdprobe.scoring.stats import wilson_interval
from wdprobe.stages.readouts import READOUTS

PALETTE = ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c", "#e67700", "#495057", "#c2255c", "#0b7285"]


@dataclass
class RunCurves:
    """Layer curves of one run, each a frame indexed by layer with ``value``, ``low`` and ``high`` (a 95% band),
    or None where the run lacks the stage. Probe curves are the content probes (decide, transfer) where the run
    has them, else the shown-order probes (band: 1.96 standard errors over folds)."""

    label: str
    n_layers: int | None
    lens_cs: pd.DataFrame | None
    probe_word: pd.DataFrame | None
    probe_deed: pd.DataFrame | None
    probe_transfer: pd.DataFrame | None
    ic: pd.DataFrame | None
    cross_flip: pd.DataFrame | None
    steer_cs: pd.DataFrame | None
    content_probes: bool = False


def _layer_count(p: Path) -> int | None:
    """Model depth as recorded by the lens or capture stage."""
    import json

    lens = p / "lens" / "summary.json"
    if lens.is_file():
        return len(json.loads(lens.read_text())["all"]["lens_cs"])
    layers = RunDir(p).stage_entry("capture").get("layers")
    return max(layers) + 1 if layers else None


def _share_band(share: pd.Series, n: Any) -> pd.DataFrame:
    """A share per layer with its Wilson 95% band."""
    lo, hi = wilson_interval(share.to_numpy(), np.broadcast_to(np.asarray(n, dtype=float), share.shape))
    return pd.DataFrame({"value": share.to_numpy(), "low": lo, "high": hi}, index=share.index)


def _probe_curves(p: Path) -> tuple[dict[str, pd.DataFrame | None], bool]:
    content = p / "probes" / "content-last.csv"
    if not content.is_file():  # a cloze-only run: its probes decode the cloze choice (same table layout)
        content = p / "probes" / "cloze-last.csv"
    if content.is_file():
        c = pd.read_csv(content)
        out = {}
        for key, analysis, metric in (("word", "decide_word", "accuracy"), ("deed", "decide_deed", "accuracy"),
                                      ("transfer", "transfer_word_deed", "accuracy"), ("ic", "ic", "agreement")):
            sub = c[(c.analysis == analysis) & (c.metric == metric)].set_index("layer")
            out[key] = sub[["value", "low", "high"]] if len(sub) else None
        return out, True
    summary = p / "probes" / "resid_post-last-summary.csv"
    if not summary.is_file():
        return {"word": None, "deed": None, "transfer": None, "ic": None}, False
    t = pd.read_csv(summary)
    kind = "logreg" if (t.probe == "logreg").any() else "diffmean"
    t = t[t.probe == kind]
    out = {}
    for key, metric in (("word", "word->word"), ("deed", "deed->deed"), ("transfer", "word->deed"), ("ic", "ic")):
        sub = t[t.metric == metric].set_index("layer")
        sem = sub["sem"].fillna(0.0) if "sem" in sub else 0.0
        out[key] = (pd.DataFrame({"value": sub["mean"], "low": sub["mean"] - 1.96 * sem, "high": sub["mean"] + 1.96 * sem})
                    if len(sub) else None)
    return out, False


def run_curves(run_dir: str | Path, label: str) -> RunCurves:
    """Read the layer curves a comparison overlays from a run directory, each with its 95% band."""
    import json

    p = Path(run_dir)
    lens = p / "lens" / "summary.json"
    if not lens.is_file():  # a cloze-only run: the lens read at the decision point
        lens = p / "lens" / "cloze-summary.json"
    lens_cs = None
    if lens.is_file():
        every = json.loads(lens.read_text())["all"]
        lens_cs = _share_band(pd.Series(every["lens_cs"]), every["n"])
    probes, content = _probe_curves(p)
    # the first read-out the run has (a cloze-only run: the cloze form, CS read at the decision step)
    cross_csv = next((p / ro.result_file("patch", "summary") for ro in READOUTS.values()
                      if (p / ro.result_file("patch", "summary")).is_file()), None)
    cross = None
    if cross_csv is not None:
        c = pd.read_csv(cross_csv)
        c = c[c.condition == "full"].set_index("layer")
        cross = _share_band(c["flip_rate"], c["n_inconsistent"])
    steer = None
    for ro in READOUTS.values():  # a cloze-only run steers in the cloze form only (CS read at the decision step)
        steer_csv = p / ro.result_file("steer", "summary")
        if steer is None and steer_csv.is_file():
            s = pd.read_csv(steer_csv)
            s = s[s.condition == "stance"]
            best = s.loc[s.groupby("layer")["cs"].idxmax()].set_index("layer")["cs"]  # best alpha per layer
            n = json.loads((p / ro.result_file("steer")).read_text())["n_items"]
            steer = _share_band(best, n)
    return RunCurves(label, _layer_count(p), lens_cs, probes["word"], probes["deed"], probes["transfer"], probes["ic"],
                     cross, steer, content)


def reading_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    """CS of every reading the run has (paper-compatible, content, per-order mean, cloze), each with its 95% interval
    as ``(low)``/``(high)`` rows, and its p-value against random pairing."""
    out: dict[str, Any] = {}
    for name, r in (metrics.get("readings") or {}).items():
        cs = r["cs"]["micro"]
        out[f"CS {name}"] = cs["value"]
        out[f"CS {name} (low)"], out[f"CS {name} (high)"] = cs["low"], cs["high"]
        if r.get("vs_chance"):
            out[f"CS {name}: p vs random pairing"] = r["vs_chance"]["p_value"]
    return out


def headline_row(run_dir: str | Path, numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The numbers a comparison table puts side by side, for one run."""
    n = numbers or study_numbers(run_dir)
    m = n["metrics"] or {}
    row: dict[str, Any] = {"model": n["model"], "items": m.get("n_items"), "CS micro": m.get("cs_micro"),
                           "CS macro": m.get("cs_macro"), "PCS micro": m.get("pcs_micro"),
                           "letter-copy baseline CS": m.get("cs_letter_copy_baseline"),
                           "letter mass word": m.get("word_letter_mass_mean"),
                           "letter mass deed": m.get("deed_letter_mass_mean")}
    row.update(reading_rows(m))
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
    for key, label in (("steer", "steer"), ("cloze_steer", "cloze steer")):
        st = n.get(key) or {}
        if st.get("validation"):
            row[f"{label}: held-out CS"] = st["validation"]["stance"]["cs"]
            row[f"{label}: held-out clean CS"] = st["validation"]["cs_clean"]
            row[f"{label}: held-out random CS"] = st["validation"]["random"]["cs"]
    return row


def _labels(run_dirs: Sequence[str | Path], labels: Sequence[str] | None, models: Sequence[str]) -> list[str]:
    if labels:
        if len(labels) != len(run_dirs):
            raise InputError(f"{len(labels)} labels for {len(run_dirs)} runs")
        return list(labels)
    return [f"{n} ({Path(r).name})" if list(models).count(n) > 1 else n for n, r in zip(models, run_dirs)]


Y_LABELS = ("CS through the lens", "balanced accuracy", "balanced accuracy", "share of items read alike",
            "share of inconsistent items", "CS")


def curves_figure(curves: Sequence[RunCurves]) -> go.Figure:
    """Overlaid layer curves with their 95% bands: lens CS, probe accuracies, transfer, IC, cross-form flip rate,
    steering CS."""
    depths = {c.n_layers for c in curves if c.n_layers}
    relative = len(depths) > 1
    content = any(c.content_probes for c in curves)

    def x_of(index, c: RunCurves):
        idx = pd.Index(index).astype(float)
        return idx / (c.n_layers - 1) if relative and c.n_layers else idx

    titles = ["Logit-lens CS (all items)",
              ("Content choice decodable: word (solid) / deed (dash)" if content else
               "Word probe (solid) / deed probe (dash), balanced acc."),
              "Word->deed transfer" + (" (content)" if content else " probe"), "Internal consistency IC(l)",
              "Full patch: inconsistent items flipped", "Steering: CS at the best alpha"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.16)
    for k, c in enumerate(curves):
        col = PALETTE[k % len(PALETTE)]
        shown = [False]

        def line(curve: pd.DataFrame | None, row, cl, dash="solid"):
            if curve is None or not len(curve):
                return
            x = list(x_of(curve.index, c))
            fig.add_scatter(x=x + x[::-1], y=list(curve["high"]) + list(curve["low"])[::-1], fill="toself",
                            fillcolor=rgba(col, 0.12), line=dict(width=0), hoverinfo="skip", showlegend=False,
                            legendgroup=c.label, row=row, col=cl)
            fig.add_scatter(x=x, y=list(curve["value"]), mode="lines+markers", marker=dict(size=4), name=c.label,
                            legendgroup=c.label, showlegend=not shown[0], line=dict(color=col, dash=dash),
                            row=row, col=cl)
            shown[0] = True

        line(c.lens_cs, 1, 1)
        line(c.probe_word, 1, 2)
        line(c.probe_deed, 1, 2, "dash")
        line(c.probe_transfer, 1, 3)
        line(c.ic, 2, 1)
        line(c.cross_flip, 2, 2)
        line(c.steer_cs, 2, 3)
    for r, cl in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 3)):
        fig.add_hline(y=0.5, line=dict(color="grey", dash="dot", width=1), row=r, col=cl)
    fig.update_xaxes(title_text="relative depth" if relative else "layer")
    for (r, cl), label in zip(((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)), Y_LABELS):
        fig.update_yaxes(title_text=label, row=r, col=cl)
    fig.update_layout(template="plotly_white", height=720, width=1180, legend=dict(orientation="h", y=-0.12),
                      title="Layer curves, overlaid, with 95% bands"
                            + (" (different depths: x is layer / (n_layers - 1))" if relative else ""))
    return fig


SCORE_SETTINGS = {"model": "model", "model_revision": "model revision (weights)", "dtype": "dtype",
                  "data_sha256": "items file (sha256)", "items": "item selection", "setting": "setting",
                  "seed": "option-shuffling seed", "orders": "option orders", "format": "answer format",
                  "chat_template": "chat template"}


def run_differences(run_dirs: Sequence[str | Path], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """What the runs share and what differs between them: the scoring settings that decide what the numbers mean
    (model and its weights, items file and selection, seed, orders, format) and the item ids actually scored, so a
    page never puts runs of other items or models side by side without saying so. Returns (differs, same) lines."""
    configs = [RunDir(r).stage_entry("score").get("config", {}) for r in run_dirs]
    differs, same = [], []
    for key, label in SCORE_SETTINGS.items():
        values = [c.get(key) for c in configs]
        shown = [str(v)[:16] if key in ("data_sha256", "model_revision") else str(v) for v in values]
        if len({repr(v) for v in values}) > 1:
            differs.append(f"{label}: " + "; ".join(f"{n} {v}" for n, v in zip(names, shown)))
        else:
            same.append(f"{label}: {shown[0]}")
    ids = [set(pd.read_csv(Path(r) / "items.csv", usecols=["id"], dtype=str)["id"]) if (Path(r) / "items.csv").is_file()
           else set() for r in run_dirs]
    common = set.intersection(*ids)
    if any(i != ids[0] for i in ids):
        differs.append("items scored: " + "; ".join(f"{n} {len(i)}" for n, i in zip(names, ids))
                       + f" — {len(common)} in common: numbers are not over the same items")
    else:
        same.append(f"items scored: the same {len(common)}")
    return differs, same


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
            if key.endswith("p vs random pairing"):
                return "< 0.001" if v < 0.001 else f"{v:.3f}"
            return f"{v:.0f}" if "layer" in key else f"{v:.3f}"
        return v

    def merged(k: str) -> list[Any]:
        """A value with its interval rows folded in: ``0.483 [0.456, 0.512]``."""
        if f"{k} (low)" not in table.index:
            return [k] + [cell(v, k) for v in table.loc[k]]
        return [f"{k} [95%]"] + [("—" if cell(v, k) == "—" else f"{v:.3f} [{lo:.3f}, {hi:.3f}]") for v, lo, hi in
                                zip(table.loc[k], table.loc[f"{k} (low)"], table.loc[f"{k} (high)"])]

    keys = [k for k in table.index if not k.endswith((" (low)", " (high)"))]
    body = table_html(["metric"] + names, [merged(k) for k in keys])
    sources = "".join(f"<li>{html.escape(n)}: <code>{html.escape(str(Path(r).resolve()))}</code></li>"
                      for n, r in zip(names, run_dirs))
    differs, same = run_differences(run_dirs, names)
    what = ("<h2>What differs between the runs</h2><ul>"
            + "".join(f"<li><b>{html.escape(d)}</b></li>" for d in differs)
            + ("" if differs else "<li>nothing in the scoring settings or the items (the runs are repeats)</li>")
            + f"</ul><p>The same in every run: {html.escape('; '.join(same)) or 'nothing'}.</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe compare</title><style>{CSS}</style>"
            f"</head><body><h1>wdprobe: {' vs '.join(html.escape(n) for n in names)}</h1><ul>{sources}</ul>"
            f"{what}<h2>Numbers</h2>{body}<h2>Layer curves</h2>" + figure_html([fig], out) + "</body></html>")
    atomic_write_text(out, page)
    return out
