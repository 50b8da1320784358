"""Surface baselines: can the planted stance be read off the prompt's text, without the model?

A probe that decodes a planted stance proves nothing if one word of the prompt already gives it away (the cued
organisms' stance is option 1 exactly when the cue says "wrong", because WDCT lists the correct option first). Two
text-only classifiers, cross-validated over items, bound what a probe could get for free:

- **cue alone**: a logistic regression on the cue line only (one-hot of its wording);
- **bag of words**: a logistic regression on the prompt's binary word counts (every word the probe's input could
  carry, options included where the form lists them).

A planted stance is fit to probe only if both stay at or below ``SURFACE_MAX`` (balanced accuracy).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.scoring.stats import wilson_interval
from wdprobe.studies.organisms.data import cue_text, cued_target

SURFACE_MAX = 0.6  # the most balanced accuracy a surface baseline may reach on a planted stance
FOLDS = 5


def _cross_validated(model, features: Any, labels: np.ndarray, seed: int) -> dict[str, float]:
    folds = StratifiedKFold(n_splits=min(FOLDS, int(np.bincount(labels).min())), shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, features, labels, cv=folds)
    acc = float(balanced_accuracy_score(labels, predicted))
    low, high = wilson_interval(acc, len(labels))
    return {"balanced_accuracy": round(acc, 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "n": int(len(labels))}


def surface_baselines(prompts: Sequence[str], cues: Sequence[str], labels: Sequence[int], *, seed: int = 0) -> dict:
    """Cross-validated balanced accuracy (Wilson 95% interval over items) of the cue-alone and bag-of-words
    classifiers predicting ``labels`` (one per prompt: the planted stance, e.g. the canonical option the organism
    should take), and whether each stays at or below ``SURFACE_MAX``."""
    y = np.asarray(labels, dtype=int)
    if not (len(prompts) == len(cues) == len(y)):
        raise InputError(f"surface baselines need one cue and one label per prompt ({len(prompts)} prompts, "
                         f"{len(cues)} cues, {len(y)} labels)")
    if len(np.unique(y)) != 2 or np.bincount(y).min() < 2:
        raise InputError("surface baselines need two stance labels with at least two prompts each")
    cue_model = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=1000))
    words = make_pipeline(CountVectorizer(binary=True, lowercase=True), LogisticRegression(C=1.0, max_iter=2000))
    out = {"cue_alone": _cross_validated(cue_model, np.asarray(cues, dtype=object)[:, None], y, seed),
           "bag_of_words": _cross_validated(words, list(prompts), y, seed), "max_allowed": SURFACE_MAX}
    out["passed"] = all(out[k]["balanced_accuracy"] <= SURFACE_MAX for k in ("cue_alone", "bag_of_words"))
    return out


def slotted_text(item, form: str) -> str:
    """The question followed by each option's words tagged with its canonical slot (``A_word``, ``B_word``): a bag of
    words that knows which option a word belongs to, as a prompt listing the options in canonical order shows it."""
    slots = [" ".join(f"{'AB'[j]}_{w}" for w in text.lower().split()) for j, text in enumerate(item.options(form))]
    return " ".join([item.stem(form), *slots])


def split_stance(split, item) -> int:
    """The canonical option a split's organism is trained to take on ``item``: the cued one (cued design) or the
    correct one (balanced design, where the cue is a distractor)."""
    if split.design == "cued":
        return cued_target(item, split.cues[item.id])
    if item.correct is None:
        raise InputError(f"item {item.id!r} has no correct option")
    return int(item.correct)


def split_surface_baselines(split, form: str = "deed", *, options: bool = False, seed: int = 0) -> dict:
    """:func:`surface_baselines` of a cued or balanced :class:`~wdprobe.studies.organisms.data.PlantedSplit`: every
    item's cloze prompt in ``form`` (cue line included; with ``options``, the options' words tagged by canonical slot
    as well), its cue line, and the stance its organism is trained to."""
    if not split.cues:
        raise InputError("the split has no cues: its stance is the same for every item, nothing to baseline")
    items = split.items()
    prompts = [cloze_prompt(it, form) + (" " + slotted_text(it, form) if options else "") for it in items]
    cues = [cue_text(split.cues[it.id]) for it in items]
    labels = [split_stance(split, it) for it in items]
    return surface_baselines(prompts, cues, labels, seed=seed)
