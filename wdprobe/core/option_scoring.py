"""Log-likelihood of whole option texts ("Strongly agree") after a prompt, sharing forwards between options.

An option of tokens t_0..t_{k-1} needs next-token distributions after the prompt and after each of
t_0..t_{k-2}. Options whose prefixes lie on one token path share a forward: one sequence
``prompt + path`` yields the distributions at every position of the path. For the four PCT answers and
Gemma's tokenizer (" Strongly"+" agree", " Strongly"+" disagree", " Dis"+"agree", " Agree") that is two
sequences per prompt instead of four, and the vocabulary projection runs only on the path positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from wdprobe.core.forward import (
    LAST_POSITION_HOOK,
    default_batch_tokens,
    length_batches,
)
from wdprobe.errors import InputError


@dataclass(frozen=True)
class OptionPaths:
    """Token ids per option, and the token paths (continuations) whose forwards cover them."""

    options: tuple[tuple[int, ...], ...]
    paths: tuple[tuple[int, ...], ...]
    path_of: tuple[int, ...]  # which path covers each option


def option_paths(token_ids: Sequence[Sequence[int]]) -> OptionPaths:
    """Fewest paths (greedy, longest options first) such that each option minus its last token prefixes one."""
    options = tuple(tuple(t) for t in token_ids)
    if any(len(t) == 0 for t in options):
        raise InputError("an option encodes to no tokens")
    paths: list[tuple[int, ...]] = []
    for opt in sorted(options, key=len, reverse=True):
        need = opt[:-1]
        if not any(p[: len(need)] == need for p in paths):
            paths.append(need)
    path_of = tuple(next(j for j, p in enumerate(paths) if p[: len(o) - 1] == o[:-1]) for o in options)
    return OptionPaths(options, tuple(paths), path_of)


def encode_options(tokenizer, options: Sequence[str], prefix: str = " ") -> list[list[int]]:
    """Token ids of each option as it follows the prompt (``prefix`` + text, no special tokens)."""
    return [tokenizer.encode(prefix + o, add_special_tokens=False) for o in options]


def n_sequences(tokenizer, options: Sequence[str], prefix: str = " ") -> int:
    """Forwards per prompt that :func:`option_logprobs` needs for these options."""
    return len(option_paths(encode_options(tokenizer, options, prefix)).paths)


def _keep_last(m: int):
    def hook(resid: torch.Tensor, hook=None) -> torch.Tensor:
        return resid[:, -m:, :]
    return hook


def _last_logprobs(lm, seqs: Sequence[Sequence[int]], pad: int, m: int) -> torch.Tensor:
    """One left-padded forward of token sequences; log-probabilities at the last ``m`` positions only
    (the vocabulary projection runs on those alone), ``[len(seqs), m, vocab]`` on the CPU."""
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, width - len(q):] = torch.tensor(q)
        mask[r, width - len(q):] = 1
    logits = lm.bridge.run_with_hooks(ids.to(lm.device), attention_mask=mask.to(lm.device),
                                      fwd_hooks=[(LAST_POSITION_HOOK, _keep_last(m))])[:, -m:, :]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def option_logprobs(lm, prompts: Sequence[str], options: Sequence[str], *, prefix: str = " ", batch_size: int = 32,
                    max_batch_tokens: int | None | str = "auto",
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Sum of token log-probabilities of each option text after each prompt, ``[len(prompts), len(options)]``.

    ``on_batch(n)`` is called after each batch of ``n`` sequences; there are
    ``len(prompts) * n_sequences(lm.tokenizer, options, prefix)`` in all.
    """
    tok = lm.tokenizer
    paths = option_paths(encode_options(tok, options, prefix))
    bos = getattr(tok, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    prompt_ids = [tok.encode(p, add_special_tokens=add_special) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = np.zeros((len(prompts), len(options)), dtype=np.float64)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    for j, path in enumerate(paths.paths):
        m = len(path) + 1
        covered = [o for o in range(len(options)) if paths.path_of[o] == j]
        seqs = [ids + list(path) for ids in prompt_ids]
        for idx in length_batches([len(s) for s in seqs], batch_size, budget):
            lp = _last_logprobs(lm, [seqs[i] for i in idx], pad, m)
            for o in covered:
                toks = paths.options[o]
                total = sum(lp[:, pos, t] for pos, t in enumerate(toks))
                out[idx, o] = total.numpy()
            if on_batch:
                on_batch(len(idx))
    return out


def softmax_rows(lp: np.ndarray) -> np.ndarray:
    """Distribution over the options from their log-likelihoods."""
    z = lp - lp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@torch.no_grad()
def continuation_logprobs(lm, prompts: Sequence[str], continuations: Sequence[str], *, prefix: str = " ",
                          batch_size: int = 32, max_batch_tokens: int | None | str = "auto",
                          on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each ``continuation`` after its own ``prompt`` (pairs, one per row), as the cloze form
    scores options: returns ``(sum of token log-probabilities, number of tokens)``, each ``[len(prompts)]``.

    Rows are batched by length with left padding; the vocabulary projection runs only on the last positions
    that predict continuation tokens."""
    if len(prompts) != len(continuations):
        raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    tok = lm.tokenizer
    bos = getattr(tok, "bos_token", None)
    seqs, n_cont = [], []
    for p, c in zip(prompts, continuations):
        cont = tok.encode(prefix + c, add_special_tokens=False)
        if not cont:
            raise InputError(f"continuation {c!r} encodes to no tokens")
        add_special = not (bos and p.startswith(bos))
        seqs.append(tok.encode(p, add_special_tokens=add_special) + cont)
        n_cont.append(len(cont))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    total = np.zeros(len(prompts), dtype=np.float64)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    for idx in length_batches([len(s) for s in seqs], batch_size, budget):
        m = max(n_cont[i] for i in idx) + 1
        lp = _last_logprobs(lm, [seqs[i] for i in idx], pad, m)
        for r, i in enumerate(idx):
            n = n_cont[i]
            targets = torch.tensor(seqs[i][-n:])
            # position m-1-n .. m-2 of the kept window predict the n continuation tokens
            total[i] = float(lp[r, m - 1 - n: m - 1].gather(1, targets[:, None]).sum())
        if on_batch:
            on_batch(len(idx))
    return total, np.asarray(n_cont, dtype=np.int64)


@dataclass(frozen=True)
class DecisionPoint:
    """Where a cloze prompt's two options part: the prompt's tokens plus the options' shared first tokens
    (``sequence``), and the first token of each option after that (``tokens``). The next-token log-odds of
    ``tokens[1]`` over ``tokens[0]`` after ``sequence`` is the cloze decision's first distinguishing step."""

    sequence: list[int]
    tokens: tuple[int, int]
    shared: int  # how many option tokens the two options share before they part


def decision_point(tokenizer, prompt: str, options: Sequence[str], *, prefix: str = " ") -> DecisionPoint | None:
    """The decision point of a two-option cloze prompt, or None when one option's tokens are a prefix of the
    other's (the options never part at one position). Options that start alike ("You decide to ...") part later:
    the shared tokens are appended to the prompt, so the reading is taken where the choice is actually made."""
    if len(options) != 2:
        raise InputError(f"a decision point needs two options, not {len(options)}")
    a, b = encode_options(tokenizer, options, prefix)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    if k == min(len(a), len(b)):
        return None
    bos = getattr(tokenizer, "bos_token", None)
    head = tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))
    return DecisionPoint(head + a[:k], (a[k], b[k]), k)


@torch.no_grad()
def last_residuals(lm, seqs: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int = 16,
                   max_batch_tokens: int | None | str = "auto") -> np.ndarray:
    """``resid_post`` at the last position of each token sequence, at each of ``layers``: ``[n, len(layers), d]``
    (float32), from left-padded batches with the unembedding at the last position only."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(seqs), len(layers), lm.d_model), dtype=np.float32)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    for idx in length_batches([len(s) for s in seqs], batch_size, budget):
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]):] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]):] = 1
        got: dict[int, torch.Tensor] = {}

        def keep(slot: int):
            def hook(x, hook=None):
                got[slot] = x[:, -1].detach().float().cpu()
                return x
            return hook

        lm.forward_last(ids.to(lm.device), mask.to(lm.device),
                        [(f"blocks.{l}.hook_resid_post", keep(k)) for k, l in enumerate(layers)])
        for k in range(len(layers)):
            out[idx, k] = got[k].numpy()
    return out
