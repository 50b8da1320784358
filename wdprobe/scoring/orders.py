"""Behaviour across option orders and answer formats: per-prompt rows in, per-item content-space columns out.

A run presents each (item, form) as several prompts: in the *letter* format once per option order (``shown``:
the paper's one seeded order; ``cyclic``: every cyclic shift, plus the shown order when it is not one of them;
``all``: every permutation), and in the *cloze* format once, with each option text scored as a continuation.
Each prompt gives one row of the run's tidy ``prompts.csv``; :func:`wdprobe.scoring.formats.item_columns` summarises an item's rows into
three readings, named so they cannot be mixed up:

- ``shown``  — the paper-compatible reading: the seeded order only (the run's classic ``word_choice`` etc.);
- ``content`` — permutation averaging: mean canonical log-probability over the content orders, renormalised
  (:func:`wdprobe.scoring.content.content_distribution`), with the model's letter prior (PriDe) beside it;
- ``order_mean`` — the paper's CS in expectation over the orders: the share of (word order, deed order) pairs
  whose choices agree;
- ``cloze`` — no letters: the option with the highest mean per-token log-likelihood (``cloze_sum``: the total).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from wdprobe.data.wdct import FORMS, LETTERS, Item, Presentation
from wdprobe.errors import InputError, NonFiniteError
from wdprobe.scoring.content import canonical_logprobs, orders_for
from wdprobe.scoring.stats import chance_agreement_test, mean_with_interval

__all__ = ["ORDERS", "PROMPT_COLUMNS", "CONTENT_COLUMNS", "CLOZE_COLUMNS", "orders_of", "finite_or_refused", "letter_prompt_row",
           "cloze_prompt_row", "typed_prompt_row", "reading_metrics", "READINGS", "READING_NAMES", "readings_lines"]

ORDERS = ("shown", "cyclic", "all")
MAX_OPTIONS = 4
PROMPT_COLUMNS = (["id", "domain", "form", "format", "order", "shown", "in_content", "choice", "letter", "letter_mass"]
                  + [f"lp_{LETTERS[j]}" for j in range(MAX_OPTIONS)]
                  + [f"score_{c}" for c in range(MAX_OPTIONS)]
                  + [f"ll_sum_{c}" for c in range(MAX_OPTIONS)]
                  + [f"n_tokens_{c}" for c in range(MAX_OPTIONS)])
CONTENT_COLUMNS = (["word_content_choice", "deed_content_choice", "content_consistent", "content_pcs",
                    "order_mean_consistent", "word_order_sensitive", "deed_order_sensitive",
                    "word_content_is_correct", "deed_content_is_correct"]
                   + [f"pc_{f}_{c}" for f in FORMS for c in range(MAX_OPTIONS)]
                   + [f"prior_{f}_{LETTERS[j]}" for f in FORMS for j in range(MAX_OPTIONS)])
CLOZE_COLUMNS = (["word_cloze_choice", "deed_cloze_choice", "cloze_consistent", "cloze_pcs",
                  "word_cloze_sum_choice", "deed_cloze_sum_choice", "cloze_sum_consistent",
                  "word_cloze_is_correct", "deed_cloze_is_correct"])
READINGS = {  # reading -> (consistency column, pcs column or None, correctness column stem)
    "shown": ("consistent", "pcs", "is_correct"),
    "content": ("content_consistent", "content_pcs", "content_is_correct"),
    "order_mean": ("order_mean_consistent", None, None),
    "cloze": ("cloze_consistent", "cloze_pcs", "cloze_is_correct"),
    "cloze_sum": ("cloze_sum_consistent", None, None),
}
CHOICES = {  # reading -> the per-item choice columns (word, deed) its CS compares
    "shown": ("word_choice", "deed_choice"),
    "content": ("word_content_choice", "deed_content_choice"),
    "cloze": ("word_cloze_choice", "deed_cloze_choice"),
    "cloze_sum": ("word_cloze_sum_choice", "deed_cloze_sum_choice"),
}


def orders_of(pres: Presentation, form: str, orders: str) -> list[tuple[tuple[int, ...], bool, bool]]:
    """The orders an (item, form) is shown in: ``(order, is_the_shown_order, counts_in_the_content_average)``."""
    if orders not in ORDERS:
        raise InputError(f"unknown orders {orders!r}: choose one of {ORDERS}")
    shown = pres.order(form)
    if orders == "shown":
        return [(shown, True, False)]
    content = orders_for(orders, pres.item.n_options)
    out = [(o, o == shown, True) for o in content]
    if shown not in content:
        out.append((shown, True, False))
    return out


def _blank(row: dict[str, Any], stems: Sequence[str]) -> None:
    for stem in stems:
        for c in range(MAX_OPTIONS):
            row.setdefault(f"{stem}_{c}", "")


def finite_or_refused(values: np.ndarray, what: str) -> None:
    """Refuse model outputs that are not finite numbers: a NaN would otherwise become choice 0 (argmax) and a run of
    a broken model (e.g. float16 overflow) would read as perfectly consistent."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise NonFiniteError(f"{what} are not finite ({', '.join(f'{v:g}' for v in values.ravel()[:4])}): nothing "
                             "computed from them can be reported. A float16 model can overflow: load it with "
                             "--dtype float32 or bfloat16")


