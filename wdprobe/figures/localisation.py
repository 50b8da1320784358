"""Plotly figures for localisation: lens curves, patching curves with controls, heatmaps, steering surface.

Every figure is drawn from the tidy tables the stages save (the lens trajectory, patching summaries,
positional frames, steering summary), so a reader can redraw any of them from the CSVs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.figures.probes import reference_line, rgba
from wdprobe.methods.patching import rank_correlation

GROUP_COLOURS = {"consistent": "#2ca02c", "inconsistent": "#d62728", "all": "#1f77b4"}
CONDITION_STYLE = {"full": ("full residual", "#1f77b4", "solid"),
                   "stance": ("word-stance component only (letter-balanced)", "#d62728", "solid"),
                   "letter": ("control: answer-letter component", "#ff7f0e", "dash"),
                   "random": ("control: random-direction component", "#7f7f7f", "dot")}


def _mean_band(fig, x, arr, colour, name, dash, legend=True):
    mean = arr.mean(0)
    sem = arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.zeros_like(mean)
    xs = list(x)
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(mean + sem) + list(mean - sem)[::-1], fill="toself",
                             fillcolor=rgba(colour, 0.15), line=dict(width=0), hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines+markers", name=name, showlegend=legend, marker=dict(size=5),
                             line=dict(color=colour, dash=dash, width=2),
                             hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.2f}}<extra></extra>"))


LENS_NAMES = {"logit": ("Logit lens", "final norm + unembedding applied to each layer's final-position residual"),
              "tuned": ("Tuned lens", "each layer's residual through its fitted affine translator, then final norm + "
                                      "unembedding")}


def lens_figures(traj, model: str, lens: str = "logit") -> list[go.Figure]:
    """(1) mean log-odds toward the word answer by layer, word vs deed, consistent vs inconsistent items;
    (2) lens CS by layer and where inconsistent items' readings part for good (with how many never part)."""
    name, how = LENS_NAMES.get(lens, (f"{lens} lens", "each layer's residual read through the final norm + unembedding"))
    groups = traj.groups()
    layers = list(traj.layers)
    fig = go.Figure()
    for g in ("consistent", "inconsistent"):
        m = groups[g]
        if not m.any():
            continue
        _mean_band(fig, layers, traj.toward_word("word")[m], GROUP_COLOURS[g], f"{g} items: word prompt", "solid")
        _mean_band(fig, layers, traj.toward_word("deed")[m], GROUP_COLOURS[g], f"{g} items: deed prompt", "dash")
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(title=f"{name}: log-odds toward the word answer, by layer<br><sup>{model}, {len(traj.items)} "
                            f"two-option items; {how} (± s.e.)</sup>", template="plotly_white", height=500, width=900,
                      xaxis_title="layer", yaxis_title="log p(word answer) − log p(other answer)",
                      legend=dict(orientation="h", y=-0.2))
    div = traj.divergence_layers()[groups["inconsistent"]]
    parting, never = int(np.isfinite(div).sum()), int(np.isnan(div).sum())
    fig2 = make_subplots(rows=1, cols=2, subplot_titles=["lens CS(l): word and deed readings pick the same option",
                                                         f"inconsistent items: layer from which readings disagree "
                                                         f"({parting} part; {never} never do)"])
    for g in ("all", "consistent", "inconsistent"):
        m = groups[g]
        if m.any():
            fig2.add_trace(go.Scatter(x=layers, y=traj.agreement(m), mode="lines+markers", name=f"{g} ({int(m.sum())})",
                                      line=dict(color=GROUP_COLOURS[g])), row=1, col=1)
    d = div[np.isfinite(div)]  # the inconsistent items the title names (before, every item whose readings part)
    fig2.add_trace(go.Histogram(x=d, xbins=dict(start=min(layers) - 0.5, end=max(layers) + 0.5, size=1),
                                marker_color="#d62728", name="divergence layer", showlegend=False), row=1, col=2)
    fig2.update_xaxes(title_text="layer", row=1, col=1)
    fig2.update_xaxes(title_text="first layer of the final disagreeing run", row=1, col=2)
    fig2.update_yaxes(title_text="share of items", range=[0, 1.02], row=1, col=1)
    fig2.update_yaxes(title_text="items", row=1, col=2)
    fig2.update_layout(title=f"Where word and deed readings part ({name.lower()}) — {model}", template="plotly_white",
                       height=460,
                       width=1150, legend=dict(orientation="h", y=-0.25))
    return [fig, fig2]


