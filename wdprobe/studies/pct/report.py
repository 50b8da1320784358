"""The PCT study report: compass positions by persona, closed-vs-open agreement, probes across forms,
the persona effect inside, and tropes; an interactive page, its markdown twin and ``tropes.html``."""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_text
from wdprobe.data.pct import ANSWERS
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import PROBE_TITLES, add_band, png_problem, write_png
from wdprobe.reports.claims import Finding, ledger_key, publish_findings, q_by_key, with_q_values
from wdprobe.reports.html import (
    CSS,
    findings_html,
    folded,
    lead_html,
    lead_markdown,
    lead_note,
    notes_html,
    table_html,
    verdict_table_markdown,
)
from wdprobe.reports.wording import asserted_claims, decodable
from wdprobe.runs.rundir import RunDir

ATTRIBUTE_COLOURS = {"base": "#000000", "age": "#1f77b4", "gender": "#d62728", "cls": "#2ca02c", "nation": "#9467bd",
                     "political_orientation": "#ff7f0e"}
TABLES = ("positions.csv", "shifts.csv", "agreement.csv", "compass.json", "probes.csv", "persona_effect.csv",
          "tropes.csv", "tropes.json", "judge_check.json", "probes_order_control.csv", "probes_content.csv",
          "probes_content.json")
ALPHA = 0.05


def _attribute(persona: str) -> str:
    return persona.split("=", 1)[0]


def _load(run: RunDir, name: str) -> pd.DataFrame | None:
    p = run.path / name
    if not p.is_file() or p.stat().st_size <= 1:
        return None
    try:
        return pd.read_csv(p)
    except pd.errors.EmptyDataError:
        return None


def compass_figure(positions: pd.DataFrame, shifts: pd.DataFrame, model: str) -> go.Figure:
    """Persona positions on the compass (closed form filled, open form hollow), base case as a star."""
    fig = go.Figure()
    sig = {(r.form, r.persona): (r.q_econ < ALPHA or r.q_social < ALPHA) for r in shifts.itertuples()}
    for form, symbol in (("closed", "circle"), ("open", "circle-open")):
        sub = positions[positions.form == form]
        for attr, colour in ATTRIBUTE_COLOURS.items():
            s = sub[sub.persona.map(_attribute) == attr]
            if not len(s):
                continue
            # names only where they say something (base, significant shifts): coinciding labels are unreadable;
            # every name is in the hover and the shift table
            text = [("base" if attr == "base" else f"{p.split('=', 1)[-1]}*") if attr == "base" or sig.get((form, p)) else ""
                    for p in s.persona]
            fig.add_trace(go.Scatter(
                x=s.econ, y=s.social, mode="markers+text",
                text=text, textposition="top center",
                textfont=dict(size=9, color=colour),
                marker=dict(symbol="star" if attr == "base" else symbol, size=14 if attr == "base" else 10,
                            color=colour, line=dict(width=1.5, color=colour)),
                error_x=dict(type="data", array=s.econ_sd, thickness=0.8, width=0, color=colour),
                error_y=dict(type="data", array=s.social_sd, thickness=0.8, width=0, color=colour),
                name=f"{attr} ({form})", legendgroup=attr,
                hovertemplate="%{customdata}<br>economic %{x:.2f}, social %{y:.2f}<extra>" + form + "</extra>",
                customdata=list(s.persona)))
    shown = positions[positions.form == "closed_shown"]
    if len(shown):  # a cyclic run: where the one shuffled order would have put each persona
        fig.add_trace(go.Scatter(x=shown.econ, y=shown.social, mode="markers", name="closed, one shuffled order",
                                 marker=dict(symbol="x-thin", size=9, line=dict(width=1.5, color="#999")),
                                 hovertemplate="%{customdata}<br>economic %{x:.2f}, social %{y:.2f}<extra>one order</extra>",
                                 customdata=list(shown.persona)))
    lim = max(2.0, float(np.ceil(np.nanmax(np.abs(positions[["econ", "social"]].to_numpy())) + 0.5)))
    fig.add_hline(y=0, line=dict(color="#888", width=1))
    fig.add_vline(x=0, line=dict(color="#888", width=1))
    order_note = "; closed form order-averaged over the cyclic orders, grey × one shuffled order" if len(shown) else ""
    fig.update_layout(title=f"{model}: Political Compass position per persona<br><sup>closed form filled, open form hollow"
                            f"{order_note}; * shift from base significant (BH q < 0.05); bars: s.d. over instructions; "
                            "hover for names</sup>",
                      template="plotly_white", width=900, height=760,
                      xaxis=dict(title="economic (left − / right +)", range=[-lim, lim], zeroline=False),
                      yaxis=dict(title="social (libertarian − / authoritarian +)", range=[-lim, lim], zeroline=False,
                                 scaleanchor="x"),
                      legend=dict(orientation="v", x=1.02, y=1))
    return fig


