"""Plotly figures of probe results: accuracy by layer with controls, IC vs CS, direction cosine, domains.

Every figure is drawn from a :class:`~wdprobe.methods.probes.ProbeResults` summary (one tidy table), so the
same numbers back the HTML, the CSV and any figure a user draws themselves.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.core.cache import atomic_write_text
from wdprobe.figures.page import figure_html
from wdprobe.methods.probes import PROBE_KINDS

STANCE_METRICS = {  # metric -> (label, colour, dash)
    "word->word": ("word → word", "#1f77b4", "solid"),
    "deed->deed": ("deed → deed", "#d62728", "solid"),
    "word->deed": ("word → deed (transfer)", "#9467bd", "dash"),
    "deed->word": ("deed → word (transfer)", "#ff7f0e", "dash"),
    "letter": ("control: chosen letter", "#7f7f7f", "dot"),
    "random": ("control: random labels", "#bcbd22", "dot"),
}
class ProbeTitles(Mapping):
    """Figure titles of the registered probe kinds, read live (a kind registered later has its title too)."""

    def __getitem__(self, name: str) -> str:
        return PROBE_KINDS[name].title

    def __iter__(self) -> Iterator[str]:
        return iter(PROBE_KINDS)

    def __len__(self) -> int:
        return len(PROBE_KINDS)


PROBE_TITLES = ProbeTitles()


def rgba(hex_colour: str, alpha: float) -> str:
    """An ``rgba(...)`` colour string from a hex colour and an opacity (for error bands)."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i: i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def reference_line(fig: go.Figure, label: str, *, y: float | None = None, x: float | None = None,
                   line: dict | None = None, row: int | str | None = None, col: int | str | None = None,
                   legend: bool = True) -> None:
    """A horizontal (``y``) or vertical (``x``) reference line named in the legend, not by a text annotation
    that would sit on the data; ``legend=False`` for its repeats in other panels."""
    line = line or dict(color="black", width=1, dash="dot")
    where = {} if row is None else {"row": row, "col": col}
    (fig.add_hline(y=y, line=line, **where) if y is not None else fig.add_vline(x=x, line=line, **where))
    if legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line, name=label, hoverinfo="skip"),
                      **({} if row is None else {"row": 1, "col": 1}))


