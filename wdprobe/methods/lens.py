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
from typing import Any, Sequence

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
                g["item_divergence_layer_median"] = float(np.nanmedian(d))
                g["item_divergence_layer_hist"] = {int(l): int((d == l).sum()) for l in self.layers}
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
