"""Does the deed use the word's stance? Interchange interventions on a learned stance subspace, within and across forms.

Raw word-to-deed residual patching moves a residual that predicts " Yes"/" No" into a prompt that must predict an
action text, so the patched deed reads a word answer, not a stance. Here each form is read in its own token space:

1. The model's *stance* on each item and form is whether its cloze choice (per-token mean log-likelihood) is the
   item's correct option.
2. Counterfactual pairs of one form: a base item and a source item on which the model took opposite stances. The
   pair's label is the base's option for the *source's* stance, never the base's own answer: an interchange that
   carries nothing leaves the base on its own answer and scores 0.
3. At the decision point (the last prompt token) of block ``L``'s residual a 1-d subspace (or another
   :data:`~wdprobe.methods.subspace.SUBSPACE_KINDS` kind) is learned on training pairs of each form, from the
   closed-form first-order start, and its interchange-intervention accuracy (IIA) read on held-out pairs (items split
   once; held-out pairs use held-out items only).
4. *Cross-form*: the word-learned subspace is interchanged between held-out **deed** pairs (and the deed-learned one
   between word pairs). If the deed's stance lives where the word's does, cross-form IIA reaches the deed-learned IIA;
   if not, it stays at the level of a random direction (the control, run on the same pairs).

Every held-out pair's outcome is returned (``outcomes``), so the statistics (:func:`summarise`) and any report are
recomputed from the table.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.methods.interchange import PairInterchange
from wdprobe.methods.subspace import (
    SUBSPACE_KINDS,
    first_order_basis,
    fit_subspace,
    interchange_scores,
    make_subspace,
)
from wdprobe.scoring.stats import bootstrap_interval, paired_difference_test, sign_flip_max_test
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import cloze_choices

FORMS = ("word", "deed")
CONDITIONS = ("within", "cross", "random")  # subspace learned on the same form, on the other form, a random direction
EQUIVALENCE_MARGIN = 0.1  # |deed-learned - word-learned IIA on deeds| below this, by a 90% interval, reads "shared"


@dataclass(frozen=True)
class InterchangeSettings:
    """What a cross-form interchange run did (a resumed run must match it)."""

    layers: tuple[int, ...]
    kind: str = "direction"
    k: int = 1
    sources_per_item: int = 2
    train_share: float = 0.6
    epochs: int = 3
    batch_size: int = 16
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SUBSPACE_KINDS:
            raise InputError(f"subspace kind {self.kind!r}: choose from {', '.join(SUBSPACE_KINDS)}")
        if not 0 < self.train_share < 1:
            raise InputError(f"train share {self.train_share} must lie strictly between 0 and 1")
        if self.sources_per_item < 1 or self.epochs < 1 or self.batch_size < 1:
            raise InputError("sources per item, epochs and batch size must be at least 1")

    @classmethod
    def from_flags(cls, layers: str, **settings) -> "InterchangeSettings":
        """Settings from command-line flags: ``layers`` as block numbers separated by commas."""
        try:
            blocks = tuple(int(x) for x in layers.split(","))
        except ValueError:
            raise InputError(f"--layers {layers!r}: give block numbers separated by commas") from None
        return cls(layers=blocks, **settings)


@dataclass(frozen=True)
class StancePairs:
    """Counterfactual pairs of one form: base and source item indices, the base option the source's stance asks for,
    and whether the pair is for training or held out."""

    form: str
    base: np.ndarray
    source: np.ndarray
    label: np.ndarray
    held: np.ndarray = field(repr=False)


def study_items(path: str | Path, n: int) -> list[Item]:
    """The first ``n`` two-option EthV/Theory items (a correct option known) in the seeded planted order."""
    items = [it for it in planted_order(read_items(path))
             if it.domain in ("EthV", "Theory") and it.n_options == 2 and it.correct in (0, 1)]
    if len(items) < n:
        raise InputError(f"{path}: {len(items)} two-option EthV/Theory items, {n} asked for")
    return items[:n]


def item_stances(lm, items: Sequence[Item], form: str, *, batch_size: int = 16) -> np.ndarray:
    """1 where the model's cloze choice (per-token mean) is the item's correct option, else 0."""
    choice = cloze_choices(lm, items, form, batch_size=batch_size)["mean"]
    return (choice == np.array([it.correct for it in items])).astype(int)


def split_items(n: int, train_share: float, seed: int) -> np.ndarray:
    """True for held-out items: a seeded permutation's last ``1 - train_share``."""
    order = np.random.default_rng(seed).permutation(n)
    held = np.zeros(n, dtype=bool)
    held[order[int(round(train_share * n)):]] = True
    return held


