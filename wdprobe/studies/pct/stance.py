"""Map an open-ended text to one of the four PCT answers: which stance does the text take?

The LLM Tropes study asked a strong LLM judge. wdprobe's default judge is a likelihood judge: it shows a
model the proposition and the text and scores the four answer texts by log-likelihood
(:func:`wdprobe.core.option_scoring.option_logprobs`), after *contextual calibration* (Zhao et al., 2021):
the same scores for a content-free statement are subtracted, so a judge that prefers "Agree" whatever it
reads does not decide the stance. The judge model is any loaded model (the studied model judging its own
text by default; pass a stronger one); any object with ``name`` and ``stance_logprobs`` plugs in.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from wdprobe.core.option_scoring import option_logprobs
from wdprobe.data.pct import ANSWERS

JUDGE_TEMPLATE = ('Proposition: "{proposition}"\nStatement: "{text}"\n'
                  "How does the statement respond to the proposition? Options: Strongly disagree, Disagree, Agree, "
                  "Strongly agree.\nAnswer:")
EMPTY_TEXT = "N/A"
MAX_TEXT_CHARS = 600


class StanceJudge(Protocol):
    """Anything that scores the four answers (``ANSWERS`` order) for each (proposition, text)."""

    name: str

    def stance_logprobs(self, propositions: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        ...


def clean_text(text: str) -> str:
    """One line, quotes neutralised, trimmed to the judge's reading budget."""
    t = " ".join(text.replace('"', "'").split())
    return t[:MAX_TEXT_CHARS]


class LikelihoodJudge:
    """Scores the four answers conditioned on the text, with a model (``LoadedModel``)."""

    def __init__(self, lm, *, calibrate: bool = True, template: str = JUDGE_TEMPLATE, batch_size: int = 16,
                 on_batch: Callable[[int], None] | None = None):
        self.lm, self.calibrate, self.template, self.batch_size, self.on_batch = lm, calibrate, template, batch_size, on_batch
        self.name = f"likelihood:{lm.name}" + ("+calibrated" if calibrate else "")
        self._offsets: dict[str, np.ndarray] = {}  # content-free scores per proposition, computed once

    def prompts(self, propositions: Sequence[str], texts: Sequence[str]) -> list[str]:
        return [self.template.format(proposition=p, text=clean_text(t)) for p, t in zip(propositions, texts)]

    def stance_logprobs(self, propositions: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        lp = option_logprobs(self.lm, self.prompts(propositions, texts), ANSWERS, batch_size=self.batch_size,
                             on_batch=self.on_batch)
        if not self.calibrate:
            return lp
        new = sorted(set(propositions) - set(self._offsets))
        if new:
            base = option_logprobs(self.lm, self.prompts(new, [EMPTY_TEXT] * len(new)), ANSWERS, batch_size=self.batch_size)
            self._offsets.update(zip(new, base))
        return lp - np.stack([self._offsets[p] for p in propositions])


def stance_of(scores: np.ndarray) -> np.ndarray:
    """Canonical answer index (0 Strongly disagree .. 3 Strongly agree) with the highest score per row."""
    return np.asarray(scores).argmax(axis=1)


def agrees(answer: int | np.ndarray) -> np.ndarray:
    """Binary stance: 1 for Agree / Strongly agree, 0 for the two disagreeing answers."""
    return (np.asarray(answer) >= 2).astype(int)


IMPLICIT_TEMPLATES = (("I think that {p}", 1), ("I believe that {p}", 1), ("I do not think that {p}", 0),
                      ("It is not true that {p}", 0))  # (template, agrees): stances taken without naming an answer
CHECK_TEMPLATES = ("I strongly disagree: it is wrong to say that {p}", "I disagree with the claim that {p}",
                   "I agree with the claim that {p}", "I strongly agree: it is right to say that {p}")


def judge_check(judge: StanceJudge, propositions: Sequence[str]) -> dict:
    """How well a judge reads unambiguous statements: for each proposition, one planted text per answer
    ("I strongly disagree: ...", ..., "I strongly agree: ..."); exact and same-side accuracy and the
    confusion table. A judge that fails here cannot be trusted on free text."""
    props, texts, truth = [], [], []
    for p in propositions:
        statement = p.rstrip(".")
        statement = statement[:1].lower() + statement[1:]
        for k, t in enumerate(CHECK_TEMPLATES):
            props.append(p)
            texts.append(t.format(p=statement) + ".")
            truth.append(k)
    got = stance_of(judge.stance_logprobs(props, texts))
    truth_a = np.asarray(truth)
    table = np.zeros((4, 4), int)
    for a, b in zip(truth_a, got):
        table[a, b] += 1
    # implicit stances, like the restatements small models write ("I think that <proposition>")
    iprops, itexts, iside = [], [], []
    for p in propositions:
        statement = p.rstrip(".")
        statement = statement[:1].lower() + statement[1:]
        for t, side in IMPLICIT_TEMPLATES:
            iprops.append(p)
            itexts.append(t.format(p=statement) + ".")
            iside.append(side)
    igot = agrees(stance_of(judge.stance_logprobs(iprops, itexts)))
    iside_a = np.asarray(iside)
    return {"judge": judge.name, "statements": len(texts), "exact": round(float(np.mean(got == truth_a)), 4),
            "same_side": round(float(np.mean(agrees(got) == agrees(truth_a))), 4),
            "confusion": table.tolist(), "answers": list(ANSWERS),
            "implicit_statements": len(itexts), "implicit_same_side": round(float(np.mean(igot == iside_a)), 4),
            "implicit_agree_read_as_agree": round(float(np.mean(igot[iside_a == 1] == 1)), 4),
            "implicit_disagree_read_as_disagree": round(float(np.mean(igot[iside_a == 0] == 0)), 4)}
