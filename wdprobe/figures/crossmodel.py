"""Cross-model patching drawn: per form, a map of sites (rows: the residual, attention, MLP, each head) by block,
coloured by the share of the variant's change each site alone restores; sites whose share differs from zero after
correction are marked."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _row_label(kind: str, unit) -> str:
    return kind if pd.isna(unit) else f"{kind} {int(unit)}"


def restored_share_figure(table: pd.DataFrame, *, title: str, scoring: str = "mean", alpha: float = 0.05,
                          change_p: Mapping[str, float] | None = None) -> go.Figure:
    """One heatmap per form of ``table`` (``sites.csv``): restored share by site row and block, clipped to [-1, 1]
    for colour (the hover gives the value, its interval and q); a dot marks q < ``alpha``. ``change_p``: each form's
    p-value of the variant's change itself; a form whose change is not detected is drawn faded and titled so, since
    shares of a change indistinguishable from zero localise nothing."""
    forms = list(dict.fromkeys(table["form"]))
    undetected = {f for f in forms if change_p is not None and change_p.get(f, 0.0) >= alpha}
    titles = [f"{f} prompts" + (f" — change not detected (p = {change_p[f]:.2g}): shares not interpretable"
                                if f in undetected else "") for f in forms]
    fig = make_subplots(rows=len(forms), cols=1, subplot_titles=titles, vertical_spacing=0.12)
    for k, form in enumerate(forms, start=1):
        part = table[table["form"] == form].copy()
        part["row"] = [_row_label(a, b) for a, b in zip(part["kind"], part["unit"])]
        rows = list(dict.fromkeys(part["row"]))[::-1]
        blocks = sorted(part["block"].unique())
        z = np.full((len(rows), len(blocks)), np.nan)
        hover = np.full((len(rows), len(blocks)), "", dtype=object)
        for r in part.itertuples():
            i, j = rows.index(r.row), blocks.index(r.block)
            share, lo, hi, q = (getattr(r, f"restored_{scoring}"), getattr(r, f"low_{scoring}"),
                                getattr(r, f"high_{scoring}"), getattr(r, f"q_{scoring}"))
            z[i, j] = share
            hover[i, j] = (f"{r.site}: {share:.2f} [{lo:.2f}, {hi:.2f}], q = {q:.2g}"
                           + (" (identical in both models)" if r.identical else ""))
        fig.add_trace(go.Heatmap(z=np.clip(z, -1, 1), x=blocks, y=rows, zmin=-1, zmax=1, colorscale="RdBu_r",
                                 zmid=0, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                                 colorbar=dict(title="restored", len=0.8 / len(forms), y=1 - (k - 0.5) / len(forms)),
                                 showscale=k == 1, opacity=0.3 if form in undetected else 1.0), row=k, col=1)
        sig = part[part[f"q_{scoring}"] < alpha]
        fig.add_trace(go.Scatter(x=sig["block"], y=sig["row"], mode="markers", marker=dict(size=5, color="black"),
                                 name=f"q < {alpha}", showlegend=k == 1, hoverinfo="skip"), row=k, col=1)
        fig.update_xaxes(title_text="block" if k == len(forms) else None, dtick=1, row=k, col=1,
                         range=[min(blocks) - 0.5, max(blocks) + 0.5])
    fig.update_layout(title=dict(text=title, x=0.01), width=1000, height=260 + 330 * len(forms),
                      margin=dict(l=70, r=40, t=90, b=50), legend=dict(orientation="h", y=-0.08))
    return fig


FAMILIES = {"override": ("MLP override", "#1f77b4", "circle"), "head-override": ("head override", "#2ca02c", "square"),
            "strength": ("strength sweep", "#9467bd", "triangle-up"),
            "null-direction": ("random write (null-direction)", "#ff7f0e", "diamond"),
            "null-gate": ("gate never opens (null-gate)", "#7f7f7f", "x")}


def recovered_block_figure(frame: pd.DataFrame, n_layers: int, *, title: str) -> go.Figure:
    """Recovered against planted block, one point per scored organism (``cross-model.csv``: family, layer, seed,
    recovered_block, detected); filled: detected (shift q < 0.05), hollow on the 'none' row: not detected, since a
    block that "restores half" of a shift indistinguishable from zero localises nothing. Organisms planted at one block
    are spread side by side so that none hides another."""
    fig = go.Figure()
    none_row = -2
    fig.add_trace(go.Scatter(x=[-0.5, n_layers - 0.5], y=[-0.5, n_layers - 0.5], mode="lines", hoverinfo="skip",
                             line=dict(color="rgba(44,160,44,0.5)", dash="dot"), name="recovered = planted"))
    scored = frame[frame["scored"]].copy()
    rank = scored.groupby("layer").cumcount()
    width = scored.groupby("layer")["name"].transform("size")
    scored["x"] = scored["layer"] + (rank - (width - 1) / 2) * (0.7 / np.maximum(width - 1, 1)).clip(upper=0.18)
    for family, (label, colour, symbol) in FAMILIES.items():
        families = scored["family"].astype(str)
        part = scored[(families == family) | families.str.startswith(f"{family}-") & (family == "strength")]
        if part.empty:
            continue
        for detected, part2 in part.groupby(part["detected"].astype(bool)):
            y = part2["recovered_block"].fillna(none_row) if detected else np.full(len(part2), none_row)
            fig.add_trace(go.Scatter(
                x=part2["x"], y=y, mode="markers",
                name=f"{label}{'' if detected else ' (not detected)'}",
                marker=dict(color=colour if detected else "white", symbol=symbol, size=9,
                            line=dict(width=1.5, color=colour)),
                customdata=np.c_[part2["name"], part2["shift_q"].round(4),
                                 part2["recovered_block"].map(lambda b: "none" if pd.isna(b) else f"L{int(b)}")],
                hovertemplate="%{customdata[0]}: first block restoring half %{customdata[2]} (shift q = %{customdata[1]})"
                              "<extra></extra>"))
    fig.update_xaxes(range=[-0.5, n_layers - 0.5], title_text="planted block L", dtick=2)
    fig.update_yaxes(range=[none_row - 1, n_layers], tickvals=[none_row] + list(range(0, n_layers, 2)),
                     ticktext=["none"] + [str(v) for v in range(0, n_layers, 2)], title_text="recovered block")
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), template="plotly_white", width=900, height=620,
                      legend=dict(orientation="v", x=1.02, y=1), margin=dict(l=60, r=20, t=90, b=60))
    return fig