def shift_figure(shifts: pd.DataFrame) -> go.Figure:
    """Shift of each persona from the base case on both axes, per form, with significance marks."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["economic shift", "social shift"], shared_yaxes=True)
    for col, axis in ((1, "econ"), (2, "social")):
        for form, colour in (("closed", "#1f77b4"), ("open", "#d62728")):
            s = shifts[shifts.form == form].sort_values("persona")
            if not len(s):
                continue
            q = s[f"q_{axis}"]
            err = (dict(type="data", symmetric=False, array=s[f"d_{axis}_high"] - s[f"d_{axis}"],
                        arrayminus=s[f"d_{axis}"] - s[f"d_{axis}_low"], thickness=1, width=2, color="#444")
                   if f"d_{axis}_low" in s and s[f"d_{axis}_low"].notna().all() else None)
            fig.add_trace(go.Bar(y=s.persona, x=s[f"d_{axis}"], orientation="h", name=form, marker_color=colour, error_x=err,
                                 showlegend=(col == 1), opacity=1.0, text=["*" if v < ALPHA else "" for v in q],
                                 textposition="outside",
                                 hovertemplate="%{y}: %{x:.2f}<br>q=%{customdata:.3f}<extra>" + form + "</extra>",
                                 customdata=q), row=1, col=col)
    fig.update_layout(title="Shift from the base case (* BH q < 0.05, paired sign-flip permutation test; bars: 95% bootstrap "
                            "interval over propositions)",
                      template="plotly_white", barmode="group", height=120 + 26 * shifts.persona.nunique(), width=1000)
    return fig


def agreement_figure(agreement: pd.DataFrame, summary: dict) -> go.Figure:
    """Closed-vs-open agreement per persona (same side and exact), and the closed x open answer table."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=["agreement per persona", "closed answer (rows) × open stance (columns)"])
    per = agreement.groupby("persona")[["same_side", "exact"]].mean().reset_index().sort_values("persona")
    fig.add_trace(go.Bar(y=per.persona, x=per.same_side, orientation="h", name="same side (agree vs disagree)",
                         marker_color="#1f77b4"), row=1, col=1)
    fig.add_trace(go.Bar(y=per.persona, x=per.exact, orientation="h", name="exact answer", marker_color="#ff7f0e"),
                  row=1, col=1)
    for key, colour in (("same_side_chance", "#1f77b4"), ("exact_chance", "#ff7f0e")):
        if summary.get(key) is not None:
            fig.add_vline(x=summary[key], line=dict(color=colour, dash="dot"), row=1, col=1)
    table = np.zeros((4, 4), int)
    for a, b in zip(agreement["closed"], agreement["open"]):
        table[int(a), int(b)] += 1
    fig.add_trace(go.Heatmap(z=table, x=list(ANSWERS), y=list(ANSWERS), colorscale="Blues", showscale=False,
                             text=table, texttemplate="%{text}"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="share of closed/open pairs (dotted: chance from the answer rates)", range=[0, 1],
                     row=1, col=1)
    fig.update_layout(title="Does the closed-form answer match the stance of the open text?", template="plotly_white",
                      barmode="group", height=140 + 30 * len(per), width=1200, legend=dict(orientation="h", y=-0.08))
    return fig


PROBE_LINES = {"closed->closed": ("closed → closed", "#1f77b4", "solid"), "open->open": ("open → open", "#d62728", "solid"),
               "closed->open": ("closed → open (transfer)", "#9467bd", "dash"),
               "open->closed": ("open → closed (transfer)", "#ff7f0e", "dash"),
               "ic": ("IC: shared probe agrees across forms", "#2ca02c", "solid"),
               "ic_chance": ("IC expected from prediction rates", "#7f7f7f", "dot"),
               "random": ("control: random labels", "#bcbd22", "dot")}


def probe_figure(probes: pd.DataFrame, model: str, control: pd.DataFrame | None = None) -> go.Figure:
    """Held-out balanced accuracy by layer for stance probes on closed and open prompts (folds by proposition)."""

    kinds = [k for k in PROBE_TITLES if k in set(probes.probe)]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[PROBE_TITLES[k] for k in kinds], shared_yaxes=True)
    for c, kind in enumerate(kinds, start=1):
        for metric, (label, colour, dash) in PROBE_LINES.items():
            sub = probes[(probes.probe == kind) & (probes.metric == metric)].sort_values("layer")
            if len(sub):
                add_band(fig, sub, sub["layer"], colour, 1, c, label, dash, legend=(c == 1))
        if control is not None and len(control):
            sub = control[(control.probe == kind) & (control.metric == "first_listed_agrees")].sort_values("layer")
            if len(sub):
                add_band(fig, sub, sub["layer"], "#8c564b", 1, c, "control: first-listed option agrees (closed)", "dashdot",
                      legend=(c == 1))
        fig.add_hline(y=0.5, line=dict(color="black", width=1, dash="dot"), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c)
    fig.update_yaxes(title_text="held-out balanced accuracy / agreement", range=[0.2, 1.02], row=1, col=1)
    fig.update_layout(title=f"{model}: is the stance (agree vs disagree) readable, and shared, in closed and open prompts?",
                      template="plotly_white", height=500, width=560 * len(kinds) + 160, legend=dict(orientation="h", y=-0.2))
    return fig