def _condition_curves(fig: go.Figure, summary, metric: str, col: int) -> None:
    """One line per patching condition of ``metric`` by layer, in subplot ``col`` (legend on the first)."""
    for cond, (label, colour, dash) in CONDITION_STYLE.items():
        sub = summary[summary.condition == cond].sort_values("layer")
        if len(sub):
            fig.add_trace(go.Scatter(x=sub["layer"], y=sub[metric], mode="lines+markers", name=label, legendgroup=cond,
                                     showlegend=(col == 1), line=dict(color=colour, dash=dash)), row=1, col=col)


def cross_form_figures(summary, where: str) -> list[go.Figure]:
    """Flip rate, normalised effect and break rate by layer per condition; full-patch flips by letter match."""
    fig = make_subplots(rows=1, cols=4, subplot_titles=["inconsistent items flipped to the word answer",
                                                        "consistent items broken",
                                                        "CS with the patch in place",
                                                        "mean normalised effect (inconsistent)"])
    for c, metric in enumerate(("flip_rate", "break_rate", "cs_after", "normalised_effect"), start=1):
        _condition_curves(fig, summary, metric, c)
        fig.update_xaxes(title_text="patched layer (resid_post, final position)", row=1, col=c)
    for c in (1, 2, 3):
        fig.update_yaxes(range=[-0.02, 1.02], row=1, col=c)
    if "cs_clean" in summary.attrs:
        reference_line(fig, f"clean CS {summary.attrs['cs_clean']:.2f}", y=summary.attrs["cs_clean"],
                       line=dict(color="#2ca02c", dash="longdash"), row=1, col=3)
    fig.update_layout(title=f"Cross-form patching: word-run residual into the deed run<br><sup>{where}</sup>",
                      template="plotly_white", height=470, width=1280, legend=dict(orientation="h", y=-0.22))
    fig2 = go.Figure()
    for cond, (label, colour, _) in CONDITION_STYLE.items():
        sub = summary[summary.condition == cond].sort_values("layer")
        for part, dash, text in (("same_letter", "solid", "word answer has the same letter in the deed prompt"),
                                 ("other_letter", "dash", "word answer has the other letter in the deed prompt")):
            col = f"flip_rate_{part}"
            if len(sub) and sub[col].notna().any():
                n = int(sub[f"n_inconsistent_{part}"].iloc[0])
                fig2.add_trace(go.Scatter(x=sub["layer"], y=sub[col], mode="lines+markers", name=f"{label}: {text} (n={n})",
                                          line=dict(color=colour, dash=dash)))
    fig2.update_layout(title=f"Flips split by letter: does the patch carry the stance or the letter?<br><sup>{where}</sup>",
                       template="plotly_white", height=480, width=1000, xaxis_title="patched layer",
                       yaxis_title="inconsistent items flipped", yaxis_range=[-0.02, 1.02], legend=dict(orientation="h", y=-0.25))
    return [fig, fig2]