def add_band(fig, sub, x, colour, row, col, name, dash="solid", legend=True):
    """Add a mean line with a +-1 SEM band to one panel of a figure."""
    mean, sem = sub["mean"].to_numpy(), sub["sem"].to_numpy()
    fig.add_trace(go.Scatter(x=list(x) + list(x)[::-1], y=list(mean + sem) + list(mean - sem)[::-1], fill="toself",
                             fillcolor=rgba(colour, 0.15), line=dict(width=0), hoverinfo="skip", showlegend=False,
                             legendgroup=name), row=row, col=col)
    fig.add_trace(go.Scatter(x=list(x), y=mean, mode="lines+markers", name=name, legendgroup=name, showlegend=legend,
                             line=dict(color=colour, dash=dash, width=2), marker=dict(size=5),
                             hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"), row=row, col=col)


def _draw_panel(fig, summary, probe: str, spec: dict, col: int) -> None:
    """One panel: a band per metric in ``spec`` (metric -> (label, colour, dash)), chance line, x title."""
    for metric, (label, colour, dash) in spec.items():
        sub = summary[(summary.probe == probe) & (summary.metric == metric)].sort_values("layer")
        if len(sub):
            add_band(fig, sub, sub["layer"], colour, 1, col, label, dash, legend=(col == 1))
    fig.add_hline(y=0.5, line=dict(color="black", width=1, dash="dot"), row=1, col=col)
    fig.update_xaxes(title_text="layer", row=1, col=col)


def accuracy_figure(summary, cs: float | None, title: str) -> go.Figure:
    """Probe accuracy by layer, one panel per probe kind: within-form, transfer, controls, CS line."""
    kinds = [k for k in PROBE_TITLES if k in set(summary["probe"])]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[PROBE_TITLES[k] for k in kinds], shared_yaxes=True)
    for c, kind in enumerate(kinds, start=1):
        _draw_panel(fig, summary, kind, STANCE_METRICS, c)
        if cs is not None:
            reference_line(fig, f"behavioural CS {cs:.2f}", y=cs, line=dict(color="#2ca02c", width=1.5, dash="longdash"),
                           row=1, col=c, legend=c == 1)
    fig.update_yaxes(title_text="balanced accuracy, held out (± s.e.)", range=[0.3, 1.02], row=1, col=1)
    fig.update_layout(title=dict(text=title, x=0.08, xanchor="left"), template="plotly_white", height=500,
                      width=560 * len(kinds) + 160, margin=dict(l=110, t=110), legend=dict(orientation="h", y=-0.2))
    return fig


def ic_figure(summary, title: str) -> go.Figure:
    """IC(l) against behavioural CS, and how a word-trained probe reads inconsistent items' deed prompts."""
    kinds = [k for k in PROBE_TITLES if k in set(summary["probe"])]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[PROBE_TITLES[k] for k in kinds], shared_yaxes=True)
    spec = {"ic": ("IC(l): shared probe agrees across forms", "#1f77b4", "solid"),
            "ic_chance": ("IC expected from prediction rates alone", "#7f7f7f", "dot"),
            "ic_random": ("control: IC of a random-label probe (shared content)", "#bcbd22", "dot"),
            "cs": ("behavioural CS (same test items)", "#2ca02c", "longdash"),
            "reads_word_stance": ("inconsistent items: deed read as word stance", "#d62728", "dash")}
    for c, kind in enumerate(kinds, start=1):
        _draw_panel(fig, summary, kind, spec, c)
    fig.update_yaxes(title_text="share of held-out items", range=[0, 1.02], row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=460, width=560 * len(kinds) + 120,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def cosine_figure(summary, title: str) -> go.Figure:
    """Cosine between the word-stance and deed-stance directions, per layer and probe kind."""
    fig = go.Figure()
    colours = {name: kind.colour for name, kind in PROBE_KINDS.items()}
    for kind in [k for k in PROBE_TITLES if k in set(summary["probe"])]:
        sub = summary[(summary.probe == kind) & (summary.metric == "cosine")].sort_values("layer")
        fig.add_trace(go.Scatter(x=sub["layer"], y=sub["mean"], mode="lines+markers", name=PROBE_TITLES[kind],
                                 line=dict(color=colours[kind])))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(title=title, template="plotly_white", height=420, width=760, xaxis_title="layer",
                      yaxis_title="cos(word direction, deed direction)", yaxis_range=[-1, 1],
                      legend=dict(orientation="h", y=-0.25))
    return fig


def domain_figure(summaries: dict, title: str, probe: str = "diffmean") -> go.Figure:
    """Within-form and transfer accuracy per domain (one panel each), one probe kind."""
    names = list(summaries)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{d} (CS {cs:.2f})" for d, (_, cs) in summaries.items()],
                        shared_yaxes=True)
    spec = {m: STANCE_METRICS[m] for m in ("word->word", "deed->deed", "word->deed", "letter")}
    for c, d in enumerate(names, start=1):
        _draw_panel(fig, summaries[d][0], probe, spec, c)
    fig.update_yaxes(title_text="held-out balanced accuracy", range=[0.2, 1.02], row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=420, width=360 * len(names) + 160,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def write_html(figures: Sequence[go.Figure], path: str | Path, heading: str = "", intro: str = "",
               root: str | Path | None = None) -> Path:
    """One HTML page of figures; plotly.js is shared, one copy in ``root`` (default: the page's folder)."""
    parts = [figure_html(figures, path, root=root, wrap="{}")]
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>" + heading + "</title>"
            "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}</style></head><body>"
            f"<h1>{heading}</h1>{intro}" + "\n".join(parts) + "</body></html>")
    atomic_write_text(path, html)
    return Path(path)


_PNG = {"enabled": None}


def png_enabled() -> bool:
    """PNG export costs ~4 s a figure (a headless browser); ``WDPROBE_PNG=0`` or :func:`png_export` turn it off."""
    if _PNG["enabled"] is not None:
        return bool(_PNG["enabled"])
    return os.environ.get("WDPROBE_PNG", "1") != "0"


@contextmanager
def png_export(enabled: bool):
    """Within the block, write PNGs beside HTML figures or not."""
    before = _PNG["enabled"]
    _PNG["enabled"] = enabled
    try:
        yield
    finally:
        _PNG["enabled"] = before


def write_png(fig: go.Figure, path: str | Path) -> Path | None:
    """A static PNG where an exporter works (kaleido + a Chromium) and export is on; None otherwise."""
    if not png_enabled():
        return None
    try:
        fig.write_image(str(path), scale=1.5)
        return Path(path)
    except Exception as exc:  # no kaleido / no browser on this machine: HTML stays the primary output
        _png_unavailable(exc)
        return None


PNG_MISSING = ("static PNG figures were not written: no PNG exporter here (install wdprobe[png], which brings kaleido "
               "and its Chromium); the HTML pages have every figure")
_PNG_WARNED: dict[str, str] = {}


def _png_unavailable(exc: Exception) -> None:
    """Say once per process, on the console, why PNGs are missing; reports read :func:`png_problem` to say it too."""
    if not _PNG_WARNED:
        import sys

        _PNG_WARNED["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        print(f"wdprobe: {PNG_MISSING} ({_PNG_WARNED['reason']})", file=sys.stderr)


def png_problem() -> str | None:
    """Why PNG export failed in this process (None if it never did): reports say it where the figures would be."""
    return f"{PNG_MISSING} ({_PNG_WARNED['reason']})." if _PNG_WARNED else None