def content_probe_figure(table: pd.DataFrame, model: str) -> go.Figure:
    """Every-order closed prompts: held-out balanced accuracy by layer for the content side, the side said in that
    order and the first-listed answer's side, each with its 95% band, random-label control and family-wise threshold."""
    colours = {"content": "#1f77b4", "said": "#d62728", "first_listed_agrees": "#8c564b"}
    fig = go.Figure()
    for label, colour in colours.items():
        sub = table[table.label == label].sort_values("layer")
        if not len(sub):
            continue
        name = CONTENT_LABELS[label]
        fig.add_trace(go.Scatter(x=list(sub.layer) + list(sub.layer)[::-1], y=list(sub.high) + list(sub.low)[::-1],
                                 fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=sub.layer, y=sub.value, mode="lines+markers", name=name, line=dict(color=colour)))
        fig.add_trace(go.Scatter(x=sub.layer, y=sub.control, mode="lines", name=f"random labels ({label})",
                                 line=dict(color=colour, dash="dot", width=1)))
        fig.add_hline(y=float(sub.threshold.iloc[0]), line=dict(color=colour, dash="dash", width=1))
    fig.update_layout(title=f"{model}: closed prompts in every order — content vs what is said vs the listing<br><sup>dashed: "
                            "family-wise 95% threshold (max over layers under random labels); bands: 95% bootstrap over "
                            "propositions</sup>", template="plotly_white", height=480, width=1000,
                      xaxis_title="layer (resid_post, last token)", yaxis_title="held-out balanced accuracy",
                      yaxis_range=[0.3, 1.02], legend=dict(orientation="h", y=-0.2))
    return fig


def persona_effect_figure(effect: pd.DataFrame) -> go.Figure:
    """Persona shift along the base case's internal stance direction, per layer (1.0 = an answer change's gap)."""
    pivot = effect.pivot(index="persona", columns="layer", values="shift").sort_index()
    pv = effect.pivot(index="persona", columns="layer", values="p").reindex(pivot.index)
    lim = float(np.nanmax(np.abs(pivot.to_numpy()))) if pivot.size else 1.0
    fig = go.Figure(go.Heatmap(z=pivot.to_numpy(), x=list(pivot.columns), y=list(pivot.index), colorscale="RdBu_r",
                               zmid=0, zmin=-lim, zmax=lim, text=np.where(pv.to_numpy() < 0.01, "•", ""),
                               texttemplate="%{text}", colorbar=dict(title="shift")))
    fig.update_layout(title="Persona shift along the internal stance direction (closed prompts; + toward 'agree'; "
                            "• p < 0.01)", template="plotly_white", xaxis_title="layer",
                      height=140 + 24 * len(pivot), width=1000)
    return fig


def trope_bubble_figure(tropes: pd.DataFrame, top: int = 30) -> go.Figure:
    """Tropes: reach (distinct prompts) against the share of agreeing texts; bubble size = sentences."""
    t = tropes.head(top)
    size = np.sqrt(t.sentences.to_numpy()) if len(t) else np.array([])
    fig = go.Figure(go.Scatter(
        x=t.agree_share, y=t.prompts, mode="markers+text", text=[f"T{i}" for i in t.trope], textposition="middle center",
        marker=dict(size=8 + 30 * size / (size.max() if len(size) else 1), color=t.agree_share, colorscale="RdBu",
                    cmin=0, cmax=1, line=dict(width=1, color="#333"), colorbar=dict(title="agree share")),
        customdata=np.stack([t.label.str.slice(0, 140), t.top_personas], axis=-1) if len(t) else None,
        hovertemplate="%{customdata[0]}<br>%{y} prompts, agree share %{x:.2f}<br>%{customdata[1]}<extra></extra>"))
    fig.update_layout(title=f"Top {len(t)} tropes: how many prompts they recur in, and the stance of the texts using them",
                      template="plotly_white", width=1000, height=620, xaxis=dict(title="share of texts that agree",
                                                                               range=[-0.05, 1.05]),
                      yaxis_title="distinct prompts")
    return fig


def derived_numbers(persona_effect: pd.DataFrame | None) -> dict[str, float]:
    """Numbers the findings quote that no run table holds as such, computed from the tables (and
    written to the report's ``tables/derived.json``, so every quoted number is in a committed table)."""
    out: dict[str, float] = {}
    if persona_effect is not None and len(persona_effect):
        last = persona_effect[persona_effect.layer == persona_effect.layer.max()]
        out["persona_internal_vs_behaviour_r_last_layer"] = (
            float(np.corrcoef(last["shift"], last["behaviour_shift"])[0, 1]) if len(last) > 2 else float("nan"))
    return out


def pct_numbers(run_dir: str | Path) -> dict[str, Any]:
    """Every table of a PCT run the report reads, loaded once."""
    run = RunDir(run_dir)
    n: dict[str, Any] = {"manifest": run.read_manifest()}
    for name in ("positions.csv", "shifts.csv", "agreement.csv", "probes.csv", "persona_effect.csv", "tropes.csv",
                 "probes_order_control.csv", "probes_content.csv"):
        n[name.split(".")[0]] = _load(run, name)
    for name in ("compass.json", "tropes.json", "judge_check.json", "probes_content.json"):
        p = run.path / name
        n[name.split(".")[0] + "_summary"] = json.loads(p.read_text()) if p.is_file() else None
    n["model"] = n["manifest"].get("model", {}).get("name") or n["manifest"].get("stages", {}).get("pct", {}).get(
        "config", {}).get("model", "model")
    return n


