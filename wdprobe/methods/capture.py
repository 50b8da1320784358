"""Capture kernels: which hooks, layers and positions to read (:class:`CaptureSpec`), where each
prompt's spans lie, and one batched forward that returns only those residuals (never a full cache).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from wdprobe.core.forward import (
    LAST_POSITION_HOOK,
    keep_last_position,
)
from wdprobe.core.vocab_reads import skip_unembedding
from wdprobe.errors import CaptureSpecError, InputError

HOOK_KINDS = ("resid_pre", "resid_mid", "resid_post")
MAX_OPTIONS = 4
POSITION_KINDS = ("last", "question_mean") + tuple(f"option{c}_last" for c in range(MAX_OPTIONS))
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}




@dataclass(frozen=True)
class CaptureSpec:
    """Which hooks (residual kinds x layers) and which position kinds to keep, and how to store them."""

    layers: tuple[int, ...]
    hooks: tuple[str, ...] = ("resid_post",)
    positions: tuple[str, ...] = ("last", "question_mean")
    storage_dtype: str = "float32"

    @classmethod
    def parse(cls, layers: str | Sequence[int] | None, n_layers: int, hooks: Sequence[str] = ("resid_post",),
              positions: Sequence[str] = ("last", "question_mean"), storage_dtype: str = "float32") -> "CaptureSpec":
        """``layers`` as ``"all"``/None, ``"0,4,8"``, ``"2-10"`` or a list; validated against ``n_layers``."""
        if layers is None or layers == "all":
            chosen = list(range(n_layers))
        elif isinstance(layers, str):
            chosen = []
            for part in filter(None, (p.strip() for p in layers.split(","))):
                m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
                if not m:
                    raise CaptureSpecError(f"cannot read layer selection {part!r} (use e.g. '0,4,8' or '2-10' or 'all')")
                a, b = int(m.group(1)), int(m.group(2) or m.group(1))
                chosen.extend(range(a, b + 1))
        else:
            chosen = [int(x) for x in layers]
        spec = cls(tuple(sorted(set(chosen))), tuple(hooks), tuple(positions), storage_dtype)
        spec.validate(n_layers)
        return spec

    def validate(self, n_layers: int) -> None:
        if not self.layers:
            raise CaptureSpecError("empty layer selection: choose at least one layer")
        bad = [l for l in self.layers if not 0 <= l < n_layers]
        if bad:
            raise CaptureSpecError(f"layer(s) {bad} out of range: the model has layers 0..{n_layers - 1}")
        if not self.hooks:
            raise CaptureSpecError("empty hook selection: choose from " + ", ".join(HOOK_KINDS))
        unknown = [h for h in self.hooks if h not in HOOK_KINDS]
        if unknown:
            raise CaptureSpecError(f"unknown hook(s) {unknown}: choose from {list(HOOK_KINDS)} "
                                   "(captured as blocks.{layer}.hook_{kind})")
        if not self.positions:
            raise CaptureSpecError("empty position selection: choose from " + ", ".join(POSITION_KINDS))
        unknown = [p for p in self.positions if p not in POSITION_KINDS]
        if unknown:
            raise CaptureSpecError(f"unknown position kind(s) {unknown}: choose from {list(POSITION_KINDS)}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise CaptureSpecError(f"storage dtype {self.storage_dtype!r}: choose from {list(STORAGE_DTYPES)}")

    def hook_names(self) -> list[str]:
        return [f"blocks.{l}.hook_{h}" for h in self.hooks for l in self.layers]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PromptSpans:
    """Character spans inside one prompt: the question, and each canonical option's text."""

    question: tuple[int, int]
    options: tuple[tuple[int, int], ...]  # canonical order