def cloze_patch_figure(summary, where: str) -> go.Figure:
    """Cloze-form patching by layer per condition: inconsistent items flipped to the word's choice, consistent ones
    broken, and the decision-step CS with the patch in place (clean CS as a line)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["inconsistent items flipped to the word's choice",
                                                        "consistent items broken", "decision-step CS, patched"])
    for c, metric in enumerate(("flip_rate", "break_rate", "cs_after"), start=1):
        _condition_curves(fig, summary, metric, c)
        fig.update_xaxes(title_text="patched layer (resid_post, decision point)", row=1, col=c)
        fig.update_yaxes(range=[-0.02, 1.02], title_text="share of items" if c < 3 else "CS", row=1, col=c)
    if "cs_clean" in summary.attrs:
        reference_line(fig, f"clean decision-step CS {summary.attrs['cs_clean']:.2f}", y=summary.attrs["cs_clean"],
                       line=dict(color="#2ca02c", dash="longdash"), row=1, col=3)
    fig.update_layout(title=f"Cross-form patching in the cloze form: word decision point into the deed's<br><sup>{where}</sup>",
                      template="plotly_white", height=470, width=1280, legend=dict(orientation="h", y=-0.22))
    return fig


def letter_split_figure(summary, where: str) -> go.Figure:
    """Per condition, by layer: the stance shift (the deed moves toward the word answer's content in both option
    orders) and the letter shift (it moves toward the word run's letter), each with its 95% bootstrap band; and
    the flip rates in the same-letter and opposite-letter deed orders."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["stance shift: (same + opposite) / 2",
                                                        "letter shift: (same − opposite) / 2",
                                                        "flipped: same-letter (●) vs opposite (×) order"])
    for cond, (label, colour, dash) in CONDITION_STYLE.items():
        sub = summary[summary.condition == cond].sort_values("layer")
        if not len(sub):
            continue
        xs = sub["layer"].tolist()
        for c, shift in ((1, "stance_shift"), (2, "letter_shift")):
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=sub[f"{shift}_high"].tolist() + sub[f"{shift}_low"].tolist()[::-1],
                                     fill="toself", fillcolor=rgba(colour, 0.15), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False), row=1, col=c)
            fig.add_trace(go.Scatter(x=xs, y=sub[shift], mode="lines+markers", name=label, legendgroup=cond,
                                     showlegend=(c == 1), line=dict(color=colour, dash=dash)), row=1, col=c)
        for part, symbol in (("same", "circle"), ("opposite", "x")):
            fig.add_trace(go.Scatter(x=xs, y=sub[f"flip_rate_{part}"], mode="lines+markers", legendgroup=cond,
                                     name=f"{label}: {part}-letter order", showlegend=False, marker=dict(symbol=symbol),
                                     line=dict(color=colour, dash="solid" if part == "same" else "dot")), row=1, col=3)
    for c in (1, 2):
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        fig.update_yaxes(title_text="shift in deed log-odds toward the word answer", row=1, col=c)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="share flipped (circles: same letter, crosses: opposite)", row=1, col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text="patched layer", row=1, col=c)
    fig.update_layout(title=f"Does the patch carry the stance or the letter? Word run patched into both deed orders"
                            f"<br><sup>{where}; bands: 95% bootstrap over items</sup>", template="plotly_white",
                      height=480, width=1380, legend=dict(orientation="h", y=-0.22))
    return fig


