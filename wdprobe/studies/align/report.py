"""Report for alignment runs: change-rate curves in the paper's style, CS/PCS, and the inside view.

Everything is drawn from the tables each run directory already holds (``change_rates.csv``,
``inside_*.csv``, ``summary.json``, ``manifest.json``); the report folder gets copies of them, an
``index.html`` with interactive figures, PNGs where an exporter works, and a ``README.md`` of numbers.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError, StageNotFinishedError
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import png_problem, write_png
from wdprobe.reports.claims import Q_LEVEL, Finding, ledger_key, publish_findings, q_by_key
from wdprobe.reports.html import (
    CSS,
    findings_html,
    folded,
    lead_html,
    lead_markdown,
    lead_note,
    notes_html,
    verdict_table_markdown,
)
from wdprobe.reports.wording import asserted_claims, interval, versus
from wdprobe.runs.rundir import read_manifest_file, safe_name
from wdprobe.scoring.stats import proportion_difference

RUN_TITLES = {"word": "trained on words", "deed": "trained on deeds", "both": "trained on both (dual augmentation)",
              "paraphrase": "words + paraphrases"}
SHORT_TITLES = {"word": "words", "deed": "deeds", "both": "both forms", "paraphrase": "words + paraphrases"}
SET_DASH = {"train": "solid", "held_out": "dash"}
SET_NAMES = {"train": "trained items", "held_out": "held-out items"}


class AlignedRun:
    """One finished ``wdprobe align`` run, read from its directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "summary.json").is_file():
            raise StageNotFinishedError(f"{self.path}: no summary.json; finish the run (`wdprobe align ...`) first")
        self.summary = json.loads((self.path / "summary.json").read_text())
        self.manifest = read_manifest_file(self.path / "manifest.json")
        self.config = self.manifest["stages"]["align"]["config"]
        self.rates = pd.read_csv(self.path / "change_rates.csv")
        content = self.path / "change_rates_content.csv"
        self.content_rates = pd.read_csv(content) if content.is_file() else None
        self.movement = pd.read_csv(self.path / "inside_movement.csv")
        self.drift = pd.read_csv(self.path / "inside_drift.csv")
        ic = self.path / "inside_ic.csv"
        self.ic = pd.read_csv(ic) if ic.stat().st_size > 10 else pd.DataFrame()
        self.form = self.config["form"]
        self.trained = "deed" if self.form == "deed" else "word"
        self.other = "word" if self.trained == "deed" else "deed"

    @property
    def title(self) -> str:
        base = RUN_TITLES.get(self.form, self.form)
        return base + (", both option orders" if self.config.get("orders") in ("cyclic", "both") else "")

    @property
    def short(self) -> str:
        return SHORT_TITLES.get(self.form, self.form)

    def epoch_labels(self) -> list[str]:
        sched = self.summary["schedule"]
        return ["start"] + [f"{e} {obj.upper()}" for e, obj in enumerate(sched, 1)]


RATE_LABELS = {"direct": "direct: trained form answers with the target",
               "indirect": "indirect: other form moved to the target (in 'both forms': also trained)",
               "indirect_away": "control: other form moved off the target (same rate = no following)"}


def _width(n_panels: int) -> int:
    return max(700, 300 * n_panels + 160)


def change_rate_figure(runs: Sequence[AlignedRun]) -> go.Figure:
    """Direct vs indirect change per epoch, one panel per run (word training, then deed training, ...)."""
    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[f"trained on<br>{r.short}" for r in runs],
                        horizontal_spacing=0.03)
    colours = {"direct": "#1f77b4", "indirect": "#d62728", "indirect_away": "#7f7f7f"}
    for c, run in enumerate(runs, 1):
        labels = run.epoch_labels()
        for s in ("train", "held_out"):
            d = run.rates[run.rates["set"] == s].sort_values("epoch")
            x = [labels[e] for e in d["epoch"]]
            for which in ("direct", "indirect", "indirect_away"):
                name = RATE_LABELS[which]
                fig.add_trace(go.Scatter(x=x, y=d[which], mode="lines+markers", name=f"{name} — {SET_NAMES[s]}",
                                         legendgroup=f"{which}-{s}", showlegend=c == 1,
                                         line=dict(color=colours[which], dash=SET_DASH[s] if which != "indirect_away" else
                                                   ("dot" if s == "train" else "dashdot"), width=2 if which != "indirect_away" else 1),
                                         hovertemplate="%{y:.3f}"), row=1, col=c)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="share of items", row=1, col=1)
    fig.update_layout(title="Change rates per epoch (canonical options; solid: trained items, dashed: held out)",
                      height=560, width=_width(len(runs)), legend=dict(orientation="h", y=-0.25), margin=dict(b=190))
    return fig


