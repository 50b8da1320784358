"""Free-text generation that works on a TransformerBridge-loaded model.

The bridge swaps each Hugging Face attention module for its own wrapper, and that wrapper ignores
``past_key_values``: ``bridge.original_model.generate`` then conditions every new token on nothing but
itself after the first step and produces garbage (``" the\n\\\\..."`` on Gemma-3-270M; measured: the
cached next-token logits differ from a full forward by 22 nats). :func:`plain_twin` rebuilds the plain
Hugging Face model *on the same weight tensors* (no copy, no reload), whose KV cache works.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from wdprobe.core.forward import encode_prompts, iter_batches
from wdprobe.errors import ModelLoadError

WRAPPER = "._original_component"


def _plain_key(key: str) -> str:
    return key.replace(WRAPPER, "")


def plain_twin(lm):
    """A plain ``AutoModelForCausalLM`` sharing every parameter tensor with ``lm``'s bridge (cached on ``lm``)."""
    cached = lm.plain_cache.get("twin")
    if cached is not None:
        return cached
    from transformers import AutoModelForCausalLM

    src = lm.hf_model
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(src.config, dtype=next(src.parameters()).dtype)
    wanted = set(twin.state_dict().keys())
    shared = {}
    for key, tensor in src.state_dict(keep_vars=True).items():
        plain = _plain_key(key)
        if plain in wanted and plain not in shared:
            shared[plain] = tensor
    missing = wanted - set(shared)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if missing - tied:
        raise ModelLoadError(f"cannot rebuild a plain twin of {lm.name!r}: no bridge tensor for {sorted(missing - tied)[:5]}")
    twin.load_state_dict(shared, strict=False, assign=True)
    if tied:
        twin.tie_weights()
    # non-persistent buffers (rotary inverse frequencies) are not in the state dict: share the bridge's
    for key, buf in src.named_buffers():
        plain = _plain_key(key)
        owner, _, name = plain.rpartition(".")
        try:
            module = twin.get_submodule(owner)
        except AttributeError:
            continue
        if name in module._buffers:
            module._buffers[name] = buf
    left = [n for n, b in twin.named_buffers() if b.is_meta]
    if left:
        raise ModelLoadError(f"cannot rebuild a plain twin of {lm.name!r}: buffers {left[:5]} have no bridge counterpart")
    twin.eval()
    lm.plain_cache["twin"] = twin
    return twin


@torch.no_grad()
def generate_texts(lm, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 16,
                   no_repeat_ngram_size: int = 0, on_batch: Callable[[list[int], list[str]], None] | None = None
                   ) -> list[str]:
    """Greedy continuations of each prompt (new text only), batched by length with left padding.

    ``on_batch(indices, texts)`` is called after each batch, so a caller can save progress as it goes.
    """

    twin = plain_twin(lm)
    tok = lm.tokenizer
    out = [""] * len(prompts)
    extra = {"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size else {}
    for idx in iter_batches(lm, prompts, batch_size):
        enc = encode_prompts(tok, [prompts[i] for i in idx], lm.device)
        gen = twin.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                            **extra)
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t
        if on_batch:
            on_batch(list(idx), list(texts))
    return out