def _best(probes: pd.DataFrame, metric: str, kind: str) -> tuple[int, float, float] | None:
    """(layer, mean, sem) where ``metric`` peaks; None when the metric was not computed (one-class labels)."""
    s = probes[(probes.metric == metric) & (probes.probe == kind)]
    if not len(s):
        return None
    r = s.loc[s["mean"].idxmax()]
    return int(r["layer"]), float(r["mean"]), float(r["sem"])


def _with_interval(row: Any, axis: str) -> str:
    """``-1.00 [-1.40, -0.61]`` when the positions table has intervals (older runs: the value alone)."""
    low, high = getattr(row, f"{axis}_low", None), getattr(row, f"{axis}_high", None)
    value = getattr(row, axis)
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:+.2f}"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def _shift_text(r: Any) -> str:
    """A persona's shift on both axes, with 95% intervals when the table has them."""
    if "d_econ_low" in r._fields and not pd.isna(r.d_econ_low):
        return (f"economic {r.d_econ:+.2f} [{r.d_econ_low:+.2f}, {r.d_econ_high:+.2f}], social {r.d_social:+.2f} "
                f"[{r.d_social_low:+.2f}, {r.d_social_high:+.2f}]")
    return f"{r.d_econ:+.2f}, {r.d_social:+.2f}"


CONTENT_LABELS = {"content": "the order-averaged answer's side (content)",
                  "said": "the side of the answer said in that order",
                  "first_listed_agrees": "whether the first-listed answer agrees (position control: prompt text, no stance)"}


SHIFT_SOURCE, CONTENT_SOURCE = "shifts.csv", "probes_content.json"
AXES = {"econ": "economic", "social": "social"}


def pct_ledger(n: dict[str, Any]) -> pd.DataFrame:
    """Every test the PCT report words (each persona's shift on each axis; each order-free probe's max-over-layers
    test) with Benjamini-Hochberg q-values across all of them: the report's one claims ledger."""
    rows = []
    sh = n.get("shifts")
    if sh is not None:
        for r in sh.itertuples():
            for axis in AXES:
                p = getattr(r, f"p_{axis}", float("nan"))
                if p == p:
                    rows.append({"source": SHIFT_SOURCE, "test": f"{r.form}/{r.persona}/{axis}",
                                 "family": "persona shift", "effect": getattr(r, f"d_{axis}"), "p": float(p),
                                 "n": int(r.n_pairs)})
    summary = n.get("probes_content_summary") or {}
    for key in CONTENT_LABELS:
        s = summary.get(key)
        if isinstance(s, dict) and isinstance(s.get("p_value"), (int, float)):
            rows.append({"source": CONTENT_SOURCE, "test": key, "family": "order-free probe", "effect": s.get("best"),
                         "p": float(s["p_value"]), "n": s.get("n_groups")})
    frame = pd.DataFrame(rows, columns=["source", "test", "family", "effect", "p", "n"])
    frame["q"] = false_discovery_control(frame["p"].to_numpy(float), method="bh") if len(frame) else []
    frame["survives"] = frame["q"] < ALPHA
    return frame


def with_report_q(shifts: pd.DataFrame | None, ledger: pd.DataFrame) -> pd.DataFrame | None:
    """The shift table with each q replaced by its q across the whole report (the stage's own q corrects over the
    shifts only), so the figure's stars, the table and the findings read one correction."""
    if shifts is None or not len(ledger):
        return shifts
    q = q_by_key(ledger)
    out = shifts.copy()
    for axis in AXES:
        out[f"q_{axis}"] = [q.get(ledger_key(SHIFT_SOURCE, f"{r.form}/{r.persona}/{axis}"), float("nan"))
                            for r in out.itertuples()]
    return out


def content_probe_text(summary: dict[str, Any] | None) -> str:
    """The every-order probes in words, from their max-over-layers tests."""
    if not summary:
        return ""
    bits = [decodable(summary[k], what, unit="propositions") for k, what in CONTENT_LABELS.items()
            if isinstance(summary.get(k), dict) and "best" in summary[k]]
    return (". ".join(b[:1].upper() + b[1:] for b in bits)  # one sentence per label: the first is the verdict
            + f". Read from every closed prompt in every order it was asked in ({summary['n_rows']} rows, "
            f"{summary['n_prompts']} prompts, folds holding out whole propositions; difference-of-means probes against "
            "random labels, the best layer's test family-wise). The content label is the same under every order of a "
            "prompt, so the listing cannot carry it.")