def cs_figure(runs: Sequence[AlignedRun]) -> go.Figure:
    """CS and PCS per epoch, trained and held-out items."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["CS (word and deed choose the same stance)", "PCS"])
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, run in enumerate(runs):
        labels = run.epoch_labels()
        for s in ("train", "held_out"):
            d = run.rates[run.rates["set"] == s].sort_values("epoch")
            for col, metric in ((1, "cs"), (2, "pcs")):
                fig.add_trace(go.Scatter(x=[labels[e] for e in d["epoch"]], y=d[metric], mode="lines+markers",
                                         name=f"{run.title} — {SET_NAMES[s]}", legendgroup=f"{run.form}-{s}",
                                         showlegend=col == 1, line=dict(color=palette[i % len(palette)], dash=SET_DASH[s])),
                              row=1, col=col)
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(title="Consistency per epoch", height=430, legend=dict(orientation="h", y=-0.2))
    return fig


def shift_heatmap_figure(runs: Sequence[AlignedRun], item_set: str = "train") -> go.Figure:
    """Per run: movement towards the target along each form's own pre-training stance axis, layer x epoch."""
    titles = []
    for run in runs:
        titles += [f"trained on {run.short}:<br>{run.trained} prompts", f"trained on {run.short}:<br>{run.other} prompts"]

    fig = make_subplots(rows=len(runs), cols=2, subplot_titles=titles, vertical_spacing=0.08 if len(runs) > 1 else 0.2,
                        horizontal_spacing=0.06)
    for r, run in enumerate(runs, 1):
        labels = run.epoch_labels()
        for c, form in enumerate((run.trained, run.other), 1):
            d = run.movement[(run.movement["set"] == item_set) & (run.movement["form"] == form) & (run.movement["axis"] == form)]
            if d.empty:
                continue
            d = d.assign(change=d["read_target"] - d["read_target_start"])
            piv = d.pivot(index="layer", columns="epoch", values="change").sort_index()
            fig.add_trace(go.Heatmap(z=piv.values, x=[labels[e] for e in piv.columns], y=list(piv.index), zmin=-1, zmax=1,
                                     colorscale="RdBu_r", zmid=0, showscale=(r == 1 and c == 1),
                                     colorbar=dict(title="Δ read as<br>target"), hovertemplate="layer %{y}, %{x}: %{z:.2f}<extra></extra>"),
                          row=r, col=c)
            fig.update_yaxes(title_text="layer", row=r, col=c)
    fig.update_layout(title=f"Pre-training stance probe: share of {SET_NAMES[item_set]} read as the target, minus before",
                      width=1150,
                      height=330 * len(runs) + 80)
    return fig


def shift_lines_figure(runs: Sequence[AlignedRun], item_set: str = "train") -> go.Figure:
    """Final epoch: movement per layer along the trained form's axis, the other form's axis and the letter axis."""
    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[f"trained on<br>{r.short}" for r in runs],
                        horizontal_spacing=0.03)
    styles = {"trained": ("#1f77b4", "solid"), "other_own": ("#d62728", "solid"), "other_trained": ("#d62728", "dash"),
              "trained_letter": ("#1f77b4", "dot"), "other_letter": ("#d62728", "dot")}
    for c, run in enumerate(runs, 1):
        last = run.movement["epoch"].max()
        m = run.movement[(run.movement["epoch"] == last) & (run.movement["set"] == item_set)]
        series = {"trained": (run.trained, run.trained, "trained form, its own stance axis"),
                  "other_own": (run.other, run.other, "other form, its own stance axis"),
                  "other_trained": (run.other, run.trained, "other form, the trained form's stance axis"),
                  "trained_letter": (run.trained, "letter", "trained form, answer-letter axis (control)"),
                  "other_letter": (run.other, "letter", "other form, answer-letter axis (control)")}
        for key, (form, axis, label) in series.items():
            d = m[(m["form"] == form) & (m["axis"] == axis)].sort_values("layer")
            if d.empty:
                continue
            colour, dash = styles[key]
            fig.add_trace(go.Scatter(x=d["layer"], y=d["read_target"] - d["read_target_start"], mode="lines+markers", name=label,
                                     legendgroup=key, showlegend=c == 1, line=dict(color=colour, dash=dash)), row=1, col=c)
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c)
    fig.update_yaxes(title_text="Δ share read as target", range=[-1, 1], row=1, col=1)
    fig.update_layout(title=f"Last epoch, {SET_NAMES[item_set]}: pre-training probes reading the target, minus before",
                      height=500, width=_width(len(runs)), legend=dict(orientation="h", y=-0.22))
    return fig


