"""Answer formats on the measurement side: how a question is put to the model and what its answers give per item.

An *answer format* says how an (item, form) is asked and measured: ``letter`` lists the options under letters and
reads the answer letter once per option order; ``cloze`` lists no options and scores each option text as a
continuation. Everything that differs between them when a run is scored — how many prompts an item costs, which
prompt rows are its own, the per-item reading columns it contributes, whether it can give the paper's classic
columns, whether it has option orders — is a method of its class, so scoring, capture and the per-item summary
loop over the formats a run measured instead of branching on their names. The instruments read the same formats
through :mod:`wdprobe.stages.readouts`. A new format is one class here and one line in :data:`ANSWER_FORMATS`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from wdprobe.data.wdct import FORMS, LETTERS, Item, Presentation
from wdprobe.errors import InputError
from wdprobe.scoring.content import content_distribution, letter_prior
from wdprobe.scoring.letters import item_row
from wdprobe.scoring.metrics import pcs
from wdprobe.scoring.orders import CLOZE_COLUMNS, CONTENT_COLUMNS, MAX_OPTIONS, orders_of

__all__ = ["AnswerFormat", "LetterFormat", "ClozeFormat", "LETTER", "CLOZE", "ANSWER_FORMATS", "FORMATS",
           "formats_of", "measured_formats", "item_columns", "classic_columns"]

Row = Mapping[str, Any]


class AnswerFormat(ABC):
    """One way of asking a question and measuring the answer (see the module docstring)."""

    name: ClassVar[str]
    ordered: ClassVar[bool]  # asked once per option order (a prompt row says which order and whether it is shown)
    reasons_aloud: ClassVar[bool]  # the chain-of-thought setting (a generated belief, then the answer) reads it

    def own(self, rows: Sequence[Row]) -> list[Row]:
        """The prompt rows (``prompts.csv``) measured in this format."""
        return [r for r in rows if r["format"] == self.name]

    @abstractmethod
    def prompts_per_item(self, pres: Presentation, orders: str) -> int:
        """Prompt rows one item costs in this format (both forms), for the progress bar."""

    @abstractmethod
    def item_columns(self, item: Item, by_form: Mapping[str, Sequence[Row]]) -> dict[str, Any]:
        """This format's per-item reading columns from the item's prompt rows of each form (``{}`` unless every form
        was measured in it)."""

    @abstractmethod
    def classic_row(self, pres: Presentation, rows: Sequence[Row], columns: Mapping[str, Any]) -> dict[str, Any] | None:
        """The paper's per-item columns (``word_choice``, ``consistent``, ...) as this format gives them, or None when
        it cannot (``columns``: the item's reading columns from every format)."""

    def __repr__(self) -> str:
        return f"<answer format {self.name}>"


class LetterFormat(AnswerFormat):
    """Options listed under letters; the answer letter read once per option order, mapped back to the content."""

    name = "letter"
    ordered = True
    reasons_aloud = True

    def prompts_per_item(self, pres: Presentation, orders: str) -> int:
        return sum(len(orders_of(pres, f, orders)) for f in FORMS)

    def item_columns(self, item: Item, by_form: Mapping[str, Sequence[Row]]) -> dict[str, Any]:
        k = item.n_options
        mine = {f: [r for r in self.own(rows) if int(r["in_content"])] for f, rows in by_form.items()}
        if not all(mine.values()):
            return {}
        out: dict[str, Any] = {}
        choices: dict[str, list[int]] = {}
        dists = {}
        for f in FORMS:
            orders = [tuple(int(ch) for ch in r["order"]) for r in mine[f]]
            lp = np.array([[float(r[f"lp_{LETTERS[j]}"]) for j in range(k)] for r in mine[f]])
            dists[f] = content_distribution(lp, orders)
            prior = letter_prior(lp, orders)
            choices[f] = [int(r["choice"]) for r in mine[f]]
            out[f"{f}_content_choice"] = int(np.argmax(dists[f]))
            out[f"{f}_order_sensitive"] = int(len(set(choices[f])) > 1)
            for j in range(MAX_OPTIONS):
                out[f"pc_{f}_{j}"] = float(dists[f][j]) if j < k else ""
                out[f"prior_{f}_{LETTERS[j]}"] = float(prior[j]) if j < k else ""
            out[f"{f}_content_is_correct"] = "" if item.correct is None else int(out[f"{f}_content_choice"] == item.correct)
        out["content_consistent"] = int(out["word_content_choice"] == out["deed_content_choice"])
        out["content_pcs"] = float(pcs(dists["word"], dists["deed"]))
        agree = [a == b for a in choices["word"] for b in choices["deed"]]
        out["order_mean_consistent"] = float(np.mean(agree))
        return out

    def classic_row(self, pres: Presentation, rows: Sequence[Row], columns: Mapping[str, Any]) -> dict[str, Any] | None:
        shown = {r["form"]: r for r in self.own(rows) if str(r["shown"]) == "1"}
        if len(shown) != len(FORMS):
            return None
        k = pres.item.n_options
        lp = {f: np.array([float(shown[f][f"lp_{LETTERS[j]}"]) for j in range(k)]) for f in FORMS}
        return item_row(pres, lp["word"], lp["deed"])


class ClozeFormat(AnswerFormat):
    """No option lines: each option text scored as a continuation of the stem; the choice is the best per-token mean
    log-likelihood (the total beside it)."""

    name = "cloze"
    ordered = False
    reasons_aloud = False

    def prompts_per_item(self, pres: Presentation, orders: str) -> int:
        return len(FORMS) * pres.item.n_options  # one continuation row per option and form

    def item_columns(self, item: Item, by_form: Mapping[str, Sequence[Row]]) -> dict[str, Any]:
        k = item.n_options
        mine = {f: self.own(rows) for f, rows in by_form.items()}
        if not all(mine.values()):
            return {}
        out: dict[str, Any] = {}
        mean = {}
        for f in FORMS:
            (r,) = mine[f]
            mean[f] = _floats(r, "score", k)
            total = _floats(r, "ll_sum", k)
            out[f"{f}_cloze_choice"] = int(np.argmax(mean[f]))
            out[f"{f}_cloze_sum_choice"] = int(np.argmax(total))
            out[f"{f}_cloze_is_correct"] = "" if item.correct is None else int(out[f"{f}_cloze_choice"] == item.correct)
        out["cloze_consistent"] = int(out["word_cloze_choice"] == out["deed_cloze_choice"])
        out["cloze_sum_consistent"] = int(out["word_cloze_sum_choice"] == out["deed_cloze_sum_choice"])
        # PCS on the distribution the choice is read from (softmax of per-token means)
        out["cloze_pcs"] = float(pcs(_softmax(mean["word"]), _softmax(mean["deed"])))
        return out

    def classic_row(self, pres: Presentation, rows: Sequence[Row], columns: Mapping[str, Any]) -> dict[str, Any] | None:
        if columns.get("cloze_consistent", "") == "":
            return None
        it = pres.item
        row: dict[str, Any] = {"id": it.id, "domain": it.domain, "n_options": it.n_options, "word_order": "",
                               "deed_order": "", "word_letter": "", "deed_letter": "", "word_letter_mass": "",
                               "deed_letter_mass": "", "word_choice": columns["word_cloze_choice"],
                               "deed_choice": columns["deed_cloze_choice"], "consistent": columns["cloze_consistent"],
                               "pcs": columns["cloze_pcs"], "correct": "" if it.correct is None else it.correct,
                               "word_is_correct": columns["word_cloze_is_correct"],
                               "deed_is_correct": columns["deed_cloze_is_correct"]}
        for f in FORMS:
            for c in range(4):
                row[f"p_{f}_{c}"] = ""
        return row


LETTER = LetterFormat()
CLOZE = ClozeFormat()
# the classic columns come from the first format here that can give them: the letter format when measured
ANSWER_FORMATS: dict[str, AnswerFormat] = {LETTER.name: LETTER, CLOZE.name: CLOZE}
_MEASURED: dict[str, tuple[AnswerFormat, ...]] = {**{n: (f,) for n, f in ANSWER_FORMATS.items()},
                                                 "both": tuple(ANSWER_FORMATS.values())}
FORMATS = tuple(_MEASURED)  # what a run's ``format`` setting may say: each format, or ``both``


def formats_of(setting: str) -> tuple[AnswerFormat, ...]:
    """The formats a run's ``format`` setting measures (``both``: every format, in :data:`ANSWER_FORMATS` order)."""
    try:
        return _MEASURED[setting]
    except KeyError:
        raise InputError(f"unknown answer format {setting!r}: choose one of {FORMATS}") from None


def measured_formats(config: Mapping[str, Any]) -> tuple[AnswerFormat, ...]:
    """The formats a scored run measured, from its scoring config (runs scored before formats existed: letters)."""
    return formats_of(config.get("format") or LETTER.name)


def item_columns(item: Item, prompt_rows: Sequence[Row]) -> dict[str, Any]:
    """The content-space and cloze columns of one item from its prompt rows (blank where not measured)."""
    out: dict[str, Any] = {c: "" for c in CONTENT_COLUMNS + CLOZE_COLUMNS}
    by_form = {f: [r for r in prompt_rows if r["form"] == f] for f in FORMS}
    for fmt in ANSWER_FORMATS.values():
        out.update(fmt.item_columns(item, by_form))
    return out


def classic_columns(pres: Presentation, rows: Sequence[Row], columns: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paper's per-item columns from the first format that can give them (None: no format measured the item)."""
    for fmt in ANSWER_FORMATS.values():
        row = fmt.classic_row(pres, rows, columns)
        if row is not None:
            return row
    return None


def _floats(row: Row, stem: str, k: int) -> np.ndarray:
    return np.array([float(row[f"{stem}_{j}"]) for j in range(k)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()

