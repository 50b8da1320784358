"""TODO docstring (scoring)"""
from __future__ import annotations

from typing import Iterator, Sequence
import torch

LAST_POSITION_HOOK = "unembed.hook_in"


def encode_prompts(tokenizer, prompts: Sequence[str], device) -> dict[str, torch.Tensor]:
    bos = getattr(tokenizer, "bos_token", None)
    # A chat template already writes BOS into the text; do not add a second one.
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def keep_last_position(resid: torch.Tensor, hook) -> torch.Tensor:
    return resid[:, -1:, :]


def forward_last(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, hooks=()) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of a left-padded batch under the given forward hooks
    (the unembedding runs on the final position only)."""
    hooks = list(hooks) + [(LAST_POSITION_HOOK, keep_last_position)]
    return lm.bridge.run_with_hooks(input_ids, attention_mask=attention_mask, fwd_hooks=hooks)[:, -1, :]


@torch.no_grad()
def last_token_logits(lm, prompts: Sequence[str]) -> torch.Tensor:
    """Next-token logits after each prompt, ``[len(prompts), vocab]``, for one left-padded batch."""
    if lm.tokenizer.padding_side != "left":
        raise ValueError("the tokenizer must pad on the left so that position -1 is every prompt's last token")
    enc = encode_prompts(lm.tokenizer, prompts, lm.device)
    return forward_last(lm, enc["input_ids"], enc["attention_mask"])


def default_batch_tokens(device) -> int | None:
    """Padded-token budget per batch. On CPU, batches of ~1.5k tokens run ~15% faster than 32 prompts of
    ~100 tokens (less padding, better cache use; see docs/benchmarks.md); on GPUs the cap is the batch size."""
    return 1536 if str(device).startswith("cpu") else None


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> Iterator[list[int]]:
    """Index batches sorted by length (longest first), at most ``batch_size`` entries and, when given, at
    most ``max_batch_tokens`` padded tokens each, so padding (wasted compute) stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        full = len(batch) == batch_size or (
            max_batch_tokens is not None and batch and (len(batch) + 1) * lengths[batch[0]] > max_batch_tokens)
        if full:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def iter_batches(lm, prompts: Sequence[str], batch_size: int, max_batch_tokens: int | None = None) -> Iterator[list[int]]:
    """:func:`length_batches` over the prompts' token lengths."""
    return length_batches([len(lm.tokenizer.encode(p)) for p in prompts], batch_size, max_batch_tokens)
