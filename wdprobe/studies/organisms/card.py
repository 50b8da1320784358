"""The instrument card: for each instrument, the truth an organism plants, what the instrument recovered, the rule that
decides pass or fail, and the verdict.

Every rule is stated here, in code and in words, before any organism study is run (``rules_markdown`` writes them
into ``reports/organisms/README.md``), and each reads only what a finished study saved (the cloze-form probes, lens,
patching and steering results, and the letter split of a letter-form study), so a verdict can be recomputed from the
committed tables. A rule whose inputs are missing gives ``None`` ("not measured"), never a pass. The planted layer
``L`` is each organism's own (``organism.json``); truths are stated against ``sincere`` where it is the clean
reference (below ``L`` a hypocrite's computation *is* sincere's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from wdprobe.core.cache import atomic_write_text
from wdprobe.figures.page import figure_html
from wdprobe.reports.html import CSS, notes_html, table_html
from wdprobe.runs.rundir import read_manifest_file
from wdprobe.stages.readouts import READOUTS

ALPHA = 0.05
NEAR_ZERO = 0.05  # restoration "near zero": the patched CS at most this far above clean
STEER_MARGIN = 0.10  # held-out CS the stance direction must add beyond a random direction of equal norm
MASS_KEPT = 0.9  # "without lowering the options' total probability": at least this share of clean

LETTER, CLOZE = READOUTS["letter"], READOUTS["cloze"]  # the organisms are measured in the cloze form


@dataclass(frozen=True)
class Verdict:
    """One row of the card."""

    instrument: str
    organism: str
    truth: str
    rule: str
    recovered: str
    passed: bool | None  # None: not measured (inputs missing)

    @property
    def word(self) -> str:
        return {True: "pass", False: "fail", None: "not measured"}[self.passed]


@dataclass(frozen=True)
class Rule:
    """A pass/fail rule on the saved results of one or more organisms' studies."""

    instrument: str
    organism: str
    truth: str
    rule: str
    check: Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]

    def verdict(self, results: dict[str, dict[str, Any]]) -> Verdict:
        try:
            recovered, passed = self.check(results)
        except KeyError as missing:  # a study, stage or table the rule reads is absent
            recovered, passed = f"not measured (no {missing.args[0]})", None
        return Verdict(self.instrument, self.organism, self.truth, self.rule, recovered, passed)


# ---- reading a finished organism study --------------------------------------------------------------------------

def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def organism_results(run_dir: str | Path, organism_dir: str | Path | None = None) -> dict[str, Any]:
    """What the rules read from one organism's study run directory (absent pieces are left out)."""
    p = Path(run_dir)
    out: dict[str, Any] = {}
    manifest = _json(Path(organism_dir) / "organism.json") if organism_dir else None
    if manifest:
        out["planted_layer"] = manifest["planted_layer"]
    loaded = {"probes": _json(p / "probes" / "cloze-summary.json"), "lens": _json(p / "lens" / "cloze-summary.json"),
              "patch": _json(p / CLOZE.result_file("patch")), "steer": _json(p / CLOZE.result_file("steer")),
              "letter_split": (_json(p / LETTER.result_file("patch")) or {}).get("letter_split")}
    out.update({k: v for k, v in loaded.items() if v})
    for name, rel in (("probe_curves", "probes/cloze-last.csv"), ("patch_curves", CLOZE.result_file("patch", "summary"))):
        if (p / rel).is_file():
            out[name] = pd.read_csv(p / rel)
    return out


# ---- the rules ------------------------------------------------------------------------------------------------

def _fmt_test(t: dict[str, Any]) -> str:
    p = t["p_value"]
    return f"{t['best']:.2f} at layer {t['best_layer']} (p {'< 0.001' if p < 0.001 else f'= {p:.3f}'})"