def ic_figure(runs: Sequence[AlignedRun]) -> go.Figure:
    """IC(l) of a shared probe above its chance level, per epoch, with the CS above its chance level (dotted)."""
    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[f"trained on<br>{r.short}" for r in runs],
                        horizontal_spacing=0.03)
    for c, run in enumerate(runs, 1):
        if run.ic.empty:
            continue
        labels = run.epoch_labels()
        epochs = sorted(run.ic["epoch"].unique())
        for k, e in enumerate(epochs):
            d = run.ic[run.ic["epoch"] == e].sort_values("layer")
            shade = int(40 + 180 * k / max(len(epochs) - 1, 1))
            colour = f"rgb({255 - shade},80,{shade})"
            fig.add_trace(go.Scatter(x=d["layer"], y=d["ic"] - d["ic_chance"], mode="lines", name=labels[e],
                                     legendgroup=str(e), showlegend=c == 1, line=dict(color=colour),
                                     hovertemplate="IC %{customdata:.2f} (above chance %{y:.2f})",
                                     customdata=d["ic"]), row=1, col=c)
            if "cs_chance" in d:
                cs = float((d["cs"] - d["cs_chance"]).mean())
                fig.add_trace(go.Scatter(x=[d["layer"].min(), d["layer"].max()], y=[cs, cs], mode="lines",
                                         name=f"CS above chance, {labels[e]}", legendgroup=str(e), showlegend=False,
                                         line=dict(color=colour, dash="dot", width=1)), row=1, col=c)
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c)
    fig.update_yaxes(title_text="IC − chance (dotted: CS − chance)", range=[-0.5, 0.5], row=1, col=1)
    fig.update_layout(title="IC(l) of a shared difference-of-means probe above its chance level, per epoch",
                      height=460, width=_width(len(runs)), legend=dict(orientation="h", y=-0.22))
    return fig


def drift_figure(runs: Sequence[AlignedRun]) -> go.Figure:
    """How far stance directions move per epoch, beside their split-half noise floor."""
    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[f"trained on<br>{r.short}" for r in runs],
                        horizontal_spacing=0.03)
    for c, run in enumerate(runs, 1):
        last = run.drift["epoch"].max()
        d = run.drift[run.drift["epoch"] == last].sort_values("layer")
        for form, colour in (("word", "#1f77b4"), ("deed", "#d62728")):
            col = f"cos_{form}_to_start"
            if col in d and d[col].notna().any():
                fig.add_trace(go.Scatter(x=d["layer"], y=d[col], mode="lines+markers", name=f"{form} stance direction",
                                         legendgroup=form, showlegend=c == 1, line=dict(color=colour)), row=1, col=c)
            floor = f"split_half_{form}"
            if floor in d and d[floor].notna().any():
                fig.add_trace(go.Scatter(x=d["layer"], y=d[floor], mode="lines", legendgroup=form, showlegend=c == 1,
                                         name=f"{form}: two halves of the items before training (noise floor)",
                                         line=dict(color=colour, dash="dot", width=1)), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c)
    fig.update_yaxes(title_text="cosine to pre-training", range=[-1, 1], row=1, col=1)
    fig.update_layout(title="Stance directions after the last epoch: cosine to the pre-training direction", height=460, width=_width(len(runs)), legend=dict(orientation="h", y=-0.22))
    return fig


# ---- numbers and words ----------------------------------------------------------------------------

