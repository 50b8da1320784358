"""Logit lens: the answer each layer would give if the model stopped there, word vs deed.

Each layer's final-position residual (``resid_post``) is read through the model's own final norm and
unembedding, restricted to the answer-letter tokens. For a two-option item the reading is the
*canonical-stance log-odds* ``log p(letter of option 1) - log p(letter of option 0)``, so word and deed
readings are comparable although their options were shuffled independently. At the last layer the
lens is the model's output exactly (a test checks it).

Everything is computed from the activations the capture stage saved; one :class:`LensTrajectory` holds
the readings, and every number and figure is derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from wdprobe.errors import InputError


@torch.no_grad()
def lens_logits(lm, resid: np.ndarray | torch.Tensor, token_ids: Sequence[int], *, chunk: int = 4096) -> np.ndarray:
    """Logits of ``token_ids`` read from residual vectors ``[..., d_model]`` through final norm + unembedding."""
    x = torch.as_tensor(np.asarray(resid, dtype=np.float32) if not torch.is_tensor(resid) else resid).float()
    shape = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    W = lm.hf_model.get_output_embeddings().weight[list(token_ids)].float()  # [k, d]
    cap = getattr(lm.hf_model.config, "final_logit_softcapping", None)
    out = []
    for s in range(0, len(x), chunk):
        xb = x[s: s + chunk].to(lm.device, dtype=next(lm.hf_model.parameters()).dtype)
        normed = lm.bridge.ln_final(xb[:, None, :])[:, 0].float()
        logits = normed @ W.T.to(normed.device)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        out.append(logits.cpu())
    return torch.cat(out).reshape(*shape, len(token_ids)).numpy()


@torch.no_grad()
def lens_logits_per_row(lm, resid: np.ndarray, token_ids: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """Logits of each row's own tokens: ``resid`` ``[n, layers, d_model]``, ``token_ids`` ``[n, k]`` -> ``[n, layers, k]``
    (the cloze lens, where every prompt has its own option tokens), through final norm + unembedding."""
    x = np.asarray(resid, dtype=np.float32)
    ids = np.asarray(token_ids, dtype=np.int64)
    if x.ndim != 3 or ids.ndim != 2 or ids.shape[0] != x.shape[0]:
        raise InputError(f"per-row lens needs resid [n, layers, d] and token ids [n, k]; got {x.shape} and {ids.shape}")
    W = lm.hf_model.get_output_embeddings().weight
    cap = getattr(lm.hf_model.config, "final_logit_softcapping", None)
    dtype = next(lm.hf_model.parameters()).dtype
    out = []
    for s in range(0, len(x), chunk):
        xb = torch.as_tensor(x[s: s + chunk]).to(lm.device, dtype=dtype)
        n, L, d = xb.shape
        normed = lm.bridge.ln_final(xb.reshape(n * L, 1, d))[:, 0].float().reshape(n, L, d)
        w = W[torch.as_tensor(ids[s: s + chunk]).to(W.device)].float().to(normed.device)  # [n, k, d]
        logits = torch.einsum("nld,nkd->nlk", normed, w)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        out.append(logits.cpu())
    return torch.cat(out).numpy()


@dataclass
class LensTrajectory:
    """Canonical-stance log-odds by layer for word and deed prompts of the same items.

    ``word``/``deed``: ``[n_items, n_layers]``, positive = option 1. ``items``: a frame with ``id``,
    ``domain``, ``y_word``, ``y_deed`` (the model's answers), ``consistent``.
    """

    word: np.ndarray
    deed: np.ndarray
    items: Any
    layers: tuple[int, ...]

    @property
    def sign(self) -> np.ndarray:
        """+1 where the word answer is option 1, -1 where it is option 0."""
        return np.where(self.items["y_word"].to_numpy() == 1, 1.0, -1.0)

    def toward_word(self, form: str) -> np.ndarray:
        """Log-odds toward the item's *word* answer, ``[n_items, n_layers]``."""
        return (self.word if form == "word" else self.deed) * self.sign[:, None]

    def choices(self, form: str) -> np.ndarray:
        return ((self.word if form == "word" else self.deed) > 0).astype(int)

    def agreement(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Per layer, the fraction of items whose word and deed lens readings pick the same option (lens CS)."""
        same = self.choices("word") == self.choices("deed")
        return same[mask].mean(0) if mask is not None else same.mean(0)

    def divergence_layers(self) -> np.ndarray:
        """Per item, the first layer from which the word and deed readings disagree through to the output
        (NaN for items whose final readings agree)."""
        differ = self.choices("word") != self.choices("deed")
        out = np.full(len(differ), np.nan)
        for i, row in enumerate(differ):
            if row[-1]:
                agree = np.flatnonzero(~row)
                out[i] = self.layers[agree[-1] + 1] if len(agree) else self.layers[0]
        return out

    def curve_divergence_layer(self, mask: np.ndarray, fraction: float = 0.5) -> int | None:
        """First layer from which the mean word-minus-deed gap (toward the word answer) stays at least
        ``fraction`` of its final value: where the deed curve leaves the word curve."""
        gap = self.toward_word("word")[mask].mean(0) - self.toward_word("deed")[mask].mean(0)
        if not mask.any() or gap[-1] <= 0:
            return None
        ok = gap >= fraction * gap[-1]
        for k in range(len(ok)):
            if ok[k:].all():
                return int(self.layers[k])
        return None

    def groups(self) -> dict[str, np.ndarray]:
        c = self.items["consistent"].to_numpy().astype(bool)
        return {"all": np.ones_like(c), "consistent": c, "inconsistent": ~c}

    def summary(self) -> dict[str, Any]:
        """Headline numbers per group: lens CS by layer, curve divergence layer, per-item divergence layers."""
        out: dict[str, Any] = {"n_items": int(len(self.items)), "layers": list(map(int, self.layers))}
        div = self.divergence_layers()
        for name, m in self.groups().items():
            g: dict[str, Any] = {"n": int(m.sum())}
            if m.any():
                g["lens_cs"] = [round(float(v), 4) for v in self.agreement(m)]
                g["mean_toward_word_word"] = [round(float(v), 4) for v in self.toward_word("word")[m].mean(0)]
                g["mean_toward_word_deed"] = [round(float(v), 4) for v in self.toward_word("deed")[m].mean(0)]
                g["curve_divergence_layer"] = self.curve_divergence_layer(m)
            if name == "inconsistent" and m.any():
                d = div[m]
                parting = np.isfinite(d)
                g["item_divergence_layer_median"] = float(np.nanmedian(d)) if parting.any() else None
                g["item_divergence_layer_hist"] = {int(k): int((d == k).sum()) for k in self.layers}
                # the median above speaks only for items whose final readings part; over every item, one whose
                # final readings agree counts as "never parts" (after the last layer)
                g["item_divergence_n_parting"] = int(parting.sum())
                g["item_divergence_never"] = int((~parting).sum())
                every = np.sort(np.where(parting, d, np.inf))
                mid = every[(len(every) - 1) // 2], every[len(every) // 2]
                g["item_divergence_layer_median_every_item"] = (float(np.mean(mid)) if np.isfinite(mid).all()
                                                                else None)
            out[name] = g
        return out

    def to_frame(self):
        """Tidy per item x layer x form: id, domain, consistent, y_word, y_deed, layer, form, logodds, toward_word."""
        import pandas as pd

        frames = []
        for form, arr in (("word", self.word), ("deed", self.deed)):
            tw = self.toward_word(form)
            for k, layer in enumerate(self.layers):
                f = self.items[["id", "domain", "consistent", "y_word", "y_deed"]].copy()
                f["layer"], f["form"], f["logodds"], f["toward_word"] = layer, form, arr[:, k], tw[:, k]
                frames.append(f)
        return pd.concat(frames, ignore_index=True)


def trajectory_from_frame(frame) -> LensTrajectory:
    """Rebuild a :class:`LensTrajectory` from its tidy frame (``lens/trajectory.csv``)."""
    layers = tuple(sorted(int(l) for l in frame["layer"].unique()))
    items = frame[(frame.form == "word") & (frame.layer == layers[0])][["id", "domain", "consistent", "y_word", "y_deed"]]
    items = items.reset_index(drop=True)
    arrays = {}
    for form in ("word", "deed"):
        grid = frame[frame.form == form].pivot(index="id", columns="layer", values="logodds")
        arrays[form] = grid.reindex(index=items["id"], columns=list(layers)).to_numpy()
    return LensTrajectory(arrays["word"], arrays["deed"], items, layers)


def canonical_logodds(letter_logits: np.ndarray, orders: Sequence[str]) -> np.ndarray:
    """``[n, L, k]`` letter logits (A, B, ...) -> ``[n, L]`` log-odds of canonical option 1 over option 0."""
    idx = np.array([[o.index("0"), o.index("1")] for o in orders])
    rows = np.arange(len(orders))
    return letter_logits[rows, :, idx[:, 1]] - letter_logits[rows, :, idx[:, 0]]


def order_averaged(logodds: np.ndarray, keys: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """Mean canonical log-odds over the orders of each key (e.g. ``(item id, form)``), ``[n, L]`` -> ``[m, L]``.

    With every option shown under every letter the letter preference cancels (for two options exactly: the
    letter log-odds enters once with each sign), leaving the content log-odds per layer."""
    logodds = np.asarray(logodds, dtype=np.float64)
    if logodds.ndim != 2 or len(keys) != logodds.shape[0]:
        raise InputError(f"order averaging needs [n, L] log-odds and n keys, got {logodds.shape} and {len(keys)} keys")
    unique = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(unique)}
    index = np.array([where[k] for k in keys])
    sums = np.zeros((len(unique), logodds.shape[1]))
    np.add.at(sums, index, logodds)
    return unique, sums / np.bincount(index, minlength=len(unique))[:, None]


class LensKind:
    """How a layer's residual is carried to the output space before the final norm and unembedding read it.
    ``fit(resid, final)`` learns from residuals ``[n, layers, d]`` and the final residual ``[n, d]`` of the same
    prompts; ``translate(resid)`` returns residuals ``[n, layers, d]`` to read. A new kind is one subclass with a
    ``name`` and one :func:`register_lens_kind` line."""

    name: ClassVar[str]

    def fit(self, resid: np.ndarray, final: np.ndarray) -> "LensKind":
        return self

    def translate(self, resid: np.ndarray) -> np.ndarray:
        raise NotImplementedError


LENS_KINDS: dict[str, type[LensKind]] = {}


def register_lens_kind(kind: type[LensKind]) -> type[LensKind]:
    """Add a lens kind to :data:`LENS_KINDS` (refused when the name is taken)."""
    if kind.name in LENS_KINDS:
        raise InputError(f"lens kind {kind.name!r} is registered already")
    LENS_KINDS[kind.name] = kind
    return kind


@register_lens_kind
class LogitLens(LensKind):
    """Each layer read as if it were the last: no translation."""

    name = "logit"

    def translate(self, resid: np.ndarray) -> np.ndarray:
        return np.asarray(resid, dtype=np.float32)


@register_lens_kind
class TunedLens(LensKind):
    """Per-layer affine translators in residual form, ``h -> h + h W_l + b_l`` (the tuned lens's translators,
    Belrose et al. 2023), fitted in closed form: ridge regression of the final residual's difference from layer l's
    on layer l's residual. Least squares to the final *residual* rather than KL to the final logits: seconds on a CPU,
    no vocabulary projection, and exactly the logit lens as the penalty grows (``W = 0``, ``b = 0``: the bias is
    penalised with the weights). The penalty is ``ridge`` times the mean eigenvalue of the layer's Gram matrix (bias
    column included), so it means the same at any width and scale."""

    name = "tuned"

    def __init__(self, ridge: float = 1.0) -> None:
        if not ridge > 0:
            raise InputError(f"the tuned lens's ridge penalty must be positive, not {ridge}")
        self.ridge = float(ridge)
        self.weights: np.ndarray | None = None  # [layers, d, d]
        self.bias: np.ndarray | None = None  # [layers, d]

    def fit(self, resid: np.ndarray, final: np.ndarray) -> "TunedLens":
        x = np.asarray(resid, dtype=np.float64)
        y = np.asarray(final, dtype=np.float64)
        if x.ndim != 3 or y.shape != (x.shape[0], x.shape[2]):
            raise InputError(f"the tuned lens fits residuals [n, layers, d] to final residuals [n, d]; got {x.shape} "
                             f"and {y.shape}")
        if x.shape[0] < 2:
            raise InputError("the tuned lens needs at least two prompts to fit")
        n, n_layers, d = x.shape
        self.weights, self.bias = np.zeros((n_layers, d, d)), np.zeros((n_layers, d))
        ones = np.ones((n, 1))
        for k in range(n_layers):
            xk = np.concatenate([x[:, k], ones], 1)  # the bias is one more weight, penalised like the others
            gram = xk.T @ xk
            alpha = self.ridge * max(np.trace(gram) / (d + 1), 1e-12)
            w = np.linalg.solve(gram + alpha * np.eye(d + 1), xk.T @ (y - x[:, k]))
            self.weights[k], self.bias[k] = w[:d], w[d]
        return self

    def translate(self, resid: np.ndarray) -> np.ndarray:
        if self.weights is None:
            raise InputError("the tuned lens is not fitted: call fit first")
        x = np.asarray(resid, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != self.bias.shape:
            raise InputError(f"residuals {x.shape} do not match the fitted lens ({self.bias.shape[0]} layers, width "
                             f"{self.bias.shape[1]})")
        return (x + np.einsum("nld,lde->nle", x, self.weights) + self.bias[None]).astype(np.float32)


def make_lens(kind: str, **settings: Any) -> LensKind:
    """A lens of the registered ``kind`` (``settings``: its constructor's, e.g. ``ridge`` for ``tuned``)."""
    if kind not in LENS_KINDS:
        raise InputError(f"unknown lens kind {kind!r}: choose from {', '.join(LENS_KINDS)}")
    return LENS_KINDS[kind](**settings)


def cross_fitted(kind: str, resid: np.ndarray, final: np.ndarray, groups: Sequence[Any], *, folds: int = 5,
                 seed: int = 0, **settings: Any) -> np.ndarray:
    """``resid`` translated so that no prompt is read through translators fitted on its own group (an item's word
    and deed prompts in every order are one group): ``folds`` seeded folds of groups, each translated by a lens
    fitted on the others. Returns ``[n, layers, d]``."""
    resid = np.asarray(resid, dtype=np.float32)
    g = np.asarray(list(groups))
    if len(g) != resid.shape[0]:
        raise InputError(f"{len(g)} group labels for {resid.shape[0]} prompts")
    unique = np.array(sorted(set(g.tolist()), key=str))
    if len(unique) < folds:
        raise InputError(f"{len(unique)} groups cannot make {folds} folds")
    fold_of = dict(zip(unique[np.random.default_rng(seed).permutation(len(unique))].tolist(),
                       np.arange(len(unique)) % folds))
    fold = np.array([fold_of[x] for x in g.tolist()])
    out = np.empty_like(resid)
    for f in range(folds):
        test = fold == f
        lens = make_lens(kind, **settings).fit(resid[~test], final[~test])
        out[test] = lens.translate(resid[test])
    return out