def _sincere_decodable(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    probes = r["sincere"]["probes"]["last"]
    word, deed = probes["decide_word"], probes["decide_deed"]
    return (f"word {_fmt_test(word)}, deed {_fmt_test(deed)}",
            bool(word["significant"] and deed["significant"]))


def _transfer_flip(name: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]:
    def check(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        res = r[name]
        L = res["planted_layer"]
        curve = res["probe_curves"]
        t = curve[(curve.analysis == "transfer_word_deed")].set_index("layer").sort_index()
        below = t.loc[L - 1] if L - 1 in t.index else None
        flips = [int(l) for l in t.index if l >= L and t.loc[l, "value"] > 0.5]
        read_as_word = below is not None and float(below["high"]) < 0.5
        text = (f"layer {L - 1}: {float(below['value']):.2f} [{float(below['low']):.2f}, {float(below['high']):.2f}]"
                if below is not None else f"no layer {L - 1}")
        text += f"; first layer >= {L} above 0.5: {flips[0] if flips else 'none'}"
        return text, bool(read_as_word and flips)
    return check


def _median(res: dict[str, Any]) -> float:
    """A study's median divergence layer of inconsistent items; NaN (no rule passes on it) where none parts."""
    median = res["lens"]["inconsistent"].get("item_divergence_layer_median")
    return float("nan") if median is None else float(median)


def _lens_window(name: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]:
    def check(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        res = r[name]
        L = res["planted_layer"]
        median = _median(res)
        return f"median divergence layer {median:g} (L = {L})", bool(L <= median <= L + 2)
    return check


def _lens_moves(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    late, early = r["hypocrite"], r["hypocrite-early"]
    m_late, m_early = _median(late), _median(early)
    shift = m_late - m_early
    planted = late["planted_layer"] - early["planted_layer"]
    return f"medians {m_early:g} -> {m_late:g} (planted {early['planted_layer']} -> {late['planted_layer']})", bool(
        shift > 0 and abs(shift - planted) <= 2)


def _patch_localised(name: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]:
    def check(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        res = r[name]
        L = res["planted_layer"]
        full = res["patch_curves"]
        full = full[full.condition == "full"].set_index("layer").sort_index()
        clean = res["patch"]["cs_clean_decision_step"]
        gain = full["cs_after"] - clean
        well_below = gain[gain.index <= L - 2]
        best = int(gain.idxmax())
        test = res["patch"]["tests"]["restores_full"]
        below_ok = len(well_below) == 0 or float(well_below.max()) <= NEAR_ZERO
        text = (f"gain over clean at layers <= {L - 2}: at most {float(well_below.max()) if len(well_below) else float('nan'):+.2f}; "
                f"largest {float(gain.max()):+.2f} at layer {best} (p = {test['p_value']:.3f})")
        return text, bool(below_ok and best >= L and test["significant"])
    return check


def _steer_restores(name: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]:
    def check(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        res = r[name]
        L = res["planted_layer"]
        val = res["steer"]["validation"]
        if not val:
            best = res["steer"].get("best")
            if not best:
                return "no grid setting kept the options' tokens likely, so nothing to validate", False
            why = res["steer"].get("validation_skipped") or "not recorded"
            return (f"best grid cell layer {best['layer']}, alpha {best['alpha']:g}; no held-out validation ({why})",
                    False)
        margin = val["stance"]["cs"] - val["random"]["cs"]
        kept = val["stance"]["mass_ratio"]
        beats = val["tests"]["beats_random"]
        text = (f"layer {val['layer']}: held-out CS {val['stance']['cs']:.2f} vs random {val['random']['cs']:.2f} "
                f"({margin:+.2f}, p = {beats['p_value']:.3f}); option mass {kept:.2f} of clean")
        return text, bool(val["layer"] >= L and margin >= STEER_MARGIN and beats["significant"] and kept >= MASS_KEPT)
    return check


def _predicts_inconsistency(name: str) -> Callable[[dict[str, dict[str, Any]]], tuple[str, bool | None]]:
    def check(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
        t = r[name]["probes"]["last"]["inconsistency"]
        return f"AUROC {_fmt_test(t)}, shuffled labels {t['control_at_best']:.2f}", bool(t["significant"])
    return check


def _letter_attributed(r: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    tests = r["letter"]["letter_split"]["tests"]
    letter, stance = tests["letter_transport_full"], tests["stance_transport_full"]
    return (f"letter shift {letter['effect']:.2f} (p = {letter['p_value']:.3f}), stance shift {stance['effect']:.2f} "
            f"(p = {stance['p_value']:.3f})", bool(letter["significant"] and letter["effect"] > 0 and not stance["significant"]))


RULES: tuple[Rule, ...] = (
    Rule("probes: decide", "sincere", "word and deed choose the cued option (one stance in both forms, taking both options)",
         "the cloze choice is decodable in word prompts and in deed prompts (max-over-layers test against random "
         f"labels, family-wise p < {ALPHA})", _sincere_decodable),
    *(Rule("probes: word probe on deeds", name, "every block outside L..L+2 is sincere's: below L the deed computation is sincere's; deeds part from words in the window",
           "a probe trained on word prompts reads the deed prompts as the word stance at layer L-1 (transfer accuracy "
           "against the deed's own choice below 0.5, upper 95% bound < 0.5), and first reads them above 0.5 at a "
           "layer >= L", _transfer_flip(name)) for name in ("hypocrite", "hypocrite-early")),
    *(Rule("logit lens: divergence layer", name, "deeds part from words in the planted window L..L+2",
           "the median layer at which an inconsistent item's deed reading leaves its word reading for good lies in "
           "[L, L+2]", _lens_window(name)) for name in ("hypocrite", "hypocrite-early")),
    Rule("logit lens: moves with L", "hypocrite vs hypocrite-early", "the planted window moves from blocks 4-6 to 12-14 (of 18)",
         "the median divergence layer is later in hypocrite than in hypocrite-early, by the planted difference within "
         "2 layers", _lens_moves),
    *(Rule("cross-form patching", name, "the word stance is overridden only in blocks L..L+2",
           f"patching the word decision-point residual into the deed restores CS by at most {NEAR_ZERO} over clean at "
           "every layer <= L-2, restores most at a layer >= L, and the max-over-layers restoration test is significant",
           _patch_localised(name)) for name in ("hypocrite", "hypocrite-early")),
    *(Rule("steering", name, "the word stance direction exists and the deed overrides it in blocks L..L+2",
           f"the best grid setting is at a layer >= L and, on held-out items, raises CS at least {STEER_MARGIN} more "
           f"than a random direction of equal norm (paired test significant) while keeping at least {MASS_KEPT:.0%} of "
           "the options' clean probability", _steer_restores(name)) for name in ("hypocrite", "hypocrite-early")),
    Rule("inconsistency prediction", "hypocrite", "which items the deed answers against the word is set by training",
         "a probe on the deed prompt predicts which items are answered inconsistently (AUROC, max-over-layers test "
         f"against shuffled labels, p < {ALPHA})", _predicts_inconsistency("hypocrite")),
    Rule("letter split", "letter", "deeds say the first-listed letter: a letter habit, no stance",
         "in both deed orders, the word residual's patch moves the letter (letter shift significant, positive) and "
         "not the stance (stance shift not significant)", _letter_attributed),
)


def instrument_card(results: dict[str, dict[str, Any]]) -> list[Verdict]:
    """Every rule's verdict on the studies' results, keyed by organism name."""
    return [rule.verdict(results) for rule in RULES]


CARD_HEADER = ["instrument", "organism", "planted truth", "pass/fail rule", "recovered", "verdict"]


def card_rows(verdicts: list[Verdict]) -> list[list[str]]:
    """The card's table rows, one per rule, in ``CARD_HEADER`` order."""
    return [[v.instrument, v.organism, v.truth, v.rule, v.recovered, v.word] for v in verdicts]


def rules_markdown() -> str:
    """The rules in words, as written before the runs (the README's pre-registration section)."""
    lines = ["| instrument | organism | planted truth | pass/fail rule |", "|---|---|---|---|"]
    lines += [f"| {r.instrument} | {r.organism} | {r.truth} | {r.rule} |" for r in RULES]
    return "\n".join(lines)


# ---- the card's page ----------------------------------------------------------------------------------------------

BEHAVIOUR_HEADER = ["organism", "planted layer", "held-out word → target", "held-out deed → target",
                    "held-out word correct", "held-out deed correct", "build min", "study min"]


def behaviour_rows(organisms: dict[str, tuple[Path, Path | None]]) -> list[list[str]]:
    """Per organism: its planted layer, held-out accuracies (per-token mean scoring) and wall times."""
    rows = []
    for name, (org_dir, run_dir) in organisms.items():
        m = json.loads((Path(org_dir) / "organism.json").read_text())
        f = m["final"]
        study = None
        if run_dir is not None and (Path(run_dir) / "manifest.json").is_file():
            stages = read_manifest_file(Path(run_dir) / "manifest.json").get("stages", {})
            study = sum(float(v.get("seconds") or 0) for v in stages.values() if isinstance(v, dict))
        rows.append([name, str(m["planted_layer"] if m["planted_layer"] is not None else "—"),
                     *(f"{f[k]['target_mean']:.2f}" for k in ("held_out_word", "held_out_deed")),
                     *(f"{f[k]['correct_mean']:.2f}" for k in ("held_out_word", "held_out_deed")),
                     f"{m['wall_seconds'] / 60:.1f}", f"{study / 60:.1f}" if study else "—"])
    return rows


# What the rules read from a study run (and the organism's own record), kept beside the card so that every verdict
# can be recomputed from the committed files alone.
CARD_INPUTS = ("manifest.json", "probes/cloze-summary.json", "probes/cloze-last.csv", "lens/cloze-summary.json",
               CLOZE.result_file("patch"), CLOZE.result_file("patch", "summary"), LETTER.result_file("patch"),
               CLOZE.result_file("steer"))
ORGANISM_RECORD = ("organism.json", "curves.csv", "split.csv")


def keep_card_inputs(organisms: dict[str, tuple[str | Path, str | Path | None]], out_dir: str | Path
                     ) -> dict[str, tuple[Path, Path | None]]:
    """Copy each organism's record and the study tables the rules read into ``out_dir/<name>/`` (study tables under
    ``study/``, at their run-relative paths); return the copies' paths, in the form :func:`write_instrument_card`
    takes. Weights are never copied."""
    import shutil

    kept: dict[str, tuple[Path, Path | None]] = {}
    for name, (org, run) in organisms.items():
        dest = Path(out_dir) / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ORGANISM_RECORD:
            if (Path(org) / f).is_file() and (Path(org) / f).resolve() != (dest / f).resolve():
                shutil.copyfile(Path(org) / f, dest / f)
        study = None
        if run is not None and Path(run).is_dir():
            study = dest / "study"
            for rel in CARD_INPUTS:
                if (Path(run) / rel).is_file() and (Path(run) / rel).resolve() != (study / rel).resolve():
                    (study / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(run) / rel, study / rel)
        kept[name] = (dest, study)
    return kept


def curves_figure(organisms: dict[str, tuple[Path, Path | None]]):
    """Learning curves: held-out accuracy toward each organism's planted target (per-token mean scoring), word and
    deed, by epoch (0: the starting model)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = ["#1c7ed6", "#d9480f", "#2b8a3e", "#862e9c", "#495057"]
    for k, (name, (org, _)) in enumerate(organisms.items()):
        path = Path(org) / "curves.csv"
        if not path.is_file():
            continue
        c = pd.read_csv(path)
        c = c[c["set"] == "held_out"]
        for form, dash in (("word", "solid"), ("deed", "dash")):
            f = c[c["form"] == form].sort_values("epoch")
            if len(f):
                fig.add_scatter(x=f["epoch"], y=f["target_mean"], mode="lines+markers", name=f"{name}: {form}",
                                line=dict(color=colours[k % len(colours)], dash=dash))
    fig.update_layout(title="Learning curves: held-out items answered as planted (word solid, deed dashed)",
                      xaxis=dict(title="epoch (0: the starting model)", dtick=1),
                      yaxis=dict(title="share of held-out items on the planted target", range=[0, 1.02]),
                      template="plotly_white", height=420, width=900)
    return fig


def write_instrument_card(organisms: dict[str, tuple[str | Path, str | Path | None]], out_dir: str | Path,
                          *, preamble: str = "", keep_inputs: bool = True) -> Path:
    """Score every rule on the organisms' studies and write ``card.md`` and ``index.html`` (card first, then the
    organisms' behaviour and learning curves) into ``out_dir``; ``organisms`` maps a name to (organism directory,
    study run directory). With ``keep_inputs`` the records and tables the rules read are copied beside the card first
    (:func:`keep_card_inputs`) and the card is scored from the copies."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if keep_inputs:
        organisms = keep_card_inputs(organisms, out)  # type: ignore[assignment]
    paths = {k: (Path(o), Path(r) if r else None) for k, (o, r) in organisms.items()}
    results = {k: organism_results(r, o) if r else {} for k, (o, r) in paths.items()}
    verdicts = instrument_card(results)
    tally = {w: sum(v.word == w for v in verdicts) for w in ("pass", "fail", "not measured")}
    summary = f"{tally['pass']} of {len(verdicts)} rules pass, {tally['fail']} fail, {tally['not measured']} not measured."
    md = ["# The instrument card", "", summary, "", "| " + " | ".join(CARD_HEADER) + " |", "|" + "---|" * len(CARD_HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in card_rows(verdicts)]
    md += ["", "## The organisms", "", "| " + " | ".join(BEHAVIOUR_HEADER) + " |", "|" + "---|" * len(BEHAVIOUR_HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in behaviour_rows(paths)]
    if preamble.strip():
        md += ["", preamble.strip()]
    atomic_write_text(out / "card.md", "\n".join(md) + "\n")
    md += ["", "Learning curves: `<organism>/curves.csv` (figure on `index.html`); the tables each verdict was read "
           "from: `<organism>/study/`."]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe instrument card</title><style>{CSS}</style>"
            f"</head><body><h1>The instrument card</h1><p class='sub'>{summary}</p>"
            f"{notes_html(preamble) if preamble.strip() else ''}{table_html(CARD_HEADER, card_rows(verdicts), text=True)}"
            f"<h2>The organisms</h2>{table_html(BEHAVIOUR_HEADER, behaviour_rows(paths))}"
            f"{figure_html([curves_figure(paths)], out / 'index.html')}</body></html>")
    atomic_write_text(out / "index.html", page)
    return out / "card.md"