def positional_figures(frame, seg_table, layers: Sequence[int], segment_order: Sequence[str], where: str,
                       n_show: int = 2) -> list[go.Figure]:
    """Per-item layer x token heatmaps (exact | attribution), role-averaged heatmaps, and attribution vs exact."""
    figs = []
    ids = list(dict.fromkeys(frame[frame.method == "exact"]["id"]))[:n_show]
    for iid in ids:
        sub = frame[frame.id == iid]
        # positions before the first token that differs carry exactly the clean activations: crop them
        moved = sub[sub["normalised"].abs() > 1e-6]["position"]
        first = max(0, int(moved.min()) - 3) if len(moved) else 0
        sub = sub[sub.position >= first]
        fig = make_subplots(rows=2, cols=1, subplot_titles=["exact patching", "attribution patching (estimate)"],
                            shared_xaxes=True, vertical_spacing=0.08)
        toks = None
        for r, method in enumerate(("exact", "attribution"), start=1):
            m = sub[sub.method == method]
            grid = m.pivot(index="layer", columns="position", values="normalised").reindex(layers)
            toks = m.drop_duplicates("position").sort_values("position")["token"].tolist()
            labels = [f"{p}:{t!r}" for p, t in zip(sorted(m["position"].unique()), toks)]
            fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=labels, y=list(layers), zmid=0, colorscale="RdBu_r",
                                     zmin=-1, zmax=1, showscale=(r == 1), colorbar=dict(title="normalised")),
                          row=r, col=1)
        fig.update_yaxes(title_text="layer (resid_pre)")
        fig.update_layout(title=f"Positional patching, item {iid} (tokens from position {first}; earlier ones are "
                                f"identical in both prompts)<br><sup>{where}; 1 = patching this residual alone "
                                "restores the clean answer, 0 = no effect</sup>", template="plotly_white",
                          height=760, width=max(900, 22 * len(toks or []) + 250))
        figs.append(fig)
    seg_present = [s for s in segment_order if s in set(seg_table["segment"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["exact", "attribution"], shared_yaxes=True)
    for c, method in enumerate(("exact", "attribution"), start=1):
        m = seg_table[seg_table.method == method]
        if not len(m):
            continue
        grid = m.pivot(index="layer", columns="segment", values="normalised").reindex(index=layers, columns=seg_present)
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=seg_present, y=list(layers), zmid=0, colorscale="RdBu_r", zmin=-1,
                                 zmax=1, showscale=(c == 1)), row=1, col=c)
    n_ex = frame[frame.method == "exact"]["id"].nunique()
    n_at = frame[frame.method == "attribution"]["id"].nunique()
    fig.update_layout(title=f"Mean normalised effect per token, by role and layer<br><sup>{where}; exact over {n_ex} "
                            f"items, attribution over {n_at}</sup>", template="plotly_white", height=560, width=1150)
    fig.update_yaxes(title_text="layer (resid_pre)", row=1, col=1)
    figs.append(fig)
    ex = frame[frame.method == "exact"].set_index(["id", "layer", "position"])["normalised"]
    at = frame[frame.method == "attribution"].set_index(["id", "layer", "position"])["normalised"].reindex(ex.index)
    if len(ex):
        rho = rank_correlation(at.to_numpy(), ex.to_numpy())
        # thousands of cells: single precision is plenty on screen and halves what the page carries
        ids = pd.Index(ex.index.get_level_values("id")).unique()
        cells = np.stack([ids.get_indexer(ex.index.get_level_values("id")), ex.index.get_level_values("layer"),
                          ex.index.get_level_values("position")], axis=1).astype(np.int16)
        fig = go.Figure(go.Scattergl(x=ex.to_numpy(np.float32), y=at.to_numpy(np.float32), mode="markers",
                                     marker=dict(size=4, opacity=0.5), customdata=cells, name="cells",
                                     hovertemplate="item %{customdata[0]} of the exact set, layer %{customdata[1]}, "
                                                   "position %{customdata[2]}<br>exact %{x:.3f}, attribution %{y:.3f}"))
        lo, hi = float(np.nanmin([ex.min(), at.min()])), float(np.nanmax([ex.max(), at.max()]))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="black", dash="dot"), name="y = x"))
        fig.update_layout(title=f"Attribution vs exact patching<br><sup>every (item, layer, position) cell; "
                                f"Spearman ρ = {rho:.3f}</sup>",
                          template="plotly_white", height=560, width=720, xaxis_title="exact (normalised)",
                          yaxis_title="attribution estimate (normalised)")
        figs.append(fig)
    return figs


CONTROL_LABELS = {"random": "isotropic random direction", "pair-random": "format-keeping control (pair-random)"}


