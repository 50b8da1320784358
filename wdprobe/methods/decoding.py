"""Layer-wise decoding with a test that accounts for picking the best layer (SCIENCE.md §9).

"The stance is decodable at layer l" is read off the best of many layers, so its test must be of the *maximum*
over layers: labels are permuted, every layer is decoded again under each permutation, and the maximum over
layers of each permutation forms the null. The observed best layer is significant when it beats that null
(family-wise, so every layer above the null's 95th percentile is significant too, and the first such layer is
where the information appears: the *decide* layer for content labels, the *bind* layer for letter labels).

The probe is difference-of-means (mass-mean), cross-validated with folds grouped (every prompt of a group — an
item's orders, or its two forms — on one side). Its closed form lets every permutation run at once: the class
sums of all permutations are one matrix product per fold. The unpermuted column gives the real curve, the
permuted columns the random-label control; intervals are a bootstrap over groups of out-of-fold correctness.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float
from scipy.stats import rankdata
from sklearn.metrics import cohen_kappa_score

from wdprobe.errors import InputError
from wdprobe.scoring.stats import LEVEL, bootstrap_indices

__all__ = ["PERMUTATIONS", "LayerTest", "decode_layers", "group_folds", "auroc", "internal_consistency", "chance_corrected_agreement"]

Metric = Literal["accuracy", "auroc"]
# label permutations behind a max-over-layers test: at p = 0.05 the Monte-Carlo standard error is 0.005 (200 gave
# 0.015, the size of the margins a report read); the closed-form probe keeps 2,000 affordable
PERMUTATIONS = 2000


def group_folds(groups: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test-row indices of each fold; whole groups are dealt to folds in a seeded random order."""
    names = np.unique(groups)
    if len(names) < folds:
        raise InputError(f"{len(names)} groups cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(names).tolist(), np.arange(len(names)) % folds))
    which = np.array([fold_of[g] for g in groups.tolist()])
    return [np.flatnonzero(which == f) for f in range(folds)]


def _balanced_accuracy(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``scores`` (n, P, L) decision values, ``y`` (n, P) 0/1 labels -> (P, L) balanced accuracy."""
    pred = scores > 0
    pos = y[:, :, None].astype(bool)
    n_pos = pos.sum(axis=0)
    n_neg = (~pos).sum(axis=0)
    tpr = (pred & pos).sum(axis=0) / np.maximum(n_pos, 1)
    tnr = (~pred & ~pos).sum(axis=0) / np.maximum(n_neg, 1)
    return 0.5 * (tpr + tnr)


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area under the ROC curve along axis 0 (Mann-Whitney U with average ranks for ties): ``scores`` (n, ...)
    and 0/1 ``y`` broadcastable to it -> (...)."""
    y = np.broadcast_to(y, scores.shape).astype(bool)
    ranks = rankdata(scores, axis=0)
    n_pos = y.sum(axis=0)
    n_neg = y.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(y, ranks, 0).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class LayerTest:
    """Per layer: the real curve, the random-label control, an interval; over layers: the max-statistic test."""

    layers: tuple[int, ...]
    metric: str
    value: np.ndarray  # (L,) cross-validated metric with the real labels
    low: np.ndarray  # (L,) bootstrap interval over groups
    high: np.ndarray
    control: np.ndarray  # (L,) mean under permuted labels (the random-label control curve)
    null_max: np.ndarray  # (n_perm,) max over layers under each permutation
    n_rows: int
    n_groups: int
    level: float = LEVEL
    within: np.ndarray | None = None  # (L,) the metric inside each stratum (domain), averaged by rows
    within_control: np.ndarray | None = None  # (L,) the same under permuted labels
    n_strata: int = 0  # strata holding both classes, the ones ``within`` averages

    @property
    def threshold(self) -> float:
        """The value a layer must beat to be significant with every layer tested (family-wise ``level``)."""
        return float(np.quantile(self.null_max, self.level))

    @property
    def best(self) -> int:
        """Index (into ``layers``) of the best layer."""
        return int(np.nanargmax(self.value))

    @property
    def p_value(self) -> float:
        """Family-wise p-value of the best layer: share of permutations whose best layer did as well."""
        return float((1 + np.sum(self.null_max >= self.value[self.best])) / (1 + len(self.null_max)))

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.level

    def tied_best(self) -> list[int]:
        """Every layer (a layer number) whose value equals the best one: a tie is reported as a tie, not as the
        first of its layers."""
        top = self.value[self.best]
        return [int(self.layers[k]) for k in np.flatnonzero(np.isclose(self.value, top, rtol=0, atol=1e-12))]

    def first_significant(self) -> int | None:
        """The first layer (a layer number) above the family-wise threshold, or None."""
        above = np.flatnonzero(self.value > self.threshold)
        return int(self.layers[above[0]]) if above.size else None

    def to_rows(self, **labels: object) -> list[dict[str, object]]:
        """Tidy rows, one per layer, with ``labels`` (e.g. position, probe name) on each."""
        within = self.within if self.within is not None else np.full(len(self.layers), np.nan)
        within_control = self.within_control if self.within_control is not None else np.full(len(self.layers), np.nan)
        return [dict(labels, layer=int(l), metric=self.metric, value=float(v), low=float(lo), high=float(hi),
                     control=float(c), threshold=self.threshold, n_rows=self.n_rows, n_groups=self.n_groups,
                     within=float(w), within_control=float(wc))
                for l, v, lo, hi, c, w, wc in zip(self.layers, self.value, self.low, self.high, self.control, within,
                                                   within_control)]

    def summary(self) -> dict[str, object]:
        """The test in numbers, for headlines and wording."""
        b = self.best
        return {"metric": self.metric, "best_layer": int(self.layers[b]), "best": float(self.value[b]),
                "best_low": float(self.low[b]), "best_high": float(self.high[b]), "control_at_best": float(self.control[b]),
                "threshold": self.threshold, "p_value": self.p_value, "significant": self.significant,
                "first_significant_layer": self.first_significant(), "n_rows": self.n_rows, "n_groups": self.n_groups,
                "n_permutations": int(len(self.null_max)), "tied_best_layers": self.tied_best(),
                "within_domain_at_best": None if self.within is None else float(self.within[b]),
                "within_domain_control_at_best": None if self.within_control is None else float(self.within_control[b]),
                "n_domains": self.n_strata}


def _permuted_labels(y: np.ndarray, groups: np.ndarray, n_perm: int, permute: str, rng: np.random.Generator,
                     strata: np.ndarray | None = None, units: np.ndarray | None = None) -> np.ndarray:
    """(n, 1 + n_perm) label matrix: column 0 the real labels, then permutations (of whole groups' labels when
    ``permute='groups'`` — labels must then be constant within a group — of whole groups' label *sequences* when
    ``permute='clusters'``, or of rows). With ``strata`` (one per row, constant within a group) labels move only
    within a stratum: the null keeps whatever the strata alone explain (e.g. the domain), so the test asks what is
    decodable beyond them."""
    if permute not in ("groups", "clusters", "rows"):
        raise InputError(f"permute must be 'groups', 'clusters' or 'rows', not {permute!r}")
    if permute == "clusters":
        return _permuted_clusters(y, groups, n_perm, rng, strata)
    if permute == "groups":
        units = groups if units is None else np.asarray(units)
    else:
        units = np.arange(len(y))
    names, inverse = np.unique(units, return_inverse=True)
    unit_label = np.zeros(len(names), dtype=y.dtype)
    unit_label[inverse] = y
    if not np.array_equal(unit_label[inverse], y):  # a group with two labels
        raise InputError("permute='groups' needs one label per group; these labels vary inside a group")
    unit_stratum = np.zeros(len(names), dtype=np.int64)
    if strata is not None:
        codes = np.unique(np.asarray(strata), return_inverse=True)[1]
        unit_stratum[inverse] = codes
        if not np.array_equal(unit_stratum[inverse], codes):
            raise InputError("strata must be constant within a group")
    members = [np.flatnonzero(unit_stratum == k) for k in np.unique(unit_stratum)]
    cols = [y]
    for _ in range(n_perm):
        perm = np.arange(len(names))
        for m in members:
            perm[m] = m[rng.permutation(len(m))]
        cols.append(unit_label[perm][inverse])
    return np.stack(cols, axis=1)


def _permuted_clusters(y: np.ndarray, groups: np.ndarray, n_perm: int, rng: np.random.Generator,
                       strata: np.ndarray | None) -> np.ndarray:
    """Labels that vary inside a group but cluster by it (an item's option orders mostly say the same letter):
    each group's labels move whole to another group of the same size and stratum, shuffled among that group's rows,
    so the null keeps how labels cluster by item (and stays random where every item has the same pattern, e.g. a
    letter that alternates with the order). Permuting rows instead breaks the clusters and gives a null narrower
    than the real labels' structure allows: noise is called decodable."""
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    stratum = np.zeros(len(y), dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    key = []
    for rows in members:
        if len(np.unique(stratum[rows])) != 1:
            raise InputError("strata must be constant within a group")
        key.append((int(stratum[rows[0]]), len(rows)))
    exchangeable: dict[tuple[int, int], list[int]] = {}
    for k, kind in enumerate(key):
        exchangeable.setdefault(kind, []).append(k)
    cols = [y]
    for _ in range(n_perm):
        col = np.empty_like(y)
        for same in exchangeable.values():
            for target, source in zip(same, rng.permutation(same)):
                col[members[target]] = y[rng.permutation(members[source])]
        cols.append(col)
    return np.stack(cols, axis=1)


def _class_sums(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``einsum("nld,np->pld")`` as one BLAS matrix product: per label column p, the sum of the rows labelled 1
    (numpy's einsum runs this contraction without BLAS, and it dominated the permutation tests)."""
    n, L, d = X.shape
    return (Y.T @ X.reshape(n, L * d)).reshape(Y.shape[1], L, d)


def _project(X: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``einsum("nld,pld->npl")`` through batched matrix products: each row's projection on each direction, per layer."""
    return np.matmul(X.transpose(1, 0, 2), direction.transpose(1, 2, 0)).transpose(1, 2, 0)


def decode_layers(X: Float[np.ndarray, "n layer d"], y: np.ndarray, groups: np.ndarray, *,
                  layers: tuple[int, ...] | None = None, test_X: Float[np.ndarray, "m layer d"] | None = None,
                  test_y: np.ndarray | None = None, test_groups: np.ndarray | None = None, folds: int = 5,
                  n_perm: int = PERMUTATIONS, permute: str = "groups", metric: Metric = "accuracy", seed: int = 0,
                  n_boot: int = 1000, strata: np.ndarray | None = None,
                  test_strata: np.ndarray | None = None, units: np.ndarray | None = None) -> LayerTest:
    """Decode binary ``y`` from ``X`` at every layer with grouped cross-validation and the max-over-layers test.

    With ``test_X`` (e.g. deed prompts while ``X`` holds word prompts) the probe trained on the training folds of
    ``X`` is scored on the test folds of ``test_X``: groups are shared, so an item is never on both sides (the
    cross-form transfer; each set's labels are then permuted within that set). ``strata`` (and ``test_strata``)
    restrict the permutations to within strata, so the control and the threshold include what the strata alone
    predict (pass the domain to ask what is decodable beyond the item's domain). ``units`` (one set, ``permute=
    'groups'``): the units whose labels are permuted when they are finer than the fold groups (e.g. a prompt's
    orders share a label, while folds hold out whole propositions). ``metric`` is balanced accuracy or AUROC of the
    decision value."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    if X.ndim != 3 or y.shape != (X.shape[0],) or groups.shape != y.shape:
        raise InputError(f"decode_layers needs X (n, layer, d), y (n,), groups (n,); got {X.shape}, {y.shape}, {groups.shape}")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise InputError(f"decode_layers needs binary 0/1 labels with both classes present, got {np.unique(y).tolist()}")
    transfer = test_X is not None
    if test_X is None:
        test_X, test_y, test_groups = X, y, groups
    test_X = np.asarray(test_X, dtype=np.float64)
    test_y, test_groups = np.asarray(test_y).astype(int), np.asarray(test_groups)
    if test_X.shape[1:] != X.shape[1:] or test_y.shape != (test_X.shape[0],) or test_groups.shape != test_y.shape:
        raise InputError(f"test set shapes {test_X.shape}, {test_y.shape}, {test_groups.shape} do not match X {X.shape}")
    layers = tuple(range(X.shape[1])) if layers is None else tuple(layers)
    if len(layers) != X.shape[1]:
        raise InputError(f"{len(layers)} layer numbers for {X.shape[1]} layers of activations")
    rng = np.random.default_rng(seed)
    all_groups = np.concatenate([groups, test_groups])
    if not transfer:  # one set: the labels a row is trained on are the labels it is tested on
        Y = _permuted_labels(y, groups, n_perm, permute, rng, strata, units)
        Y_test = Y
    else:  # each set's labels permuted within that set (an item may carry a different label in each)
        if units is not None:
            raise InputError("units apply to one set; a transfer permutes each set by its groups")
        Y, Y_test = (_permuted_labels(y, groups, n_perm, permute, rng, strata),
                     _permuted_labels(test_y, test_groups, n_perm, permute, rng,
                                      test_strata if test_strata is not None else strata))
    scores = np.full((test_X.shape[0], Y.shape[1], X.shape[1]), np.nan)
    test_fold_rows = group_folds(np.concatenate([groups, test_groups]), folds, seed)
    n = len(y)
    for rows in test_fold_rows:
        in_test = np.zeros(len(all_groups), dtype=bool)
        in_test[rows] = True
        train = np.flatnonzero(~in_test[:n])
        test = np.flatnonzero(in_test[n:])
        if train.size == 0 or test.size == 0:
            continue
        Xtr, Ytr = X[train], Y[train].astype(np.float64)
        n1 = Ytr.sum(axis=0)  # (P,)
        n0 = len(train) - n1
        if n1[0] == 0 or n0[0] == 0:
            raise InputError("a training fold holds one class only; use fewer folds or more items")
        n1, n0 = np.maximum(n1, 1), np.maximum(n0, 1)  # a permutation may empty a class in a fold: a null draw still
        s1 = _class_sums(Xtr, Ytr)
        s0 = Xtr.sum(axis=0)[None] - s1
        mu1, mu0 = s1 / n1[:, None, None], s0 / n0[:, None, None]
        direction = mu1 - mu0
        thresh = np.einsum("pld,pld->pl", direction, (mu0 + mu1) / 2)
        scores[test] = _project(test_X[test], direction) - thresh[None]
    if metric not in ("accuracy", "auroc"):
        raise InputError(f"metric must be 'accuracy' or 'auroc', not {metric!r}")
    values = _metric(scores, Y_test, metric)
    real, null = values[0], values[1:]
    low, high = _group_interval(scores[:, 0], test_y, test_groups, metric, n_boot, seed)
    within, within_control, n_strata = None, None, 0
    test_strata = strata if not transfer else (test_strata if test_strata is not None else strata)
    if test_strata is not None:
        within_all, n_strata = _within_strata(scores, Y_test, np.asarray(test_strata), metric)
        if within_all is not None:
            within = within_all[0]
            within_control = np.nanmean(within_all[1:], axis=0) if len(null) else np.full(len(layers), np.nan)
    return LayerTest(layers, metric, real, low, high, null.mean(axis=0) if len(null) else np.full(len(layers), np.nan),
                     null.max(axis=1) if len(null) else np.array([]), int(test_X.shape[0]), int(len(np.unique(test_groups))),
                     within=within, within_control=within_control, n_strata=n_strata)


def _metric(scores: np.ndarray, Y: np.ndarray, metric: str) -> np.ndarray:
    """``scores`` (n, P, L), ``Y`` (n, P) -> (P, L) balanced accuracy or AUROC of each label column."""
    return _balanced_accuracy(scores, Y) if metric == "accuracy" else auroc(scores, Y[:, :, None])


def _within_strata(scores: np.ndarray, Y: np.ndarray, strata: np.ndarray,
                   metric: str) -> tuple[np.ndarray | None, int]:
    """The metric inside each stratum whose real labels hold both classes, averaged weighted by its rows: (P, L)
    and the number of strata averaged (None, 0 when no stratum holds both). Pooled accuracy can read the domain
    when label rates differ by domain; this asks whether the probe orders items *within* a domain."""
    total, weight, used = None, 0, 0
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        if len(np.unique(Y[rows, 0])) < 2:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            part = _metric(scores[rows], Y[rows], metric) * len(rows)
        total = part if total is None else total + part
        weight += len(rows)
        used += 1
    return (None, 0) if total is None else (total / weight, used)


def _group_interval(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, metric: str, n_boot: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap over groups of the metric's out-of-fold value, per layer: (low, high), each (L,)."""
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    idx = bootstrap_indices(len(names), n_boot=n_boot, seed=seed)
    stats = []
    for draw in idx:
        rows = np.concatenate([members[g] for g in draw])
        s, t = scores[rows], y[rows]
        if len(np.unique(t)) < 2:
            continue
        stats.append(_balanced_accuracy(s[:, None, :], t[:, None])[0] if metric == "accuracy"
                     else auroc(s, t[:, None]))
    stats = np.array(stats)
    tail = (1 - LEVEL) / 2
    return np.quantile(stats, tail, axis=0), np.quantile(stats, 1 - tail, axis=0)


def internal_consistency(word_X: Float[np.ndarray, "n layer d"], deed_X: Float[np.ndarray, "m layer d"],
                         word_y: np.ndarray, deed_y: np.ndarray, word_groups: np.ndarray, deed_groups: np.ndarray, *,
                         folds: int = 5, seed: int = 0, n_perm: int = 0, word_strata: np.ndarray | None = None,
                         deed_strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """IC(l): does one probe, trained on both forms, read the same stance from an item's word and deed prompts?

    Per fold (items dealt whole), each form's rows are centred on that form's training mean (the two prompt forms
    differ by far more than any stance, and where their label rates differ too, an uncentred probe learns the form
    and reads every word as one stance and every deed as the other), a difference-of-means probe is fitted on the
    word and deed rows of the training items, each labelled with its own form's choice, and each test item's word
    rows and deed rows are scored and their mean decision values read as that form's internal stance (an item's
    rows are its option orders, so the letter averages out).

    An item's two prompts share their topic and domain, so *any* readout tends to agree across them: with
    ``n_perm``, the same is done with each form's labels permuted over items (within ``*_strata``, e.g. the
    domain), and ``null_ic`` (n_perm, L) holds those IC curves, the control a shared stance must beat.

    Returns ``items`` (sorted), per item and layer ``agree`` (n_items, L) 0/1, the ``word``/``deed`` readings, per
    item ``consistent`` (the behavioural agreement of the labels), and ``null_ic``. IC(l) above its control and
    above CS means the two forms share a stance inside that the deed answer then leaves."""
    wX, dX = np.asarray(word_X, dtype=np.float64), np.asarray(deed_X, dtype=np.float64)
    wy, dy = np.asarray(word_y).astype(int), np.asarray(deed_y).astype(int)
    wg, dg = np.asarray(word_groups), np.asarray(deed_groups)
    if wX.shape[1:] != dX.shape[1:] or wy.shape != (wX.shape[0],) or dy.shape != (dX.shape[0],):
        raise InputError(f"internal consistency needs word and deed activations of one shape with one label per row; "
                         f"got {wX.shape}, {dX.shape}, {wy.shape}, {dy.shape}")
    items = np.unique(np.concatenate([wg, dg]))
    if set(np.unique(wg)) != set(items) or set(np.unique(dg)) != set(items):
        raise InputError("internal consistency needs every item's word and deed prompts")
    rng = np.random.default_rng(seed)
    Y = np.concatenate([_permuted_labels(wy, wg, n_perm, "groups", rng, word_strata),
                        _permuted_labels(dy, dg, n_perm, "groups", rng, deed_strata)])  # (rows, 1 + n_perm)
    X = np.concatenate([wX, dX])
    g, is_word = np.concatenate([wg, dg]), np.r_[np.ones(len(wy), bool), np.zeros(len(dy), bool)]
    pos = {name: k for k, name in enumerate(items.tolist())}
    item_of = np.array([pos[v] for v in g.tolist()])
    score = np.zeros((len(g), Y.shape[1], X.shape[1]))
    for test in group_folds(g, folds, seed):
        train = np.setdiff1d(np.arange(len(g)), test)
        if len(np.unique(Y[train, 0])) < 2:
            raise InputError("a training fold holds one class only; use fewer folds or more items")
        rows = np.concatenate([train, test])
        Xc = X[rows].copy()
        for form in (True, False):
            Xc[is_word[rows] == form] -= X[train][is_word[train] == form].mean(0)
        Xtr, Xte = Xc[: len(train)], Xc[len(train):]
        Ytr = Y[train].astype(np.float64)
        n1 = np.maximum(Ytr.sum(axis=0), 1)
        n0 = np.maximum(len(train) - Ytr.sum(axis=0), 1)
        s1 = _class_sums(Xtr, Ytr)
        mu1, mu0 = s1 / n1[:, None, None], (Xtr.sum(axis=0)[None] - s1) / n0[:, None, None]
        direction = mu1 - mu0
        thresh = np.einsum("pld,pld->pl", direction, (mu0 + mu1) / 2)
        score[test] = _project(Xte, direction) - thresh[None]
    readings = {}
    for form, rows in (("word", is_word), ("deed", ~is_word)):
        total = np.zeros((len(items),) + score.shape[1:])
        np.add.at(total, item_of[rows], score[rows])
        readings[form] = total / np.bincount(item_of[rows], minlength=len(items))[:, None, None] > 0
    agree = (readings["word"] == readings["deed"]).astype(float)  # (items, 1 + n_perm, L)
    label = {}
    for form, (yy, gg) in (("word", (wy, wg)), ("deed", (dy, dg))):
        label[form] = np.zeros(len(items), dtype=int)
        label[form][[pos[v] for v in gg.tolist()]] = yy
    word, deed = readings["word"][:, 0], readings["deed"][:, 0]
    return {"items": items, "agree": agree[:, 0], "word": word, "deed": deed,
            "consistent": (label["word"] == label["deed"]).astype(float), "null_ic": agree[:, 1:].mean(axis=0),
            "kappa": np.array([chance_corrected_agreement(word[:, k], deed[:, k]) for k in range(word.shape[1])])}


def chance_corrected_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two binary readings of the same items (scikit-learn's): raw agreement follows how often each
    reading says 1 (two readings that both say 1 on 90% of items agree on at least 80% by chance alone); kappa is 0
    at chance and 1 at full agreement. NaN where both readings are constant and equal (no variation to agree on)."""
    a, b = np.asarray(a).astype(int), np.asarray(b).astype(int)
    if len(np.unique(np.r_[a, b])) < 2:
        return float("nan")
    return float(cohen_kappa_score(a, b))
