"""What moves inside when one form is trained: stance directions, readouts and IC across checkpoints.

All arrays are last-token residuals ``(n_items, n_layers, d)`` of the same items at two checkpoints.
A stance direction is a difference of means between items by the canonical option the model chose,
taken *within* each answer-letter group and averaged: the final token carries the letter (the base model
answers A most of the time), and a plain difference of means would be mostly a letter direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdprobe.errors import InputError
from wdprobe.methods.probes import probe_layers


@dataclass(frozen=True)
class StanceAxis:
    """Per layer: unit direction (label 0 -> 1), midpoint threshold, the class gap along it and the pooled
    within-class standard deviation of the projection (the unit movements are measured in: a gap near zero
    where a layer does not separate the answers would blow any gap-relative number up)."""

    direction: np.ndarray  # (L, d)
    threshold: np.ndarray  # (L,)
    gap: np.ndarray  # (L,)
    spread: np.ndarray  # (L,)

    @property
    def separation(self) -> np.ndarray:
        """|gap| / spread: how well each layer's axis separates the two answers (Cohen's d)."""
        return np.abs(self.gap) / np.where(self.spread > 0, self.spread, np.nan)

    def project(self, X: np.ndarray) -> np.ndarray:
        """``(n, L)`` coordinates of activations along each layer's direction."""
        return np.einsum("nld,ld->nl", np.asarray(X, dtype=np.float64), self.direction)

    def read(self, X: np.ndarray) -> np.ndarray:
        """``(n, L)`` labels read by the midpoint rule (on the side of the label-1 mean)."""
        return ((self.project(X) - self.threshold) * np.sign(self.gap) > 0).astype(int)


def balanced_difference(X: np.ndarray, y: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
    """Mean(label 1) - mean(label 0) per layer, averaged over nuisance groups holding both labels."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
    groups = [None] if nuisance is None else list(np.unique(nuisance))
    parts = []
    for g in groups:
        m = np.ones(len(y), bool) if g is None else np.asarray(nuisance) == g
        if (y[m] == 1).any() and (y[m] == 0).any():
            parts.append(X[m & (y == 1)].mean(0) - X[m & (y == 0)].mean(0))
    if not parts:
        raise InputError("no group of items holds both labels; a stance direction needs both answers")
    return np.mean(parts, axis=0)


def stance_axis(X: np.ndarray, y: np.ndarray, nuisance: np.ndarray | None = None) -> StanceAxis:
    """The difference-of-means stance direction per layer, balanced over answer letters."""
    diff = balanced_difference(X, y, nuisance)
    norm = np.linalg.norm(diff, axis=-1)
    unit = diff / np.where(norm > 0, norm, 1.0)[:, None]
    proj = np.einsum("nld,ld->nl", np.asarray(X, dtype=np.float64), unit)
    y = np.asarray(y).astype(int)
    mu0, mu1 = proj[y == 0].mean(0), proj[y == 1].mean(0)
    resid = np.where((y == 1)[:, None], proj - mu1, proj - mu0)
    spread = np.sqrt((resid ** 2).sum(0) / max(len(y) - 2, 1))
    return StanceAxis(unit, (mu0 + mu1) / 2, mu1 - mu0, spread)


def cosine_per_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between two sets of per-layer directions."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.einsum("ld,ld->l", a, b) / np.where(na * nb > 0, na * nb, np.nan)


def movement(axis: StanceAxis, X0: np.ndarray, Xe: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """How far each layer moved towards the target along a fixed (pre-training) axis.

    ``shift``: mean over items of the signed displacement towards the target label, in units of the
    axis's pre-training within-answer standard deviation (compare with ``separation``, the distance
    between the two answer groups in the same units).
    ``read_target``/``read_target_start``: share of items the axis reads as the target after/before."""
    t = np.asarray(targets).astype(int)
    sign = np.where(t == 1, 1.0, -1.0)[:, None]
    disp = (axis.project(Xe) - axis.project(X0)) * sign * np.sign(axis.gap)  # label 1 lies on the gap's side
    spread = np.where(axis.spread > 0, axis.spread, np.nan)
    return {"shift": disp.mean(0) / spread, "read_target": (axis.read(Xe) == t[:, None]).mean(0),
            "read_target_start": (axis.read(X0) == t[:, None]).mean(0), "separation": axis.separation}


# ---- tables over the epochs of one alignment run ---------------------------------------------------

def _labels(rows, form: str, key: str) -> np.ndarray:
    return np.array([int(r[f"{form}_{key}"]) if key == "choice" else "AB".index(r[f"{form}_letter"]) for r in rows])


def _target_letters(rows, form: str, targets: np.ndarray) -> np.ndarray:
    """Letter index (0 = A) at which each item's form shows its target option."""
    return np.array([r[f"{form}_order"].index(str(t)) for r, t in zip(rows, targets)])


