"""The study report: one self-contained page (``index.html``) and its markdown twin (``README.md``, what a
code host shows for the folder).

The page opens with the findings in words and numbers, each sentence built from a run's saved
tables with wording that follows the numbers (a CS within 0.05 of its chance baseline is called
chance, a steering gain is called a restoration only if it beats clean and every control direction run on
held-out items); then the figures, redrawn from those tables; then timings and the manifest.
Stages that were not run are left out, so the same code reports a scoring-only run or the full study.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import StageNotFinishedError
from wdprobe.figures import probes as plots
from wdprobe.figures.page import embed_figure, plotly_script
from wdprobe.figures.probes import png_problem, reference_line, write_png
from wdprobe.methods.steering import MIN_MASS_RATIO, control_key
from wdprobe.reports.claims import Q_LEVEL, Finding, claims_ledger, publish_findings, q_by_key, with_q_values
from wdprobe.reports.html import CSS, folded, notes_html, table_html, verdict_line
from wdprobe.reports.localisation import copy_localisation_tables, localisation_figures
from wdprobe.reports.scores import PAPER_TABLE, is_wdct, write_score_report
from wdprobe.reports.wording import (
    asserted_claims,
    corrected_away,
    decodable,
    interval,
    layer_words,
    p_text,
    stats_text,
    supported,
    verdict,
    versus,
)
from wdprobe.runs.rundir import RunDir, checked_result_text
from wdprobe.scoring.orders import READING_NAMES
from wdprobe.stages.content_probes import content_figure, content_title
from wdprobe.stages.readouts import READOUTS
from wdprobe.stages.score import load_score, wdct_metrics

LETTER, CLOZE = READOUTS["letter"], READOUTS["cloze"]  # the study report reads both formats' instruments


def _json(path: Path, ledger: pd.DataFrame | None = None) -> dict | None:
    """A run's result summary, verified against the checksum its stage recorded (the run is the nearest folder up
    with a manifest); None when the stage did not write it. With the run's claims ``ledger``, every test record
    carries its q-value across the report, which the wording then follows."""
    if not path.is_file():
        return None
    run = next((d for d in path.parents if (d / "manifest.json").is_file()), path.parent)
    data = json.loads(checked_result_text(run, path))
    return data if ledger is None else with_q_values(data, path.relative_to(run).as_posix(), ledger)


def require_scored_run(path: Path) -> None:
    """Every report starts from the scores; say so by name instead of failing on a missing file."""
    manifest = RunDir(path).read_manifest()
    if "score" not in manifest.get("stages", {}) or not (Path(path) / "metrics.json").is_file():
        raise StageNotFinishedError(f"{path} holds no finished scoring run (manifest.json + metrics.json); "
                                "run `wdprobe run` or `wdprobe score` into it first")


def study_numbers(run_dir: str | Path) -> dict[str, Any]:
    """Every headline number of a run, read from its saved artefacts (missing stages are None)."""
    run = RunDir(run_dir)
    p = run.path
    manifest = run.read_manifest()
    require_scored_run(p)
    ledger = claims_ledger(p)

    def load(path: Path) -> dict | None:
        return _json(path, ledger)

    probes = {}
    for f in sorted((p / "probes").glob("*-headline.json")) if (p / "probes").is_dir() else []:
        probes[f.name.removesuffix("-headline.json")] = load(f)
    metrics = load(p / "metrics.json")
    if metrics is not None and "vs_chance" not in (metrics.get("readings") or {}).get("shown", {}):
        # scored before readings (or their tests) existed: derive them from the items
        metrics = dict(metrics, readings=wdct_metrics(load_score(p).rows)["readings"])
    capture = manifest.get("stages", {}).get("capture", {})
    return {"model": manifest["stages"]["score"]["config"]["model"], "manifest": manifest, "ledger": ledger,
            "metrics": metrics, "probes": probes, "content_probes": load(p / "probes" / "content-summary.json"),
            "content_ic": load(p / "probes" / "content-ic.json"),
            "cloze_probes": load(p / "probes" / "cloze-summary.json"), "cloze_ic": load(p / "probes" / "cloze-ic.json"),
            "n_layers": len(capture.get("layers") or []) or None, "lens": load(p / "lens" / "summary.json"),
            "cloze_lens": load(p / "lens" / "cloze-summary.json"),
            "cloze_tuned_lens": load(p / "lens" / "cloze-tuned-summary.json"),
            "cross": load(p / LETTER.result_file("patch")), "cloze_cross": load(p / CLOZE.result_file("patch")),
            "positional": {f: load(p / "patching" / f"positional-{f}-headline.json") for f in ("deed", "word")},
            "positional_arrival": {f: arrival_layer(p / "patching" / f"positional-{f}-segments.csv") for f in ("deed", "word")},
            "steer": load(p / LETTER.result_file("steer")), "cloze_steer": load(p / CLOZE.result_file("steer"))}


def arrival_layer(segments_csv: Path, segment: str = "final", share: float = 0.5) -> int | None:
    """First layer at which patching the final token alone carries ``share`` of the option-swap effect
    (exact patching where it was run, else attribution): where option content has reached the answer."""
    if not segments_csv.is_file():
        return None
    seg = pd.read_csv(segments_csv)
    method = "exact" if (seg.method == "exact").any() else "attribution"
    s = seg[(seg.method == method) & (seg.segment == segment)].sort_values("layer")
    hit = s[s.normalised >= share]
    return int(hit.layer.iloc[0]) if len(hit) else None


def _closest_paper_models(cs: float, k: int = 2) -> list[str]:
    ranked = sorted(PAPER_TABLE, key=lambda m: abs(PAPER_TABLE[m][0] - cs))
    return ranked[:k]


def finding_behaviour(n: dict) -> Finding | None:
    """Finding 1: CS in every reading the run measured, each with its interval and its test against chance."""
    m = n["metrics"]
    if not m:
        return None
    readings = m.get("readings") or {}
    parts = []
    for name, label in (("shown", "paper-compatible (one seeded order, by letter)"),
                        ("content", "content (order-averaged over every cyclic order)"),
                        ("order_mean", "mean over single orders"), ("cloze", "cloze (no letters)")):
        r = readings.get(name)
        if not r:
            continue
        cs = r["cs"]["micro"]
        sentence = f"{label} {interval(cs['value'], cs['low'], cs['high'], 3)}"
        if r.get("vs_chance"):
            ref = r["vs_chance"]["reference"]
            sentence += " — " + versus(r["vs_chance"], above=f"above the {ref:.3f} the same answers reach with random "
                                       "items", below=f"below the {ref:.3f} the same answers reach with random items",
                                       neither=f"not distinguishable from {ref:.3f}, what the same answers reach "
                                               "paired with random items")
        parts.append(sentence)
    verdict_first = shown_and_not("CS above what the same answers reach paired with random items", {
        label.split(" (")[0]: (readings.get(name) or {}).get("vs_chance")
        for name, label in (("shown", "paper-compatible reading"), ("content", "content reading"),
                            ("cloze", "cloze form"))}) if any((readings.get(k) or {}).get("vs_chance")
                                                               for k in ("shown", "content", "cloze")) else ""
    text = (verdict_first + (" " if verdict_first else "")
            + f"CS over {m['n_items']} items, 95% intervals: " + "; ".join(parts) + "." if parts else
            f"CS {m['cs_micro']:.3f} over {m['n_items']} items (macro {m['cs_macro']:.3f}).")
    if is_wdct(m):
        near = _closest_paper_models(m["cs_macro"])
        text += (f" In the paper's table (macro CS {m['cs_macro']:.3f} here) it sits nearest "
                 f"{' and '.join(f'{x} ({PAPER_TABLE[x][0]:.2f})' for x in near)}.")
    content = readings.get("content")
    if content and content.get("order_sensitivity"):
        sens = content["order_sensitivity"]
        prior = content.get("letter_prior", {}).get("2", {})
        text += (f" Reordering the options changes the answer of {interval(**_iv(sens['word']))} of word items and "
                 f"{interval(**_iv(sens['deed']))} of deed items")
        if prior:
            text += (f"; on two-option questions the letter prior (PriDe, estimated from the orders) puts "
                     f"{prior['word'][0]:.2f} on \"A\" in words and {prior['deed'][0]:.2f} in deeds")
        text += "."
    if "word_letter_mass_mean" in m:
        text += (f" Mean probability on the option letters: word {m['word_letter_mass_mean']:.2f}, deed "
                 f"{m['deed_letter_mass_mean']:.2f}.")
    return Finding("Is the model consistent?", text,
                   {"cs_micro": m["cs_micro"], "cs_macro": m["cs_macro"], "pcs_micro": m["pcs_micro"],
                    "readings": {k: v["cs"]["micro"] for k, v in readings.items()}})


def _iv(d: dict) -> dict:
    return {"value": d["value"], "low": d["low"], "high": d["high"]}


def ic_text(ic: dict, who: str) -> str:
    """IC(l) in words: a shared stance is claimed only when IC beats its within-domain control and the answers'
    agreement (CS), each by its test."""
    t, c = ic["above_cs"], ic["above_control"]
    text = (f"{who} reads the same stance from an item's word and deed prompts on "
            f"{interval(ic['best'], ic['best_low'], ic['best_high'])} of the {ic['n_items']} items at its best "
            f"{layer_words(ic)} (IC(l)"
            + ("" if ic.get("kappa_at_best") is None else
               f"; chance-corrected, Cohen's kappa {ic['kappa_at_best']:.2f}: raw agreement follows how often each "
               "reading says one stance")
            + f"); a probe on labels permuted within domains agrees on {c['control_at_best']:.2f} "
            f"there (what an item's two prompts share by topic and domain), and the answers agree on "
            f"{ic['content_cs']:.2f} (CS): ")
    beats_control = supported(c)
    if beats_control and verdict(t) > 0:
        return text + (f"IC beats its control ({stats_text(c)}, max over layers) and CS (by "
                       f"{interval(t['effect'], t['low'], t['high'])}, {stats_text(t)}): a stance shared inside "
                       "that the deed answer leaves")
    if beats_control:
        return text + f"IC beats its control ({stats_text(c)}) but not CS ({stats_text(t)})"
    if corrected_away(c):
        return text + (f"IC beats its control in its own test (family-wise {p_text(c['p_value'])}) but not once the "
                       f"report's other tests are counted (q = {c['q_value']:.3f}): inconclusive at n = "
                       f"{ic['n_items']} items")
    return text + (f"IC does not beat its control (family-wise {stats_text(c)}), so the agreement is what shared "
                   f"topic and domain give, not a shared stance: inconclusive at n = {ic['n_items']} items")


def finding_probes(n: dict) -> Finding | None:
    """Finding 2: what is decodable inside — content vs letter (every order), or the shown answers — by test."""
    content = (n.get("content_probes") or {}).get("last")
    head = n["probes"].get("resid_post-last")
    if not content and not head and not (n.get("cloze_probes") or {}).get("last"):
        return None
    layers = n.get("n_layers")
    sentences = []
    if content:
        sentences.append(decodable(content.get("decide_word"), "In word prompts (every order), the option the model "
                                   "decides on by content", layers=layers))
        sentences.append(decodable(content.get("decide_deed"), "In deed prompts, the content choice", layers=layers))
        sentences.append(decodable(content.get("bind_word"), "The letter it says in words", layers=layers))
        sentences.append(decodable(content.get("transfer_word_deed"), "A content probe trained on words and read on "
                                   "deeds", layers=layers))
        sentences.append(decodable(content.get("inconsistency"), "From the deed prompt, whether the item will be "
                                   "answered inconsistently", layers=layers))
    ic = (n.get("content_ic") or {}).get("last")
    if content and ic and "above_control" in ic:
        sentences.append(ic_text(ic, "One content probe trained on both forms"))
    cloze, cloze_ic = (n.get("cloze_probes") or {}).get("last"), (n.get("cloze_ic") or {}).get("last")
    if cloze:
        sentences.append(decodable(cloze.get("decide_word"), "In the cloze form (no options shown, no letters), the "
                                   "word choice", layers=layers))
        sentences.append(decodable(cloze.get("decide_deed"), "The cloze deed choice", layers=layers))
        sentences.append(decodable(cloze.get("transfer_word_deed"), "A cloze probe trained on words and read on deeds",
                                   layers=layers))
        if cloze_ic and "above_control" in cloze_ic:
            sentences.append(ic_text(cloze_ic, "In the cloze form, one probe trained on both forms"))
    for name, where in (("content_ic", "letter prompts"), ("cloze_ic", "cloze form")):
        over_question = (n.get(name) or {}).get("question_mean")  # the other captured position, read the same way
        if over_question and "above_control" in over_question:
            sentences.append(ic_text(over_question, f"Over the question tokens ({where}), one probe trained on both "
                                                    "forms"))
    tests = (head or {}).get("tests")
    if tests and not content:  # a letter-free run words its content probes; the shown-order tests are the fallback
        sentences.append(decodable(tests.get("word->word"), "In the shown order alone, the word answer", layers=layers))
        sentences.append(decodable(tests.get("word->deed"), "A word-answer probe read on deeds", layers=layers))
        sentences.append(decodable(tests.get("letter"), "The letter said in words", layers=layers))
    elif head and not content:
        kind = "logreg" if "logreg" in head else "diffmean"
        h = head[kind]
        sentences.append(f"A {kind} probe reads the word answer at {h['word->word']:.2f} (layer {h['best_word_layer']}) "
                         f"and words-to-deeds at best {h['word->deed_best']:.2f}; this run recorded no test, so no claim "
                         "is made (rerun the probes stage)")
    text = (probe_verdict({"word content choice": (content or {}).get("decide_word"),
                           "deed content choice": (content or {}).get("decide_deed"),
                           "letter said in words": (content or {}).get("bind_word"),
                           "content carried from word to deed": (content or {}).get("transfer_word_deed"),
                           "coming inconsistency": (content or {}).get("inconsistency"),
                           "cloze word choice": (cloze or {}).get("decide_word"),
                           "cloze deed choice": (cloze or {}).get("decide_deed"),
                           "cloze word-to-deed transfer": (cloze or {}).get("transfer_word_deed"),
                           "a content stance shared by word and deed (IC)": shared_stance_test(
                               (n.get("content_ic") or {}).get("last")),
                           "a cloze stance shared by word and deed over the question (IC)": shared_stance_test(
                               (n.get("cloze_ic") or {}).get("question_mean")),
                           **({} if content else {"shown word answer": (tests or {}).get("word->word"),
                                                  "word answer read on deeds": (tests or {}).get("word->deed"),
                                                  "letter said": (tests or {}).get("letter")})})
            + " At the answer position (difference-of-means probes, folds by item, max-over-layers permutation tests): "
            + ". ".join(sentences) + ".")
    return Finding("What is decodable inside: the option or the letter?", text,
                   {"content": content, "tests": tests})


def shared_stance_test(ic: dict | None) -> dict | None:
    """IC's claim of a shared stance as one test record: its test against the within-domain control, counted as
    supporting only when IC also beats CS by its own test (as :func:`ic_text` words it)."""
    if not ic or "above_control" not in ic:
        return None
    above_cs = ic.get("above_cs") or {}
    if verdict(above_cs, record=False) > 0:
        return ic["above_control"]
    return dict(ic["above_control"], significant=False)


def probe_verdict(tests: dict[str, dict | None]) -> str:
    """The probe finding's verdict in one sentence: what is decodable once its stage's best-layer test and the
    report's correction both say so, and what is not shown."""
    return shown_and_not("Decodable after correction across the report", tests)


