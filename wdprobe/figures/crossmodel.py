"""Cross-model patching drawn: per form, a map of sites (rows: the residual, attention, MLP, each head) by block,
coloured by the share of the variant's change each site alone restores; sites whose share differs from zero after
correction are marked."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _row_label(kind: str, unit) -> str:
    return kind if pd.isna(unit) else f"{kind} {int(unit)}"


def restored_share_figure(table: pd.DataFrame, *, title: str, scoring: str = "mean", alpha: float = 0.05) -> go.Figure:
    """One heatmap per form of ``table`` (``sites.csv``): restored share by site row and block, clipped to [-1, 1]
    for colour (the hover gives the value, its interval and q); a dot marks q < ``alpha``."""
    forms = list(dict.fromkeys(table["form"]))
    fig = make_subplots(rows=len(forms), cols=1, subplot_titles=[f"{f} prompts" for f in forms], vertical_spacing=0.12)
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
                                 showscale=k == 1), row=k, col=1)
        sig = part[part[f"q_{scoring}"] < alpha]
        fig.add_trace(go.Scatter(x=sig["block"], y=sig["row"], mode="markers", marker=dict(size=5, color="black"),
                                 name=f"q < {alpha}", showlegend=k == 1, hoverinfo="skip"), row=k, col=1)
        fig.update_xaxes(title_text="block" if k == len(forms) else None, dtick=1, row=k, col=1)
    fig.update_layout(title=dict(text=title, x=0.01), width=1000, height=260 + 330 * len(forms),
                      margin=dict(l=70, r=40, t=90, b=50), legend=dict(orientation="h", y=-0.08))
    return fig
