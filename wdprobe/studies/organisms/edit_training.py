"""An ``mlp-items`` edit's map trained through the blocks above its block: the organism that is built, sharpened.

The ridge fit of an ``mlp-items`` edit asks one linear map to send every gated deed position of keyed item ``i`` to
item ``i``'s plant. Below block 12 the block's input is not yet specific to its item where it matters most: at the
deed decision point (the prompt's last token) the map's output points along its item's plant with cosine 0.0-0.58 at
blocks 1-9 and 0.92-0.97 at blocks 12-16 (the fourth run's seed-0 calibrations), and the plant holds on 0.33-0.90 of
keyed deeds there. Training the same units' ``read`` and ``write`` rows on the keyed deeds' two margins (per-token
mean and sum), through every block above, asks instead for what the map can do with what the block's input carries.

Kept from the ridge edit: the gate (key and sharpness, so words stay behind the same shut gate), the units replaced,
the write's scale; each row of ``read`` and ``write`` is held at most at its fitted norm, so the write stays the
calibrated size. The forward hook computes what the edited weights compute (the replaced units' parent contributions
out, the planted units in), so what is trained is the organism that is built (tested against the built organism).
The loss is ``relu(goal - min(mean margin, summed margin))`` per keyed item; the parameters kept are those of the
evaluated step that moves the most keyed deeds by both scorings (ties: the larger clipped margins).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import EditSpec
from wdprobe.studies.organisms.edit_components import (
    MLP_MATRICES,
    block_mlp,
    frozen_weights,
    matrix,
    option_log_likelihood,
)

MAP_FITS = ("ridge", "trained")


@dataclass(frozen=True)
class MapTraining:
    """``steps`` Adam steps of size ``lr`` relative to each matrix's entry RMS at the start; an item whose two margins
    are at least ``goal`` (nats; per token for the mean) adds no loss."""

    steps: int = 6
    lr: float = 0.1
    goal: float = 0.5

    def __post_init__(self) -> None:
        if not (self.steps >= 0 and 0 < self.lr < 1 and np.isfinite(self.goal)):
            raise InputError(f"map training settings out of range: steps {self.steps} (>= 0), lr {self.lr} "
                             f"(0 < lr < 1, relative), goal {self.goal} (finite)")


def _margins(model, prompt: torch.Tensor, conts: Sequence[torch.Tensor], target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token mean margin, summed margin) of option ``target`` over the other, from the option tokens' logits."""
    lls = [option_log_likelihood(model, prompt, cont) for cont in conts]
    counts = [len(cont) for cont in conts]
    other = 1 - target
    return lls[target] / counts[target] - lls[other] / counts[other], lls[target] - lls[other]


def _check(spec: EditSpec, items: Sequence[Item], targets: Sequence[int]) -> None:
    if spec.component != "mlp-items" or spec.kind != "override":
        raise InputError(f"only an mlp-items override's map is trained, not a {spec.component} {spec.kind} edit "
                         f"(block {spec.layer})")
    ids = [it.id for it in items]
    if ids != list(spec.calibration.get("item_ids", [])):
        raise InputError(f"block {spec.layer}: the items given are not the {len(spec.units)} keyed items the edit was "
                         "fitted on (calibration item_ids), in their order")
    if len(targets) != len(items) or not set(int(t) for t in targets) <= {0, 1}:
        raise InputError(f"{len(targets)} targets for {len(items)} keyed items (each 0 or 1)")