def shown_and_not(claim: str, tests: dict[str, dict | None]) -> str:
    """A verdict sentence over several tests: the ones that support ``claim`` (their stage's test and the report's
    correction), then the ones measured that do not; tests not run are not named."""
    measured = {name: t for name, t in tests.items() if t}
    if not measured:
        return "No test was recorded."
    # an effect with a sign must point the claimed way; a decoding test has no sign (above chance is the claim)
    shown = [name for name, t in measured.items() if (verdict(t) > 0 if "effect" in t else supported(t))]
    rest = [name for name in measured if name not in shown]
    if len(rest) > 3:  # a verdict stays one short sentence; the finding below names every test
        rest = [f"{len(rest)} others ({', '.join(rest[:2])}, …)"]
    return (f"{claim}: {', '.join(shown) if shown else 'none of those tested'}"
            + (f"; not shown: {', '.join(rest)}." if rest else "."))


def finding_lens(n: dict) -> Finding | None:
    """Finding 3: where the deed answer leaves the word answer under the logit lens."""
    lens = n["lens"]
    cloze = n.get("cloze_lens")
    if not lens or not lens["inconsistent"]["n"]:
        if cloze and cloze["inconsistent"]["n"]:
            return Finding("Where does the deed answer leave the word stance?", cloze_lens_text(cloze).strip(),
                           {"cloze_divergence_layer_median": cloze["inconsistent"]["item_divergence_layer_median"]})
        return None
    inc = lens["inconsistent"]
    hist = {int(k): v for k, v in inc.get("item_divergence_layer_hist", {}).items()}
    n_layers = len(lens["all"]["lens_cs"])
    last3 = sum(v for k, v in hist.items() if k >= n_layers - 3)
    share = last3 / max(1, sum(hist.values()))
    cs_curve = lens["all"]["lens_cs"]
    text = (f"Read through the logit lens, {parting_words(inc)}; {share:.0%} of those that part do so in the "
            f"last three of {n_layers} layers. Lens CS over all items ranges from {min(cs_curve[:-1]):.2f} to "
            f"{max(cs_curve[:-1]):.2f} before the last layer (final {cs_curve[-1]:.2f}; a description, not a test).")
    if cloze and cloze["inconsistent"]["n"]:
        text += cloze_lens_text(cloze)
    tuned = n.get("cloze_tuned_lens")
    if tuned and tuned["inconsistent"]["n"]:
        text += tuned_lens_text(tuned)
    return Finding("Where does the deed answer leave the word stance?", text,
                   {"divergence_layer_median": inc["item_divergence_layer_median"], "share_last_three": share,
                    "n_layers": n_layers})


