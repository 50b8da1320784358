"""Which MLP units an edit can replace without tipping a word answer: each unit's removal, to first order, on every word
margin, relative to the margin.

An ``mlp-items`` edit replaces ``k`` units of block ``L``. Removing even the units quietest at their peak changes words
by itself below block 10 on Gemma-3-270M (5 of 40 keyed and 4-5 of 120 held-out words at blocks 3 and 8,
``reports/organisms/edited/early-blocks``): the parent's word answers are fragile (a tenth of margins below 0.03 nats
per token), so a small contribution can tip one. Size is not the question; the effect on the margins is. Removing unit
``u`` takes ``a_u(p) down_u`` off the MLP output at every position ``p``; to first order that moves a word margin ``m``
by ``-sum_p a_u(p) down_u . dm/dout(p)``. A unit's *word risk* is the largest such move relative to ``|m|`` over every
word prompt given and both scorings (per-token mean and sum): above 1, removing it alone would flip that word to first
order. One backward pass per word prompt and option gives every block's effects.
"""
from __future__ import annotations

from typing import Sequence

import torch

from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit_components import block_mlp, frozen_weights, matrix, option_log_likelihood


def removal_effects(lm, items: Sequence[Item], layers: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Per block: ``{"mean": [n_items, n_units], "sum": ..., "margin_mean": [n_items], "margin_sum": ...}``: the first-
    order change of each two-option item's word margin (option 0 over option 1) when each unit of the block's MLP is
    removed, and the margins themselves."""
    if any(it.n_options != 2 for it in items):
        raise InputError("word risk is measured on two-option items")
    model, tok = lm.hf_model, lm.tokenizer
    mlps = {L: block_mlp(model, L) for L in layers}
    downs = {L: matrix(m, "down_proj").detach().float() for L, m in mlps.items()}
    ups = {L: (matrix(m, "gate_proj").detach().float(), matrix(m, "up_proj").detach().float()) for L, m in mlps.items()}
    seen: dict[int, dict[str, torch.Tensor]] = {L: {} for L in layers}

    def capture(L):
        def hook(module, inputs, output):
            delta = torch.zeros_like(output, requires_grad=True)  # d(loss)/d(the MLP's output) lands in delta.grad
            seen[L].update(x=inputs[0].detach(), delta=delta)
            return output + delta
        return hook

    hooks = [m.register_forward_hook(capture(L)) for L, m in mlps.items()]
    per_option: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    logps, counts = [], []
    try:
        with frozen_weights(model), torch.enable_grad():
            for it in items:
                prompt = tok(cloze_prompt(it, "word"), return_tensors="pt")["input_ids"][0]
                for option in it.options("word"):
                    cont = tok(" " + option, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                    total = option_log_likelihood(model, prompt, cont)
                    total.backward()
                    logps.append(float(total.detach()))
                    counts.append(len(cont))
                    for L in layers:
                        x, grad = seen[L]["x"][0].float(), seen[L]["delta"].grad[0].float()
                        gate, up = ups[L]
                        acts = mlps[L].act_fn(x @ gate.T) * (x @ up.T)  # [pos, units]
                        # the option's log-likelihood change when unit u is removed: -sum_p a_u(p) down_u . grad(p)
                        per_option[L].append(-(acts * (grad @ downs[L])).sum(0).cpu())
    finally:
        for h in hooks:
            h.remove()
    lp, n = torch.tensor(logps).reshape(-1, 2), torch.tensor(counts, dtype=torch.float32).reshape(-1, 2)
    out = {}
    for L in layers:
        e = torch.stack(per_option[L]).reshape(len(items), 2, -1)
        out[L] = {"sum": e[:, 0] - e[:, 1], "mean": e[:, 0] / n[:, :1] - e[:, 1] / n[:, 1:],
                  "margin_sum": lp[:, 0] - lp[:, 1], "margin_mean": lp[:, 0] / n[:, 0] - lp[:, 1] / n[:, 1]}
    return out


def word_risk(effects: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per unit: its largest first-order word-margin change relative to the margin, over items and both scorings
    ([n_units]; a unit whose removal alone would flip some word to first order scores above 1)."""
    risks = [(effects[s].abs() / effects[f"margin_{s}"].abs().clamp_min(1e-6)[:, None]).amax(0) for s in ("mean", "sum")]
    return torch.maximum(*risks)