def stance_pairs(items: Sequence[Item], stance: np.ndarray, held: np.ndarray, form: str, *, per_item: int,
                 seed: int) -> StancePairs:
    """Each item as a base, with ``per_item`` sources drawn (seeded, without repeats where possible) from the items of
    its own split on which the model took the other stance."""
    rng = np.random.default_rng([seed, FORMS.index(form)])
    base, source = [], []
    for i in range(len(items)):
        pool = np.flatnonzero((stance != stance[i]) & (held == held[i]))
        if pool.size == 0:
            continue
        pick = rng.choice(pool, size=min(per_item, pool.size), replace=False)
        base += [i] * len(pick)
        source += list(pick)
    base_a, source_a = np.array(base, dtype=int), np.array(source, dtype=int)
    correct = np.array([items[i].correct for i in base_a], dtype=int)
    label = np.where(stance[source_a] == 1, correct, 1 - correct)
    return StancePairs(form, base_a, source_a, label, held[base_a])


def _runner(lm, hook: str, items: Sequence[Item], pairs: StancePairs, rows: np.ndarray, batch_size: int) -> PairInterchange:
    f = pairs.form
    return PairInterchange(lm, hook, [cloze_prompt(items[i], f) for i in pairs.base[rows]],
                           [items[i].options(f) for i in pairs.base[rows]],
                           [cloze_prompt(items[i], f) for i in pairs.source[rows]], batch_size=batch_size)