def cloze_lens_text(cloze: dict) -> str:
    """The cloze-form lens in words (at the options' decision point; a description, not a test)."""
    inc = cloze["inconsistent"]
    curve = cloze["all"]["lens_cs"]
    left = len(cloze.get("unreadable_items") or [])
    return (f" In the cloze form (read where the two options part, after their shared tokens; {left} items whose "
            f"options never part left out), {parting_words(inc)}; lens CS ranges from {min(curve):.2f} to {max(curve):.2f} over the layers.")


def tuned_lens_text(tuned: dict) -> str:
    """The cloze-form tuned lens in words (translators fitted per layer, cross-fitted over items; a description)."""
    curve = tuned["all"]["lens_cs"]
    return (f" Through a tuned lens (an affine translator per layer fitted to the last block's residual, no item read "
            f"through translators fitted on it), {parting_words(tuned['inconsistent'])}; its lens CS ranges from "
            f"{min(curve):.2f} to {max(curve):.2f} over the layers.")


def parting_words(inc: dict) -> str:
    """Where the inconsistent items' deed readings part from their word readings, saying how many items the median
    speaks for: an item whose final readings agree never parts, and is counted as such."""
    n, median = inc["n"], inc.get("item_divergence_layer_median")
    parting = inc.get("item_divergence_n_parting", n)
    never = inc.get("item_divergence_never", 0)
    if median is None or parting == 0 or (isinstance(median, float) and np.isnan(median)):
        return f"none of the {n} inconsistent items' deed readings parts from the word reading for good"
    text = (f"the deed reading parts from the word reading for good at layer {median:.0f} (median of the {parting} of "
            f"{n} inconsistent items whose final readings part")
    if never:
        every = inc.get("item_divergence_layer_median_every_item")
        text += (f"; {never} never part, so over all {n} the median item "
                 + ("never parts" if every is None else f"parts at layer {every:.0f}"))
    return text + ")"


