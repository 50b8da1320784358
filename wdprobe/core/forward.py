"""The forward runtime every stage shares: tokenising, length-sorted batches, last-position forwards.

Bridge forwards compute logits at every position unless told otherwise; on Gemma's 262k vocabulary that
is most of the cost, so :func:`forward_last` unembeds only the final position (a hook on
``unembed.hook_in``; STACK.md). Prompts are left-padded, so position -1 is every prompt's last real token.
These functions take a :class:`~wdprobe.core.model.LoadedModel`; the handle exposes them as methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from jaxtyping import Float, Int

from wdprobe.errors import InputError, PromptTooLongError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from wdprobe.core.model import LoadedModel

LAST_POSITION_HOOK = "unembed.hook_in"


def encode_prompts(tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str],
                   device: torch.device | str) -> dict[str, Int[torch.Tensor, "batch pos"]]:
    """Left-padded ``input_ids`` and ``attention_mask`` on ``device``, with BOS added once."""
    bos = getattr(tokenizer, "bos_token", None)
    # A chat template already writes BOS into the text; do not add a second one.
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def prompt_token_ids(tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's token ids as :func:`encode_prompts` gives them unpadded (BOS added unless the text has it)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    return [tokenizer.encode(p, add_special_tokens=add_special) for p in prompts]


def keep_last_position(resid: Float[torch.Tensor, "batch pos d_model"], hook: object) -> Float[torch.Tensor, "batch 1 d_model"]:
    """Forward hook on the unembedding input: keep only the final position."""
    return resid[:, -1:, :]


def forward_last(lm: "LoadedModel", input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
                 hooks: Sequence[tuple[str, object]] = ()) -> Float[torch.Tensor, "batch vocab"]:
    """Last-position logits ``[batch, vocab]`` of a left-padded batch under the given forward hooks
    (the unembedding runs on the final position only)."""
    hooks = list(hooks) + [(LAST_POSITION_HOOK, keep_last_position)]
    return lm.bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=hooks)[:, -1, :]


@torch.no_grad()
def last_token_logits(lm: "LoadedModel", prompts: Sequence[str]) -> Float[torch.Tensor, "prompt vocab"]:
    """Next-token logits after each prompt, ``[len(prompts), vocab]``, for one left-padded batch."""
    if lm.tokenizer.padding_side != "left":
        raise InputError("the tokenizer must pad on the left so that position -1 is every prompt's last token")
    enc = encode_prompts(lm.tokenizer, prompts, lm.device)
    return forward_last(lm, enc["input_ids"], enc["attention_mask"])


def token_logprobs(logits: Float[torch.Tensor, "... vocab"], ids: torch.Tensor) -> Float[torch.Tensor, "... n_ids"]:
    """Log-probabilities of the tokens ``ids`` under ``logits`` (float32), without a second vocabulary-wide tensor:
    one logsumexp pass instead of a full log-softmax (on a 262k vocabulary, 1 MB a position saved)."""
    logits = logits.float()
    return logits[..., ids] - torch.logsumexp(logits, dim=-1, keepdim=True)


def default_batch_tokens(device: torch.device | str) -> int | None:
    """Padded-token budget per batch. On CPU, batches of ~1.5k tokens run ~15% faster than 32 prompts of
    ~100 tokens (less padding, better cache use; see docs/benchmarks.md); on GPUs the cap is the batch size."""
    return 1536 if str(device).startswith("cpu") else None


BATCH_OVERHEAD_TOKENS = 128
"""What one extra forward costs on CPU, in padded tokens' worth of compute (hooks, per-call Python, small-matrix
inefficiency); the batch planner splits a batch only where that saves more padding than this."""


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int,
                 overhead_tokens: int = BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Index batches (longest first) of at most ``batch_size`` entries and ``max_batch_tokens`` padded tokens
    that minimise padded tokens plus ``overhead_tokens`` per batch (dynamic programming over the length-sorted
    entries: a batch is a run of neighbours, padded to its first). A greedy fill pads a run of short entries
    up to one long one; this splits where lengths jump."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of batching the first j sorted entries
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(-1, j - 1 - batch_size), -1):  # last batch = sorted[i:j], padded to sorted[i]
            size = (j - i) * lengths[order[i]]
            if size > max_batch_tokens and j - i > 1:
                break
            cost = best[i] + size + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[cut[j]: j])
        j = cut[j]
    return out[::-1]


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> Iterator[list[int]]:
    """Index batches sorted by length (longest first), at most ``batch_size`` entries and, when given, at
    most ``max_batch_tokens`` padded tokens each, so padding (wasted compute) stays small: with a token budget
    (CPU) the batches are planned to minimise padding (:func:`plan_batches`); without one (GPU) they are filled
    greedily to ``batch_size``."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    if max_batch_tokens is not None:
        yield from plan_batches(lengths, batch_size, max_batch_tokens)
        return
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for k in range(0, len(order), batch_size):
        yield order[k: k + batch_size]


def iter_batches(lm: "LoadedModel", prompts: Sequence[str], batch_size: int, max_batch_tokens: int | None = None) -> Iterator[list[int]]:
    """:func:`length_batches` over the prompts' token lengths; a prompt longer than the model's context is
    refused (its answer would be read off a truncated or extrapolated sequence)."""
    lengths = [len(lm.tokenizer.encode(p)) for p in prompts]
    limit = lm.context_length
    if limit is not None and lengths and max(lengths) > limit:
        k = max(range(len(lengths)), key=lengths.__getitem__)
        raise PromptTooLongError(f"a prompt of {lengths[k]} tokens is longer than {lm.name}'s context of {limit} "
                                 f"(it begins {prompts[k][:80]!r}); shorten it or leave the item out", prompts[k])
    return length_batches(lengths, batch_size, max_batch_tokens)
