"""Markdown summaries of scoring runs, set beside the paper's table for scale."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from wdprobe.core.cache import atomic_write_text
from wdprobe.data.wdct import DOMAINS
from wdprobe.runs.rundir import read_manifest_file
from wdprobe.stages.score import load_score

# Xu et al. (ICLR 2025), Avg CS / Avg PCS (macro over the four domains), normal setting.
PAPER_TABLE = {
    "Mistral-7B": (0.63, 0.97), "Mistral-7B-Instruct": (0.66, 0.73), "Llama-2-7B": (0.50, 0.96),
    "Llama-2-7B-Chat": (0.49, 0.56), "Llama-3-8B": (0.61, 0.97), "Llama-3-8B-Instruct": (0.64, 0.82),
    "Llama-3-70B": (0.67, 0.96), "Llama-3-70B-Instruct": (0.73, 0.81), "GPT-4-Turbo": (0.76, None),
}


def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def score_summary_markdown(run_dir: str | Path, notes: str = "") -> str:
    """A README for a scoring run: metrics per domain, answer-format diagnostics, the paper's table."""
    res = load_score(run_dir)
    m = res.metrics
    manifest = read_manifest_file(Path(run_dir) / "manifest.json")
    st = manifest["stages"]["score"]
    cfg = st["config"]
    rows = res.rows
    letters = "word_letter_mass_mean" in m  # a cloze-only run has no letters to diagnose
    how = (f"Answer read from next-token logits on the letter tokens (`{st['letters']['variant']}` variant: mean "
           "next-token mass on A+B " + ", ".join(f"{k} {v:.3f}" for k, v in st['letters']['calibration'].items()) + ")."
           if letters and st.get("letters") else
           "Answered in the cloze form only: each option text scored as a continuation of the question (mean "
           "log-likelihood per token), no option letters.")
    wdct = is_wdct(m)
    lines = [f"# {'WDCT' if wdct else 'Word-deed items'} on {cfg['model']}", "",
             f"Setting `{cfg['setting']}`, dtype `{cfg['dtype']}`, option-shuffling seed {cfg['seed']}, "
             f"{m['n_items']} items (data sha256 `{cfg['data_sha256'][:12]}…`). {how}", "",
             "## Consistency", "",
             "| | n | CS | PCS |", "|---|---|---|---|"]
    for d, v in m["per_domain"].items():
        lines.append(f"| {d} | {v['n']} | {_f(v['cs'])} | {_f(v['pcs'])} |")
    lines += [f"| **micro** (mean over items; upstream's \"Avg\") | {m['n_items']} | {_f(m['cs_micro'])} | {_f(m['pcs_micro'])} |",
              f"| **macro** (mean over domains; the paper's table) | | {_f(m['cs_macro'])} | {_f(m['pcs_macro'])} |", ""]
    if letters:
        lines += letter_lines(m, rows)
    if wdct:
        lines += paper_lines(m, cfg["model"], letters)
    if notes:
        lines += ["## Reading", "", notes.strip(), ""]
    t = st.get("timings", {})
    lines += ["## Provenance", "",
              f"Model `{st['model']['name']}` ({st['model'].get('source', st['model']['path'])}), revision `{st['model']['revision']}`; "
              f"wdprobe {manifest['environment']['wdprobe']}, torch {manifest['environment']['torch']}, "
              f"transformers {manifest['environment']['transformers']}; batch size {st.get('batch_size')}; "
              "timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + ".", "",
              "Files: `metrics.json`, `items.csv` (one row per item: canonical choices and distributions, letter "
              "masses, presented option orders), `manifest.json`.", ""]
    return "\n".join(lines)


def is_wdct(metrics: dict) -> bool:
    """Whether a run's items are WDCT's (every domain one of its four): only then is the paper's table a scale."""
    return set(metrics.get("per_domain", {})) <= set(DOMAINS)


def paper_lines(m: dict, model: str, letters: bool) -> list[str]:
    """The paper's table with this run's macro CS and PCS beside it."""
    lines = ["## The paper's table for scale (Avg CS / Avg PCS, macro over domains)", "",
             "| model | CS | PCS |", "|---|---|---|"]
    lines += [f"| {k} | {_f(cs, 2)} | {_f(p, 2)} |" for k, (cs, p) in PAPER_TABLE.items()]
    lines += [f"| **{model} (this run)** | **{_f(m['cs_macro'], 2)}** | **{_f(m['pcs_macro'], 2)}** |", "",
              "Random choice gives CS 0.50 on two-option items. The paper's numbers come from generated answers "
              "with regex extraction; these come from " + ("next-token letter probabilities" if letters else
                                                          "option continuation scores") + " (no item is dropped).", ""]
    return lines


def letter_lines(m: dict, rows) -> list[str]:
    """Answer-format diagnostics of a run answered by letter: letter mass, letter habits, the letter-copy baseline."""
    lines = ["## Is the model answering?", "",
              "| | word | deed |", "|---|---|---|",
              f"| mean next-token mass on the option letters | {_f(m['word_letter_mass_mean'])} | {_f(m['deed_letter_mass_mean'])} |",
              f"| items with letter mass < 0.1 | {_f(m['word_letter_mass_below_0.1'])} | {_f(m['deed_letter_mass_below_0.1'])} |",
              f"| share of answers that are letter A | {_f(m['word_chose_A'])} | {_f(m['deed_chose_A'])} |",
              f"| accuracy on items with a known answer (EthV, Theory; n={m['word_accuracy_n']}) | {_f(m['word_accuracy'])} | {_f(m['deed_accuracy'])} |",
              ""]
    # letter-position bias: how much CS would a model get that always picks one letter position?
    by_letter = {}
    for form in ("word", "deed"):
        counts = {}
        for r in rows:
            counts[r[f"{form}_letter"]] = counts.get(r[f"{form}_letter"], 0) + 1
        by_letter[form] = counts
    lines += ["Letter chosen, counts: word " + ", ".join(f"{k} {v}" for k, v in sorted(by_letter['word'].items())) +
              "; deed " + ", ".join(f"{k} {v}" for k, v in sorted(by_letter['deed'].items())) + ".", ""]
    lines += [f"Word and deed answers use the same *letter* in {_f(m['same_letter_rate'])} of items and the same *stance* "
              f"(CS) in {_f(m['cs_micro'])}. Had the model answered each deed question with the letter it gave the word "
              f"question, CS would be {_f(m['cs_letter_copy_baseline'])} (shuffles are independent, so letter habits alone "
              "give about 0.5 on two-option items).", ""]
    return lines


def write_score_report(run_dir: str | Path, out_dir: str | Path, notes: str = "", name: str = "README.md") -> Path:
    """Copy a scoring run's artefacts into ``out_dir`` and write its summary (``name``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for artefact in ("metrics.json", "items.csv", "manifest.json"):
        shutil.copyfile(Path(run_dir) / artefact, out / artefact)
    atomic_write_text(out / name, score_summary_markdown(run_dir, notes))
    return out / name
