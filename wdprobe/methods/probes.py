"""Linear probes for the stance a model represents, per layer, within and across word/deed forms.

Estimators follow scikit-learn (``fit``/``predict``/``score``, arrays in and out). The analysis
(:func:`probe_layers`) takes word and deed activations of the *same items* (row i of each is item i),
canonical-option labels, and runs, per layer, cross-validation grouped by item: an item's word and
deed prompts are always on the same side of a split.

Stance labels are binary: canonical option 0 vs 1. Items with 3-4 options (14 of 1,225 in WDCT)
are left out of stance probes, since their option sets do not share a binary stance axis.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from wdprobe.errors import InputError


class DiffMeanProbe(ClassifierMixin, BaseEstimator):
    """Difference-of-means (mass-mean) probe: direction = mean(class 1) - mean(class 0), threshold at the midpoint.

    A scikit-learn estimator (it passes ``parametrize_with_checks``): input is validated, a probe used
    before ``fit`` says so, and it refuses more than two classes (stance labels are binary)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "DiffMeanProbe":
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        if y_type != "binary":
            raise InputError(f"Only binary classification is supported. The type of the target is {y_type}: "
                             f"DiffMeanProbe needs two classes, got {np.unique(y).tolist()}")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise InputError(f"DiffMeanProbe needs two classes, got 1 class ({self.classes_.tolist()}): nothing to separate")
        mu0, mu1 = X[y == self.classes_[0]].mean(0), X[y == self.classes_[1]].mean(0)
        self.direction_ = mu1 - mu0
        self.threshold_ = float(self.direction_ @ (mu0 + mu1) / 2)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.direction_ - self.threshold_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) > 0, self.classes_[1], self.classes_[0])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


