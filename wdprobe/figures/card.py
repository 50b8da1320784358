"""The card of curves drawn: for each instrument, the layer it recovered against the block the edit was planted in.

One panel per instrument, the planted block on x and the recovered layer on y; the band is the hit zone
(|L^ - L| <= 1), misses with no layer sit on a row below the axis. Drawn from ``recovered.csv`` alone.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FAMILY_STYLE = {"override": ("override", "#1f77b4", "circle"),
                "null-direction": ("random direction (null-direction)", "#ff7f0e", "diamond"),
                "null-gate": ("gate never opens (null-gate)", "#7f7f7f", "x"),
                "strength": ("strength sweep (below 20)", "#9467bd", "triangle-up")}


def localisation_figure(recovered: pd.DataFrame, instruments: Sequence[str], n_layers: int, *,
                        title: str, gates: pd.DataFrame | None = None) -> go.Figure:
    """Recovered against planted layer per instrument (``recovered``: columns family, layer, seed, instrument,
    recovered; NaN recovered = the instrument named no layer). ``gates`` (family, layer, seed, hold_rate, hold_low,
    hold_high; min_hold_rate where the gate needs one, drawn dashed): a last panel with how often each override's
    plant held, by block."""
    cols = 3
    panels = list(instruments) + (["the plant's hold rate by block (overrides)"] if gates is not None else [])
    rows = int(np.ceil(len(panels) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=panels, horizontal_spacing=0.07,
                        vertical_spacing=0.16)
    none_row = -2  # where "no layer" is drawn
    for k, name in enumerate(instruments):
        r, c = k // cols + 1, k % cols + 1
        xs = np.arange(0, n_layers)
        fig.add_trace(go.Scatter(x=list(xs) + list(xs[::-1]), y=list(xs + 1) + list(xs[::-1] - 1), fill="toself",
                                 fillcolor="rgba(44,160,44,0.15)", line=dict(width=0), hoverinfo="skip",
                                 name="hit zone |L^ - L| <= 1", showlegend=k == 0, legendgroup="zone"), row=r, col=c)
        mine = recovered[recovered["instrument"] == name]
        for family, (label, colour, symbol) in FAMILY_STYLE.items():
            part = mine[mine["family"].astype(str).str.startswith("strength-")] if family == "strength" \
                else mine[mine["family"] == family]
            if part.empty:
                continue
            y = part["recovered"].fillna(none_row)
            jitter = (part["seed"].to_numpy() - 1) * 0.15
            fig.add_trace(go.Scatter(x=part["layer"] + jitter, y=y, mode="markers", name=label, legendgroup=family,
                                     showlegend=k == 0, marker=dict(color=colour, symbol=symbol, size=7,
                                                                    line=dict(width=0.5, color="white")),
                                     customdata=np.c_[part["seed"], part["recovered"].fillna(-1)],
                                     hovertemplate="planted %{x:.0f}, seed %{customdata[0]}: recovered "
                                                   "%{customdata[1]} (-1: none)<extra></extra>"), row=r, col=c)
        fig.update_xaxes(range=[-0.5, n_layers - 0.5], title_text="planted block L" if r == rows else None, row=r, col=c)
        fig.update_yaxes(range=[none_row - 1, n_layers], tickvals=[none_row] + list(range(0, n_layers, 3)),
                         ticktext=["none"] + [str(v) for v in range(0, n_layers, 3)],
                         title_text="recovered layer" if c == 1 else None, row=r, col=c)
    if gates is not None:
        r, c = len(instruments) // cols + 1, len(instruments) % cols + 1
        over = gates[gates["family"] == "override"]
        for seed, part in over.groupby("seed"):
            fig.add_trace(go.Scatter(x=part["layer"] + (seed - 1) * 0.15, y=part["hold_rate"], mode="markers",
                                     showlegend=False, marker=dict(color="#1f77b4", size=6),
                                     error_y=dict(type="data", symmetric=False, color="#9ecae1",
                                                  array=part["hold_high"] - part["hold_rate"],
                                                  arrayminus=part["hold_rate"] - part["hold_low"]),
                                     hovertemplate=f"block %{{x:.0f}}, seed {seed}: %{{y:.2f}}<extra></extra>"),
                          row=r, col=c)
        if "min_hold_rate" in over and over["min_hold_rate"].notna().any():  # a gate on the hold rate: drawn
            need = float(over["min_hold_rate"].max())
            fig.add_trace(go.Scatter(x=[-0.5, n_layers - 0.5], y=[need, need], mode="lines", showlegend=False,
                                     line=dict(color="#d62728", dash="dash", width=1),
                                     hovertemplate=f"the gate: {need:.2f}<extra></extra>"), row=r, col=c)
        fig.update_xaxes(range=[-0.5, n_layers - 0.5], title_text="planted block L", row=r, col=c)
        fig.update_yaxes(range=[0, 1], title_text="share of eligible deeds moved", row=r, col=c)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), template="plotly_white", height=300 * rows + 140,
                      width=1200, legend=dict(orientation="h", y=-0.12, x=0), margin=dict(l=60, r=20, t=90, b=60))
    return fig