def pct_findings(n: dict[str, Any], ledger: pd.DataFrame | None = None) -> list[Finding]:
    """Numbered findings worded from the numbers (no hand-written claims); a claimed effect rests on its q across the
    report's ledger (:func:`pct_ledger`), and each finding records the ledger keys it asserts."""
    ledger = pct_ledger(n) if ledger is None else ledger
    n = {**n, "shifts": with_report_q(n["shifts"], ledger),
         "probes_content_summary": with_q_values(json.loads(json.dumps(n.get("probes_content_summary"))),
                                                 CONTENT_SOURCE, ledger)}
    out: list[Finding] = []
    pos, sh, cs = n["positions"], n["shifts"], n["compass_summary"]
    if pos is not None:
        base = pos[(pos.form == "closed") & (pos.persona == "base")]
        rates = cs.get("closed_answer_rates", {}) if cs else {}
        top = max(rates, key=rates.get) if rates else None
        if len(base):
            b = base.iloc[0]
            where = (f"economic {_with_interval(b, 'econ')}, social {_with_interval(b, 'social')}")
            shown = pos[(pos.form == "closed_shown") & (pos.persona == "base")]
            one_order = (f" Read in the one shuffled order instead, it would sit at economic {shown.iloc[0].econ:+.2f}, "
                         f"social {shown.iloc[0].social:+.2f}." if len(shown) else "")
            has_interval = not pd.isna(getattr(b, "econ_low", float("nan")))
            spread = ("95% bootstrap over propositions" if has_interval
                      else "no interval: this run's positions table predates them")
            out.append(Finding("Closed-form position.", f"Without a persona the model sits at {where} ({spread}; "
                        f"s.d. over instructions {b.econ_sd:.2f} / {b.social_sd:.2f})"
                        + (f"; '{top}' is its most frequent closed answer ({rates[top]:.0%} of prompts)." if top else ".")
                        + one_order))
    pb = (cs or {}).get("position_bias")
    if pb:
        share = pb["chosen_listed_position_share"]
        if "shown_order" in pb:
            shown = pb["shown_order"]["chosen_listed_position_share"]
            out.append(Finding("Position bias.", f"Read in the one shuffled order, the chosen answer is the first option listed "
                        f"in {shown[0]:.0%} of closed prompts. Averaged over the four cyclic orders of the answers "
                        f"(every answer listed first once) it is the shuffled order's first option in {share[0]:.0%} "
                        f"(second {share[1]:.0%}, third {share[2]:.0%}, fourth {share[3]:.0%}), and the answer changes "
                        f"with the order in {pb['order_sensitive']:.0%} of prompts. Positions and shifts below are "
                        "read from the order-averaged answers."))
        else:
            out.append(Finding("Position bias.", f"The chosen answer is the first option listed in {share[0]:.0%} of closed "
                        f"prompts (second {share[1]:.0%}, third {share[2]:.0%}, fourth {share[3]:.0%}); its side matches "
                        f"the first-listed option's side {pb['same_side_as_first_listed']:.0%} of the time. Options are "
                        f"ordered {_order_words(n['manifest'])}."))
    if sh is not None and len(sh):
        c = sh[sh.form == "closed"]
        sig = c[(c.q_econ < ALPHA) | (c.q_social < ALPHA)]
        big = c.reindex(c[["d_econ", "d_social"]].abs().max(axis=1).sort_values(ascending=False).index).head(3)
        noise = (cs or {}).get("instruction_noise") or {}
        floor = (f" For scale: the same persona answers {noise['answer_changes_between_instructions']:.0%} of "
                 "propositions differently under another closed instruction." if noise else "")
        claims = [ledger_key(SHIFT_SOURCE, f"{r.form}/{r.persona}/{axis}") for r in sig.itertuples() for axis in AXES
                  if getattr(r, f"q_{axis}") < ALPHA]
        out.append(Finding("Personas.", f"{len(sig)} of {len(c)} personas move the closed-form position significantly "
                    f"(BH q < {ALPHA} across the report's {len(ledger)} tests)"
                    + (f": {', '.join(sig.persona)}" if 0 < len(sig) <= 8 else "") +
                    ". Largest moves: " + "; ".join(f"{r.persona} ({_shift_text(r)})" for r in big.itertuples()) +
                    f". A persona changes the answer to a median {c.answers_changed.median():.0%} of propositions."
                    + floor, claims=claims))
    jc = n.get("judge_check_summary")
    if jc:
        out.append(Finding("Judge check.", f"On {jc['statements']} planted unambiguous statements (one per answer and "
                    f"proposition) the judge ({jc['judge']}) names the exact answer {jc['exact']:.2f} of the time "
                    f"(chance 0.25) and the side {jc['same_side']:.2f} (chance 0.50)"
                    + (f"; on implicit statements ('I think that …' / 'I do not think that …') it gets the side "
                       f"{jc['implicit_same_side']:.2f} (agreeing ones {jc['implicit_agree_read_as_agree']:.2f}, "
                       f"disagreeing ones {jc['implicit_disagree_read_as_disagree']:.2f})" if "implicit_same_side" in jc else "")
                    + ("; open-form stances below are only as good as that." if jc["same_side"] < 0.9 else ".")))
    if cs and cs.get("pairs"):
        out.append(Finding("Closed vs open.", f"On {cs['pairs']} pairs the open text takes the same side as the closed answer "
                    f"{cs['same_side']:.2f} of the time (chance from the answer rates {cs['same_side_chance']:.2f}); "
                    f"the exact answer matches {cs['exact']:.2f} (chance {cs['exact_chance']:.2f})."))
    pr = n["probes"]
    if pr is not None and len(pr):
        kind = "logreg" if "logreg" in set(pr.probe) else pr.probe.iloc[0]
        said = {"closed->closed": "reads the closed answer's side", "open->open": "reads the open text's side from "
                "the open prompt", "closed->open": "trained on closed prompts, predicts the open stance"}
        bits = [f"{text} at up to {b[1]:.2f} (layer {b[0]}, ±{b[2]:.2f})"
                for m, text in said.items() if (b := _best(pr, m, kind)) is not None]
        missing = [m for m in said if _best(pr, m, kind) is None]
        oc = n.get("probes_order_control")
        if oc is not None and len(oc) and _best(oc, "first_listed_agrees", kind) is not None:
            b = _best(oc, "first_listed_agrees", kind)
            bits.append(f"whether the first-listed option agrees (prompt text, no stance) it reads at up to {b[1]:.2f} "
                        f"(layer {b[0]})")
        out.append(Finding("Inside.", f"A {kind} probe " + "; ".join(bits) + ". Folds hold out whole propositions, so no probe "
                    "can memorise a proposition's answer." + (f" Not computed (one stance only): {', '.join(missing)}."
                                                               if missing else "")))
    with asserted_claims() as claims:
        content = content_probe_text(n.get("probes_content_summary"))
    if content:
        out.append(Finding("Inside, order-free.", content, claims=list(claims)))
    eff = n["persona_effect"]
    if eff is not None and len(eff):
        last = eff[eff.layer == eff.layer.max()]
        corr = derived_numbers(eff)["persona_internal_vs_behaviour_r_last_layer"]
        strongest = eff.loc[eff["shift"].abs().idxmax()]
        out.append(Finding("Personas inside.", f"Along the base case's internal stance direction, the largest persona shift is "
                    f"{strongest['persona']} at layer {int(strongest.layer)} ({strongest['shift']:+.2f} of an answer "
                    f"change's gap); at the last layer internal and behavioural (P(agree)) shifts correlate r = {corr:.2f} "
                    f"over {len(last)} personas."))
    tr, ts = n["tropes"], n["tropes_summary"]
    if tr is not None and ts:
        lab = f" The widest: “{tr.iloc[0].label[:120]}” ({int(tr.iloc[0].prompts)} prompts)." if len(tr) else ""
        out.append(Finding("Tropes.", f"{ts['tropes']} sentence clusters recur in at least {ts['min_prompts']} distinct prompts "
                    f"({ts['sentences']} sentences from {ts['texts']} open texts, cosine ≥ {ts['threshold']}; "
                    f"{ts.get('dropped_prompt_echoes', 0)} sentences copied from the prompt left out)." + lab))
    return out