def finding_patching(n: dict) -> Finding | None:
    """Finding 4: whether patching the word run into the deed run restores consistency, by test."""
    c = n["cross"]
    if not c or "full" not in c:
        cloze = cloze_patch_text(n.get("cloze_cross")).strip()
        if cloze:
            t = n["cloze_cross"]["tests"]["restores_full"]
            return Finding("Patching restores consistency" if verdict(t) > 0 else "Does patching restore consistency?",
                           cloze, {"tests": n["cloze_cross"]["tests"]})
        return None
    f = c["full"]
    cloze_tests = (n.get("cloze_cross") or {}).get("tests") or {}
    text = shown_and_not("Patches that raise CS beyond picking the best layer", {
        "the full residual": (c.get("tests") or {}).get("restores_full"),
        "its stance component": (c.get("tests") or {}).get("restores_stance"),
        "the cloze decision point's residual": cloze_tests.get("restores_full")}) + " "
    text += (f"Patching the word run's residual into the deed run at the answer position flips up to "
            f"{f['flip_rate']:.2f} of inconsistent items (layer {f['layer']}) but breaks {f['break_rate']:.2f} of "
            f"consistent ones (CS {c['cs_clean']:.3f} clean, {f['cs_after']:.3f} patched). In the shown deed "
            f"order it flips {f['flip_rate_same_letter']:.2f} where the word run's letter also labels the word answer "
            f"and {f['flip_rate_other_letter']:.2f} where it does not.")
    tests = c.get("tests") or {}
    restored = 0
    for cond, label in (("full", "the full residual"), ("stance", "the stance component")):
        t = tests.get(f"restores_{cond}")
        if not t:
            continue
        restored = max(restored, verdict(t)) if cond == "full" else restored
        text += " " + versus(t, above=f"Patching {label} raises CS by {interval(t['effect'], t['low'], t['high'])} at "
                                      f"its best layer {t['setting']}, beyond picking the best layer",
                             below=f"Patching {label} lowers CS by {interval(-t['effect'], -t['high'], -t['low'])}",
                             neither=f"Patching {label}: no layer raises CS beyond what picking the best layer gives "
                                     f"(best layer {t['setting']}, {interval(t['effect'], t['low'], t['high'])})") + "."
        b = tests.get(f"{cond}_beats_random")
        if b:
            text += " " + versus(b, above="It beats a random direction of the same norm",
                                 below="A random direction of the same norm does better",
                                 neither="Against a random direction of the same norm") + "."
    if not tests:
        text += " This run recorded no test, so no claim about restoration is made (rerun patch_cross)."
    text += letter_split_text(c.get("letter_split"))
    text += cloze_patch_text(n.get("cloze_cross"))
    arrive = n["positional_arrival"]
    if arrive.get("deed") is not None and arrive.get("word") is not None:
        text += (f" Swapping the options shows where their content reaches the answer position: layer {arrive['word']} "
                 f"in word prompts, layer {arrive['deed']} in deed prompts.")
    title = "Patching restores consistency" if restored > 0 else "Does patching restore consistency?"
    return Finding(title, text, {"flip_rate": f["flip_rate"], "break_rate": f["break_rate"], "cs_after": f["cs_after"],
                                 "cs_clean": c["cs_clean"], "arrival": arrive, "tests": tests})


def cloze_patch_text(head: dict | None) -> str:
    """Cloze-form patching in words, from its max-over-layers tests (decision-step consistency)."""
    if not head or "tests" not in head or "restores_full" not in head["tests"]:
        return ""
    t = head["tests"]["restores_full"]
    text = (f" In the cloze form ({head['n_items']} items, read where the options part), patching the word run's "
            f"residual at its decision point into the deed's (decision-step CS {head['cs_clean_decision_step']:.2f} "
            "clean): "
            + versus(t, above=f"it raises CS by {interval(t['effect'], t['low'], t['high'])} at layer {t['setting']}, "
                              "beyond picking the best layer",
                     below=f"it lowers CS by {interval(-t['effect'], -t['high'], -t['low'])}",
                     neither=f"no layer raises CS beyond what picking the best layer gives (best layer {t['setting']}, "
                             f"{interval(t['effect'], t['low'], t['high'])})"))
    b = head["tests"].get("full_beats_random")
    if b:
        text += "; " + versus(b, above="it beats a random direction's component", below="a random direction does better",
                              neither="against a random direction's component")
    return text + "."


def letter_split_text(split: dict | None) -> str:
    """The both-orders patching result in words: what the full residual carries, stance or letter, by test."""
    if not split or "full" not in split or not split.get("tests"):
        return ""
    f, tests = split["full"], split["tests"]
    stance, letter = tests.get("stance_transport_full"), tests.get("letter_transport_full")
    if not stance or not letter:
        return ""
    text = (f" Patched into both deed orders ({split['n_items']} items), the full residual moves the deed toward the "
            "word answer's content (the same in both orders) by "
            + versus(stance, above=f"{interval(stance['effect'], stance['low'], stance['high'])} log-odds at layer "
                                   f"{stance['setting']}, beyond picking the best layer",
                     below=f"{interval(stance['effect'], stance['low'], stance['high'])} log-odds, away from it",
                     neither=f"{interval(stance['effect'], stance['low'], stance['high'])} log-odds at its best layer "
                             f"{stance['setting']}, no more than chance")
            + "; toward the word run's letter (same-letter order minus opposite-letter order, halved) by "
            + versus(letter, above=f"{interval(letter['effect'], letter['low'], letter['high'])} at layer "
                                   f"{letter['setting']}, beyond picking the best layer",
                     below=f"{interval(letter['effect'], letter['low'], letter['high'])}, against the letter",
                     neither=f"{interval(letter['effect'], letter['low'], letter['high'])} at its best layer "
                             f"{letter['setting']}, no more than chance")
            + f". At layer {f['layer']}, where it moves the letter most, it flips "
              f"{f['flip_rate_same']:.2f} of them where the word answer keeps its letter and {f['flip_rate_opposite']:.2f} "
              "where it does not.")
    verdicts = (verdict(stance) > 0, verdict(letter) > 0)
    carries = {(True, True): "both the stance and the letter", (True, False): "the stance, not the letter",
               (False, True): "the letter, not the stance", (False, False): "neither, at this n"}[verdicts]
    return text + f" What the word run's residual carries into the deed: {carries}."


def validation_text(val: dict | None, mass_label: str, min_mass_ratio: float,
                    skipped: str | None = None) -> tuple[str, bool | None]:
    """A steering validation on held-out items in words, and whether it is a validated restoration (``None``
    when no claim can be made); ``skipped``: why a validation could not run."""
    if not val:
        why = f" ({skipped})" if skipped else ""
        return f" Not validated on held-out items{why}, so no claim is made.", None
    if not val.get("tests"):
        return (f" On the {val['n_items']} held-out items CS {val['stance']['cs']:.3f} vs clean {val['cs_clean']:.3f}; "
                "this run recorded no test, so no claim is made (rerun steer)."), None
    t = val["tests"]["beats_clean"]
    controls = [c for c in val.get("controls", ["random"]) if CONTROL_NAMES.get(c) and c in val]
    beats = {c: val["tests"].get(control_key(c)) for c in controls}
    restored = verdict(t) > 0 and all(b is not None and verdict(b) > 0 for b in beats.values())
    text = (f" On the {val['n_items']} items the grid never saw, CS {val['stance']['cs']:.3f} vs clean "
            f"{val['cs_clean']:.3f}" + "".join(f", {CONTROL_NAMES[c]} {val[c]['cs']:.3f}" for c in controls) + ": "
            + versus(t, above=f"steering beats clean by {interval(t['effect'], t['low'], t['high'])}",
                     below=f"steering lowers CS by {interval(-t['effect'], -t['high'], -t['low'])}",
                     neither="steering vs clean"))
    for c, b in beats.items():
        if b is not None:
            text += "; " + versus(b, above=f"it beats the {CONTROL_NAMES[c]}", below=f"the {CONTROL_NAMES[c]} does better",
                                  neither=f"vs the {CONTROL_NAMES[c]}")
    text += "."
    told, told_clean, vs_told = val.get("prompted"), val["tests"].get("prompted_beats_clean"), val["tests"].get("beats_prompted")
    if told and told_clean and vs_told:
        text += (f" Telling the model its own word answer instead (the prompting baseline) gives CS {told['cs']:.3f}: "
                 + versus(told_clean, above="prompting beats clean", below="prompting lowers CS",
                          neither="prompting vs clean")
                 + "; " + versus(vs_told, above="steering beats prompting", below="prompting does better than steering",
                                 neither="steering vs prompting") + ".")
    masses = [f"{'steered' if c == 'stance' else CONTROL_NAMES[c]} {median_mass(val[c])}" for c in ("stance", *controls)]
    if any(not m.endswith("not recorded") for m in masses):
        text += f" The {mass_label} each item keeps of its clean run (median over items): " + ", ".join(masses) + "."
    broken = [c for c in controls if val[c].get("mass_ratio", 1.0) < min_mass_ratio]
    for c in broken:
        text += (f" The {CONTROL_NAMES[c]} keeps {val[c]['mass_ratio']:.2g} of the clean {mass_label} at this norm: it "
                 "breaks the answer format, so beating it says little.")
    return text + (" A validated restoration." if restored else " Not a validated restoration."), restored