def layer_outcomes(lm, items: Sequence[Item], pairs: dict[str, StancePairs], layer: int, settings: InterchangeSettings,
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Learn each form's subspace at block ``layer``'s residual and read every held-out pair under each condition."""
    hook = f"blocks.{layer}.hook_resid_post"
    subspaces, held_runs, fits = {}, {}, {}
    for form in FORMS:
        p = pairs[form]
        train_rows, held_rows = np.flatnonzero(~p.held), np.flatnonzero(p.held)
        if train_rows.size == 0 or held_rows.size == 0:
            raise InputError(f"{form}: no {'training' if train_rows.size == 0 else 'held-out'} pairs (the model took "
                             "one stance on every item of a split)")
        train = _runner(lm, hook, items, p, train_rows, settings.batch_size)
        held_runs[form] = _runner(lm, hook, items, p, held_rows, settings.batch_size)
        grads, deltas = train.first_order(list(range(len(train_rows))), batch_size=settings.batch_size)
        signs = np.where(p.label[train_rows] == 0, 1.0, -1.0)
        start, _ = first_order_basis(grads, deltas, signs, k=settings.k)
        sub = make_subspace(settings.kind, lm.d_model, settings.k, seed=settings.seed)
        sub.start_from(start)
        fits[form] = fit_subspace(sub, train, p.label[train_rows], list(range(len(train_rows))), epochs=settings.epochs,
                                  batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
        subspaces[form] = sub
        if progress:
            progress(f"block {layer} {form}: trained, loss {fits[form].losses[0]:.3f} -> {fits[form].losses[-1]:.3f}, "
                     f"training IIA {fits[form].train_accuracy[-1]:.2f}")
    control = make_subspace("direction", lm.d_model, seed=10_000 + settings.seed + layer)
    rows = []
    for form in FORMS:
        p, run = pairs[form], held_runs[form]
        held_rows = np.flatnonzero(p.held)
        other = FORMS[1 - FORMS.index(form)]
        for condition, sub in (("within", subspaces[form]), ("cross", subspaces[other]), ("random", control)):
            scores = interchange_scores(sub, run, list(range(len(held_rows))), batch_size=settings.batch_size)
            for r, row in enumerate(held_rows):
                rows.append({"layer": layer, "form": form, "condition": condition, "pair": int(row),
                             "base": items[p.base[row]].id, "source": items[p.source[row]].id,
                             "label": int(p.label[row]), "answer": int(scores[r].argmax()),
                             "success": int(scores[r].argmax() == p.label[row]),
                             "train_loss_first": fits[form].losses[0] if condition == "within" else np.nan,
                             "train_loss_last": fits[form].losses[-1] if condition == "within" else np.nan,
                             "train_iia": fits[form].train_accuracy[-1] if condition == "within" else np.nan})
    return pd.DataFrame(rows)


def run_cross_form(lm, items: Sequence[Item], settings: InterchangeSettings, out: str | Path, *,
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The whole protocol into ``out``: stances, pairs, then one ``layers/block-L.csv`` per block as it finishes
    (a rerun with the same settings and items resumes; others are refused). Returns every held-out outcome."""
    out = Path(out)
    bad = [it.id for it in items if it.n_options != 2 or it.correct not in (0, 1)]
    if bad:
        raise InputError(f"items {bad[:3]}: the interchange study needs two options and a known correct one")
    if not settings.layers or min(settings.layers) < 0 or max(settings.layers) >= lm.n_layers:
        raise InputError(f"layers {list(settings.layers)} outside 0..{lm.n_layers - 1} of {lm.name}")
    record = {"settings": asdict(settings), "model": lm.name, "items": [it.id for it in items]}
    (out / "layers").mkdir(parents=True, exist_ok=True)
    meta = out / "settings.json"
    if meta.is_file():
        before = json.loads(meta.read_text())
        if before != json.loads(json.dumps(record)):
            changed = [k for k in record if before.get(k) != json.loads(json.dumps(record))[k]]
            raise InputError(f"{out}: a run with other {', '.join(changed)} is there; use another --out or delete it")
    else:
        atomic_write_json(meta, record)
    stances_file = out / "stances.csv"
    if stances_file.is_file():
        st = pd.read_csv(stances_file)
        if st["id"].astype(str).tolist() != [it.id for it in items]:
            raise InputError(f"{stances_file}: stances of other items")
        stance = {f: st[f].to_numpy() for f in FORMS}
    else:
        stance = {f: item_stances(lm, items, f, batch_size=settings.batch_size) for f in FORMS}
        atomic_write_text(stances_file, pd.DataFrame({"id": [it.id for it in items], **stance}).to_csv(index=False))
    held = split_items(len(items), settings.train_share, settings.seed)
    pairs = {f: stance_pairs(items, stance[f], held, f, per_item=settings.sources_per_item, seed=settings.seed)
             for f in FORMS}
    frames = []
    for layer in settings.layers:
        part = out / "layers" / f"block-{layer:02d}.csv"
        if not part.is_file():
            atomic_write_text(part, layer_outcomes(lm, items, pairs, layer, settings, progress).to_csv(index=False))
        frames.append(pd.read_csv(part))
    return pd.concat(frames, ignore_index=True)


def _per_base(frame: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Success averaged over each base item's pairs (the unit of resampling), one column per block."""
    sub = frame[frame["condition"] == condition]
    return sub.groupby(["base", "layer"])["success"].mean().unstack("layer").sort_index()


def summarise(outcomes: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per block and form: IIA of each condition with a bootstrap interval over base items; tests of within and
    cross-form IIA against the random direction and of the within-minus-cross gap against zero (sign flips over base
    items; Benjamini-Hochberg across every test of the table, ``q_*``), and the gap's 90% interval (``shared``: inside
    +-:data:`EQUIVALENCE_MARGIN`, a two one-sided tests equivalence at 5%).
    Also, per form, the best block of cross-form over random with a max-over-blocks test (picking the block paid for)."""
    rows, best = [], {}
    for form in FORMS:
        f = outcomes[outcomes["form"] == form]
        if f.empty:
            continue
        per = {c: _per_base(f, c) for c in CONDITIONS}
        layers = sorted(per["within"].columns)
        for layer in layers:
            row = {"form": form, "layer": int(layer), "n_pairs": int(((f["layer"] == layer) & (f["condition"] == "within")).sum()),
                   "n_bases": int(per["within"][layer].notna().sum())}
            for c in CONDITIONS:
                v = per[c][layer].dropna().to_numpy()
                lo, hi = bootstrap_interval(v, seed=layer)
                row.update({f"iia_{c}": float(v.mean()), f"iia_{c}_low": lo, f"iia_{c}_high": hi})
            for c in ("within", "cross"):
                ev = paired_difference_test((per[c][layer] - per["random"][layer]).dropna().to_numpy(), seed=layer)
                row[f"p_{c}_vs_random"] = ev.p_value
            gap = (per["within"][layer] - per["cross"][layer]).dropna().to_numpy()
            lo, hi = bootstrap_interval(gap, seed=layer, level=0.90)
            row.update({"gap": float(gap.mean()), "gap_low90": lo, "gap_high90": hi,
                        "p_gap": paired_difference_test(gap, seed=layer).p_value,
                        "shared": bool(-EQUIVALENCE_MARGIN < lo and hi < EQUIVALENCE_MARGIN)})
            rows.append(row)
        diffs = (per["cross"] - per["random"]).dropna()
        if not diffs.empty:
            ev = sign_flip_max_test(diffs.to_numpy())
            best[form] = {"block": int(diffs.columns[ev.setting]), "cross_minus_random": ev.effect, "low": ev.low,
                          "high": ev.high, "p": ev.p_value, "n_bases": ev.n}
    table = pd.DataFrame(rows)
    if not table.empty:
        tests = ["p_within_vs_random", "p_cross_vs_random", "p_gap"]
        qs = false_discovery_control(table[tests].to_numpy().ravel(), method="bh").reshape(-1, len(tests))
        for j, name in enumerate(tests):
            table["q" + name[1:]] = qs[:, j]
    return table, best
