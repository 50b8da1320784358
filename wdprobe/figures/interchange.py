"""Interchange interventions drawn: per form, interchange-intervention accuracy by block for the subspace learned on
the same form, the one learned on the other form, and a random direction, each with its bootstrap interval."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.figures.probes import rgba

CONDITION_STYLE = {"within": ("learned on this form", "#1f77b4", "solid"),
                   "cross": ("learned on the other form", "#d62728", "solid"),
                   "random": ("random direction", "#7f7f7f", "dot")}


def interchange_figure(table: pd.DataFrame, *, title: str) -> go.Figure:
    """One panel per form of ``table`` (:func:`wdprobe.studies.crossform.interchange.summarise`): IIA by block per
    condition with 95% bands; a black ring marks blocks where cross-form IIA is above the random direction's (q < 0.05)."""
    forms = list(dict.fromkeys(table["form"]))
    names = {"word": "word prompts (interchange between word pairs)", "deed": "deed prompts (interchange between deed pairs)"}
    fig = make_subplots(rows=1, cols=len(forms), subplot_titles=[names.get(f, f) for f in forms], shared_yaxes=True)
    for c, form in enumerate(forms, start=1):
        part = table[table["form"] == form].sort_values("layer")
        x = part["layer"].tolist()
        for cond, (label, colour, dash) in CONDITION_STYLE.items():
            lo, hi = part[f"iia_{cond}_low"].tolist(), part[f"iia_{cond}_high"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], mode="lines", fill="toself",
                                     fillcolor=rgba(colour, 0.15),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=cond),
                          row=1, col=c)
            fig.add_trace(go.Scatter(x=x, y=part[f"iia_{cond}"], mode="lines+markers", name=label, legendgroup=cond,
                                     showlegend=c == 1, line=dict(color=colour, dash=dash, width=2),
                                     hovertemplate=f"{label}<br>block %{{x}}: IIA %{{y:.2f}}<extra></extra>"),
                          row=1, col=c)
        sig = part[(part["q_cross_vs_random"] < 0.05) & (part["iia_cross"] > part["iia_random"])]
        fig.add_trace(go.Scatter(x=sig["layer"], y=sig["iia_cross"], mode="markers", name="cross-form > random, q < 0.05",
                                 marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(color="black", width=2)),
                                 showlegend=c == 1, hoverinfo="skip"), row=1, col=c)
        fig.update_xaxes(title_text="block (residual after it, at the decision point)", dtick=1, row=1, col=c)
    fig.update_yaxes(title_text="interchange-intervention accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_layout(title=dict(text=title, x=0.01), template="plotly_white", width=1100, height=480, margin=dict(l=70, r=30, t=90, b=60),
                      legend=dict(orientation="h", y=-0.2))
    return fig