def letter_prompt_row(item: Item, form: str, order: Sequence[int], shown: bool, in_content: bool,
                      letter_logprobs: np.ndarray) -> dict[str, Any]:
    """One letter-format prompt: its raw letter log-probabilities (full vocabulary, letters A.. in presented
    order) and, in canonical space, the letter distribution and the option chosen."""
    k = item.n_options
    lp = np.asarray(letter_logprobs, dtype=np.float64)[:k]
    finite_or_refused(lp, f"item {item.id!r} ({form} form, letter order {''.join(map(str, order))}): the answer "
                          "letters' log-probabilities")
    canon = canonical_logprobs(lp[None, :], [tuple(order)])[0]
    choice = int(np.argmax(canon))
    row: dict[str, Any] = {"id": item.id, "domain": item.domain, "form": form, "format": "letter",
                           "order": "".join(map(str, order)), "shown": int(shown), "in_content": int(in_content),
                           "choice": choice, "letter": LETTERS[list(order).index(choice)],
                           "letter_mass": float(np.exp(lp).sum())}
    for j in range(MAX_OPTIONS):
        row[f"lp_{LETTERS[j]}"] = float(lp[j]) if j < k else ""
        row[f"score_{j}"] = float(canon[j]) if j < k else ""
    _blank(row, ("ll_sum", "n_tokens"))
    return row


def cloze_prompt_row(item: Item, form: str, ll_sum: np.ndarray, n_tokens: np.ndarray) -> dict[str, Any]:
    """One cloze prompt: per canonical option its total and per-token log-likelihood; the choice is the best
    per-token mean (options of different lengths are compared fairly; the sum is kept beside it)."""
    k = item.n_options
    finite_or_refused(np.asarray(ll_sum, dtype=np.float64)[:k], f"item {item.id!r} ({form} form, cloze): the "
                                                                  "options' log-likelihoods")
    mean = np.asarray(ll_sum, dtype=np.float64) / np.asarray(n_tokens, dtype=np.float64)
    row: dict[str, Any] = {"id": item.id, "domain": item.domain, "form": form, "format": "cloze", "order": "",
                           "shown": "", "in_content": "", "choice": int(np.argmax(mean)), "letter": "",
                           "letter_mass": ""}
    for j in range(MAX_OPTIONS):
        row[f"lp_{LETTERS[j]}"] = ""
        row[f"score_{j}"] = float(mean[j]) if j < k else ""
        row[f"ll_sum_{j}"] = float(ll_sum[j]) if j < k else ""
        row[f"n_tokens_{j}"] = int(n_tokens[j]) if j < k else ""
    return row


_TEXT_COLUMNS = ("id", "domain", "form", "format", "order", "letter")


