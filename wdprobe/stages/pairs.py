"""Word/deed pairs of a scored run, ready for interventions: prompts, letters, stance directions.

Patching and steering both need, per two-option item: the word and deed prompts exactly as scored,
which answer-letter slot of the deed prompt holds the word answer (and which the other option), the
word-stance direction at each layer fitted without that item, and a random control direction.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.data.prompts import normal_prompt, wrap
from wdprobe.data.wdct import LETTERS
from wdprobe.errors import CaptureSpecError, InputError
from wdprobe.methods.probes import crossfit_directions
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_entry
from wdprobe.stages.capture import load_activations, paired_forms
from wdprobe.stages.score import scored_prompts


@dataclass
class PairSet:
    """Two-option items of a run. ``items`` (a frame, one row per item, index 0..n-1) holds id, domain,
    consistent, y_word, y_deed, same_letter, word_self (the word run's log-odds for its own answer) and
    deed_clean (the deed run's log-odds toward the word answer); ``toward``/``away`` index ``token_ids``."""

    items: Any
    word_prompts: list[str]
    deed_prompts: list[str]
    toward: np.ndarray
    away: np.ndarray
    token_ids: tuple[int, ...]
    presentations: list
    swapped_deed_prompts: list[str]  # the deed prompts with the two options' letters exchanged (the other order)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> "PairSet":
        """The same pairs restricted to ``indices`` (re-indexed from 0)."""
        idx = list(indices)
        return PairSet(self.items.iloc[idx].reset_index(drop=True), [self.word_prompts[i] for i in idx],
                       [self.deed_prompts[i] for i in idx], self.toward[idx], self.away[idx], self.token_ids,
                       [self.presentations[i] for i in idx], [self.swapped_deed_prompts[i] for i in idx])


def _logodds(p_yes: float, p_no: float) -> float:
    return float(np.log(max(p_yes, 1e-12)) - np.log(max(p_no, 1e-12)))


def choose_items(rows: Sequence[dict[str, Any]], n_items: int | None, seed: int = 0, balanced: bool = True,
                 consistency: str = "consistent") -> list[int]:
    """Indices of two-option items; with ``n_items``, a seeded sample, half inconsistent when ``balanced``
    (inconsistent items are the ones patching and steering try to move), by the ``consistency`` column."""
    two = [i for i, r in enumerate(rows) if r["n_options"] == 2]
    if n_items is None or n_items >= len(two):
        return two
    rng = np.random.default_rng(seed)
    if not balanced:
        return sorted(rng.choice(two, size=n_items, replace=False).tolist())
    inc = [i for i in two if not rows[i][consistency]]
    con = [i for i in two if rows[i][consistency]]
    k = min(n_items // 2, len(inc))
    picked = rng.choice(inc, size=k, replace=False).tolist() + rng.choice(con, size=min(n_items - k, len(con)),
                                                                          replace=False).tolist()
    return sorted(picked)


def load_pairs(run_dir: str | Path, tokenizer, *, n_items: int | None = None, seed: int = 0,
               balanced: bool = True, space: str = "shown") -> PairSet:
    """The run's two-option items (or a seeded, balanced sample of them) with everything interventions need.

    ``space="shown"``: the word answer is the shown word prompt's choice, consistency the paper's. ``"content"``:
    the word answer is the item's word *content* choice (order-averaged) and consistency the content reading's;
    ``toward``/``away`` then point at that option's letter in the shown deed prompt (the swapped prompt exchanges them)."""
    import pandas as pd

    if space not in ("shown", "content"):
        raise InputError(f"unknown space {space!r}: choose 'shown' or 'content'")
    pres, prompts, scored = scored_prompts(run_dir, tokenizer)
    entry = scored_entry(RunDir(run_dir))
    ids = tuple(entry["letters"]["ids"])
    if space == "content":
        lacking = [r["id"] for r in scored.rows if r["n_options"] == 2 and r.get("word_content_choice") in (None, "")]
        if lacking:
            raise InputError(f"{run_dir}: item(s) {lacking[:3]} have no content reading (word_content_choice); score the "
                             "run with --orders cyclic or all for content-space interventions")
    keep = choose_items(scored.rows, n_items, seed, balanced,
                        consistency="content_consistent" if space == "content" else "consistent")
    recs, toward, away = [], [], []
    for i in keep:
        r, p = scored.rows[i], pres[i]
        if space == "content":
            yw, yd = int(r["word_content_choice"]), int(r["deed_content_choice"])
            r = dict(r, word_choice=yw, deed_choice=yd, consistent=int(r["content_consistent"]),
                     word_letter=p.letter_of("word", yw))
        yw, yd = r["word_choice"], r["deed_choice"]
        t, a = LETTERS.index(p.letter_of("deed", yw)), LETTERS.index(p.letter_of("deed", 1 - yw))
        toward.append(t)
        away.append(a)
        recs.append({"id": r["id"], "domain": r["domain"], "consistent": int(r["consistent"]), "y_word": yw, "y_deed": yd,
                     "word_letter": r["word_letter"], "same_letter": int(p.letter_of("deed", yw) == r["word_letter"]),
                     "word_self": _logodds(r[f"p_word_{yw}"], r[f"p_word_{1 - yw}"]),
                     "deed_clean": _logodds(r[f"p_deed_{yw}"], r[f"p_deed_{1 - yw}"]), "run_row": i})
    swapped = [wrap(normal_prompt(replace(pres[i], deed_order=tuple(reversed(pres[i].deed_order))), "deed"), tokenizer,
                    entry["config"]["chat_template"]) for i in keep]
    return PairSet(pd.DataFrame(recs), [prompts["word"][i] for i in keep], [prompts["deed"][i] for i in keep],
                   np.array(toward), np.array(away), ids, [pres[i] for i in keep], swapped)


@dataclass(frozen=True)
class DeedRuns:
    """The deed prompts an intervention runs, one row each: which pair item it belongs to, which option order
    (``shown``, or ``swapped``: the other order of a two-option item), and the letters (indices into the pair set's
    ``token_ids``) of the target option and of the other one."""

    prompts: list[str]
    item: np.ndarray  # [n_rows] index into the pair set
    order: np.ndarray  # [n_rows] "shown" | "swapped"
    toward: np.ndarray
    away: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)


SPACES = ("auto", "shown", "content")


def target_space(run_dir: str | Path, space: str) -> str:
    """``auto``: ``content`` for a run scored letter-free (the item's word content choice is the target, read in
    both deed orders), else ``shown`` (the shown word answer, read in the shown deed order)."""
    if space not in SPACES:
        raise InputError(f"unknown space {space!r}: choose from {list(SPACES)}")
    if space != "auto":
        return space
    return "shown" if scored_entry(RunDir(run_dir))["config"].get("orders", "shown") == "shown" else "content"


def deed_runs(pairs: "PairSet", space: str) -> DeedRuns:
    """``shown``: each item's shown deed prompt. ``content`` (pairs loaded with ``space="content"``): both deed orders
    of each item, so that averaging an item's two log-odds toward its word content choice gives its content reading."""
    n = len(pairs)
    if space == "shown":
        return DeedRuns(list(pairs.deed_prompts), np.arange(n), np.array(["shown"] * n), pairs.toward, pairs.away)
    if space != "content":
        raise InputError(f"unknown space {space!r}: choose 'shown' or 'content'")
    return DeedRuns(list(pairs.deed_prompts) + list(pairs.swapped_deed_prompts), np.tile(np.arange(n), 2),
                    np.array(["shown"] * n + ["swapped"] * n), np.concatenate([pairs.toward, pairs.away]),
                    np.concatenate([pairs.away, pairs.toward]))


@dataclass
class Directions:
    """Per selected item and layer, the cross-fitted unit word-stance direction and the length of the mean
    difference it came from (the unit of steering strength); a random unit direction per layer; and the
    mean deed residual norm per layer (for scale: Gemma's residual norm is dominated by a few huge dimensions)."""

    layers: tuple[int, ...]
    stance: np.ndarray  # [n_items, n_layers, d]: word answer 1 vs 0, balanced over the word answer's letter
    letter: np.ndarray | None  # [n_items, n_layers, d]: word answer's letter B vs A, balanced over the word answer
    gap: np.ndarray  # [n_items, n_layers]: |mean(word answer 1) - mean(word answer 0)|
    random: np.ndarray  # [n_layers, d]
    deed_norm: np.ndarray  # [n_layers]
    word_sources: np.ndarray  # [n_items, n_layers, d]: captured word residuals at the final position


def stance_directions(run_dir: str | Path, pairs: PairSet, layers: Sequence[int] | None = None, *, folds: int = 5,
                      seed: int = 0) -> Directions:
    """Word-stance directions from the run's captured ``resid_post`` at the final position (all two-option
    items, cross-fitted by item), restricted to ``layers``.

    With independent shuffles the word answer's letter predicts its option (a base model says "A" most of
    the time), so a plain difference of means by answer would partly be a *letter* direction. The stance
    direction is therefore balanced over the answer letter, and the letter direction (balanced over the
    answer) is returned too, as the control that carries the letter and not the stance."""

    acts = load_activations(run_dir, hook="resid_post", position="last")
    word, deed, items = paired_forms(acts)
    captured = list(acts.layers)
    layers = captured if layers is None else list(layers)
    missing = [l for l in layers if l not in captured]
    if missing:
        raise CaptureSpecError(f"layer(s) {missing} were not captured in {run_dir} (captured: {captured}); "
                               "rerun `wdprobe capture` with those layers")
    slots = [captured.index(l) for l in layers]
    y, letter = items["y_word"].to_numpy(), items["letter_word"].to_numpy()
    dirs, fold_of, gaps = crossfit_directions(word[:, slots], y, folds=folds, balance=letter)
    # a model that says one letter on every word prompt (a planted letter habit) has no letter direction to estimate
    letter_dirs = (crossfit_directions(word[:, slots], letter, folds=folds, balance=y)[0]
                   if len(set(letter.tolist())) > 1 else None)
    pos = {iid: k for k, iid in enumerate(items["id"])}
    missing_ids = [i for i in pairs.items["id"] if i not in pos]
    if missing_ids:
        raise InputError(f"item(s) {missing_ids[:5]} have no captured activations in {run_dir}")
    idx = np.array([pos[i] for i in pairs.items["id"]])
    stance = dirs[fold_of[idx]]
    rng = np.random.default_rng(seed + 7919)
    rand = rng.standard_normal((len(layers), word.shape[-1]))
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    norm = np.linalg.norm(deed[:, slots], axis=-1).mean(0)
    return Directions(tuple(layers), stance, None if letter_dirs is None else letter_dirs[fold_of[idx]],
                      gaps[fold_of[idx]], rand, norm, word[idx][:, slots])


def order_averaged(values: np.ndarray, meta, form: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per two-option item, the mean of its ``form`` residuals ``values[prompt, layer, d]`` over every captured
    option order, and its content choice. With each option under each letter equally often, whatever the residual
    holds about the letter cancels in the mean; an item captured in one order only is refused by name."""
    rows = ((meta["form"] == form) & (meta["n_options"] == 2)).to_numpy()
    ids = meta["id"].to_numpy()[rows]
    counts = meta[rows].groupby("id").size()
    if len(counts) == 0:
        raise CaptureSpecError(f"no two-option {form} prompts were captured")
    if counts.min() < 2:
        raise CaptureSpecError(f"content directions need every option order captured (item {counts.idxmin()} has "
                               f"{int(counts.min())}); score with --orders cyclic and rerun `wdprobe capture`")
    all_ids = list(dict.fromkeys(ids))
    pos = {iid: k for k, iid in enumerate(all_ids)}
    X = np.zeros((len(all_ids),) + values.shape[1:])
    np.add.at(X, np.array([pos[i] for i in ids]), values[rows])
    X /= counts.reindex(all_ids).to_numpy()[:, None, None]
    label = meta[rows].groupby("id")["content_choice"].first().reindex(all_ids).to_numpy().astype(int)
    return all_ids, X, label


def content_directions(run_dir: str | Path, pairs: PairSet, layers: Sequence[int] | None = None, *, folds: int = 5,
                       seed: int = 0) -> Directions:
    """Word *content* directions: each item's word residuals averaged over all its captured option orders (every
    option under every letter, so the letter cancels within the item), then the cross-fitted difference of means
    by the item's word content choice. No letter direction (``letter`` is None): the average holds no letter."""
    acts = load_activations(run_dir, hook="resid_post", position="last", orders="all")
    meta = acts.meta
    captured = list(acts.layers)
    layers = captured if layers is None else list(layers)
    missing = [l for l in layers if l not in captured]
    if missing:
        raise CaptureSpecError(f"layer(s) {missing} were not captured in {run_dir} (captured: {captured})")
    slots = [captured.index(l) for l in layers]
    all_ids, X, label = order_averaged(acts.array[:, slots], meta, "word")
    pos = {iid: k for k, iid in enumerate(all_ids)}
    dirs, fold_of, gaps = crossfit_directions(X, label, folds=folds)
    missing_ids = [i for i in pairs.items["id"] if i not in pos]
    if missing_ids:
        raise InputError(f"item(s) {missing_ids[:5]} have no captured activations in {run_dir}")
    idx = np.array([pos[i] for i in pairs.items["id"]])
    rng = np.random.default_rng(seed + 7919)
    rand = rng.standard_normal((len(layers), X.shape[-1]))
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    deed = ((meta["form"] == "deed") & (meta["n_options"] == 2)).to_numpy()
    norm = np.linalg.norm(acts.array[deed][:, slots], axis=-1).mean(0)
    return Directions(tuple(layers), dirs[fold_of[idx]], None, gaps[fold_of[idx]], rand, norm, X[idx])
