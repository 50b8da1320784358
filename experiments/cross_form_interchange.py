#!/usr/bin/env python
"""Does the deed use the stance the word states? Interchange interventions on a learned 1-d stance subspace at the
decision point, learned on word pairs and on deed pairs, each form read in its own token space
(``wdprobe.studies.crossform.interchange``; rules fixed before the run in ``reports/cross-form-interchange/rules.md``).

    python experiments/cross_form_interchange.py --data ../shared/data/wdct/WDCT.csv
    python experiments/cross_form_interchange.py --data WDCT.csv --model organisms/sincere-balanced --out /tmp/x

Writes ``--out``: settings.json, stances.csv, layers/block-L.csv (every held-out pair's outcome), summary.csv,
README.md (verdicts first, worded from the corrected tests), index.html and iia.png. Rerunning resumes finished blocks.

Time: on 2 CPU cores about 6-8 minutes per block for 120 items (the default), most of it the subspaces' training.
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import pandas as pd

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.errors import InputError
from wdprobe.figures.interchange import interchange_figure
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import write_png
from wdprobe.reports.html import CSS, inline_markdown
from wdprobe.studies.crossform.interchange import (
    EQUIVALENCE_MARGIN,
    InterchangeSettings,
    run_cross_form,
    summarise,
)
from wdprobe.studies.organisms.data import planted_order

ALPHA = 0.05


def study_items(path: Path, n: int) -> list:
    """The first ``n`` two-option EthV/Theory items (a correct option known) in the seeded planted order."""
    items = [it for it in planted_order(read_items(path))
             if it.domain in ("EthV", "Theory") and it.n_options == 2 and it.correct in (0, 1)]
    if len(items) < n:
        raise InputError(f"{path}: {len(items)} two-option EthV/Theory items, {n} asked for")
    return items[:n]


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _blocks(blocks: list) -> str:
    return f"blocks {', '.join(str(b) for b in blocks)}" if blocks else "no block"


def verdicts(table: pd.DataFrame, best: dict) -> list[str]:
    """The findings, worded from the tests as the rules say (q < ALPHA after Benjamini-Hochberg over the table)."""
    lines = []
    for form in ("deed", "word"):
        part = table[table["form"] == form].sort_values("layer")
        other = "word" if form == "deed" else "deed"
        within = part[part["q_within_vs_random"] < ALPHA]["layer"].tolist()
        cross = part[part["q_cross_vs_random"] < ALPHA]["layer"].tolist()
        shared = part[part["shared"] & (part["q_cross_vs_random"] < ALPHA)]["layer"].tolist()
        parts = part[(part["q_gap"] < ALPHA) & (part["gap"] > 0)]["layer"].tolist()
        top = part.loc[part["iia_within"].idxmax()]
        lines.append(
            f"**{form.capitalize()} pairs.** A subspace learned on {form} pairs flips held-out {form} answers to the "
            f"source's stance more often than a random direction at {_blocks(within)} (q < {ALPHA}); best IIA "
            f"{_fmt(top.iia_within)} [{_fmt(top.iia_within_low)}, {_fmt(top.iia_within_high)}] at block {int(top.layer)}.")
        lines.append(
            f"The subspace learned on **{other}** pairs does so at {_blocks(cross)}; it does so as well as the "
            f"{form}-learned one (gap inside +-{EQUIVALENCE_MARGIN} by a 90% interval) at {_blocks(shared)}, "
            f"and falls short of it at {_blocks(parts)}.")
        b = best.get(form)
        if b:
            lines.append(f"Best block for {other}-learned over random on {form} pairs: {b['block']} "
                         f"({b['cross_minus_random']:+.2f} [{_fmt(b['low'])}, {_fmt(b['high'])}], p = {b['p']:.3g} "
                         f"with the choice of block paid for, {b['n_bases']} base items).")
    return lines


def write_report(out: Path, outcomes: pd.DataFrame, model: str, items: list, stances: pd.DataFrame,
                 settings: InterchangeSettings, seconds: float | None) -> None:
    table, best = summarise(outcomes)
    atomic_write_text(out / "summary.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "best.json", json.dumps(best, indent=2) + "\n")
    n_pairs = outcomes[(outcomes["condition"] == "within")].groupby("form")["pair"].nunique().to_dict()
    lines = [f"# Cross-form interchange: does the deed use the word's stance? ({model})", ""]
    lines += [f"- {v}" for v in verdicts(table, best)]
    lines += ["", "## What was done", "",
              f"{len(items)} two-option EthV/Theory WDCT items (seeded order), split once {settings.train_share:.0%} "
              f"training / rest held out. The model's stance per item and form: its cloze choice (per-token mean) is the "
              f"correct option. Stance rates: word {stances['word'].mean():.2f}, deed {stances['deed'].mean():.2f}. "
              f"Counterfactual pairs: each item as base with {settings.sources_per_item} source(s) of its split on "
              f"which the model took the other stance; the label is the base's option for the source's stance, never "
              f"the base's own answer (an interchange that carries nothing scores 0). Held-out pairs: "
              f"{n_pairs.get('word', 0)} word, {n_pairs.get('deed', 0)} deed.", "",
              f"At each block's residual, at the decision point, a {settings.kind} subspace (k = {settings.k}) is "
              f"learned per form from the first-order start, {settings.epochs} epochs of Adam (lr {settings.lr}); IIA "
              "is read on held-out pairs of each form with the subspace of the same form (*within*), of the other form "
              "(*cross*) and a random direction (*random*). Intervals: 95% bootstrap over base items; tests: sign flips "
              "over base items, Benjamini-Hochberg over every test in the table (q). Rules: `rules.md` (committed "
              "before the run).", "",
              "Cautions: every EthV word question is answered \"Yes.\" or \"No.\" with \"Yes.\" correct, so on EthV "
              "the word stance is also the answer token; the deed's is a content choice between two action texts. "
              "The power of this instrument to find a planted shared or parted stance has not been measured on "
              "organisms yet, so a block without a finding is not evidence of absence.", "",
              "## Per block", "",
              "| form | block | within IIA | cross IIA | random IIA | q within | q cross | within - cross [90%] | gap inside +-0.1 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in table.sort_values(["form", "layer"]).itertuples():
        lines.append(f"| {r.form} | {r.layer} | {_fmt(r.iia_within)} [{_fmt(r.iia_within_low)}, {_fmt(r.iia_within_high)}] "
                     f"| {_fmt(r.iia_cross)} [{_fmt(r.iia_cross_low)}, {_fmt(r.iia_cross_high)}] "
                     f"| {_fmt(r.iia_random)} | {r.q_within_vs_random:.3g} | {r.q_cross_vs_random:.3g} "
                     f"| {_fmt(r.gap)} [{_fmt(r.gap_low90)}, {_fmt(r.gap_high90)}] | {'yes' if r.shared else 'no'} |")
    if seconds is not None:
        lines += ["", f"Run time: {seconds / 60:.0f} min on this machine."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    fig = interchange_figure(table, title=f"Stance interchange by block: {html.escape(model)}")
    write_png(fig, out / "iia.png")
    body = "".join(f"<li>{inline_markdown(v)}</li>" for v in verdicts(table, best))
    atomic_write_text(out / "index.html",
                      f"<!doctype html><html><head><meta charset='utf-8'><title>cross-form interchange</title>"
                      f"<style>{CSS}</style></head><body><h1>Does the deed use the word's stance? "
                      f"{html.escape(model)}</h1><ul>{body}</ul>{figure_html([fig], out / 'index.html')}"
                      f"<p>Tables: <a href='summary.csv'>summary.csv</a>, per pair: <code>layers/</code>. "
                      f"What was done: <a href='README.md'>README.md</a>.</p></body></html>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (default: the cached download)")
    ap.add_argument("--model", default=None, help="model id or directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--out", default="reports/cross-form-interchange", help="results directory")
    ap.add_argument("--items", type=int, default=120, help="how many EthV/Theory items (seeded order)")
    ap.add_argument("--layers", default="1,4,7,10,13,16", help="blocks whose residual is intervened on, comma-separated")
    ap.add_argument("--kind", default="direction", help="subspace kind: direction, rotation or boundless")
    ap.add_argument("--k", type=int, default=1, help="subspace dimension (rotation) or starting boundary (boundless)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per subspace")
    ap.add_argument("--sources-per-item", type=int, default=1, help="source items per base item")
    ap.add_argument("--seed", type=int, default=0, help="split, pairs and training seed")
    args = ap.parse_args(argv)
    try:
        layers = tuple(int(x) for x in args.layers.split(","))
    except ValueError:
        raise InputError(f"--layers {args.layers!r}: give block numbers separated by commas") from None
    settings = InterchangeSettings(layers=layers, kind=args.kind, k=args.k, epochs=args.epochs,
                                   sources_per_item=args.sources_per_item, seed=args.seed)
    lm = load_model(args.model)
    items = study_items(resolve_wdct_path(args.data), args.items)
    out = Path(args.out)
    t0 = time.perf_counter()
    outcomes = run_cross_form(lm, items, settings, out, progress=lambda m: print(m, flush=True))
    stances = pd.read_csv(out / "stances.csv")
    write_report(out, outcomes, lm.name, items, stances, settings, time.perf_counter() - t0)
    print(f"wrote {out}/README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