def held_out_log_likelihood(estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Mean log-likelihood of binary labels under a fitted classifier (sklearn's ``neg_log_loss`` without its input
    validation, which took a third of every inner-CV fit)."""
    p = np.clip(estimator.predict_proba(X)[:, 1], 1e-15, 1 - 1e-15)
    y = (np.asarray(y) == estimator.classes_[1])
    return float(np.mean(np.where(y, np.log(p), np.log1p(-p))))


def logistic_probe(seed: int = 0, inner_folds: int = 3) -> Any:
    """Standardised L2 logistic regression with C chosen by inner cross-validation."""
    params = inspect.signature(LogisticRegressionCV).parameters
    kwargs: dict[str, Any] = {"scoring": held_out_log_likelihood}  # choose C by held-out likelihood, not accuracy
    if "use_legacy_attributes" in params:  # sklearn >= 1.8: settle the future defaults now
        kwargs["use_legacy_attributes"] = False
    if "l1_ratios" in params:
        kwargs["l1_ratios"] = (0.0,)
    # C grid and tolerance measured on Gemma-3-270M residuals (d=640, ~2k prompts): inner CV picks
    # C = 1e-3; the strong end of the grid converges ~8x faster than a grid reaching C = 10.
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, -1, 4).tolist(), cv=inner_folds,
                                                                max_iter=500, tol=1e-3, n_jobs=2, random_state=seed,
                                                                **kwargs))


@dataclass(frozen=True)
class ProbeKind:
    """A probe kind, declared once: its name, what figures call it and draw it in, how to make a fresh seeded one,
    its direction in activation space once fitted, and (``grouped``) how to keep each item's rows on one side of its
    own inner cross-validation. A new kind is one :class:`ProbeKind` and one :func:`register_probe_kind` call."""

    name: str
    title: str
    colour: str
    estimator: type
    make: Callable[[int], Any]
    direction: Callable[[Any], np.ndarray]
    grouped: Callable[[Any, np.ndarray, np.ndarray, np.ndarray], Any] | None = None


PROBE_KINDS: dict[str, ProbeKind] = {}


def register_probe_kind(kind: ProbeKind) -> ProbeKind:
    """Add a probe kind to :data:`PROBE_KINDS` (refused when the name is taken)."""
    if kind.name in PROBE_KINDS:
        raise InputError(f"probe kind {kind.name!r} is registered already")
    PROBE_KINDS[kind.name] = kind
    return kind


def probe_kind(name: str) -> ProbeKind:
    """The registered probe kind of that name, or an error listing the kinds."""
    if name not in PROBE_KINDS:
        raise InputError(f"unknown probe kind {name!r}: choose from {', '.join(map(repr, PROBE_KINDS))}")
    return PROBE_KINDS[name]


def _group_inner_cv(est: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
    """The logistic probe's inner CV (its choice of C) split by group."""
    inner = est[-1].cv
    splitter = StratifiedGroupKFold(n_splits=min(inner, len(np.unique(groups))))
    est[-1].set_params(cv=list(splitter.split(X, y, groups)))
    return est


register_probe_kind(ProbeKind("logreg", "logistic regression (standardised, L2, C by inner CV)", "#1f77b4", Pipeline,
                              logistic_probe, lambda est: est[-1].coef_[0] / est[0].scale_, _group_inner_cv))
register_probe_kind(ProbeKind("diffmean", "difference of means", "#d62728", DiffMeanProbe, lambda seed: DiffMeanProbe(),
                              lambda est: est.direction_))


def probe_direction(est: Any) -> np.ndarray:
    """The fitted probe's direction in activation space (for the logistic pipeline: coef / scale)."""
    for kind in PROBE_KINDS.values():
        if isinstance(est, kind.estimator):
            return kind.direction(est)
    raise InputError(f"no registered probe kind makes a {type(est).__name__}")


def fit_probe(kind: str, seed: int, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> Any:
    """Fit a probe; a kind with its own inner cross-validation (the logistic probe's choice of C) keeps each group
    (an item, whose word and deed rows are both in ``X``) on one side of every inner split."""
    spec = probe_kind(kind)
    est = spec.make(seed)
    if spec.grouped is not None and groups is not None:
        est = spec.grouped(est, X, y, groups)
    return est.fit(X, y)


def make_probe(kind: str, seed: int):
    """A fresh, seeded probe of a registered kind."""
    return probe_kind(kind).make(seed)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy (mean recall over classes), so 0.5 is chance however unbalanced the labels;
    plain accuracy when the test set holds one class only."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _chance_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """P(a == b) if a and b were independent with their observed class rates."""
    a, b = np.asarray(a), np.asarray(b)
    return float(sum(np.mean(a == c) * np.mean(b == c) for c in np.union1d(a, b)))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def check_folds(folds: int) -> None:
    """Refuse a number of cross-validation folds that cannot split (a clear error, not scikit-learn's traceback)."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"folds {folds!r}: cross-validation needs a whole number of at least 2 folds")


def item_folds(n_items: int, folds: int = 5, groups: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test item indices; an item (both its word and its deed prompt) sits on one side only, and so
    does every item of a group when ``groups`` is given (e.g. all personas' prompts on one proposition)."""
    check_folds(folds)
    groups = np.arange(n_items) if groups is None else np.asarray(groups)
    if len(groups) != n_items:
        raise InputError(f"{len(groups)} group labels for {n_items} items")
    if len(np.unique(groups)) < folds:
        raise InputError(f"{len(np.unique(groups))} groups of items cannot be split into {folds} folds")
    return list(GroupKFold(n_splits=folds).split(np.zeros(n_items), groups=groups))


@dataclass
class ProbeResults:
    """Per layer, probe kind and metric: one value per CV fold (``folds``) plus summaries."""

    records: list[dict[str, Any]] = field(default_factory=list)
    cs: float | None = None  # behavioural CS over the probed items
    layers: tuple[int, ...] = ()

    def add(self, **rec: Any) -> None:
        self.records.append(rec)

    def to_frame(self):
        """Tidy frame: layer, probe, metric, fold, value (fold = -1 for whole-data quantities)."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def summary(self):
        """Mean and standard error over folds, per layer x probe x metric."""
        df = self.to_frame()
        g = df.groupby(["layer", "probe", "metric"])["value"]
        out = g.agg(["mean", "std", "count"]).reset_index()
        out["sem"] = out["std"].fillna(0) / np.sqrt(out["count"])
        return out


def probe_layers(word: np.ndarray, deed: np.ndarray, y_word: np.ndarray, y_deed: np.ndarray, *,
                 letter_word: np.ndarray | None = None, letter_deed: np.ndarray | None = None,
                 layers: Sequence[int] | None = None, kinds: Sequence[str] = ("logreg", "diffmean"),
                 folds: int = 5, seed: int = 0, progress: bool = False, groups: Sequence | None = None) -> ProbeResults:
    """Probe every layer. ``word``/``deed``: ``(n_items, n_layers, d)``; labels: binary canonical stances.

    Metrics per fold (test items held out): ``word->word``, ``deed->deed``, ``word->deed``, ``deed->word``
    balanced accuracy; ``ic`` (a probe trained on both forms gives the same stance on an item's word and deed
    prompts) with ``ic_chance`` (the agreement its prediction rates alone would give) and ``cs`` (the
    behavioural CS of the same test items); on behaviourally inconsistent test items ``reads_word_stance`` (a word-trained probe reads
    the deed prompt as the *word* stance); controls ``letter`` (word+deed, the chosen letter) and
    ``random`` (word+deed with permuted stance labels). Whole-data: ``cosine`` between word and deed
    stance directions. ``groups``: items of one group never straddle train and test.
    """
    from tqdm.auto import tqdm

    word, deed = np.asarray(word), np.asarray(deed)
    y_word, y_deed = np.asarray(y_word).astype(int), np.asarray(y_deed).astype(int)
    n, L, _ = word.shape
    if deed.shape != word.shape or len(y_word) != n or len(y_deed) != n:
        raise InputError(f"word {word.shape} / deed {deed.shape} activations and labels ({len(y_word)}, {len(y_deed)}) "
                         "must describe the same items in the same order")
    layers = list(range(L)) if layers is None else list(layers)
    rng = np.random.default_rng(seed)
    y_rand = rng.permutation(np.concatenate([y_word, y_deed]))
    res = ProbeResults(cs=float(np.mean(y_word == y_deed)), layers=tuple(layers))
    splits = item_folds(n, folds, groups)
    item_groups = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(n)
    inconsistent = y_word != y_deed
    for li in tqdm(range(L), desc="probe layers", disable=not progress):
        layer = layers[li]
        Xw, Xd = word[:, li], deed[:, li]
        for kind in kinds:
            dirs = {}
            for form, X, y in (("word", Xw, y_word), ("deed", Xd, y_deed)):
                if len(np.unique(y)) == 2:
                    dirs[form] = probe_direction(fit_probe(kind, seed, X, y, item_groups))
            if len(dirs) == 2:
                res.add(layer=layer, probe=kind, metric="cosine", fold=-1, value=_cos(dirs["word"], dirs["deed"]))
            for f, (tr, te) in enumerate(splits):
                def fit(X, y, g):
                    return fit_probe(kind, seed, X, y, g) if len(np.unique(y)) == 2 else None

                pw, pd_ = fit(Xw[tr], y_word[tr], item_groups[tr]), fit(Xd[tr], y_deed[tr], item_groups[tr])
                if pw is not None:
                    res.add(layer=layer, probe=kind, metric="word->word", fold=f, value=accuracy(y_word[te], pw.predict(Xw[te])))
                    res.add(layer=layer, probe=kind, metric="word->deed", fold=f, value=accuracy(y_deed[te], pw.predict(Xd[te])))
                    bad = te[inconsistent[te]]
                    if len(bad):
                        res.add(layer=layer, probe=kind, metric="reads_word_stance", fold=f,
                                value=float(np.mean(pw.predict(Xd[bad]) == y_word[bad])))
                if pd_ is not None:
                    res.add(layer=layer, probe=kind, metric="deed->deed", fold=f, value=accuracy(y_deed[te], pd_.predict(Xd[te])))
                    res.add(layer=layer, probe=kind, metric="deed->word", fold=f, value=accuracy(y_word[te], pd_.predict(Xw[te])))
                both_X = np.concatenate([Xw[tr], Xd[tr]])
                both_groups = np.concatenate([item_groups[tr], item_groups[tr]])  # an item's two rows stay together
                shared = fit(both_X, np.concatenate([y_word[tr], y_deed[tr]]), both_groups)
                if shared is not None:
                    pw_te, pd_te = shared.predict(Xw[te]), shared.predict(Xd[te])
                    res.add(layer=layer, probe=kind, metric="ic", fold=f, value=float(np.mean(pw_te == pd_te)))
                    # agreement expected from the prediction rates alone (a probe that always says one
                    # class has IC 1): the chance level IC must beat, as in Cohen's kappa
                    res.add(layer=layer, probe=kind, metric="ic_chance", fold=f, value=_chance_agreement(pw_te, pd_te))
                    res.add(layer=layer, probe=kind, metric="cs", fold=f, value=float(np.mean(y_word[te] == y_deed[te])))
                rand = fit(both_X, np.concatenate([y_rand[:n][tr], y_rand[n:][tr]]), both_groups)
                if rand is not None:
                    # IC of a probe trained on random labels: how often *any* readout agrees across an
                    # item's two prompts because they share content (topic, options), not a stance
                    rw, rd = rand.predict(Xw[te]), rand.predict(Xd[te])
                    res.add(layer=layer, probe=kind, metric="ic_random", fold=f, value=float(np.mean(rw == rd)))
                    res.add(layer=layer, probe=kind, metric="ic_random_chance", fold=f, value=_chance_agreement(rw, rd))
                    test_X = np.concatenate([Xw[te], Xd[te]])
                    res.add(layer=layer, probe=kind, metric="random", fold=f,
                            value=accuracy(np.concatenate([y_rand[:n][te], y_rand[n:][te]]), rand.predict(test_X)))
                if letter_word is not None and letter_deed is not None:
                    lw, ld = np.asarray(letter_word).astype(int), np.asarray(letter_deed).astype(int)
                    lp = fit(both_X, np.concatenate([lw[tr], ld[tr]]), both_groups)
                    if lp is not None:
                        res.add(layer=layer, probe=kind, metric="letter", fold=f,
                                value=accuracy(np.concatenate([lw[te], ld[te]]), lp.predict(np.concatenate([Xw[te], Xd[te]]))))
    return res


def crossfit_directions(X: np.ndarray, y: np.ndarray, *, folds: int = 5, balance: np.ndarray | None = None,
                        stratify: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit difference-of-means stance directions per layer, cross-fitted by item.

    ``X``: ``(n_items, n_layers, d)``; ``y``: binary labels. Returns ``dirs`` ``(folds, n_layers, d)``
    (pointing from label 0 to label 1) and ``fold_of`` ``(n_items,)``: item i must only be touched with
    ``dirs[fold_of[i]]``, fitted without it, so an intervention never uses a direction that saw its item.
    ``gaps`` ``(folds, n_layers)``: the length of each mean difference (the natural unit of steering strength).
    ``balance``: a nuisance label per item (e.g. the answer letter); the difference of means is then taken
    within each nuisance group and averaged, so a nuisance correlated with ``y`` does not leak into the direction.
    ``stratify``: folds keep the label shares (deterministic, items in their given order), so a rare label still
    reaches every fold's training items.
    """
    check_folds(folds)
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
    if set(np.unique(y)) != {0, 1}:
        raise InputError(f"stance directions need both labels 0 and 1, got {sorted(set(y.tolist()))}")
    fold_of = np.zeros(len(y), dtype=int)
    dirs = np.zeros((folds, X.shape[1], X.shape[2]))
    gaps = np.zeros((folds, X.shape[1]))
    splits = (list(StratifiedKFold(n_splits=folds).split(np.zeros(len(y)), y)) if stratify
              else item_folds(len(y), folds))
    for f, (tr, te) in enumerate(splits):
        fold_of[te] = f
        yt = y[tr]
        if len(np.unique(yt)) < 2:
            raise InputError(f"fold {f}: training items hold one label only; use fewer folds")
        if balance is None:
            diff = X[tr][yt == 1].mean(0) - X[tr][yt == 0].mean(0)
        else:
            bt = np.asarray(balance)[tr]
            parts = [X[tr][(yt == 1) & (bt == g)].mean(0) - X[tr][(yt == 0) & (bt == g)].mean(0)
                     for g in np.unique(bt) if ((yt == 1) & (bt == g)).any() and ((yt == 0) & (bt == g)).any()]
            if not parts:
                raise InputError(f"fold {f}: no nuisance group holds both labels; cannot balance the direction")
            diff = np.mean(parts, axis=0)
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        dirs[f] = diff / np.where(norm > 0, norm, 1.0)
        gaps[f] = norm[..., 0]
    return dirs, fold_of, gaps