def _order_words(manifest: dict) -> str:
    by = manifest.get("stages", {}).get("pct", {}).get("config", {}).get("order_by", "prompt")
    return ("once per proposition and instruction, shared by every persona (persona shifts are not order effects)"
            if by == "item" else "afresh for every prompt, as in LLM Tropes (persona shifts include order effects)")


def pct_figures(n: dict[str, Any]) -> list[tuple[str, go.Figure]]:
    """The PCT report's figures, in page order."""
    figs = []
    if n["positions"] is not None:
        figs.append(("compass", compass_figure(n["positions"], n["shifts"], n["model"])))
        figs.append(("shifts", shift_figure(n["shifts"])))
    if n["agreement"] is not None:
        figs.append(("agreement", agreement_figure(n["agreement"], n["compass_summary"] or {})))
    if n["probes"] is not None:
        figs.append(("probes", probe_figure(n["probes"], n["model"], n.get("probes_order_control"))))
    if n.get("probes_content") is not None and len(n["probes_content"]):
        figs.append(("probes_content", content_probe_figure(n["probes_content"], n["model"])))
    if n["persona_effect"] is not None and len(n["persona_effect"]):
        figs.append(("persona_effect", persona_effect_figure(n["persona_effect"])))
    if n["tropes"] is not None and len(n["tropes"]):
        figs.append(("tropes", trope_bubble_figure(n["tropes"])))
    return figs


def _selection_text(manifest: dict) -> str:
    c = manifest.get("stages", {}).get("pct", {}).get("config", {})
    return (f"propositions {c.get('propositions')}, personas {c.get('personas')}, closed instructions "
            f"{c.get('closed_instructions')}, open instructions {c.get('open_instructions')}, option-order seed "
            f"{c.get('seed')} (order per {c.get('order_by', 'prompt')}), {c.get('max_new_tokens')} new tokens per open answer (greedy), judge "
            f"{c.get('judge') or 'the model itself'}{' (calibrated)' if c.get('calibrate') else ''}")