def inside_tables(epochs: dict[int, tuple[list, dict]], sets: dict[str, str], targets: dict[str, int],
                  *, probe_folds: int = 5) -> dict[str, list[dict]]:
    """Per epoch and layer: movement towards the target along the pre-training word, deed and letter axes
    (per form and item set), drift of each form's stance direction from its pre-training direction, and
    IC(l) of a shared difference-of-means probe (item-grouped CV) with its chance level and the CS.

    ``epochs``: epoch -> (item rows, {"word": X, "deed": X}) with rows in the same item order every epoch."""

    rows0, res0 = epochs[0]
    ids = [r["id"] for r in rows0]
    t = np.array([targets[i] for i in ids])
    set_of = np.array([sets[i] for i in ids])
    axes = {}
    for form in ("word", "deed"):
        y0, l0 = _labels(rows0, form, "choice"), _labels(rows0, form, "letter")
        try:
            axes[(form, form)] = stance_axis(res0[form], y0, l0)
        except ValueError:
            pass  # one answer only: no stance axis for this form
        if len(np.unique(l0)) == 2:
            axes[(form, "letter")] = stance_axis(res0[form], l0)
    start_dirs = {f: balanced_difference(res0[f], _labels(rows0, f, "choice"), _labels(rows0, f, "letter"))
                  for f in ("word", "deed") if (f, f) in axes}
    # noise floor of the drift: the same pre-training direction fitted on two random halves of the items
    halves = np.random.default_rng(0).permutation(len(ids))
    h1, h2 = halves[: len(ids) // 2], halves[len(ids) // 2:]
    split_half = {}
    for f in start_dirs:
        y0, l0 = _labels(rows0, f, "choice"), _labels(rows0, f, "letter")
        try:
            split_half[f] = cosine_per_layer(balanced_difference(res0[f][h1], y0[h1], l0[h1]),
                                             balanced_difference(res0[f][h2], y0[h2], l0[h2]))
        except ValueError:
            pass
    move, drift, ic = [], [], []
    for e, (rows, res) in sorted(epochs.items()):
        if [r["id"] for r in rows] != ids:
            raise InputError(f"epoch {e}: items differ from epoch 0 (order or ids); evaluations must cover the same items")
        for form in ("word", "deed"):
            for axis_name in ("word", "deed", "letter"):
                key = (form, "letter") if axis_name == "letter" else (axis_name, axis_name)
                if key not in axes:
                    continue
                tt = _target_letters(rows0, form, t) if axis_name == "letter" else t
                for s in ("train", "held_out"):
                    m = set_of == s
                    if not m.any():
                        continue
                    mv = movement(axes[key], res0[form][m], res[form][m], tt[m])
                    for layer in range(len(mv["shift"])):
                        move.append({"epoch": e, "set": s, "form": form, "axis": axis_name, "layer": layer,
                                     "shift": float(mv["shift"][layer]), "separation": float(mv["separation"][layer]),
                                     "read_target": float(mv["read_target"][layer]),
                                     "read_target_start": float(mv["read_target_start"][layer])})
        cos = {}
        for f in start_dirs:
            try:
                now = balanced_difference(res[f], _labels(rows, f, "choice"), _labels(rows, f, "letter"))
                cos[f] = cosine_per_layer(now, start_dirs[f])
            except ValueError:
                cos[f] = None
        yw, yd = _labels(rows, "word", "choice"), _labels(rows, "deed", "choice")
        cs_chance = float(sum(np.mean(yw == c) * np.mean(yd == c) for c in (0, 1)))  # CS if answers were independent
        summary = None
        if len(np.unique(yw)) == 2 and len(np.unique(yd)) == 2:
            pr = probe_layers(res["word"], res["deed"], yw, yd, letter_word=_labels(rows, "word", "letter"),
                              letter_deed=_labels(rows, "deed", "letter"), kinds=("diffmean",), folds=probe_folds)
            summary = pr.summary()
        n_layers = res["word"].shape[1]
        for layer in range(n_layers):
            drift.append({"epoch": e, "layer": layer,
                          **{f"cos_{f}_to_start": (None if cos.get(f) is None else float(cos[f][layer])) for f in ("word", "deed")},
                          **{f"split_half_{f}": (float(split_half[f][layer]) if f in split_half else None) for f in ("word", "deed")}})
            if summary is not None:
                sel = summary[summary["layer"] == layer].set_index("metric")["mean"]
                ic.append({"epoch": e, "layer": layer, **{m.replace("->", "_to_"): float(sel[m]) for m in
                           ("ic", "ic_chance", "cs", "word->word", "deed->deed", "word->deed", "deed->word", "letter")
                           if m in sel}, "cs_chance": cs_chance})
    return {"movement": move, "drift": drift, "ic": ic}