CONTROL_NAMES = {"random": "isotropic random direction", "pair-random": "format-keeping control"}


def median_mass(cell: dict) -> str:
    """A cell's per-item answer-format mass ratio (median over items), or its ratio of means where the run predates it."""
    if cell.get("mass_ratio_median") is not None:
        return f"{cell['mass_ratio_median']:.2g}"
    if cell.get("mass_ratio") is not None:
        return f"{cell['mass_ratio']:.2g} (ratio of means)"
    return "not recorded"


def cloze_steering_text(head: dict | None) -> tuple[str, bool | None]:
    """Cloze-form steering in words (decision-step CS), and whether it is a validated restoration."""
    if not head:
        return "", None
    if head.get("skipped"):
        return f" Steering in the cloze form was not run on these {head['n_items']} items: {head['skipped']}.", None
    best = head.get("best")
    if not best:
        return (f" In the cloze form ({head['n_items']} items) no (layer, alpha) setting kept the options' decision "
                "tokens likely; nothing to report."), None
    text = (f" In the cloze form ({head['n_items']} items, the word run's cloze stance direction added at the deed's "
            f"decision point, read as decision-step CS), the best grid setting by "
            f"{'balanced CS' if best.get('selected_by', 'cs_balanced') == 'cs_balanced' else 'CS'} (layer {best['layer']}, "
            f"alpha {best['alpha']:g}) flips {best['flip_rate']:.2f} of inconsistent items and breaks "
            f"{best['break_rate']:.2f} of consistent ones (a random direction of equal norm {best['random']['flip_rate']:.2f} "
            f"and {best['random']['break_rate']:.2f}"
            + (f"; the format-keeping control {best['pair-random']['flip_rate']:.2f} and "
               f"{best['pair-random']['break_rate']:.2f}" if best.get("pair-random") else "") + ").")
    more, restored = validation_text(head.get("validation"), "option-token mass", best.get("min_mass_ratio", MIN_MASS_RATIO),
                                     head.get("validation_skipped"))
    return text + more, restored


def finding_steering(n: dict) -> Finding | None:
    """Finding 5: the best steering setting, and whether it survives held-out items, by test (letter and cloze)."""
    s = n["steer"]
    cloze, cloze_restored = cloze_steering_text(n.get("cloze_steer"))
    if not s:
        if not cloze:
            return None
        return Finding("Does steering restore consistency?", cloze.strip(), {"restored": cloze_restored})
    best = s.get("best")
    if not best:
        return Finding("Does steering restore consistency?",
                       "No (layer, alpha) setting kept the answer format; nothing to report." + cloze)
    content = s.get("space") == "content"
    what = ("the word content direction (word residuals averaged over option orders) to the deed run in both option "
            "orders, read as content CS (order-averaged)" if content else "the word-stance direction to the deed run")
    text = (f"Adding {what}, the best grid setting (layer {best['layer']}, alpha "
            f"{best['alpha']:g}) gives CS {best['cs']:.2f} on the {s['n_items']} grid items (clean "
            f"{s['clean_cs_items']:.2f}; a random direction of equal norm {best['random']['cs']:.2f}"
            + (f", the format-keeping control — the residual difference of two other items with the same word "
               f"answer, equal norm — {best['pair-random']['cs']:.2f}" if best.get("pair-random") else "")
            + "); the grid's best "
            "cell is optimistic, so the claim rests on held-out items.")
    val = s.get("validation")
    more, restored = validation_text(val, "letter mass", best.get("min_mass_ratio", MIN_MASS_RATIO), s.get("validation_skipped"))
    prompted = {"letter form": ((val or {}).get("tests") or {}).get("prompted_beats_clean"),
                "cloze form": ((((n.get("cloze_steer") or {}).get("validation")) or {}).get("tests") or {}).get(
                    "prompted_beats_clean")}
    first = steering_verdict({"letter form": restored, **({"cloze form": cloze_restored} if cloze else {})}, prompted)
    return Finding("Does steering restore consistency?", first + " " + text + more + cloze,
                   {"grid_cs": best["cs"], "validated_cs": (val or {}).get("stance", {}).get("cs"), "restored": restored,
                    "cloze_restored": cloze_restored})


def steering_verdict(restored: dict[str, bool | None], prompted: dict[str, dict | None] | None = None) -> str:
    """Steering's verdict in one sentence: in which answer formats it is a validated restoration on held-out items
    (beats clean and every control, each by its test), where it is not, where no claim could be made, and where
    telling the model its own word answer (the prompting baseline) raises CS by its test."""
    parts: dict[bool | None, list[str]] = {True: [], False: [], None: []}
    for name, value in restored.items():
        parts[value].append(name)
    if parts[True]:
        text = f"A validated restoration on held-out items in the {' and '.join(parts[True])}"
        if parts[False]:
            text += f"; none in the {' or '.join(parts[False])}"
    elif parts[False]:
        text = f"No validated restoration on held-out items in the {' or '.join(parts[False])}"
    else:
        text = "No steering claim"
    if parts[None]:
        text += f"; no claim in the {' or '.join(parts[None])} (not validated)"
    told = [name for name, t in (prompted or {}).items() if t and verdict(t) > 0]
    if told:
        text += f"; telling the model its own word answer raises CS in the {' and '.join(told)}"
    return text + "."


FINDINGS = (finding_behaviour, finding_probes, finding_lens, finding_patching, finding_steering)