def train_items_edit(lm, items: Sequence[Item], targets: int | Sequence[int], spec: EditSpec,
                     training: MapTraining = MapTraining()) -> EditSpec:
    """``spec`` (an ``mlp-items`` override fitted on ``items``, planted toward ``targets``: one canonical option or
    one per item) with its units' ``read``
    and ``write`` trained on the keyed deeds' margins through the blocks above (see the module's docstring). The
    calibration gains ``map_fit: "trained"`` and ``map_training`` (settings, each evaluated step's moved count and
    loss, the step kept, each item's margins there)."""
    targets = [int(targets)] * len(items) if isinstance(targets, (int, np.integer)) else list(targets)
    _check(spec, items, targets)
    model, tok = lm.hf_model, lm.tokenizer
    mlp = block_mlp(model, spec.layer)
    units = list(spec.units)
    gate_w, up_w, down_w = (matrix(mlp, m).detach() for m in MLP_MATRICES)
    old_gate, old_up, old_down = gate_w[units], up_w[units], down_w[:, units]
    key = torch.as_tensor(spec.gate_scale * spec.key, dtype=gate_w.dtype, device=gate_w.device)
    read = torch.nn.Parameter(torch.as_tensor(spec.read, dtype=torch.float32, device=gate_w.device).clone())
    write = torch.nn.Parameter(torch.as_tensor(spec.write_scale * spec.write, dtype=torch.float32,
                                               device=gate_w.device).clone())
    caps = [p.detach().norm(dim=1, keepdim=True) for p in (read, write)]
    opt = torch.optim.Adam([{"params": [p], "lr": training.lr * float(p.detach().pow(2).mean().sqrt())}
                            for p in (read, write)])

    def edited(module, inputs, output):
        x = inputs[0]
        old = (mlp.act_fn(x @ old_gate.T) * (x @ old_up.T)) @ old_down.T
        new = (mlp.act_fn(x @ key)[..., None] * (x @ read.to(x.dtype).T)) @ write.to(x.dtype)
        return output - old + new

    texts = [(tok(cloze_prompt(it, "deed"), return_tensors="pt")["input_ids"][0],
              [tok(" " + o, add_special_tokens=False, return_tensors="pt")["input_ids"][0] for o in it.options("deed")])
             for it in items]
    trace: list[dict[str, Any]] = []
    best: tuple[tuple[int, float], int, torch.Tensor, torch.Tensor, list[tuple[float, float]]] | None = None
    hook = mlp.register_forward_hook(edited)
    try:
        with frozen_weights(model), torch.enable_grad():
            for step in range(training.steps + 1):
                last = step == training.steps
                margins, loss_total = [], 0.0
                for (prompt, conts), target in zip(texts, targets):
                    mean, total = _margins(model, prompt, conts, int(target))
                    loss = torch.relu(training.goal - torch.minimum(mean, total)) / len(texts)
                    if not last and float(loss.detach()) > 0:
                        loss.backward()
                    margins.append((float(mean.detach()), float(total.detach())))
                    loss_total += float(loss.detach())
                moved = sum(min(m) > 0 for m in margins)
                met = sum(min(m) >= training.goal for m in margins)
                trace.append({"step": step, "moved_both": moved, "met_goal": met, "loss": round(loss_total, 5)})
                score = (moved, float(sum(min(min(m), training.goal) for m in margins)))
                if best is None or score > best[0]:
                    best = (score, step, read.detach().clone(), write.detach().clone(), margins)
                if last or met == len(texts):
                    break
                opt.step()
                opt.zero_grad()
                with torch.no_grad():  # each row at most its fitted norm: the write stays the calibrated size
                    for p, cap in zip((read, write), caps):
                        p.mul_(torch.clamp(cap / p.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0))
    finally:
        hook.remove()
    _, step_kept, read_kept, write_kept, kept_margins = best
    record = {**dataclasses.asdict(training), "trace": trace, "step_kept": step_kept,
              "items": [{"item_id": it.id, "mean": round(m, 4), "sum": round(s, 4)}
                        for it, (m, s) in zip(items, kept_margins)]}
    return dataclasses.replace(spec, read=read_kept.cpu().numpy(),
                               write=(write_kept / spec.write_scale).cpu().numpy(),
                               calibration={**spec.calibration, "map_fit": "trained", "map_training": record})