def prompt_spans(prompt: str, question: str, option_lines: Sequence[tuple[str, str]], order: Sequence[int]) -> PromptSpans:
    """Locate the (last occurrence of the) question and its option texts in a prompt.

    ``option_lines`` are (label, text) in presented order; ``order[j]`` is the canonical option of letter j.
    """
    q0 = prompt.rfind(question)
    if q0 < 0:
        raise InputError("question text not found in prompt")
    spans: dict[int, tuple[int, int]] = {}
    cursor = q0
    for j, (label, text) in enumerate(option_lines):
        line = f"{label}. {text}"
        at = prompt.find(line, cursor)
        if at < 0:
            raise InputError(f"option {label} not found in prompt")
        start = at + len(label) + 2
        spans[order[j]] = (start, start + len(text))
        cursor = start + len(text)
    return PromptSpans((q0, q0 + len(question)), tuple(spans[c] for c in range(len(order))))


def presentation_spans(pres, form: str, prompt: str) -> PromptSpans:
    """Spans of a presented item's question and options inside the prompt built from it."""
    order = pres.order(form)
    lines = [(chr(65 + j), pres.item.options(form)[c]) for j, c in enumerate(order)]
    return prompt_spans(prompt, pres.question(form), lines, order)


def token_positions(offsets: Sequence[tuple[int, int]], spans: PromptSpans) -> dict[str, Any]:
    """Token indices (unpadded) for each position kind, from a fast tokenizer's offset mapping."""
    def covering(char_end: int) -> int:
        # the token that holds the span's last character
        for t in range(len(offsets) - 1, -1, -1):
            s, e = offsets[t]
            if s <= char_end - 1 < e:
                return t
        raise InputError(f"no token covers character {char_end - 1}")

    q0, q1 = spans.question
    q_tokens = [t for t, (s, e) in enumerate(offsets) if e > s and s < q1 and e > q0]
    return {"last": len(offsets) - 1, "question": q_tokens, "options": [covering(e) for _, e in spans.options]}


def _encode_with_offsets(tokenizer, prompts: Sequence[str], device):
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special,
                    return_offsets_mapping=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), enc["offset_mapping"].tolist()


def _batch_positions(mask: torch.Tensor, offsets: list, spans: Sequence[PromptSpans], n_options: Sequence[int]):
    """Per position kind, what to read from a ``[batch, T, d]`` residual under left padding."""
    b, T = mask.shape
    weights = torch.zeros(b, T)
    opt_idx = torch.zeros(b, MAX_OPTIONS, dtype=torch.long)
    opt_ok = torch.zeros(b, MAX_OPTIONS)
    for i in range(b):
        pad = T - int(mask[i].sum())
        pos = token_positions(offsets[i][pad:], spans[i])
        if not pos["question"]:
            raise InputError(f"prompt {i} of the batch: no token inside the question span")
        weights[i, [pad + t for t in pos["question"]]] = 1.0 / len(pos["question"])
        for c, t in enumerate(pos["options"][: n_options[i]]):
            opt_idx[i, c] = pad + t
            opt_ok[i, c] = 1.0
    return weights, opt_idx, opt_ok


@torch.no_grad()
def capture_batch(lm, prompts: Sequence[str], spans: Sequence[PromptSpans], n_options: Sequence[int],
                  spec: CaptureSpec) -> dict[str, torch.Tensor]:
    """Activations of one left-padded batch: ``{"{hook}/{position}": [batch, n_layers, d_model]}`` (float32)."""
    ids, mask, offsets = _encode_with_offsets(lm.tokenizer, prompts, lm.device)
    weights, opt_idx, opt_ok = _batch_positions(mask.cpu(), offsets, spans, n_options)
    weights, opt_idx, opt_ok = weights.to(lm.device), opt_idx.to(lm.device), opt_ok.to(lm.device)
    b = len(prompts)
    d = lm.d_model
    slot = {l: k for k, l in enumerate(spec.layers)}
    out = {f"{h}/{p}": torch.zeros(b, len(spec.layers), d, device=lm.device) for h in spec.hooks for p in spec.positions}
    rows = torch.arange(b, device=lm.device)

    def make_hook(kind: str, layer: int):
        def hook(x: torch.Tensor, hook=None):
            xf = x.float()
            k = slot[layer]
            for p in spec.positions:
                if p == "last":
                    v = xf[:, -1]
                elif p == "question_mean":
                    # accumulated in float64: a float32 sum's rounding follows the batch's padded length, so a shard
                    # (other batch mates) would differ from the unsharded capture in the last bit
                    v = torch.einsum("bt,btd->bd", weights.double(), x.double()).float()
                else:
                    c = int(p[len("option")])
                    v = xf[rows, opt_idx[:, c]] * opt_ok[:, c: c + 1]
                out[f"{kind}/{p}"][:, k] = v
            return x
        return hook

    hooks = [(f"blocks.{l}.hook_{h}", make_hook(h, l)) for h in spec.hooks for l in spec.layers]
    n_layers = lm.n_layers
    stop = max(spec.layers) + 1
    if stop < n_layers:
        lm.bridge.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks, stop_at_layer=stop)
    else:
        # no logits wanted: the unembedding gets no position (on a 262k vocabulary it costs ~60 ms a call on CPU)
        lm.bridge.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks + [(LAST_POSITION_HOOK, skip_unembedding)])
    return out