def findings(run_dir: str | Path, numbers: dict[str, Any] | None = None) -> list[Finding]:
    """The report's numbered findings for a run (only for the stages it has), each listing the tests its wording
    asserts as effects."""
    n = numbers or study_numbers(run_dir)
    out = []
    for fn in FINDINGS:
        with asserted_claims() as claims:
            found = fn(n)
        if found is not None:
            found.claims = list(dict.fromkeys(claims))
            out.append(found)
    return out


def stage_timings(manifest: dict) -> list[tuple[str, float, float | None]]:
    """(stage, wall seconds, CPU seconds or None) in pipeline order from ``wdprobe run``'s record, else from
    each stage's own record. CPU time (all threads of this process) is what another workload on the same
    machine does not inflate."""
    out: list[tuple[str, float, float | None]] = []
    load = manifest.get("model_load")
    if load:
        out.append(("load_model", float(load["seconds"]), load.get("cpu_seconds")))
    for k, v in manifest.get("stages", {}).items():
        if "settings" in v and "seconds" in v:  # recorded by the pipeline's runner
            # a stage resumed across sessions (or run by its own command first) sums its own timer over them
            own = sum(t for name, t in v.get("timings", {}).items() if name != "load_model")
            if own > float(v["seconds"]):
                out.append((k, own, None))
            else:
                out.append((k, float(v["seconds"]), v.get("cpu_seconds")))
    if len(out) > (1 if load else 0):
        return out
    out = []
    for k, v in manifest.get("stages", {}).items():
        t = v.get("seconds_total") or sum(v.get("timings", {}).values()) or None
        if t:
            out.append((k, float(t), None))
    return out


# ---- figures ---------------------------------------------------------------------------------------

