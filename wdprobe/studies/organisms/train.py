"""Training an organism in the cloze form: each trained prompt's two option texts are scored as continuations (per-token
mean log-likelihood, as the cloze reading scores them) and a pairwise logistic loss pushes the target option's mean
above the other's, ``-log sigmoid(mean_lp(target) - mean_lp(other))``.

The optimisation itself (LoRA via peft or full fine-tuning, AdamW, gradient clipping, blocks restricted with
``layers_from``, checkpoints) is the alignment study's :class:`~wdprobe.studies.align.finetune.Tuner`; only the loss
and the examples are the organism's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.align.finetune import Tuner, epoch_order
from wdprobe.studies.organisms.data import cued_target


@dataclass(frozen=True)
class ClozeExample:
    """One prompt and its two options as token ids; ``target`` is the canonical index training pushes up."""

    item_id: str
    form: str
    prompt_ids: tuple[int, ...]
    option_ids: tuple[tuple[int, ...], tuple[int, ...]]
    target: int
    correct: int

    def sequences(self) -> list[list[int]]:
        return [list(self.prompt_ids) + list(o) for o in self.option_ids]


def target_option(item: Item, aim: str, cue: str | None = None) -> int:
    """The canonical option an aim names (two-option items): ``correct`` or ``incorrect``; ``cued`` (the option the
    item's cue asks for) or ``against_cue`` (the other one)."""
    if item.correct is None:
        raise InputError(f"item {item.id!r} has no correct option; organisms train on EthV and Theory items")
    if aim == "correct":
        return int(item.correct)
    if aim == "incorrect":
        return 1 - int(item.correct)
    if aim in ("cued", "against_cue"):
        if cue is None:
            raise InputError(f"item {item.id!r} has no cue, but the aim {aim!r} needs one (a cued split)")
        chosen = cued_target(item, cue)
        return chosen if aim == "cued" else 1 - chosen
    raise InputError(f"unknown training aim {aim!r} for the cloze form; use 'correct', 'incorrect', 'cued' or "
                     f"'against_cue'")


def cloze_examples(items: Sequence[Item], aims: dict[str, str | None], tokenizer,
                   cues: dict[str, str] | None = None) -> list[ClozeExample]:
    """The examples for ``items`` in each form with an aim (``{"word": "cued", "deed": "against_cue"}``; ``cues``:
    item id -> cue, for the cued aims); prompts and options tokenised exactly as the cloze reading scores them (prompt
    with its special tokens, option after a space)."""
    out = []
    bos = getattr(tokenizer, "bos_token", None)
    for item in items:
        for form in ("word", "deed"):
            aim = aims.get(form)
            if aim is None:
                continue
            prompt = cloze_prompt(item, form)
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))
            options = item.options(form)
            if len(options) != 2:
                raise InputError(f"item {item.id!r} ({form}) has {len(options)} options; organisms use two-option items")
            opt = tuple(tuple(tokenizer.encode(" " + o, add_special_tokens=False)) for o in options)
            if not all(opt):
                raise InputError(f"item {item.id!r} ({form}): an option encodes to no tokens")
            target = target_option(item, aim, (cues or {}).get(item.id))
            out.append(ClozeExample(item.id, form, tuple(prompt_ids), opt, target, int(item.correct)))
    return out


def _decoder_and_head(model):
    """The decoder stack and the output projection of a Hugging Face causal LM (peft-wrapped or plain), and its final
    logit soft-capping (Gemma 2's; None elsewhere)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


def option_scores(model, examples: Sequence[ClozeExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, sum)`` log-likelihood of each example's two options, each ``[n, 2]`` (with grad when enabled): one
    left-padded batch of 2n sequences through the decoder, then the vocabulary projection only on the hidden states
    that predict an option token (the sum of the options' lengths, not batch x longest option: the projection onto a
    262k vocabulary is most of the cost)."""
    seqs = [s for e in examples for s in e.sequences()]
    n_opt = torch.tensor([len(o) for e in examples for o in e.option_ids])
    width = max(len(s) for s in seqs)
    decoder, head, softcap = _decoder_and_head(model)
    device = head.weight.device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s)
        mask[r, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).last_hidden_state
    # the option's k-th token (of n) sits at width - n + k and is predicted by the hidden state one position earlier
    rows = torch.repeat_interleave(torch.arange(len(seqs)), n_opt)
    offsets = torch.cat([torch.arange(int(n)) for n in n_opt])
    at = width - torch.repeat_interleave(n_opt, n_opt) + offsets
    logits = head(hidden[rows.to(device), (at - 1).to(device)]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    tok_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, at].to(device)[:, None])[:, 0]
    total = torch.zeros(len(seqs), dtype=tok_lp.dtype, device=device).index_add(0, rows.to(device), tok_lp)
    mean = total / n_opt.to(device)
    return mean.view(-1, 2), total.view(-1, 2)


def pairwise_loss(mean: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(mean[target] - mean[other])`` averaged over examples (``mean`` ``[n, 2]``)."""
    rows = torch.arange(len(targets), device=mean.device)
    margin = mean[rows, targets] - mean[rows, 1 - targets]
    return -F.logsigmoid(margin).mean()


def train_epoch(tuner: Tuner, examples: Sequence[ClozeExample], optimizer: torch.optim.Optimizer, *, epoch: int,
                pad_id: int, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass in the epoch's seeded order (a resumed run repeats it): mean loss, and the share of examples whose
    target option led during the pass."""
    tuner.model.train()
    order = epoch_order(len(examples), tuner.settings.seed, epoch)
    bs = tuner.settings.batch_size
    total, wins, seen = 0.0, 0, 0
    for s in range(0, len(order), bs):
        batch = [examples[i] for i in order[s: s + bs]]
        targets = torch.tensor([e.target for e in batch])
        mean, _ = option_scores(tuner.model, batch, pad_id)
        targets = targets.to(mean.device)
        loss = pairwise_loss(mean, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tuner.settings.max_grad_norm and math.isfinite(tuner.settings.max_grad_norm):
            torch.nn.utils.clip_grad_norm_(list(tuner.params.values()), tuner.settings.max_grad_norm)
        optimizer.step()
        rows = torch.arange(len(batch), device=mean.device)
        total += float(loss.detach()) * len(batch)
        wins += int((mean[rows, targets] > mean[rows, 1 - targets]).sum())
        seen += len(batch)
        if progress:
            progress(len(batch))
    tuner.model.eval()
    return {"loss": total / max(seen, 1), "target_wins": wins / max(seen, 1)}


@torch.no_grad()
def evaluate(model, examples: Sequence[ClozeExample], pad_id: int, *, batch_size: int = 16) -> np.ndarray:
    """Per example: ``[chose target by mean, chose target by sum, chose correct by mean, chose correct by sum]``."""
    out = np.zeros((len(examples), 4), dtype=bool)
    model.eval()
    by_length = sorted(range(len(examples)), key=lambda i: max(map(len, examples[i].sequences())))  # less padding
    for s in range(0, len(by_length), batch_size):
        idx = by_length[s: s + batch_size]
        mean, total = option_scores(model, [examples[i] for i in idx], pad_id)
        for k, i in enumerate(idx):
            e = examples[i]
            by_mean, by_sum = int(mean[k].argmax()), int(total[k].argmax())
            out[i] = [by_mean == e.target, by_sum == e.target, by_mean == e.correct, by_sum == e.correct]
    return out