@torch.no_grad()
def last_token_readout(lm, prompts: Sequence[str], token_ids: Sequence[int] = (), *, layers: Sequence[int] | None = None,
                       hook: str = "resid_post", batch_size: int = 16, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
    """One pass for both sides of a prompt's answer: the next-token log-probabilities of ``token_ids``
    ``(n_prompts, len(token_ids))`` float64 and ``blocks.{l}.hook_{hook}`` at the last token
    ``(n_prompts, n_layers, d_model)`` float32; batched by length, unembedding at the last position only."""

    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    resid = np.zeros((len(prompts), len(layers), lm.d_model), dtype=np.float32)
    logprobs = np.zeros((len(prompts), len(token_ids)), dtype=np.float64)
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    for idx in lm.batches(prompts, batch_size):
        enc = lm.encode([prompts[i] for i in idx])
        got: dict[int, torch.Tensor] = {}

        def keep(layer):
            def fn(x, hook=None):
                got[layer] = x[:, -1].float().cpu()
                return x
            return fn

        hooks = [(f"blocks.{l}.hook_{hook}", keep(l)) for l in layers]
        logits = lm.bridge.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"],
                                          fwd_hooks=hooks + [(LAST_POSITION_HOOK, keep_last_position)])
        if len(ids):
            lp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
            logprobs[idx] = lp[:, ids].numpy()
        if layers:
            resid[idx] = torch.stack([got[l] for l in layers], dim=1).numpy()
        if on_batch:
            on_batch(len(idx))
    return logprobs, resid


def last_token_residuals(lm, prompts: Sequence[str], *, layers: Sequence[int] | None = None, hook: str = "resid_post",
                         batch_size: int = 16, on_batch=None) -> np.ndarray:
    """``blocks.{l}.hook_{hook}`` at each prompt's last token, ``(n_prompts, n_layers, d_model)`` float32,
    batched by length; the unembedding runs on the last position only."""
    return last_token_readout(lm, prompts, (), layers=layers, hook=hook, batch_size=batch_size, on_batch=on_batch)[1]


def position_weights(tokenizer, prompt: str, spans: PromptSpans, n_options: int,
                     positions: Sequence[str]) -> list[tuple[tuple[int, float], ...]]:
    """Per position kind, the (token position, weight) pairs :func:`capture_batch` reads in this prompt alone:
    the last token, a uniform mean over the question's tokens, or an option's last token (none when the item
    has fewer options: the capture stores zeros there)."""
    bos = getattr(tokenizer, "bos_token", None)
    enc = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)), return_offsets_mapping=True)
    pos = token_positions(enc["offset_mapping"], spans)
    if not pos["question"]:
        raise InputError(f"no token inside the question span of the prompt beginning {prompt[:60]!r}")
    out: list[tuple[tuple[int, float], ...]] = []
    for p in positions:
        if p == "last":
            out.append(((pos["last"], 1.0),))
        elif p == "question_mean":
            q = pos["question"]
            out.append(tuple((t, 1.0 / len(q)) for t in q))
        else:
            c = int(p[len("option")])
            out.append(((pos["options"][c], 1.0),) if c < n_options else ())
    return out