def _f(v: Any, nd: int = 2) -> str:
    try:
        if v is None or pd.isna(v):
            return "–"
    except TypeError:
        pass
    return f"{float(v):.{nd}f}"


def rate_rows(runs: Sequence[AlignedRun]) -> list[list[str]]:
    """Change-rate table rows after the last epoch, one per run and item set."""
    rows = []
    for run in runs:
        last = run.rates["epoch"].max()
        for s in ("train", "held_out"):
            start = run.rates[(run.rates["epoch"] == 0) & (run.rates["set"] == s)].iloc[0]
            end = run.rates[(run.rates["epoch"] == last) & (run.rates["set"] == s)].iloc[0]
            rows.append([run.title, SET_NAMES[s], str(int(end["n"])), _f(end["direct"]), _f(end["indirect"]),
                         _f(end["indirect_away"]), _f(end["following"]), f"{_f(start['cs'])} → {_f(end['cs'])}",
                         f"{_f(start['pcs'])} → {_f(end['pcs'])}"])
    return rows


RATE_HEADER = ["run", "items", "n", "direct", "indirect", "other moved off target", "following (indirect − off)",
               "CS start → end", "PCS start → end"]
CONTENT_RATE_HEADER = ["run", "items", "n", "direct", "indirect", "other moved off target", "following (indirect − off)",
                       "content CS start → end"]


def content_rate_rows(runs: Sequence[AlignedRun]) -> list[list[str]]:
    """The same rates read on content choices (each question asked in both orders), for runs evaluated that way."""
    rows = []
    for run in runs:
        r = run.content_rates
        if r is None or not len(r):
            continue
        last = r["epoch"].max()
        for s in ("train", "held_out"):
            start = r[(r["epoch"] == 0) & (r["set"] == s)].iloc[0]
            end = r[(r["epoch"] == last) & (r["set"] == s)].iloc[0]
            rows.append([run.title, SET_NAMES[s], str(int(end["n"])), _f(end["direct"]), _f(end["indirect"]),
                         _f(end["indirect_away"]), _f(end["following"]), f"{_f(start['cs'])} → {_f(end['cs'])}"])
    return rows


def _peak(values: Sequence[float]) -> tuple[int, float]:
    i = max(range(len(values)), key=lambda k: values[k])
    return i, values[i]


def following_evidence(row: Any) -> dict[str, Any]:
    """*Following* of one rates row as a test: moved onto the target among the other form's answers that were off it,
    minus moved off it among those on it (Newcombe interval, Fisher's exact p)."""
    n1, n2 = int(row["n_indirect"]), int(row["n_away"])
    return proportion_difference(round(float(row["indirect"]) * n1) if n1 else 0, n1,
                                 round(float(row["indirect_away"]) * n2) if n2 else 0, n2).to_json()


def following_tests(run: AlignedRun) -> list[dict[str, Any]]:
    """Every epoch's following test, by letter and on content choices, per item set: the numbers the findings
    quote, kept beside the report's tables."""
    out = []
    for reading, table in (("letter", run.rates), ("content", run.content_rates)):
        if table is None:
            continue
        for _, row in table.iterrows():
            if row["set"] == "all" or int(row.get("n_indirect", 0)) + int(row.get("n_away", 0)) == 0:
                continue
            e = following_evidence(row)
            out.append({"reading": reading, "epoch": int(row["epoch"]), "set": row["set"], "following": e["effect"],
                        "low": e["low"], "high": e["high"], "p_value": e["p_value"], "n": e["n"],
                        "significant": e["significant"]})
    return out


def following_text(row: Any, reading: str, q_value: float | None = None) -> str:
    """The other form's following in words, as its test supports (and, given ``q_value``, its correction across
    the report)."""
    e = following_evidence(row)
    if e["n"] == 0 or e["effect"] != e["effect"]:
        return f"{reading}: following not measurable (no item on one side of the target)"
    if q_value is not None:
        e["q_value"] = q_value
    value = interval(e["effect"], e["low"], e["high"])
    return versus(e, above=f"{reading}: the other form follows the trained stance, following {value}",
                  below=f"{reading}: the other form moves against the trained stance, following {value}",
                  neither=f"{reading}: following {value}, no more than answers changing at random")