def remake_command(manifest: dict, run_dir: Path) -> str:
    """The ``wdprobe pct run`` command line that makes this run (settings from the manifest)."""
    c = manifest.get("stages", {}).get("pct", {}).get("config", {})
    flags = [("--model", c.get("model")), ("--data", c.get("data")), ("--out", str(run_dir)),
             ("--propositions", c.get("propositions")), ("--personas", c.get("personas")),
             ("--closed-instructions", c.get("closed_instructions")), ("--open-instructions", c.get("open_instructions")),
             ("--seed", c.get("seed")), ("--order-by", c.get("order_by")), ("--orders", c.get("orders")),
             ("--max-new-tokens", c.get("max_new_tokens")), ("--judge", c.get("judge"))]
    parts = ["wdprobe pct run"] + [f"{k} {v}" for k, v in flags if v is not None]
    done = [s for s in manifest.get("stages", {}) if s not in ("pct", "prompts")]
    if done and "open" not in done:  # a partial study: the stages it ran
        parts.append("--stages " + ",".join(done))
    if c.get("calibrate") is False:
        parts.append("--no-calibrate")
    return " ".join(parts)


def _timings(manifest: dict) -> list[list[str]]:
    st = manifest.get("stages", {})
    rows = [[k, f"{v['seconds']:.0f}", f"{v['seconds'] / 60:.1f}"] for k, v in st.items() if "seconds" in v]
    total = sum(v["seconds"] for v in st.values() if "seconds" in v)
    return rows + [["total", f"{total:.0f}", f"{total / 60:.1f}"]]


def shift_rows(sh: pd.DataFrame) -> list[list[str]]:
    """The persona-shift table rows (shift, p and q per axis)."""
    def shift(r: Any, axis: str) -> str:
        value, low, high = getattr(r, f"d_{axis}"), getattr(r, f"d_{axis}_low", None), getattr(r, f"d_{axis}_high", None)
        return f"{value:+.2f}" + (f" [{low:+.2f}, {high:+.2f}]" if low is not None and not pd.isna(low) else "")

    return [[r.form, r.persona, shift(r, "econ"), f"{r.q_econ:.3f}", shift(r, "social"), f"{r.q_social:.3f}",
             f"{r.answers_changed:.2f}", int(r.n_pairs)] for r in sh.itertuples()]


SHIFT_HEADER = ["form", "persona", "Δ economic [95%]", "q", "Δ social [95%]", "q", "answers changed", "pairs"]


def shift_header(sh: pd.DataFrame) -> list[str]:
    """The persona-shift table's header; ``[95%]`` only where the table has intervals (older runs do not)."""
    return SHIFT_HEADER if "d_econ_low" in sh.columns else [h.replace(" [95%]", "") for h in SHIFT_HEADER]


def trope_rows(tr: pd.DataFrame, limit: int = 40) -> list[list[str]]:
    """The trope table rows, widest first."""
    return [[f"T{r.trope}", r.label, r.prompts, r.sentences, r.n_strongly_disagree, r.n_disagree, r.n_agree,
             r.n_strongly_agree, r.top_personas] for r in tr.head(limit).itertuples()]


TROPE_HEADER = ["trope", "representative sentence", "prompts", "sentences", "SD", "D", "A", "SA", "top personas"]


def render_tropes_html(n: dict[str, Any], run: RunDir, page: Path) -> str:
    """``tropes.html``: the bubble chart and every trope with example sentences by stance."""
    tr = n["tropes"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Tropes: {html.escape(n['model'])}</title>"
             f"<style>{CSS}td:nth-child(2),td:nth-child(9){{text-align:left}}</style></head><body>"
             f"<h1>Tropes of {html.escape(n['model'])}</h1>"]
    ts = n["tropes_summary"] or {}
    parts.append(f"<p class='sub'>{ts.get('tropes', 0)} tropes from {ts.get('sentences', 0)} sentences of "
                 f"{ts.get('texts', 0)} open-domain texts; embedder {html.escape(str(ts.get('embedder')))}, cosine ≥ "
                 f"{ts.get('threshold')}, at least {ts.get('min_prompts')} distinct prompts. Counts by the judged "
                 "stance of the text: SD strongly disagree, D disagree, A agree, SA strongly agree.</p>")
    if tr is None or not len(tr):
        return "\n".join(parts + ["<p>No trope recurs often enough.</p></body></html>"])
    parts.append(figure_html([trope_bubble_figure(tr)], page))
    members = _load(run, "trope_sentences.csv")
    parts.append(table_html(TROPE_HEADER, trope_rows(tr, limit=len(tr))))
    if members is None:  # the tropes' sentences were not kept (e.g. a report rebuilt from its tables)
        return "\n".join(parts + ["<p>No example sentences: the run's trope_sentences.csv is missing.</p></body></html>"])
    parts.append("<h2>Examples</h2>")
    for r in tr.head(30).itertuples():
        ex = members[members.trope == r.trope].drop_duplicates("sentence").head(5)
        items = "".join(f"<li>{html.escape(str(e.sentence))} <span class='sub'>({html.escape(str(e.persona))}, "
                        f"p{int(e.proposition):02d}, {ANSWERS[int(e.stance)]})</span></li>" for e in ex.itertuples())
        parts.append(f"<h3>T{r.trope}: {html.escape(r.label)}</h3><ul>{items}</ul>")
    return "\n".join(parts + ["</body></html>"])


