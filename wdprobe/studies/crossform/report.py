"""The cross-form interchange study's report: verdicts worded from the corrected tests, the per-block table, the
figure and the page (``README.md``, ``summary.csv``, ``best.json``, ``index.html``, ``iia.png``)."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import pandas as pd

from wdprobe.core.cache import atomic_write_text
from wdprobe.figures.interchange import interchange_figure
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import write_png
from wdprobe.reports.html import CSS, inline_markdown
from wdprobe.studies.crossform.interchange import EQUIVALENCE_MARGIN, InterchangeSettings, run_cross_form, summarise

ALPHA = 0.05


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _blocks(blocks: list) -> str:
    if not blocks:
        return "no block"
    return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {', '.join(str(b) for b in blocks)}"


def verdicts(table: pd.DataFrame, best: dict) -> list[str]:
    """The findings, worded from the tests as the rules say (q < ALPHA after Benjamini-Hochberg over the table)."""
    lines = []
    for form in ("deed", "word"):
        part = table[table["form"] == form].sort_values("layer")
        other = "word" if form == "deed" else "deed"
        # "more often than a random direction": the two-sided test significant *and* the difference positive
        beats = {c: (part[f"q_{c}_vs_random"] < ALPHA) & (part[f"iia_{c}"] > part["iia_random"])
                 for c in ("within", "cross")}
        within = part[beats["within"]]["layer"].tolist()
        cross = part[beats["cross"]]["layer"].tolist()
        below = part[(part["q_cross_vs_random"] < ALPHA) & (part["iia_cross"] < part["iia_random"])]["layer"].tolist()
        shared = part[part["shared"] & beats["cross"]]["layer"].tolist()
        parts = part[(part["q_gap"] < ALPHA) & (part["gap"] > 0)]["layer"].tolist()
        top = part.loc[part["iia_within"].idxmax()]
        lines.append(
            f"**{form.capitalize()} pairs.** A subspace learned on {form} pairs flips held-out {form} answers to the "
            f"source's stance more often than a random direction at {_blocks(within)} (q < {ALPHA}); best IIA "
            f"{_fmt(top.iia_within)} [{_fmt(top.iia_within_low)}, {_fmt(top.iia_within_high)}] at block {int(top.layer)}.")
        lines.append(
            f"The subspace learned on **{other}** pairs does so at {_blocks(cross)}; it does so as well as the "
            f"{form}-learned one (gap inside +-{EQUIVALENCE_MARGIN} by a 90% interval) at {_blocks(shared)}, "
            f"and falls short of it at {_blocks(parts)}."
            + (f" It does *worse* than the random direction at {_blocks(below)}." if below else ""))
        if not within:
            lines.append(f"No 1-d subspace at the decision point moves {form} answers at any block, not even one "
                         f"learned on {form} pairs: on {form} pairs this instrument has no effect to compare the "
                         f"other form's subspace with, so it cannot say whether the {form} uses the {other}'s stance.")
        b = best.get(form)
        if b:
            lines.append(f"Best block for {other}-learned over random on {form} pairs: {b['block']} "
                         f"({b['cross_minus_random']:+.2f} [{_fmt(b['low'])}, {_fmt(b['high'])}], p = {b['p']:.3g} "
                         f"with the choice of block paid for, {b['n_bases']} base items).")
    return lines


def write_report(out: Path, outcomes: pd.DataFrame, model: str, items: list, stances: pd.DataFrame,
                 settings: InterchangeSettings, seconds: float | None) -> None:
    """The summary tables, the README (verdicts first), the figure and the page of a finished run into ``out``."""
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




def cross_form_study(lm, items: list, settings: InterchangeSettings, out: str | Path, *,
                     progress=None) -> Path:
    """Run the protocol into ``out`` (resuming finished blocks) and write its report; returns the README's path."""
    started = time.perf_counter()
    resumed = all((Path(out) / "layers" / f"block-{b:02d}.csv").is_file() for b in settings.layers)
    outcomes = run_cross_form(lm, items, settings, out, progress=progress)
    stances = pd.read_csv(Path(out) / "stances.csv")
    # a report rewritten from finished blocks states no run time (this invocation computed nothing)
    write_report(Path(out), outcomes, lm.name, items, stances, settings,
                 None if resumed else time.perf_counter() - started)
    return Path(out) / "README.md"