def _last_train(table: pd.DataFrame | None) -> Any | None:
    """The rates row of the trained items after the last epoch (what the findings word)."""
    if table is None or not len(table):
        return None
    rows = table[(table["epoch"] == table["epoch"].max()) & (table["set"] == "train")]
    return rows.iloc[0] if len(rows) else None


def _readings(run: AlignedRun) -> list[tuple[str, str, Any]]:
    """(reading, words, rates row) of each following the findings word for ``run``: by letter, and on content
    choices where the run asked each question in both orders. A run that trains both forms has none."""
    if run.form == "both":
        return []
    out = [("letter", "By letter (options as shown)", _last_train(run.rates)),
           ("content", "On content choices (both orders, a letter habit cancels)", _last_train(run.content_rates))]
    return [r for r in out if r[2] is not None]


def _following_key(run: AlignedRun, reading: str, row: Any) -> str:
    """The ledger key of one following test: the table it is kept in and its reading, epoch and item set."""
    return ledger_key(f"tables/{safe_name(run.path.name)}/following_tests.csv", f"{reading}/epoch{int(row['epoch'])}/train")


def alignment_ledger(runs: Sequence[AlignedRun]) -> pd.DataFrame:
    """Every test the findings word (each run's following after the last epoch on trained items, by letter and on
    content choices), with Benjamini-Hochberg q-values across the report: one ledger, as the study report keeps."""
    rows = []
    for run in runs:
        for reading, _, row in _readings(run):
            e = following_evidence(row)
            if e["n"] == 0 or e["effect"] != e["effect"]:
                continue
            source, test = _following_key(run, reading, row).split("#", 1)
            rows.append({"source": source, "test": test, "family": "following", "effect": e["effect"],
                         "p": e["p_value"], "n": e["n"]})
    frame = pd.DataFrame(rows, columns=["source", "test", "family", "effect", "p", "n"])
    frame["q"] = false_discovery_control(frame["p"].to_numpy(float), method="bh") if len(frame) else []
    frame["survives"] = frame["q"] < Q_LEVEL
    return frame


def _verdict_sentence(run: AlignedRun, q: dict[str, float]) -> str:
    """The run's answer first: does the other form follow? Read on content choices where measured (a letter habit
    cancels there), else by letter."""
    tr = _last_train(run.rates)
    if run.form == "both":
        return (f"Both forms were trained, so no other form is left to follow: deed answers reached the target in "
                f"{_f(tr['indirect'])} of trained items not already there")
    reading, _, row = _readings(run)[-1]
    other = run.other.capitalize() + "s"
    e = following_evidence(row)
    if e["n"] == 0 or e["effect"] != e["effect"]:
        return f"{other}: following not measurable ({reading})"
    key = _following_key(run, reading, row)
    e["q_value"], e["ledger_key"] = q.get(key), key
    value = interval(e["effect"], e["low"], e["high"])
    where = "on content choices" if reading == "content" else "by letter"
    return versus(e, above=f"{other} follow the trained stance {where}: following {value}",
                  below=f"{other} move against the trained stance {where}: following {value}",
                  neither=f"{other} follow {where} no more than answers changing at random (following {value})")