def write_pct_report(run_dir: str | Path, out_dir: str | Path, *, notes: str | None = None, png: bool = True) -> Path:
    """``index.html`` (findings, tables, every figure), ``README.md`` (its markdown twin with PNGs),
    ``tropes.html`` and the small tables behind them, in ``out_dir``."""

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        if (run.path / name).is_file():
            shutil.copy(run.path / name, out / "tables" / name)
    n = pct_numbers(run.path)
    atomic_write_text(out / "tables" / "derived.json", json.dumps(derived_numbers(n["persona_effect"]), indent=2) + "\n")
    ledger = pct_ledger(n)
    findings = pct_findings(n, ledger)
    n["shifts"] = with_report_q(n["shifts"], ledger)  # the figure and the table read the report-wide q too
    figs = pct_figures(n)
    ledger.to_csv(out / "claims.csv", index=False)
    publish_findings(out, findings, ledger, culprit=f"PCT report of {run.path}")
    found = [(f.title, f.text) for f in findings]
    manifest = n["manifest"]
    sel = _selection_text(manifest)
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>PCT: {html.escape(n['model'])}</title>"
            f"<style>{CSS}</style></head><body><h1>Political Compass under personas: {html.escape(n['model'])}</h1>"
            + lead_html(lead_note(out)),
            f"<p class='sub'>{html.escape(sel)}. Tropes: <a href='tropes.html'>tropes.html</a>. Made by "
            f"<code>{html.escape(remake_command(manifest, run.path))}</code>.</p>",
            "<nav><a href='#findings'>Findings</a><a href='#figures'>Figures</a><a href='#tables'>Tables</a></nav>",
            "<h2 id='findings'>Findings</h2>", findings_html(found),
            f"<p class='sub'>Every test the findings word is in <a href='claims.csv'>claims.csv</a> ({len(ledger)} "
            f"tests; q: Benjamini-Hochberg across all of them).</p>"]
    if notes and notes.strip():
        page.append("<h3>Reading</h3>" + notes_html(notes))
    page.append("<h2 id='figures'>Figures</h2>" + figure_html([fig for _, fig in figs], out / "index.html"))
    page.append("<h2 id='tables'>Tables</h2>")
    if n["shifts"] is not None:
        page.append(folded("Persona shifts (one row per persona)", table_html(shift_header(n["shifts"]), shift_rows(n["shifts"]))))
    page.append(folded("Timing per stage", table_html(["stage", "wall s", "wall min"], _timings(manifest))))
    page.append("<h2>Manifest</h2><details><summary>manifest.json</summary><pre>" +
                html.escape(json.dumps(manifest, indent=2, default=str)) + "</pre></details></body></html>")
    atomic_write_text(out / "index.html", "\n".join(page))
    atomic_write_text(out / "tropes.html", render_tropes_html(n, run, out / "tropes.html"))
    pngs = []
    if png:
        (out / "figures").mkdir(exist_ok=True)
        for name, fig in figs:
            if write_png(fig, out / "figures" / f"{name}.png"):
                pngs.append(f"figures/{name}.png")
    md = [f"# Political Compass under personas: {n['model']}", "", *lead_markdown(lead_note(out)),
          f"Interactive page: [`index.html`](index.html); tropes: [`tropes.html`](tropes.html); tables in "
          f"[`tables/`](tables/). Selection: {sel}.", "", f"Made by `{remake_command(manifest, run.path)}` "
          "(add `--report DIR --notes FILE` for this folder).", "", "## Findings", "",
          f"Every test the findings word is in [`claims.csv`](claims.csv) ({len(ledger)} tests; q: Benjamini-Hochberg "
          f"across all of them, {int(ledger['survives'].sum()) if len(ledger) else 0} below {ALPHA})"
          + ("; the shift table's q is that report-wide q." if n["shifts"] is not None and len(n["shifts"]) else "."),
          ""]
    md += verdict_table_markdown(found) + [f"{i}. **{t}** {x}" for i, (t, x) in enumerate(found, 1)]
    if notes and notes.strip():
        md += ["", "## Reading", "", notes.strip()]
    if n["shifts"] is not None and len(n["shifts"]):
        md += ["", "## Persona shifts (vs base case)", "", "| " + " | ".join(shift_header(n["shifts"])) + " |",
               "|" + "---|" * len(SHIFT_HEADER)]
        md += ["| " + " | ".join(map(str, r)) + " |" for r in shift_rows(n["shifts"])]
    if n["tropes"] is not None and len(n["tropes"]):
        md += ["", "## Top tropes", "", "| " + " | ".join(TROPE_HEADER) + " |", "|" + "---|" * len(TROPE_HEADER)]
        md += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in trope_rows(n["tropes"], 15)]
    md += ["", "## Timing per stage (this machine)", "", "| stage | wall s | wall min |", "|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in _timings(manifest)]
    if pngs:
        md += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in pngs]
    elif png_problem():
        md += ["", "## Figures", "", f"Open `index.html` for the figures: {png_problem()}"]
    atomic_write_text(out / "README.md", "\n".join(md) + "\n")
    return out / "index.html"