def steering_figures(table, where: str, min_mass_ratio: float, *, mass_label: str = "letter mass",
                      position: str = "final position", metric: str | None = None) -> list[go.Figure]:
    """CS over (layer, alpha) for the stance direction and a control (the format-keeping ``pair-random`` where the
    run has it, else the isotropic ``random``), and the answer format's mass (``mass_label``: letter mass, or the
    option tokens' in the cloze form); ``metric`` the CS column shown (default: benchmark-level CS when the table has
    it). The curves draw every control the run has."""
    metric = metric or ("cs_population" if "cs_population" in table else "cs")
    metric_name = {"cs_population": "benchmark-level CS", "cs_balanced": "balanced CS"}.get(metric, "CS")
    present = set(table.condition)
    control = "pair-random" if "pair-random" in present else "random"
    fig = make_subplots(rows=1, cols=3, subplot_titles=[f"word-stance direction: {metric_name}",
                                                        f"{CONTROL_LABELS[control]}: {metric_name}",
                                                        f"word-stance direction: {mass_label} / clean"],
                        horizontal_spacing=0.08)
    for c, (cond, col) in enumerate((("stance", metric), (control, metric), ("stance", "mass_ratio")), start=1):
        m = table[table.condition == cond]
        grid = m.pivot(index="layer", columns="alpha", values=col)
        z = grid.to_numpy()
        fig.add_trace(go.Heatmap(z=z, x=[str(a) for a in grid.columns], y=grid.index.tolist(),
                                 colorscale="Viridis" if col != "mass_ratio" else "Greys",
                                 zmin=0 if col == "mass_ratio" else float(table[metric].min()),
                                 zmax=max(1.0, float(np.nanmax(z))) if col == "mass_ratio" else float(table[metric].max()),
                                 text=np.round(z, 2), texttemplate="%{text}", showscale=False), row=1, col=c)
        fig.update_xaxes(title_text="alpha (× word-answer mean difference)", type="category", row=1, col=c)
    fig.update_yaxes(title_text=f"steered layer (resid_post, {position})", row=1, col=1)
    clean = table.attrs.get("clean_cs")
    fig.update_layout(title=f"Steering deeds toward the word answer — {metric_name}"
                            f"<br><sup>{where}; cells with {mass_label} below {min_mass_ratio:.0%} of clean break the "
                            "answer format</sup>", template="plotly_white", height=560, width=1280)
    figs = [fig]
    stance = table[table.condition == "stance"]
    all_layers = sorted(stance["layer"].unique())
    best_layer = int(stance.loc[stance[metric].idxmax(), "layer"]) if stance[metric].notna().any() else None
    shown = sorted(set(all_layers[:: max(1, len(all_layers) // 4)]) | ({best_layer} if best_layer is not None else set()))
    fig2 = make_subplots(rows=1, cols=3, subplot_titles=["inconsistent items moved to the word answer",
                                                         "consistent items moved away (broken)", f"{mass_label} / clean"])
    palette = ["#440154", "#3b528b", "#21918c", "#5ec962", "#e45756", "#f58518"]
    for k, layer in enumerate(shown):
        colour = palette[k % len(palette)]
        for cond, dash in (("stance", "solid"), ("random", "dot"), ("pair-random", "dash")):
            if cond not in present:
                continue
            s_ = table[(table.condition == cond) & (table.layer == layer)].sort_values("alpha")
            name = f"layer {layer}{' (best)' if layer == best_layer else ''}: {'word-stance' if cond == 'stance' else cond}"
            for c, col in enumerate(("flip_rate", "break_rate", "mass_ratio"), start=1):
                fig2.add_trace(go.Scatter(x=s_["alpha"], y=s_[col], mode="lines+markers", name=name, showlegend=(c == 1),
                                          legendgroup=name, line=dict(color=colour, dash=dash)), row=1, col=c)
    fig2.add_hline(y=min_mass_ratio, line=dict(color="black", dash="dot"), row=1, col=3)
    alphas = sorted(a for a in table["alpha"].unique() if a > 0)
    # the grid's own alphas as the only ticks: plotly's log axis otherwise labels minor ticks between them
    fig2.update_xaxes(title_text="alpha (× word-answer mean difference)", type="log", tickvals=alphas,
                      ticktext=[f"{a:g}" for a in alphas])
    fig2.update_yaxes(range=[-0.02, 1.02], row=1, col=1)
    fig2.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
    sub = f"; clean CS on these items {clean:.2f}" if clean is not None else ""
    dashes = "dotted: isotropic random" + (", dashed: format-keeping pair-random" if "pair-random" in present else "")
    fig2.update_layout(title=f"Steering curves at selected layers (solid: word-stance direction, {dashes})"
                             f"<br><sup>{where}{sub}</sup>", template="plotly_white", height=500, width=1280,
                       legend=dict(orientation="h", y=-0.25))
    figs.append(fig2)
    return figs