def findings(runs: Sequence[AlignedRun], ledger: pd.DataFrame | None = None) -> list[Finding]:
    """One finding per run, its verdict first (worded from its test and its q across the report), then the numbers
    (no interpretation beyond what they show)."""
    ledger = alignment_ledger(runs) if ledger is None else ledger
    q = q_by_key(ledger)
    out = []
    for run in runs:
        end = {s: run.rates[(run.rates["epoch"] == run.rates["epoch"].max()) & (run.rates["set"] == s)].iloc[0]
               for s in ("train", "held_out")}
        tr = end["train"]
        ins = run.summary.get("inside", {})
        with asserted_claims() as claims:
            text = _verdict_sentence(run, q) + ". "
        text += (f"Over {len(run.summary['schedule'])} epochs, {run.trained} answers on trained items moved to the "
                 f"target in {_f(tr['direct'])} of items (held out {_f(end['held_out']['direct'])}). ")
        if run.form != "both":
            text += (f"The {run.other} answers of the same trained items moved to the target in {_f(tr['indirect'])} "
                     f"of those not already there, and moved off it in {_f(tr['indirect_away'])} of those that were. ")
            for reading, words, row in _readings(run):
                text += following_text(row, words, q.get(_following_key(run, reading, row)))
                text += (f" (moved on {_f(row['indirect'])}, off {_f(row['indirect_away'])}). " if reading == "content"
                         else ". ")
        if "trained_read_change" in ins and "other_read_change_own_axis" in ins:
            lt, vt = _peak(ins["trained_read_change"])
            lo, vo = _peak(ins["other_read_change_own_axis"])
            lx, vx = _peak(ins.get("other_read_change_trained_axis", [float("nan")]))
            text += (f"Inside (pre-training stance probes, trained items): the share of {run.trained} prompts read as the "
                     f"target rose by at most {vt:+.2f} (layer {lt}); of {run.other} prompts by at most {vo:+.2f} on the "
                     f"{run.other} axis (layer {lo}) and {vx:+.2f} on the {run.trained} axis (layer {lx}).")
        out.append(Finding(run.title.capitalize(), text.strip(), claims=list(dict.fromkeys(claims))))
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def settings_rows(runs: Sequence[AlignedRun]) -> list[list[str]]:
    """The settings table rows, one per run."""
    rows = []
    for run in runs:
        c, t = run.config, run.config["train"]
        timings = run.manifest["stages"]["align"].get("timings", {})
        rows.append([run.title, c["method"], " + ".join(f"{n}×{o.upper()}" for o, n in
                                                       pd.Series(run.summary["schedule"]).value_counts(sort=False).items()),
                     f"{run.summary['n_train']}/{run.summary['n_items']}", c["orders"],
                     f"{t['tuning']} r={t['rank']} α={t['lora_alpha']}" if t["tuning"] == "lora" else "full",
                     f"{t['lr']:g}", str(t["batch_size"]), f"{t['beta']:g}",
                     f"{sum(v for k, v in timings.items() if k != 'load_model') / 60:.1f}"])
    return rows


SETTINGS_HEADER = ["run", "method", "epochs", "trained/all items", "option orders", "tuning", "lr", "batch", "DPO β",
                   "wall min"]


PROTOCOLS = {"shown": "options as shown (paper's protocol)", "cyclic": "both option orders (letter control)",
             "both": "both option orders (letter control)"}  # "both": the name runs of earlier releases recorded


def _protocol_groups(runs: Sequence[AlignedRun]) -> list[tuple[str, list[AlignedRun]]]:
    groups: dict[str, list[AlignedRun]] = {}
    for run in runs:
        groups.setdefault(run.config.get("orders", "shown"), []).append(run)
    return list(groups.items())


def _titled(fig: go.Figure, protocol: str) -> go.Figure:
    fig.update_layout(title=dict(text=f"{fig.layout.title.text}<br><sup>{protocol}</sup>"), margin=dict(t=150))
    return fig


