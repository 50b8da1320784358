"""Letter-free behaviour: the option a model chooses by *content*, separated from the letter it says.

A model may answer a multiple-choice question by position. Presenting the k options in several orders
(every cyclic shift: each option under each letter once; or all k! permutations) separates the two, as
PriDe does (Zheng et al., ICLR 2024): if the observed letter distribution factorises as
``p(letter j | order) ∝ prior[j] * content[order[j]]``, then averaging log-probabilities over orders gives

- the *content distribution*: for each canonical option, the mean over orders of its (letter-normalised)
  log-probability, renormalised — the prior cancels, since every option sat under every letter equally;
- the *letter prior*: for each letter position, the mean over orders of its log-probability, renormalised —
  the content cancels likewise.

Orders follow the rest of wdprobe: ``order[j]`` is the canonical option shown under letter j.
These are kernels (arrays in, arrays out); the stages that present every order build on them.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from wdprobe.errors import InputError

__all__ = ["cyclic_orders", "all_orders", "orders_for", "canonical_logprobs", "content_distribution", "letter_prior",
           "order_sensitive"]


def cyclic_orders(k: int) -> list[tuple[int, ...]]:
    """The k cyclic shifts of the canonical order: every option under every letter exactly once."""
    if k < 2:
        raise InputError(f"an item needs at least two options, not {k}")
    return [tuple((s + j) % k for j in range(k)) for s in range(k)]


def all_orders(k: int) -> list[tuple[int, ...]]:
    """All k! orders (for k = 4: 24), canonical order first."""
    if k < 2:
        raise InputError(f"an item needs at least two options, not {k}")
    return list(itertools.permutations(range(k)))


def orders_for(kind: str, k: int) -> list[tuple[int, ...]]:
    """Orders by name: ``cyclic`` (k shifts) or ``all`` (k! permutations)."""
    if kind == "cyclic":
        return cyclic_orders(k)
    if kind == "all":
        return all_orders(k)
    raise InputError(f"unknown orders {kind!r}: choose cyclic or all ('shown' is the one seeded order per item)")


def _check(letter_logprobs: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    lp = np.asarray(letter_logprobs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] != len(orders):
        raise InputError(f"letter log-probabilities {lp.shape} need one row per order ({len(orders)} orders)")
    k = lp.shape[1]
    for o in orders:
        if sorted(o) != list(range(k)):
            raise InputError(f"order {tuple(o)} is not a permutation of the {k} options")
    return lp


def _normalise(lp: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the last axis (log-softmax)."""
    m = lp.max(axis=-1, keepdims=True)
    return lp - (m + np.log(np.exp(lp - m).sum(axis=-1, keepdims=True)))


def canonical_logprobs(letter_logprobs: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Per order, the letter distribution (normalised over the k letters) mapped to canonical options:
    ``(n_orders, k)``, column c = log p(option c)."""
    lp = _normalise(_check(letter_logprobs, orders))
    out = np.empty_like(lp)
    for i, order in enumerate(orders):
        out[i, list(order)] = lp[i]
    return out


def content_distribution(letter_logprobs: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """The order-averaged distribution over canonical options (mean canonical log-probability over orders,
    renormalised): free of any letter preference when the orders put every option under every letter."""
    return np.exp(_normalise(canonical_logprobs(letter_logprobs, orders).mean(axis=0)))


def letter_prior(letter_logprobs: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """The model's preference for each letter position regardless of content (PriDe's prior): mean letter
    log-probability over orders, renormalised."""
    return np.exp(_normalise(_normalise(_check(letter_logprobs, orders)).mean(axis=0)))


def order_sensitive(letter_logprobs: np.ndarray, orders: Sequence[Sequence[int]]) -> bool:
    """Whether the chosen canonical option changes with the order of presentation."""
    return len(set(np.argmax(canonical_logprobs(letter_logprobs, orders), axis=1).tolist())) > 1