def typed_prompt_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``prompts.csv`` row with numbers parsed (integers for choices, flags and token counts); blanks (what a
    format does not measure) stay ``""``, so rows read back equal the rows a run computed."""
    out: dict[str, Any] = {}
    for key in PROMPT_COLUMNS:
        value = row.get(key, "")
        if key in _TEXT_COLUMNS or value in ("", None):
            out[key] = "" if value is None else value
        elif key in ("shown", "in_content", "choice") or key.startswith("n_tokens_"):
            out[key] = int(value)
        else:
            out[key] = float(value)
    return out


def _interval_json(values: Sequence[float], domains: Sequence[str], seed: int) -> dict[str, Any]:
    res = mean_with_interval(values, domains, seed=seed)
    return {name: iv.to_json() for name, iv in res.items()}


def reading_metrics(rows: Sequence[Mapping[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """For every reading the run measured: CS (and PCS, accuracy where defined) micro and macro over domains, each
    with a 95% bootstrap interval over items; order sensitivity and the mean letter prior for the content reading."""
    out: dict[str, Any] = {}
    for name, (cs_col, pcs_col, correct_stem) in READINGS.items():
        measured = [r for r in rows if r.get(cs_col, "") not in ("", None)]
        if not measured:
            continue
        domains = [r["domain"] for r in measured]
        entry: dict[str, Any] = {"n_items": len(measured),
                                 "cs": _interval_json([float(r[cs_col]) for r in measured], domains, seed)}
        if name in CHOICES:
            w, d = CHOICES[name]
            # chance: the same answers paired with random items of the same domain and option count
            entry["vs_chance"] = chance_agreement_test([int(r[w]) for r in measured], [int(r[d]) for r in measured],
                                                       [f"{r['domain']}:{r['n_options']}" for r in measured],
                                                       seed=seed).to_json()
        if pcs_col:
            entry["pcs"] = _interval_json([float(r[pcs_col]) for r in measured], domains, seed)
        if correct_stem:
            for f in FORMS:
                graded = [r for r in measured if r.get(f"{f}_{correct_stem}", "") not in ("", None)]
                if graded:
                    entry[f"{f}_accuracy"] = _interval_json([float(r[f"{f}_{correct_stem}"]) for r in graded],
                                                            [r["domain"] for r in graded], seed)["micro"]
        out[name] = entry
    content = [r for r in rows if r.get("content_consistent", "") not in ("", None)]
    if content:
        out["content"]["order_sensitivity"] = {
            f: _interval_json([float(r[f"{f}_order_sensitive"]) for r in content], [r["domain"] for r in content],
                              seed)["micro"] for f in FORMS}
        priors: dict[str, Any] = {}
        for k in sorted({int(r["n_options"]) for r in content}):
            sub = [r for r in content if int(r["n_options"]) == k]
            priors[str(k)] = {f: [float(np.mean([float(r[f"prior_{f}_{LETTERS[j]}"]) for r in sub])) for j in range(k)]
                              for f in FORMS} | {"n_items": len(sub)}
        out["content"]["letter_prior"] = priors
    return out


READING_NAMES = {"shown": "paper-compatible (one seeded order)", "content": "content (order-averaged)",
                 "order_mean": "per-order mean", "cloze": "cloze (mean log-lik per token)",
                 "cloze_sum": "cloze (total log-lik)"}


def readings_lines(readings: Mapping[str, Any]) -> list[str]:
    """The readings as aligned text lines (the CLI prints them; reports use the same names)."""
    def fmt(d: Mapping[str, Any] | None) -> str:
        return "-" if not d else f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    lines = [f"{'reading':38s} {'CS micro [95% CI]':24s} {'CS macro [95% CI]':24s} {'PCS micro':24s}"]
    for name, entry in readings.items():
        if name not in READING_NAMES:
            continue
        lines.append(f"{READING_NAMES[name]:38s} {fmt(entry['cs']['micro']):24s} {fmt(entry['cs'].get('macro')):24s} "
                     f"{fmt(entry.get('pcs', {}).get('micro')):24s}")
    sens = readings.get("content", {}).get("order_sensitivity")
    if sens:
        lines.append("order sensitivity (choice changes with order): "
                     + ", ".join(f"{f} {fmt(v)}" for f, v in sens.items()))
    return lines