def write_alignment_report(run_dirs: Sequence[str | Path], out: str | Path, notes: str | None = None) -> Path:
    """index.html + README.md + figures/ + tables/ for finished alignment runs (e.g. word, deed, both, paraphrase)."""
    runs = [AlignedRun(p) for p in run_dirs]
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    names = [run.path.name for run in runs]
    if len(set(names)) != len(names):
        raise InputError(f"alignment runs must have distinct folder names (their tables are kept under tables/<name>): {names}")
    for run in runs:
        dest = out / "tables" / safe_name(run.path.name)  # keyed by run: two runs of one form never overwrite
        dest.mkdir(exist_ok=True)
        for name in ("change_rates.csv", "change_rates_content.csv", "inside_movement.csv", "inside_drift.csv", "inside_ic.csv", "summary.json",
                     "split.csv", "manifest.json"):
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, dest / name)
        atomic_write_text(dest / "following_tests.csv", pd.DataFrame(following_tests(run)).to_csv(index=False))
    notes_path = out / "reading.md"
    if notes is None and notes_path.is_file():
        notes = notes_path.read_text()
    model = runs[0].config["model"]
    figs = []
    for orders, group in _protocol_groups(runs):
        tag = "" if len(_protocol_groups(runs)) == 1 else f"_{orders}"
        figs += [(f"change_rates{tag}", _titled(change_rate_figure(group), PROTOCOLS.get(orders, orders))),
                 (f"inside_shift_by_layer{tag}", _titled(shift_lines_figure(group), PROTOCOLS.get(orders, orders))),
                 (f"inside_shift_heatmap{tag}", _titled(shift_heatmap_figure(group), PROTOCOLS.get(orders, orders))),
                 (f"inside_ic{tag}", _titled(ic_figure(group), PROTOCOLS.get(orders, orders))),
                 (f"inside_direction_drift{tag}", _titled(drift_figure(group), PROTOCOLS.get(orders, orders)))]
    figs.insert(1, ("consistency", cs_figure(runs)))
    ledger = alignment_ledger(runs)
    found = findings(runs, ledger)
    atomic_write_text(out / "claims.csv", ledger.to_csv(index=False))
    publish_findings(out, found, ledger, ", ".join(str(r.path) for r in runs))
    titled = [(f.title, f.text) for f in found]
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>Alignment: " + html.escape(model) + "</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>Do deeds follow words under alignment? {html.escape(model)}</h1>", lead_html(lead_note(out)),
            "<p class='sub'>Each run trains one form towards the option <i>opposite</i> to the model's own pre-training "
            "answer (so every trained answer is a change), SFT then DPO, and evaluates both forms of trained and "
            "held-out items after every epoch. Rates are in canonical option space.</p>",
            "<nav><a href='#findings'>Findings</a><a href='#figures'>Figures</a><a href='#tables'>Tables</a></nav>",
            "<h2 id='findings'>Findings</h2>" + findings_html(titled, markdown=True)]
    if notes and notes.strip():
        page.append("<h3>Reading</h3>" + notes_html(notes))
    page.append("<h2 id='figures'>Figures</h2>" + figure_html([fig for _, fig in figs], out / "index.html"))
    page += ["<h2 id='tables'>Tables</h2>",
             folded("Change rates after the last epoch", _html_table(RATE_HEADER, rate_rows(runs))),
             *([folded("Change rates read on content choices (each question in both orders: a new letter habit moves "
                       "nothing)", _html_table(CONTENT_RATE_HEADER, content_rate_rows(runs)))]
               if content_rate_rows(runs) else []),
             folded("Settings of each run", _html_table(SETTINGS_HEADER, settings_rows(runs))), "</body></html>"]
    atomic_write_text(out / "index.html", "\n".join(page))
    pngs = []
    (out / "figures").mkdir(exist_ok=True)
    for name, fig in figs:
        if write_png(fig, out / "figures" / f"{name}.png"):
            pngs.append(f"figures/{name}.png")
    md = [f"# Do deeds follow words under alignment? {model}", "", *lead_markdown(lead_note(out)),
          "Interactive figures: [`index.html`](index.html); per-run tables in [`tables/`](tables/), one folder per run directory.", "",
          "Each run trains one form towards the option opposite to the model's own pre-training answer (every trained "
          "answer is a change), SFT then DPO (β as listed), and evaluates the word and deed forms of trained and "
          "held-out items after every epoch, in canonical option space. *Direct*: the trained form answers with the "
          "target. *Indirect*: the other form moved to the target, among items where it was not already there. "
          "*Moved off target*: the other form left the target, among items already on it — with two options any "
          "change of a non-target answer is a move to the target, so answers that change for reasons unrelated to "
          "the trained stance raise both rates alike; *following* = indirect − moved off.", "",
          "## Findings", ""] + verdict_table_markdown(titled) + [f"- **{t}.** {x}" for t, x in titled] + [
          "", "## Settings", ""] + _md_table(SETTINGS_HEADER, settings_rows(runs)) + [
          "", "## Change rates after the last epoch", ""] + _md_table(RATE_HEADER, rate_rows(runs)) + (
          ["", "### Read on content choices (each question in both orders: a new letter habit moves nothing)", ""]
          + _md_table(CONTENT_RATE_HEADER, content_rate_rows(runs)) if content_rate_rows(runs) else [])
    if notes and notes.strip():
        md += ["", "## Reading", "", notes.strip()]
    if pngs:
        md += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in pngs]
    elif png_problem():
        md += ["", "## Figures", "", f"Open `index.html` for the figures: {png_problem()}"]
    atomic_write_text(out / "README.md", "\n".join(md) + "\n")
    return out / "index.html"