def paper_figure(metrics: dict, model: str) -> go.Figure:
    """This run's macro CS and PCS beside the paper's table (Xu et al. 2025), chance marked."""
    names = list(PAPER_TABLE) + [f"{model} (this run)"]
    cs = [PAPER_TABLE[k][0] for k in PAPER_TABLE] + [metrics["cs_macro"]]
    pcs = [PAPER_TABLE[k][1] for k in PAPER_TABLE] + [metrics["pcs_macro"]]
    colour = ["#9aa5b1"] * len(PAPER_TABLE) + ["#d9480f"]
    fig = go.Figure()
    fig.add_bar(y=names, x=cs, orientation="h", marker_color=colour, name="CS", text=[f"{v:.2f}" for v in cs],
                textposition="outside")
    fig.add_scatter(y=names, x=pcs, mode="markers", marker=dict(symbol="diamond", size=10, color="#1c7ed6"), name="PCS")
    reference_line(fig, "chance CS (two options)", x=0.5)
    fig.update_layout(title="CS and PCS beside the paper's table (macro over domains)<br><sup>grey: Xu et al. (ICLR "
                            "2025), generated answers; orange: this run, next-token letter probabilities</sup>",
                      xaxis=dict(range=[0, 1.05], title="score"), height=420, margin=dict(l=200),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def domain_figure(metrics: dict, model: str) -> go.Figure:
    """CS and PCS per domain (WDCT's four, or the domains of the user's own items)."""
    doms = list(metrics["per_domain"])
    fig = go.Figure()
    fig.add_bar(x=doms, y=[metrics["per_domain"][d]["cs"] for d in doms], name="CS", marker_color="#d9480f")
    fig.add_bar(x=doms, y=[metrics["per_domain"][d]["pcs"] for d in doms], name="PCS", marker_color="#1c7ed6")
    if "cs_letter_copy_baseline" in metrics:  # a cloze-only run has no letters to copy
        reference_line(fig, f"letter-copy baseline CS {metrics['cs_letter_copy_baseline']:.2f}",
                       y=metrics["cs_letter_copy_baseline"])
    fig.update_layout(barmode="group", title=f"CS and PCS by domain — {model}<br><sup>"
                      + ", ".join(f"{d} n={metrics['per_domain'][d]['n']}" for d in doms) + "</sup>",
                      yaxis=dict(range=[0, 1.05]), height=380)
    return fig


READING_LABELS = {"shown": "paper-compatible<br>(one seeded order)", "content": "content<br>(order-averaged)",
                  "order_mean": "mean over<br>single orders", "cloze": "cloze<br>(no letters)",
                  "cloze_sum": "cloze<br>(total log-lik)"}


def readings_figure(metrics: dict, model: str) -> go.Figure | None:
    """CS in every reading with its 95% interval, and what the same answers reach paired with random items."""
    readings = metrics.get("readings") or {}
    names = [k for k in READING_LABELS if k in readings]
    if not names:
        return None
    cs = [readings[k]["cs"]["micro"] for k in names]
    fig = go.Figure(go.Bar(x=[READING_LABELS[k] for k in names], y=[c["value"] for c in cs], name="CS (micro)",
                           marker_color="#1f77b4",
                           error_y=dict(type="data", symmetric=False, array=[c["high"] - c["value"] for c in cs],
                                        arrayminus=[c["value"] - c["low"] for c in cs]),
                           hovertemplate="%{x}: CS %{y:.3f}<extra></extra>"))
    ref = [readings[k].get("vs_chance", {}).get("reference") for k in names]
    fig.add_trace(go.Scatter(x=[READING_LABELS[k] for k, r in zip(names, ref) if r is not None],
                             y=[r for r in ref if r is not None], mode="markers", name="same answers, random items",
                             marker=dict(symbol="line-ew-open", size=40, color="#d62728", line=dict(width=3)),
                             hovertemplate="%{x}: chance %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"CS by reading — {model}, {metrics['n_items']} items<br><sup>bars: 95% bootstrap interval "
                            "over items; red: CS of the same answers paired with random items of the same domain</sup>",
                      yaxis=dict(title="CS", range=[0, 1]), xaxis_title="reading", template="plotly_white",
                      height=420, width=820, legend=dict(orientation="h", y=-0.3))
    return fig


def readings_rows(metrics: dict) -> list[list[str]]:
    """One table row per reading: CS micro and macro, PCS, the chance test and accuracy, each with its interval."""
    def iv(d: dict | None) -> str:
        return "—" if not d else interval(d["value"], d["low"], d["high"], 3)

    rows = []
    for name, label in READING_NAMES.items():
        r = (metrics.get("readings") or {}).get(name)
        if not r:
            continue
        chance = r.get("vs_chance")
        rows.append([label, iv(r["cs"]["micro"]), iv(r["cs"].get("macro")), iv((r.get("pcs") or {}).get("micro")),
                     "—" if not chance else f"{chance['reference']:.3f} ({p_text(chance['p_value'])})",
                     iv(r.get("word_accuracy")), iv(r.get("deed_accuracy"))])
    return rows


READINGS_HEADER = ["reading", "CS micro [95% CI]", "CS macro [95% CI]", "PCS micro [95% CI]",
                   "CS with random pairing (test)", "word accuracy", "deed accuracy"]


def content_probe_figures(run_dir: Path, model: str) -> list[tuple[str, go.Figure]]:
    """The content-probe figure of each position the run probed, redrawn from its table."""
    out = []
    for prefix, format in (("content", "letter"), ("cloze", "cloze")):
        for pos in ("last", "question_mean"):
            path = run_dir / "probes" / f"{prefix}-{pos}.csv"
            if path.is_file():
                out.append((f"{prefix}-{pos}", content_figure(pd.read_csv(path),
                                                              content_title(model, pos, format=format))))
    return out


def probe_figures(run_dir: Path, position: str = "last") -> list[go.Figure]:
    """The probe figures of one position (accuracy, IC vs CS, cosine)."""
    stem = f"resid_post-{position}"
    summary_csv = run_dir / "probes" / f"{stem}-summary.csv"
    if not summary_csv.is_file():
        return []
    summary = pd.read_csv(summary_csv)
    head = _json(run_dir / "probes" / f"{stem}-headline.json") or {}
    where = f"resid_post at the {position.replace('_', ' ')} position"
    return [plots.accuracy_figure(summary, head.get("cs"), f"Stance probes by layer<br><sup>{where}</sup>"),
            plots.ic_figure(summary, f"Internal consistency IC(l) vs behavioural CS<br><sup>{where}</sup>")]


def study_figures(run_dir: str | Path, numbers: dict[str, Any] | None = None) -> list[tuple[str, str, go.Figure]]:
    """(section, name, figure) for every stage a run has, in reading order."""

    p = Path(run_dir)
    n = numbers or study_numbers(p)
    figs: list[tuple[str, str, go.Figure]] = []
    if n["metrics"]:
        readings = readings_figure(n["metrics"], n["model"])
        figs += [("behaviour", "readings", readings)] if readings is not None else []
        if is_wdct(n["metrics"]):
            figs += [("behaviour", "paper-table", paper_figure(n["metrics"], n["model"]))]
        figs += [("behaviour", "domains", domain_figure(n["metrics"], n["model"]))]
    figs += [("probes", name, f) for name, f in content_probe_figures(p, n["model"])]
    for pos in ("last", "question_mean"):
        figs += [("probes", f"probes-{pos}-{i}", f) for i, f in enumerate(probe_figures(p, pos))]
    figs += localisation_figures(p)
    return figs


# ---- page ------------------------------------------------------------------------------------------

SECTION_TITLES = {"behaviour": "Behaviour: CS and PCS", "probes": "Probes: is a stance shared inside?",
                  "lens": "Logit lens: where the deed answer forms", "patching": "Cross-form activation patching",
                  "positional": "Positional patching: where option content flows", "steering": "Steering deeds toward words"}


def _paper_rows(metrics: dict, model: str) -> list[list[str]]:
    rows = [[k, f"{cs:.2f}", "—" if p is None else f"{p:.2f}"] for k, (cs, p) in PAPER_TABLE.items()]
    rows.append([f"{model} (this run)", f"{metrics['cs_macro']:.2f}", f"{metrics['pcs_macro']:.2f}"])
    return rows


def _timing_table(manifest: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-stage timing table (the CPU column only where CPU time was recorded)."""
    t = stage_timings(manifest)
    cpus = [c for _, _, c in t if c is not None]
    total = sum(s for _, s, _ in t)
    rows = [[k, f"{s:.0f}", f"{s / 60:.1f}"] + ([("—" if c is None else f"{c:.0f}")] if cpus else []) for k, s, c in t]
    rows.append(["total", f"{total:.0f}", f"{total / 60:.1f}"] + ([f"{sum(cpus):.0f}"] if cpus else []))
    return ["stage", "wall s", "wall min"] + (["CPU s"] if cpus else []), rows


def claims_cell(finding: Finding, ledger: pd.DataFrame) -> str:
    """How many tests a finding words as effects, and the largest of their q-values across the report."""
    if not finding.claims:
        return "no effect claimed"
    q = q_by_key(ledger)
    worst = max(q.get(k, float("nan")) for k in finding.claims)
    if len(finding.claims) == 1:
        return f"1 test, q = {worst:.2g}"
    return f"{len(finding.claims)} tests, largest q = {worst:.2g}"


def ledger_sentence(ledger: pd.DataFrame) -> str:
    """The report's tests in one sentence: how many, how many below 0.05, how many survive correction across the
    report, and which below 0.05 do not (their wording above is then not a finding after correction)."""
    if ledger.empty:
        return "This run records no tests."
    below = ledger[ledger["p_below_0.05"]]
    lost = below[~below["survives"]]
    text = (f"This report runs {len(ledger)} tests; {len(below)} have p < 0.05 and {int(ledger['survives'].sum())} "
            f"survive Benjamini-Hochberg across all of them (q < {Q_LEVEL}).")
    if len(lost):
        text += (" Below 0.05 but not after correction, so not findings of this report: "
                 + "; ".join(f"{r.test} in {r.source} (p = {r.p:.3g}, q = {r.q:.3g})" for r in lost.itertuples()) + ".")
    fragile = ledger[ledger["fragile"]]
    if len(fragile):
        text += (f" {len(fragile)} permutation p-value(s) lie within two Monte-Carlo errors of 0.05 (more "
                 "permutations could move them across).")
    return text


def render_index_html(run_dir: str | Path, notes: str = "", numbers: dict[str, Any] | None = None,
                      figures: list[tuple[str, str, go.Figure]] | None = None, page: str | Path = "index.html") -> str:
    """The whole page as a string: findings, figures, then the tables folded; plotly.js loaded from the copy shared
    by the page's folder (written there if missing)."""
    n = numbers or study_numbers(run_dir)
    model, m, manifest = n["model"], n["metrics"], n["manifest"]
    score = manifest["stages"]["score"]
    env = manifest.get("environment", {})
    figs = figures if figures is not None else study_figures(run_dir, n)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe: {html.escape(model)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Word-deed consistency of {html.escape(model)}</h1>",
             f"<p class='sub'>{m['n_items']} {'WDCT ' if is_wdct(m) else ''}items (sha256 {score['config']['data_sha256'][:12]}…), option-shuffling "
             f"seed {score['config']['seed']}, {score['config']['dtype']}; wdprobe {env.get('wdprobe', '?')}, "
             f"TransformerLens {env.get('transformer_lens', '?')}, torch {env.get('torch', '?')}; updated "
             f"{manifest.get('updated', '')}</p>",
             "<nav><a href='#findings'>Findings</a><a href='#figures'>Figures</a><a href='#tables'>Tables</a>"
             "<a href='#timing'>Timing</a>"
             "<a href='#manifest'>Manifest</a></nav>",
             "<h2 id='findings'>Findings</h2>"]
    found = findings(run_dir, n)
    # the verdicts first, one line each; the numbers behind each one click away (open a line)
    parts.append("<ol class='findings'>")
    for f in found:
        parts.append(f"<li><details><summary><b>{html.escape(f.title)}</b> {html.escape(verdict_line(f.text))} "
                     f"<span class='sub'>({html.escape(claims_cell(f, n['ledger']))})</span>"
                     f"</summary>{html.escape(f.text)}</details></li>")
    parts.append("</ol>")
    ledger = claims_ledger(run_dir)
    parts.append(f"<p id='claims'><b>Across the report.</b> {html.escape(ledger_sentence(ledger))}</p>")
    if len(ledger):
        rows = [[r.source, r.test, "" if pd.isna(r.effect) else f"{r.effect:.4g}", f"{r.p:.4g}", f"{r.q:.4g}",
                 "" if pd.isna(r.mc_error) else f"{r.mc_error:.3f}", "yes" if r.survives else "no"]
                for r in ledger.sort_values("p").itertuples()]
        parts.append(folded(f"Every test in this report ({len(ledger)}; Benjamini-Hochberg across all of them)",
                            table_html(["file", "test", "effect", "p", "q", "Monte-Carlo error of p", "q < 0.05"],
                                       rows)))
    if notes.strip():
        parts.append("<h3>Reading</h3>" + notes_html(notes))
    parts.append("<h2 id='figures'>Figures</h2>")
    parts.append(plotly_script(page) if figs else "")
    section = None
    for sec, _, fig in figs:
        if sec != section:
            parts.append(f"<h3>{html.escape(SECTION_TITLES.get(sec, sec))}</h3>")
            section = sec
        parts.append("<div class='fig'>" + embed_figure(fig) + "</div>")
    parts.append("<h2 id='tables'>Tables</h2>")
    if m.get("readings"):
        parts.append(folded("Readings (95% intervals over items)", table_html(READINGS_HEADER, readings_rows(m))))
    if is_wdct(m):
        parts.append(folded("Beside the paper", table_html(["model", "CS (macro)", "PCS (macro)"], _paper_rows(m, model))))
    dom_rows = [[d, v["n"], f"{v['cs']:.3f}", f"{v['pcs']:.3f}"] for d, v in m["per_domain"].items()]
    dom_rows.append(["all (micro)", m["n_items"], f"{m['cs_micro']:.3f}", f"{m['pcs_micro']:.3f}"])
    parts.append(folded("CS and PCS by domain", table_html(["domain", "n", "CS", "PCS"], dom_rows)))
    parts.append("<h2 id='timing'>Timing per stage</h2>" + table_html(*_timing_table(manifest)))
    parts.append(f"<p>Machine: {html.escape(env.get('machine', '?'))}, {html.escape(str(env.get('threads', '?')))} "
                 "torch threads.</p>")
    shown = {k: v for k, v in manifest.items() if k != "study"}
    shown["study_config"] = manifest.get("study", {}).get("config")
    parts.append("<h2 id='manifest'>Manifest</h2><details><summary>manifest.json (what made this run)</summary><pre>"
                 + html.escape(json.dumps(_trim(shown), indent=2)) + "</pre></details></body></html>")
    return "\n".join(parts)


def _trim(obj: Any, limit: int = 40) -> Any:
    """Long id lists in the manifest (validation items) shortened for display."""
    if isinstance(obj, dict):
        return {k: _trim(v, limit) for k, v in obj.items()}
    if isinstance(obj, list) and len(obj) > limit:
        return obj[:limit] + [f"... {len(obj) - limit} more"]
    return obj


def render_summary_markdown(run_dir: str | Path, figures: list[str], notes: str = "",
                            numbers: dict[str, Any] | None = None) -> str:
    """The findings, tables and timings as markdown, with links to the PNG figures."""
    n = numbers or study_numbers(run_dir)
    model, m, manifest = n["model"], n["metrics"], n["manifest"]
    lines = [f"# Word-deed consistency of {model}", "",
             f"Open [`index.html`](index.html) for the interactive page (self-contained, works offline; plotly "
             f"figures). {m['n_items']} {'WDCT ' if is_wdct(m) else ''}items; scoring details in [`scores.md`](scores.md); what made the run "
             "in `manifest.json`.", "", "## Findings", ""]
    found = findings(run_dir, n)
    if found:  # the verdicts first, then each finding with its numbers
        lines += ["| question | what this run says | effects it claims |", "|---|---|---|"]
        lines += [f"| {f.title} | {verdict_line(f.text).replace('|', '/')} | {claims_cell(f, n['ledger'])} |"
                  for f in found] + [""]
    lines += [f"{i}. **{f.title}** {f.text}" for i, f in enumerate(found, 1)]
    lines += ["", f"**Across the report.** {ledger_sentence(claims_ledger(run_dir))} Every test: "
              "[`claims.csv`](claims.csv)."]
    if notes.strip():
        lines += ["", "## Reading", "", notes.strip()]
    if is_wdct(m):
        lines += ["", "## Beside the paper (macro over domains)", "", "| model | CS | PCS |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in _paper_rows(m, model)]
    header, rows = _timing_table(manifest)
    lines += ["", "## Timing per stage (this machine)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    env = manifest.get("environment", {})
    lines += ["", f"Machine {env.get('machine', '?')}, {env.get('threads', '?')} torch threads; wdprobe "
              f"{env.get('wdprobe', '?')}, torch {env.get('torch', '?')}.", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    elif png_problem():
        lines += ["## Figures", "", f"Open `index.html` for the figures: {png_problem()}", ""]
    return "\n".join(lines)


def write_study_report(run_dir: str | Path, out_dir: str | Path, *, notes: str = "", score_notes: str = "",
                       png: bool = True) -> Path:
    """Write ``index.html`` and its markdown twin ``README.md`` for a run into ``out_dir``, with the scoring
    summary (``scores.md``, its reading ``score_notes``), PNG figures and the small tables behind them;
    return the page's path. ``notes`` is the study's written reading, shown under the findings."""

    run = Path(run_dir)
    require_scored_run(run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_score_report(run, out, score_notes, name="scores.md")
    copy_localisation_tables(run, out / "tables")
    for f in (run / "probes").glob("*-headline.json") if (run / "probes").is_dir() else []:
        shutil.copy(f, out / "tables" / f"probes-{f.name}")
    for f in (run / "probes").glob("content-*.*") if (run / "probes").is_dir() else []:
        if f.suffix in (".csv", ".json"):
            shutil.copy(f, out / "tables" / f"probes-{f.name}")
    if (run / "lens" / "content-summary.json").is_file():
        shutil.copy(run / "lens" / "content-summary.json", out / "tables" / "lens-content-summary.json")
    numbers = study_numbers(run)  # read once, drawn once: the page, the PNGs and the markdown share them
    atomic_write_text(out / "claims.csv", claims_ledger(run).to_csv(index=False))
    atomic_write_text(out / "tables" / "study-numbers.json",
                      json.dumps({"n_layers": numbers.get("n_layers"), "n_items": numbers["metrics"]["n_items"]},
                                 indent=2) + "\n")
    found = findings(run, numbers)
    publish_findings(out, found, numbers["ledger"], str(run))
    figs = study_figures(run, numbers)
    page = out / "index.html"
    atomic_write_text(page, render_index_html(run, notes, numbers, figs, page=page))
    pngs: list[str] = []
    if png:
        (out / "figures").mkdir(exist_ok=True)
        for _, name, fig in figs:
            if write_png(fig, out / "figures" / f"{name}.png"):
                pngs.append(f"figures/{name}.png")
    atomic_write_text(out / "README.md", render_summary_markdown(run, pngs, notes, numbers))
    return page
