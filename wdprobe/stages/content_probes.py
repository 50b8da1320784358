"""Content probes: where the option a model decides on becomes decodable, and where the letter it says does.

A run scored in every order (``--orders cyclic``) shows each option under each letter, so a probe trained on the
*content* label (the item's order-averaged choice) with all of an item's orders in one fold cannot use the letter;
a probe on the *letter said* can. Per captured position and layer (difference-of-means probes, grouped folds,
:func:`wdprobe.methods.decoding.decode_layers`):

- ``decide`` (word, deed): the content choice; ``bind`` (word, deed): the letter said;
- ``transfer`` (word→deed, deed→word): a content probe trained on one form and tested on the other;
- ``correct`` (word, deed): is the content choice the known answer (EthV, Theory);
- ``inconsistency``: from the deed prompt, before any answer, will the item be answered inconsistently (AUROC);
- ``ic``: IC(l) in content space, one probe trained on both forms reading each item's word and deed prompts
  (averaged over orders), against its within-domain random-label control and against the behavioural content CS
  (``probes/content-ic.json``).

Every curve has its random-label control and a bootstrap interval over items, and every "decodable" claim the
max-over-layers permutation test (family-wise 95%). Labels are permuted *within a domain*, so what the item's
domain alone predicts (on WDCT, every EthV word question gets the same content answer) sits in the control and
the threshold, and "decodable" means decodable beyond the domain; the letter said, which varies across an item's orders but
clusters by item, is permuted as whole items' letter sequences. Each test also states its accuracy *within* domains beside the
pooled one (pooled accuracy can read the domain where label rates differ by domain). Results: ``probes/content-{position}.csv`` (tidy, one row
per analysis and layer), ``probes/content-summary.json`` and ``probes/content-{position}.html``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError
from wdprobe.figures.probes import rgba, write_html, write_png
from wdprobe.methods.decoding import PERMUTATIONS, LayerTest, decode_layers, internal_consistency
from wdprobe.methods.probes import check_folds
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_entry
from wdprobe.scoring.stats import bootstrap_indices, sign_flip_max_test
from wdprobe.stages.capture import Activations, load_activations

STAGE = "content_probes"
COLUMNS = ["position", "analysis", "layer", "metric", "value", "low", "high", "control", "threshold", "n_rows", "n_groups",
           "within", "within_control"]


@dataclass(frozen=True)
class Analysis:
    """One decoding question: its label, where it is trained and tested, and how its null permutes labels."""

    name: str
    title: str
    colour: str
    panel: str


ANALYSES = (
    Analysis("decide_word", "content choice (word)", "#1f77b4", "decide vs bind"),
    Analysis("decide_deed", "content choice (deed)", "#d62728", "decide vs bind"),
    Analysis("bind_word", "letter said (word)", "#17becf", "decide vs bind"),
    Analysis("bind_deed", "letter said (deed)", "#ff9896", "decide vs bind"),
    Analysis("transfer_word_deed", "content, word → deed", "#9467bd", "cross-form transfer"),
    Analysis("transfer_deed_word", "content, deed → word", "#ff7f0e", "cross-form transfer"),
    Analysis("correct_word", "content choice is correct (word)", "#2ca02c", "correctness"),
    Analysis("correct_deed", "content choice is correct (deed)", "#8c564b", "correctness"),
    Analysis("inconsistency", "deed prompt → item inconsistent (AUROC)", "#e377c2", "predicting inconsistency"),
    Analysis("ic", "IC(l): one probe reads the same content stance in word and deed", "#7f7f7f",
             "internal consistency"),
)
BY_NAME = {a.name: a for a in ANALYSES}


@dataclass(frozen=True)
class ContentReading:
    """How content probes read one answer format's prompts: the file prefix, the figure's words, and whether its
    prompts come in option orders (letters: keep the orders the content reading averages over)."""

    prefix: str
    what: str
    folds: str
    ordered: bool


CONTENT_READINGS = {  # by answer format (the format column of the captured prompts)
    "letter": ContentReading("content", "Content probes", "folds by item (every order of an item in one fold)", True),
    "cloze": ContentReading("cloze", "Cloze probes (no options shown, no letters; labels: the cloze choices)",
                            "folds by item", False),
}


def acts_format(acts: Activations) -> str:
    """The answer format of captured prompts (``load_activations(format=...)`` never mixes them; captures made before
    formats existed are letter prompts)."""
    formats = set(acts.meta["format"]) if "format" in acts.meta else {"letter"}
    if len(formats) != 1:
        raise InputError(f"activations of several answer formats {sorted(formats)}: load one with format=...")
    return formats.pop()


def content_reading(name: str) -> ContentReading:
    """The registered content reading of an answer format, or an error listing them."""
    if name not in CONTENT_READINGS:
        raise InputError(f"unknown answer format {name!r} for content probes: choose from {list(CONTENT_READINGS)}")
    return CONTENT_READINGS[name]


def _two_option_rows(acts: Activations, form: str) -> tuple[np.ndarray, Any]:
    meta = acts.meta
    keep = (meta["form"] == form) & (meta["n_options"] == 2)
    if content_reading(acts_format(acts)).ordered:  # letter prompts: the orders the content reading averages over
        keep &= meta["in_content"] == 1
    keep = keep.to_numpy()
    return acts.array[keep], meta[keep].reset_index(drop=True)


def _has_both(y: np.ndarray, groups: np.ndarray, folds: int) -> bool:
    return len(np.unique(y)) == 2 and len(np.unique(groups)) >= 2 * folds and min(np.bincount(y)) >= folds


def content_tests(acts: Activations, *, folds: int = 5, n_perm: int = PERMUTATIONS, seed: int = 0) -> dict[str, LayerTest]:
    """Every analysis this capture supports, by name (an analysis whose labels have one class, or too few items,
    is left out)."""
    reading = content_reading(acts_format(acts))
    if reading.ordered and not (acts.meta["in_content"] == 1).any():
        raise InputError("content probes need the activations of every order: score with --orders cyclic (or all) "
                         "and capture again")
    X, meta = {}, {}
    for form in ("word", "deed"):
        X[form], meta[form] = _two_option_rows(acts, form)
        if (meta[form]["content_choice"].astype(str) == "").any():
            raise InputError("the capture has no content choice for some prompts: rescore with --orders cyclic")
    out: dict[str, LayerTest] = {}
    layers = tuple(acts.layers)

    def add(name: str, Xa, y, g, strata, **kw) -> None:
        y = np.asarray(y, dtype=int)
        test_y = kw.get("test_y")
        if _has_both(y, np.asarray(g), folds) and (test_y is None or len(np.unique(test_y)) == 2):
            out[name] = decode_layers(Xa, y, np.asarray(g), layers=layers, folds=folds, n_perm=n_perm, seed=seed,
                                      strata=np.asarray(strata), **kw)

    content = {f: meta[f]["content_choice"].astype(int).to_numpy() for f in meta}
    groups = {f: meta[f]["id"].to_numpy() for f in meta}
    # labels are permuted within a domain: what the item's domain alone predicts is part of the null
    domain = {f: meta[f]["domain"].astype(str).to_numpy() for f in meta}
    for f in ("word", "deed"):
        add(f"decide_{f}", X[f], content[f], groups[f], domain[f])
        if reading.ordered:  # a prompt with option orders says a letter (a cloze prompt says none)
            # the letter varies across an item's orders but clusters by item (most items say one letter in every
            # order): the null moves each item's letter sequence whole
            add(f"bind_{f}", X[f], (meta[f]["letter"] != "A").to_numpy(), groups[f], domain[f], permute="clusters")
        graded = (meta[f]["correct"].astype(str) != "").to_numpy()
        if graded.any():
            right = content[f][graded] == meta[f]["correct"][graded].astype(int).to_numpy()
            add(f"correct_{f}", X[f][graded], right, groups[f][graded], domain[f][graded])
    add("transfer_word_deed", X["word"], content["word"], groups["word"], domain["word"], test_X=X["deed"],
        test_y=content["deed"], test_groups=groups["deed"], test_strata=domain["deed"])
    add("transfer_deed_word", X["deed"], content["deed"], groups["deed"], domain["deed"], test_X=X["word"],
        test_y=content["word"], test_groups=groups["word"], test_strata=domain["word"])
    inconsistent = 1 - meta["deed"]["content_consistent"].astype(int).to_numpy()
    add("inconsistency", X["deed"], inconsistent, groups["deed"], domain["deed"], metric="auroc")
    return out


def content_ic(acts: Activations, *, folds: int = 5, seed: int = 0, n_perm: int = PERMUTATIONS) -> tuple[list[dict], dict]:
    """IC(l) in content space (:func:`wdprobe.methods.decoding.internal_consistency` on every order of the two-option
    items, labels the content choices): tidy rows (``COLUMNS``; ``control`` is IC with labels permuted over items
    within a domain, what an item's two prompts share by topic and domain alone; ``threshold`` its family-wise 95%
    level over layers) and a summary with two tests: IC above that control (max over layers), and IC above the
    behavioural content CS of the same items (sign flips over items, max over layers)."""
    X, meta = {}, {}
    for form in ("word", "deed"):
        X[form], meta[form] = _two_option_rows(acts, form)
    y = {f: meta[f]["content_choice"].astype(int).to_numpy() for f in meta}
    g = {f: meta[f]["id"].to_numpy() for f in meta}
    strata = {f: meta[f]["domain"].astype(str).to_numpy() for f in meta}
    r = internal_consistency(X["word"], X["deed"], y["word"], y["deed"], g["word"], g["deed"], folds=folds, seed=seed,
                             n_perm=n_perm, word_strata=strata["word"], deed_strata=strata["deed"])
    agree, cs, null = r["agree"], r["consistent"], r["null_ic"]
    idx = bootstrap_indices(len(cs), seed=seed)
    boot = agree[idx].mean(axis=1)  # (n_boot, L)
    low, high = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
    ic = agree.mean(0)
    null_max = null.max(axis=1)
    threshold = float(np.quantile(null_max, 0.95))
    layers = tuple(acts.layers)
    rows = [{"position": None, "analysis": "ic", "layer": int(l), "metric": "agreement", "value": float(ic[k]),
             "low": float(low[k]), "high": float(high[k]), "control": float(null[:, k].mean()), "threshold": threshold,
             "n_rows": int(len(y["word"]) + len(y["deed"])), "n_groups": int(len(cs))} for k, l in enumerate(layers)]
    best = int(np.argmax(ic))
    above_cs = sign_flip_max_test(agree - cs[:, None], seed=seed).to_json()
    above_cs["setting"] = int(layers[above_cs["setting"]])
    p_control = float((1 + np.sum(null_max >= ic[best])) / (1 + len(null_max)))
    above = [int(layers[k]) for k in np.flatnonzero(ic > threshold)]
    kappa = r["kappa"]
    return rows, {"ic_by_layer": {int(l): float(v) for l, v in zip(layers, ic)},
                  "kappa_by_layer": {int(l): (None if np.isnan(v) else float(v)) for l, v in zip(layers, kappa)},
                  "kappa_at_best": None if np.isnan(kappa[best]) else float(kappa[best]),
                  "control_by_layer": {int(l): float(v) for l, v in zip(layers, null.mean(0))},
                  "content_cs": float(cs.mean()), "best_layer": int(layers[best]), "best": float(ic[best]),
                  "tied_best_layers": [int(layers[k]) for k in np.flatnonzero(np.isclose(ic, ic[best], rtol=0, atol=1e-12))],
                  "best_low": float(low[best]), "best_high": float(high[best]), "n_items": int(len(cs)),
                  "above_control": {"p_value": p_control, "significant": p_control < 0.05, "threshold": threshold,
                                    "control_at_best": float(null[:, best].mean()), "first_layer": above[0] if above else None,
                                    "n_permutations": int(len(null_max))},
                  "above_cs": above_cs}


def content_frame(tests: dict[str, LayerTest], position: str):
    """The tests as one tidy table: one row per analysis and layer (``COLUMNS``)."""
    import pandas as pd

    rows = [r for name, t in tests.items() for r in t.to_rows(position=position, analysis=name)]
    return pd.DataFrame(rows, columns=COLUMNS)


def run_content_probes(run_dir: str | Path, *, positions: Sequence[str] = ("last", "question_mean"),
                       hook: str = "resid_post", folds: int = 5, n_perm: int = PERMUTATIONS, seed: int = 0,
                       format: str = "letter") -> dict[str, Any]:
    """Content probes at each position of a run captured in every order; returns (and writes) the summary.
    ``format="cloze"``: the same analyses on the cloze prompts (labels the cloze choices; no letter, so no
    bind), written as ``probes/cloze-*``."""
    check_folds(folds)  # before anything is read or written
    prefix = content_reading(format).prefix
    run = RunDir(run_dir)
    model = scored_entry(run)["config"]["model"]
    out_dir = run.path / "probes"
    out_dir.mkdir(exist_ok=True)
    summary: dict[str, Any] = {}
    ic: dict[str, Any] = {}
    import pandas as pd

    for position in positions:
        acts = load_activations(run.path, hook=hook, position=position, orders="all", format=format)
        tests = content_tests(acts, folds=folds, n_perm=n_perm, seed=seed)
        frame = content_frame(tests, position)
        ic_rows, ic[position] = content_ic(acts, folds=folds, seed=seed, n_perm=n_perm)
        frame = pd.concat([frame, pd.DataFrame([dict(r, position=position) for r in ic_rows], columns=COLUMNS)],
                          ignore_index=True)
        atomic_write_text(out_dir / f"{prefix}-{position}.csv", frame.to_csv(index=False))
        summary[position] = {name: t.summary() for name, t in tests.items()}
        fig = content_figure(frame, content_title(model, position, hook, format))
        write_html([fig], out_dir / f"{prefix}-{position}.html", heading=f"{prefix.capitalize()} probes: {model}, {position}")
        write_png(fig, out_dir / f"{prefix}-{position}.png")
    atomic_write_text(out_dir / f"{prefix}-summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / f"{prefix}-ic.json", json.dumps(ic, indent=2) + "\n")
    run.update_stage("probe", **{prefix: summary, f"{prefix}_ic": ic})
    return summary


PANELS_PER_ROW = 3


def content_figure(frame, title: str) -> go.Figure:
    """One panel per question (decide vs bind, transfer, correctness, inconsistency), drawn from the tidy table
    (``probes/content-{position}.csv``): curve, 95% band, random-label control (dotted), family-wise threshold
    (dashed)."""
    names = [n for n in BY_NAME if n in set(frame["analysis"])]
    panels = [p for p in dict.fromkeys(a.panel for a in ANALYSES) if any(BY_NAME[n].panel == p for n in names)]
    n_cols = min(PANELS_PER_ROW, max(1, len(panels)))  # at most three across: the figure fits a report page
    n_rows = -(-max(1, len(panels)) // n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=panels, shared_yaxes=False,
                        vertical_spacing=0.22 if n_rows > 1 else 0.1)
    for k, panel in enumerate(panels):
        row, col = k // n_cols + 1, k % n_cols + 1
        for name in names:
            a = BY_NAME[name]
            if a.panel != panel:
                continue
            t = frame[frame.analysis == name].sort_values("layer")
            x = t["layer"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=t["high"].tolist() + t["low"].tolist()[::-1], fill="toself",
                                     fillcolor=rgba(a.colour, 0.15), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=name), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=t["value"], mode="lines+markers", name=a.title, legendgroup=name,
                                     line=dict(color=a.colour, width=2), marker=dict(size=5),
                                     hovertemplate=f"{a.title}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=t["control"], mode="lines", showlegend=False, legendgroup=name,
                                     line=dict(color=a.colour, width=1, dash="dot"), hoverinfo="skip"), row=row, col=col)
            line = "family-wise threshold"
            fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[float(t["threshold"].iloc[0])] * 2, mode="lines",
                                     showlegend=False, legendgroup=name, line=dict(color=a.colour, width=1, dash="dash"),
                                     hovertemplate=f"{a.title}: {line} %{{y:.3f}}<extra></extra>"),
                          row=row, col=col)
        fig.update_xaxes(title_text="layer", row=row, col=col)
        fig.update_yaxes(title_text={"predicting inconsistency": "AUROC", "internal consistency": "share of items whose "
                                     "word and deed readings agree"}.get(panel, "balanced accuracy"), row=row, col=col)
    fig.update_layout(title=title, height=150 + 380 * n_rows, width=max(700, 400 * n_cols + 100),
                      template="plotly_white", legend=dict(orientation="h", y=-0.22 / n_rows))
    return fig


def content_title(model: str, position: str, hook: str = "resid_post", format: str = "letter") -> str:
    """The figure title, with how to read it."""
    reading = content_reading(format)
    what, folds = reading.what, reading.folds
    return (f"{what} — {model}, {hook} at the {position.replace('_', ' ')} position<br><sup>difference-of-means "
            f"probes, {folds}; band: 95% bootstrap interval over items; "
            "dotted: random-label control (labels permuted within a domain); dashed: family-wise 95% threshold over "
            "layers</sup>")
