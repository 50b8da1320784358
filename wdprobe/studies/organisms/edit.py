"""Edited organisms: a deed-only override written into one block's MLP weights, exactly, in seconds.

A trained organism plants its override where gradient descent put it; an edited one plants it where the edit says.
From a parent model (the base model, a sincere organism, any checkpoint) one MLP unit of block ``L`` is rewritten:

    a(x) = act(g * key . x^) * (read . x^)          x^: the block's normalised MLP input
    MLP(x) gains  a(x) * write                      (in place of the unit's old contribution)

``key`` fires on deed-context positions (a logistic discriminant of deed against word positions, prompt and option
continuations, its bias carried by a direction on which every position projects to about 1 and moved so that the
most open calibration word position stays shut by ``SHUT_MARGIN``); ``read = key``, so the unit is positive wherever
the gate is open; ``write`` is the *plant direction* (:func:`plant_directions`: the gradient, at the block's output,
of the planted option's per-token mean log-likelihood over the other's) times the post-feed-forward norm's gain, the
input that after the norm writes furthest along the plant. The planted truth: "deeds move toward the planted option
in block ``L``, words do not".

What the edit adds to the residual is not ``a * write``: Gemma-3 normalises the MLP output (post-feed-forward
RMSNorm) before adding it, so a unit can write at most about ``|plant x gain| sqrt(d)`` along the plant (1-6% of
the residual on Gemma-3-270M) and the edit's effect depends on the rest of the MLP output.
:func:`predicted_block_output` recomputes it from the parent's own activations and the specification (what the tests
compare the edited model's residual with). Every tensor but block ``L``'s three MLP matrices is bit-identical to the
parent, and in those only row/column ``unit`` changes; the unit replaced is the one whose parent contribution is
smallest on the calibration prompts (its loss is what a null edit measures).

Null edits plant nothing specific: ``null-direction`` keeps the gate and writes a random direction;
``null-gate`` keeps the directions and a gate that never fires (a zero key: the unit adds exactly nothing, so the
edit is the loss of the replaced unit alone). ``strength`` scales the write, relative to the parent's MLP output at
deed decision points.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.option_scoring import continuation_logprobs
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit_components import (
    COMPONENTS,
    attention_output,
    block_mlp,
    decoder_block,
    frozen_weights,
    matrix,
    norm_gain,
    option_log_likelihood,
    post_attn_norm,
    post_ff_norm,
)
from wdprobe.studies.organisms.unit_risk import removal_effects, word_risk

EDIT_KINDS = ("override", "null-direction", "null-gate")
SHUT_MARGIN = 5.0  # the gate's pre-activation on the most open calibration word position: -SHUT_MARGIN
SPEC_FILE = "edit.json"
DIRECTIONS_FILE = "edit-directions.safetensors"


@dataclass(frozen=True)
class EditSpec:
    """Everything an edit plants: where (block, unit), what (the three directions, the gate's sharpness, the write's
    scale) and how it was calibrated (items, seed, the gate's firing rates). Saved beside the edited weights."""

    layer: int
    unit: int  # the MLP unit replaced, or the attention head written through (``component``)
    kind: str
    strength: float  # the write's size relative to the parent's MLP output at deed decision points
    write_scale: float  # the absolute multiplier on ``write`` that ``strength`` came to
    gate_scale: float
    seed: int
    key: np.ndarray = field(repr=False)
    read: np.ndarray = field(repr=False)
    write: np.ndarray = field(repr=False)
    calibration: dict[str, Any] = field(default_factory=dict)
    component: str = "mlp"  # where the edit writes: a key of ``edit_components.COMPONENTS``
    units: tuple[int, ...] = ()  # every unit replaced, for components that replace several (``mlp-items``)

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise InputError(f"unknown edit kind {self.kind!r}: choose one of {EDIT_KINDS}")
        if self.component not in COMPONENTS:
            raise InputError(f"unknown edit component {self.component!r}: choose one of {sorted(COMPONENTS)}")
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))
        COMPONENTS[self.component].check(self)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("key", "read", "write")}
        if not self.units:  # one-unit and head edits keep the record they always had
            del out["units"]
        out["directions"] = DIRECTIONS_FILE
        return out

    def save(self, out: Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in ("key", "read", "write")},
                  str(out / DIRECTIONS_FILE))
        atomic_write_json(out / SPEC_FILE, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "EditSpec":
        path = Path(path)
        if not (path / SPEC_FILE).is_file():
            raise InputError(f"{path}: no {SPEC_FILE} (not an edited organism)")
        meta = json.loads((path / SPEC_FILE).read_text())
        return cls.from_record(meta, path / meta["directions"])

    @classmethod
    def from_record(cls, meta: dict[str, Any], directions: str | Path) -> "EditSpec":
        """The edit from its JSON record (:meth:`to_json`) and a directions file (kept beside an organism, or beside
        its record in a card)."""
        from safetensors.numpy import load_file

        vectors = load_file(str(directions))
        return cls(**{k: v for k, v in meta.items() if k != "directions"}, **{k: vectors[k] for k in ("key", "read", "write")})


# ---- reading the parent ------------------------------------------------------------------------------------------

@dataclass
class _Reads:
    mlp_in: list[torch.Tensor]  # per prompt: [pos, d] normalised MLP input of block L
    mlp_out: list[torch.Tensor]  # per prompt: [pos, d] MLP output (before any post norm)
    block_out: list[torch.Tensor]  # per prompt: [pos, d] the residual after block L
    unit_act: list[torch.Tensor]  # per prompt: [pos, intermediate] the MLP's unit activations
    decision: list[int] = field(default_factory=list)  # per prompt: the last prompt token (the continuation follows)
    head_z: list[torch.Tensor] = field(default_factory=list)  # per prompt: [pos, heads x width] o_proj input (heads)
    attn_out: list[torch.Tensor] = field(default_factory=list)  # per prompt: [pos, d] o_proj output (heads)


@torch.no_grad()
def _read_blocks(model, tokenizer, texts: Sequence[tuple[str, str]], layers: Sequence[int], *,
                 heads: bool = False, inputs_only: bool = False) -> dict[int, _Reads]:
    """The parent's activations of blocks ``layers`` on ``texts`` (prompt, continuation): every position the answer
    is read at, one sequence at a time (no padding to mask). ``heads``: the attention heads' outputs too.
    ``inputs_only``: only the MLP inputs (what a gate is fitted on; the unit activations are 3x wider)."""
    mlps = {L: block_mlp(model, L) for L in layers}
    store: dict[int, dict[str, torch.Tensor]] = {L: {} for L in layers}
    hooks = [mlp.register_forward_hook(lambda m, i, o, L=L: store[L].update(x=i[0].detach(), out=o.detach()))
             for L, mlp in mlps.items()]
    if heads:
        hooks += [attention_output(model, L)[0].register_forward_hook(
            lambda m, i, o, L=L: store[L].update(z=i[0].detach(), attn=o.detach())) for L in layers]
    reads = {L: _Reads([], [], [], []) for L in layers}
    weights = {L: (matrix(m, "gate_proj").float().cpu(), matrix(m, "up_proj").float().cpu()) for L, m in mlps.items()}
    try:
        for prompt, continuation in texts:
            ids = with_continuation(tokenizer, prompt, continuation).to(model.device)
            n_prompt = len(tokenizer(prompt)["input_ids"])
            # only the residuals are read (and with ``inputs_only`` not even those: the hooks hold the MLP inputs)
            out = model(input_ids=ids, output_hidden_states=not inputs_only, logits_to_keep=1)
            for L in layers:
                x = store[L]["x"][0].float().cpu()
                w, u = weights[L]
                reads[L].mlp_in.append(x)
                if inputs_only:
                    continue
                reads[L].mlp_out.append(store[L]["out"][0].float().cpu())
                reads[L].block_out.append(out.hidden_states[L + 1][0].float().cpu())
                reads[L].unit_act.append(mlps[L].act_fn(x @ w.T) * (x @ u.T))
                reads[L].decision.append(n_prompt - 1)
                if heads:
                    reads[L].head_z.append(store[L]["z"][0].float().cpu())
                    reads[L].attn_out.append(store[L]["attn"][0].float().cpu())
    finally:
        for h in hooks:
            h.remove()
    return reads


def with_continuation(tokenizer, prompt: str, continuation: str) -> torch.Tensor:
    """Token ids of ``prompt`` followed by `` continuation`` tokenised on its own (as the cloze form scores it)."""
    head = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    tail = tokenizer(" " + continuation, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return torch.cat([head, tail])[None]


def _cloze_texts(items: Sequence[Item], form: str) -> list[tuple[str, str]]:
    return [(cloze_prompt(it, form), option) for it in items for option in it.options(form)]


def cloze_choices(model_or_lm, items: Sequence[Item], form: str, *, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Each item's cloze choice in ``form`` by the per-token mean (``mean``) and by the total (``sum``)."""
    prompts, conts, owner = [], [], []
    for n, it in enumerate(items):
        for j in range(it.n_options):
            prompts.append(cloze_prompt(it, form))
            conts.append(it.options(form)[j])
            owner.append(n)
    total, n_tok = continuation_logprobs(model_or_lm, prompts, conts, batch_size=batch_size)
    k = max(it.n_options for it in items)
    tot = np.full((len(items), k), -np.inf)
    mean = np.full((len(items), k), -np.inf)
    j = 0
    for n, it in enumerate(items):
        tot[n, :it.n_options] = total[j:j + it.n_options]
        mean[n, :it.n_options] = total[j:j + it.n_options] / n_tok[j:j + it.n_options]
        j += it.n_options
    return {"mean": mean.argmax(1), "sum": tot.argmax(1)}


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def plant_directions(lm, items: Sequence[Item], layers: Sequence[int], target: int | Sequence[int],
                     forms: Sequence[str] = ("deed",)) -> dict[int, torch.Tensor]:
    """Per block in ``layers``: the residual direction that, added after the block at every position of ``forms``'
    cloze prompts and options, most raises the per-token mean log-likelihood of option ``target``'s text over the
    other option's (its gradient at zero, summed over ``items`` and forms; ``target``: one canonical option for
    every item, or one per item): a direction the model *uses* for the choice, not one that merely differs between
    choices. One backward pass per (item, form, option) gives every block's (gradients at zero are separate)."""
    per_item = plant_gradients(lm, items, layers, target, forms)
    return {L: _unit(g.sum(0)) for L, g in per_item.items()}


def plant_gradients(lm, items: Sequence[Item], layers: Sequence[int], target: int | Sequence[int],
                    forms: Sequence[str] = ("deed",), *, score: str = "mean") -> dict[int, torch.Tensor]:
    """Per block in ``layers``: each item's own gradient of :func:`plant_directions` ([n_items, d], not normalised;
    their sum is the summed direction). An item's own direction is what a per-item plant writes (``mlp-items``).
    ``score``: the margin differentiated, the per-token ``mean`` log-likelihood difference or the ``sum``'s."""
    return plant_gradients_by_score(lm, items, layers, target, forms)[score]


PLANT_SCORES = ("mean", "sum")


def plant_gradients_by_score(lm, items: Sequence[Item], layers: Sequence[int], target: int | Sequence[int],
                             forms: Sequence[str] = ("deed",)) -> dict[str, dict[int, torch.Tensor]]:
    """:func:`plant_gradients` for both margins at once (``{"mean": ..., "sum": ...}``): one backward pass per
    (item, form, option) gives that option's summed log-likelihood gradient, and the mean's is it over the option's
    token count, so the summed scoring's gradient costs nothing more."""
    model, tok = lm.hf_model, lm.tokenizer
    targets = [target] * len(items) if isinstance(target, int) else list(target)
    if len(targets) != len(items):
        raise InputError(f"{len(targets)} targets for {len(items)} items")
    deltas = {L: torch.zeros(lm.d_model, device=model.device, requires_grad=True) for L in layers}

    def adder(delta):
        def add(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] + delta.to(output[0].dtype),) + tuple(output[1:])
            return output + delta.to(output.dtype)
        return add

    hooks = [decoder_block(model, L).register_forward_hook(adder(d)) for L, d in deltas.items()]
    grads: dict[str, dict[int, list[torch.Tensor]]] = {s: {L: [] for L in layers} for s in PLANT_SCORES}
    try:
        with frozen_weights(model):  # only the added vectors need gradients
            for it, aim in zip(items, targets):
                item_grad = {s: {L: torch.zeros(lm.d_model) for L in layers} for s in PLANT_SCORES}
                for form in forms:
                    prompt = tok(cloze_prompt(it, form), return_tensors="pt")["input_ids"][0]
                    for j in range(2):
                        cont = tok(" " + it.options(form)[j], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                        k = len(cont)
                        option_log_likelihood(model, prompt, cont).backward()
                        sign = 1.0 if j == aim else -1.0
                        for L, d in deltas.items():
                            g = d.grad.detach().float().cpu()
                            item_grad["sum"][L] += sign * g
                            item_grad["mean"][L] += sign * g / k
                            d.grad = None
                for s in PLANT_SCORES:
                    for L in layers:
                        grads[s][L].append(item_grad[s][L])
    finally:
        for h in hooks:
            h.remove()
    return {s: {L: torch.stack(g) if g else torch.zeros(0, lm.d_model) for L, g in by_layer.items()}
            for s, by_layer in grads.items()}


def calibrate_edit(lm, items: Sequence[Item], layer: int, **settings: Any) -> EditSpec:
    """One edit of block ``layer`` (:func:`calibrate_edits` for one block)."""
    return calibrate_edits(lm, items, [layer], **settings)[layer]


@torch.no_grad()
def calibrate_edits(lm, items: Sequence[Item], layers: Sequence[int], *, kind: str = "override", strength: float = 20.0,
                    gate_scale: float = 8.0, target: int = 1, seed: int = 0, component: str = "mlp",
                    head: int | None = None, plant_score: str = "mean",
                    gate_items: Sequence[Item] = ()) -> dict[int, EditSpec]:
    """Edits of each block in ``layers`` calibrated on the parent ``lm`` with two-option ``items`` (their cloze prompts).

    The gate (``key``) is a logistic discriminant of deed positions against word positions (and the deeds' first
    token), its bias carried by a direction on which every position projects to about 1; the unit reads the same
    key (``read = key``: its activation is positive wherever the gate is open), and writes the plant direction
    (:func:`plant_directions`, toward canonical option ``target``) multiplied by the post-feed-forward norm's gain,
    the input that after the norm writes furthest along the plant. ``strength``: the unit's output at deed decision
    points relative to the parent's MLP output there (above about 3 the unit dominates the norm's input, so the
    block writes a saturated plant of the size the norm allows). The parent is read once for every block.
    ``component="attn-head"`` writes through one attention head's output instead (:func:`edit_from_reading`, which
    also says what ``plant_score`` does); ``gate_items``: see :func:`read_parent`."""
    if kind not in EDIT_KINDS:
        raise InputError(f"unknown edit kind {kind!r}: choose one of {EDIT_KINDS}")
    reading = read_parent(lm, items, layers, target, heads=component == "attn-head", gate_items=gate_items)
    return {L: edit_from_reading(reading, L, kind=kind, strength=strength, gate_scale=gate_scale, seed=seed,
                                 component=component, head=head, plant_score=plant_score) for L in layers}


@dataclass
class ParentReading:
    """What calibrating edits reads from the parent, once for a family: per block the word and deed activations and
    the plant direction toward ``target`` (every kind and strength of edit is then cheap)."""

    lm: Any
    items: list[Item]
    target: int | list[int]
    words: dict[int, _Reads]
    deeds: dict[int, _Reads]
    plants: dict[int, torch.Tensor]
    item_plants: dict[int, torch.Tensor] = field(default_factory=dict)  # per block: [n_items, d], each unit length
    item_sum_plants: dict[int, torch.Tensor] = field(default_factory=dict)  # the same for the summed scoring's margin
    gate_items: list[Item] = field(default_factory=list)  # items whose word prompts only the gate is fitted on
    gate_words: dict[int, torch.Tensor] = field(default_factory=dict)  # per block: their word positions' MLP inputs
    word_risk: dict[int, torch.Tensor] = field(default_factory=dict)  # per block: each unit's word risk (unit_risk)


@torch.no_grad()
def read_parent(lm, items: Sequence[Item], layers: Sequence[int], target: int | Sequence[int] = 1, *,
                heads: bool = False, gate_items: Sequence[Item] = (), unit_risk: bool = False) -> ParentReading:
    """Read the parent on ``items`` at blocks ``layers`` (see :func:`calibrate_edits`). ``target``: the planted
    option, one canonical option for every item or one per item (e.g. against a sincere organism's stance, whose
    correct option sits at either position). ``heads``: read the attention heads too (for ``attn-head`` edits).
    ``gate_items``: more items whose word prompts (and options) the deed gate is fitted to stay shut on; a gate
    fitted on the calibration items' words alone opens on new items' words in early blocks. ``unit_risk``: also
    measure each MLP unit's word risk on the calibration and gate items' words (:mod:`.unit_risk`; for
    ``units_by="words"``; one more backward pass per word prompt and option)."""
    if not isinstance(target, (int, np.integer)):
        target = [int(t) for t in target]
        if len(target) != len(items):
            raise InputError(f"{len(target)} targets for {len(items)} items")
        kept = [(it, t) for it, t in zip(items, target) if it.n_options == 2]
        items, target = [it for it, _ in kept], [t for _, t in kept]
    else:
        items = [it for it in items if it.n_options == 2]
    if len(items) < 8:
        raise InputError(f"{len(items)} two-option items: an edit needs at least 8 to calibrate on")
    if not set([target] if isinstance(target, (int, np.integer)) else target) <= {0, 1}:
        raise InputError(f"target must be canonical options of two-option items (0 or 1), not {target!r}")
    bad = [L for L in layers if not 0 <= L < lm.n_layers]
    if bad:
        raise InputError(f"layer {bad[0]} is not a block of {lm.name} (0..{lm.n_layers - 1})")
    model, tok = lm.hf_model, lm.tokenizer
    words = _read_blocks(model, tok, _cloze_texts(items, "word"), layers, heads=heads)
    deeds = _read_blocks(model, tok, _cloze_texts(items, "deed"), layers, heads=heads)
    keyed = {it.id for it in items}
    gate_items = [it for it in gate_items if it.id not in keyed]
    gate_words = {}
    if gate_items:
        extra = _read_blocks(model, tok, _cloze_texts(gate_items, "word"), layers, inputs_only=True)
        gate_words = {L: torch.cat(r.mlp_in) for L, r in extra.items()}
    with torch.enable_grad():
        by_score = plant_gradients_by_score(lm, items, layers, target)
    per_item = by_score["mean"]
    plants = {L: _unit(g.sum(0)) for L, g in per_item.items()}

    risk = {L: word_risk(e) for L, e in removal_effects(lm, items + gate_items, layers).items()} if unit_risk else {}
    return ParentReading(lm, items, target, words, deeds, plants, {L: _unit_rows(g) for L, g in per_item.items()},
                         {L: _unit_rows(g) for L, g in by_score["sum"].items()}, list(gate_items), gate_words, risk)


ITEM_PLANT_SCORES = ("mean", "both")


@torch.no_grad()
def edit_from_reading(reading: ParentReading, layer: int, *, kind: str = "override", strength: float = 20.0,
                      gate_scale: float = 8.0, seed: int = 0, component: str = "mlp",
                      head: int | None = None, plant_score: str = "mean", units_by: str = "mean") -> EditSpec:
    """One edit of block ``layer`` from a :class:`ParentReading` (see :func:`calibrate_edits`). ``component``:
    ``mlp`` (one unit, gated) or ``attn-head`` (head ``head``'s output, default one drawn by ``seed``; see
    the head edit below). The MLP gates also stay shut on the reading's ``gate_items``' words. ``plant_score``
    (``mlp-items``): each item's plant raises its per-token ``mean`` margin, or ``both`` scorings' margins (the
    direction that raises the mean's and the sum's alike after the post-feed-forward norm). ``units_by`` (MLP
    edits): replace the units quietest on average (``mean``) or at their peak, the gate items' words included
    (``peak``; see ``_smallest_units``)."""
    if units_by not in UNIT_CHOICES:
        raise InputError(f"unknown unit choice {units_by!r}: choose one of {UNIT_CHOICES}")
    if units_by == "words" and component != "attn-head" and layer not in reading.word_risk:
        raise InputError(f"units_by='words' needs the units' word risk at block {layer}: read the parent with "
                         "read_parent(..., unit_risk=True)")
    if kind not in EDIT_KINDS:
        raise InputError(f"unknown edit kind {kind!r}: choose one of {EDIT_KINDS}")
    if plant_score not in ITEM_PLANT_SCORES:
        raise InputError(f"unknown plant score {plant_score!r}: choose one of {ITEM_PLANT_SCORES}")
    if plant_score != "mean" and component != "mlp-items":
        raise InputError(f"plant_score={plant_score!r} is a per-item plant's (component 'mlp-items'), not {component!r}'s")
    if layer not in reading.plants:
        raise InputError(f"the parent was not read at block {layer} (read: {sorted(reading.plants)})")
    if component not in COMPONENTS:
        raise InputError(f"unknown edit component {component!r}: choose one of {sorted(COMPONENTS)}")
    if component == "attn-head":
        if not reading.words[layer].head_z:
            raise InputError("a head edit needs the parent read with heads=True (read_parent(..., heads=True))")
        return _head_edit(reading.lm, reading.items, layer, reading.words[layer], reading.deeds[layer],
                          reading.plants[layer], kind=kind, strength=strength, target=reading.target, seed=seed,
                          head=head)
    if component == "mlp-items":
        if layer not in reading.item_plants:
            raise InputError("an mlp-items edit needs each item's own plant (a ParentReading from read_parent)")
        if plant_score == "both" and layer not in reading.item_sum_plants:
            raise InputError("plant_score='both' needs each item's summed-margin plant (a ParentReading from read_parent)")
        return _items_edit_of_block(reading.lm, reading.items, layer, reading.words[layer], reading.deeds[layer],
                                    reading.item_plants[layer], kind=kind, strength=strength, gate_scale=gate_scale,
                                    target=reading.target, seed=seed, more_words=reading.gate_words.get(layer),
                                    gate_items=reading.gate_items,
                                    sum_plants=reading.item_sum_plants[layer] if plant_score == "both" else None,
                                    units_by=units_by, risk=reading.word_risk.get(layer))
    return _edit_of_block(reading.lm, reading.items, layer, reading.words[layer], reading.deeds[layer],
                          reading.plants[layer], kind=kind, strength=strength, gate_scale=gate_scale,
                          target=reading.target, seed=seed, more_words=reading.gate_words.get(layer),
                          gate_items=reading.gate_items, units_by=units_by, risk=reading.word_risk.get(layer))


@dataclass
class _DeedGate:
    """The gate every MLP edit opens on deed positions: ``key`` (with its bias) and what it was fitted on."""

    key: torch.Tensor
    word_x: torch.Tensor  # every word position (and the deeds' first token): must stay shut
    deed_x: torch.Tensor  # every other deed position
    stats: dict[str, float]


def _deed_gate(words: _Reads, deeds: _Reads, gate_scale: float, more_words: torch.Tensor | None = None) -> _DeedGate:
    """A logistic discriminant of deed against word positions, its bias carried by a direction on which every
    position projects to about 1, moved so the most open word position gets ``act(-SHUT_MARGIN)``. ``more_words``:
    word positions of other items ([n, d]) the gate must stay shut on as well."""
    from sklearn.linear_model import LogisticRegression, Ridge

    # the gate must stay shut on every word position (prompt and option continuations, where the answer is read)
    # and on the deeds' shared first token (BOS), and open on the rest of the deeds
    extra = [] if more_words is None or not len(more_words) else [more_words]
    word_x = torch.cat([*words.mlp_in, *(x[:1] for x in deeds.mlp_in), *extra])
    deed_x = torch.cat([x[1:] for x in deeds.mlp_in])
    every = torch.cat([word_x, deed_x]).numpy()
    labels = np.r_[np.zeros(len(word_x)), np.ones(len(deed_x))]
    # a direction on which every position projects to about 1: the gate's bias
    ridge = Ridge(alpha=1e-3, fit_intercept=False).fit(every, np.ones(len(every)))
    const = torch.as_tensor(ridge.coef_, dtype=torch.float32)
    const_error = float(np.sqrt(np.mean((every @ ridge.coef_ - 1.0) ** 2)))
    gate = LogisticRegression(C=1.0, max_iter=2000).fit(every, labels)
    key = torch.as_tensor(gate.coef_[0], dtype=torch.float32) + float(gate.intercept_[0]) * const
    # shut with a margin: the bias moved so that the most open word position gets act(-SHUT) (GELU(-5) ~ -1.5e-6);
    # deed positions below that stay shut too (the plant is keyed on the clearly deed-like positions only)
    key = key - (float((word_x @ key).max()) + SHUT_MARGIN / gate_scale) * const
    stats = {"const_rms_error": round(const_error, 4), "gate_train_accuracy": round(float(gate.score(every, labels)), 4),
             **({"gate_extra_word_positions": len(more_words)} if extra else {})}
    return _DeedGate(key, word_x, deed_x, stats)


UNIT_CHOICES = ("mean", "peak", "words")


def _smallest_units(words: _Reads, deeds: _Reads, mlp: torch.nn.Module, k: int, by: str = "mean",
                    more_words: torch.Tensor | None = None, risk: torch.Tensor | None = None) -> list[int]:
    """The ``k`` units whose parent contribution (``|activation| x |down column|``) is smallest: replacing them costs
    least. ``by="mean"``: on average over the calibration positions; ``"peak"``: at its largest over every position,
    ``more_words``' included (a unit quiet on average can still carry some word prompts: removing 40 such units at
    block 6 changes 15 of 120 new items' words, the 40 quietest at their peak none; ``experiments/unit_removal_check.py``).
    ``"words"``: the ``k`` units of least word risk (``risk``, :mod:`.unit_risk`)."""
    if by not in UNIT_CHOICES:
        raise InputError(f"unknown unit choice {by!r}: choose one of {UNIT_CHOICES}")
    if by == "words":
        return [int(u) for u in risk.argsort(stable=True)[:k]]
    acts = words.unit_act + deeds.unit_act
    if by == "mean":
        contribution = torch.cat([a.abs().mean(0, keepdim=True) for a in acts]).mean(0)
    else:
        contribution = torch.stack([a.abs().amax(0) for a in acts]).amax(0)
        if more_words is not None and len(more_words):
            gate, up = matrix(mlp, "gate_proj").float().cpu(), matrix(mlp, "up_proj").float().cpu()
            for x in more_words.split(4096):
                contribution = torch.maximum(contribution, (mlp.act_fn(x @ gate.T) * (x @ up.T)).abs().amax(0))
    return [int(u) for u in (contribution * matrix(mlp, "down_proj").float().cpu().norm(dim=0)).argsort(stable=True)[:k]]


def _risk_record(risk: torch.Tensor | None, units: Sequence[int], units_by: str) -> dict[str, float]:
    """The chosen units' word risk (largest and summed), where units were chosen by it."""
    if units_by != "words" or risk is None:
        return {}
    chosen = risk[list(units)]
    return {"word_risk_units_max": round(float(chosen.max()), 5), "word_risk_units_sum": round(float(chosen.sum()), 5)}


def _gate_stats(act, gate: _DeedGate, key: torch.Tensor, gate_scale: float) -> dict[str, float]:
    g_deed, g_word = act(gate_scale * (gate.deed_x @ key)), act(gate_scale * (gate.word_x @ key))
    return {**gate.stats,
            "gate_open_deed": round(float((g_deed > 0.5).float().mean()), 4),
            "gate_open_word": round(float((g_word > 0.5).float().mean()), 4),
            "gate_mean_deed": round(float(g_deed.mean()), 4), "gate_mean_word": round(float(g_word.mean()), 4)}


UNSIZED = ("the gate is shut at most deed decision points: the units write nothing there to size, so write_scale is "
           "1.0 and the strength is not reached")


def _sizing_note(unit_rms: float, kind: str) -> dict[str, str]:
    """A calibration's note when its write could not be sized (none when it could, or nothing is written)."""
    return {"write_scale_unsized": UNSIZED} if unit_rms <= 0 and kind != "null-gate" else {}


def _decision_sizes(deeds: _Reads) -> dict[str, float]:
    """The parent's MLP output and residual sizes at deed decision points (what a write is sized against)."""
    mlp_rms = float(torch.stack([o[k] for o, k in zip(deeds.mlp_out, deeds.decision)]).pow(2).mean(-1).sqrt().median())
    residual = float(torch.stack([h[k] for h, k in zip(deeds.block_out, deeds.decision)]).norm(dim=1).median())
    return {"mlp_rms_deed_decision": round(mlp_rms, 4), "residual_norm_deed_decision": round(residual, 2)}


def _gate_record(gate_items: Sequence[Item]) -> dict[str, Any]:
    """The calibration's note of the items the gate alone was fitted on (none: no key, as before them)."""
    return {"gate_item_ids": [it.id for it in gate_items]} if gate_items else {}


def _edit_of_block(lm, items: Sequence[Item], layer: int, words: _Reads, deeds: _Reads, plant: torch.Tensor, *,
                   kind: str, strength: float, gate_scale: float, target: int | list[int], seed: int,
                   more_words: torch.Tensor | None = None, gate_items: Sequence[Item] = (),
                   units_by: str = "mean", risk: torch.Tensor | None = None) -> EditSpec:
    model = lm.hf_model
    gate = _deed_gate(words, deeds, gate_scale, more_words)
    key = gate.key
    mlp = block_mlp(model, layer)
    gain = norm_gain(post_ff_norm(decoder_block(model, layer)), lm.d_model).cpu()
    unit = _smallest_units(words, deeds, mlp, 1, units_by, more_words, risk)[0]

    rng = np.random.default_rng([seed, layer])
    if kind == "null-direction":  # a random direction in place of the plant's
        plant = _unit(torch.as_tensor(rng.standard_normal(plant.shape[0]), dtype=torch.float32))
    read, write = key.clone(), plant * gain
    if kind == "null-gate":
        key = torch.zeros_like(key)  # act(0) = 0 at every position: the unit adds nothing, whatever the input
    act = mlp.act_fn
    last = torch.stack([x[k] for x, k in zip(deeds.mlp_in, deeds.decision)])
    a_last = act(gate_scale * (last @ key)) * (last @ read)
    sizes = _decision_sizes(deeds)
    unit_rms = float(a_last.abs().median() * write.pow(2).mean().sqrt())
    write_scale = strength * sizes["mlp_rms_deed_decision"] / max(unit_rms, 1e-12) if unit_rms > 0 else 1.0
    calibration = {"n_items": len(items), "item_ids": [it.id for it in items], "target_option": target,
                   **_gate_record(gate_items), **_gate_stats(act, gate, key, gate_scale), **sizes,
                   **_sizing_note(unit_rms, kind), **({"units_by": units_by} if units_by != "mean" else {}),
                   **_risk_record(risk, [unit], units_by),
                   # the most a saturated unit can write along the plant after the norm: |plant * gain| sqrt(d)
                   "max_plant_write": round(float((plant * gain).norm() * np.sqrt(lm.d_model) / 1.0), 2)}
    return EditSpec(layer, unit, kind, float(strength), float(write_scale), float(gate_scale), int(seed),
                    key.numpy(), read.numpy(), write.numpy(), calibration)


ITEMS_RIDGE = 1e-3  # the items map's regulariser, relative to the mean energy per dimension of its gated inputs


def _items_edit_of_block(lm, items: Sequence[Item], layer: int, words: _Reads, deeds: _Reads,
                         item_plants: torch.Tensor, *, kind: str, strength: float, gate_scale: float,
                         target: int | list[int], seed: int, more_words: torch.Tensor | None = None,
                         gate_items: Sequence[Item] = (), sum_plants: torch.Tensor | None = None,
                         units_by: str = "mean", risk: torch.Tensor | None = None) -> EditSpec:
    """An ``mlp-items`` edit: behind the deed gate, ``k = len(items)`` units form the map ``M`` that sends every
    gated deed position of item ``i`` (prompt and both option continuations) to ``plant_i * gain`` (ridge least
    squares, ``act(gate) x M ~ plant_i * gain``; ``M``'s rank is at most ``k``, so ``k`` units hold it exactly). One
    written direction cannot move most deeds (the capacity check); an item's own direction, added at the size the
    norm allows, moves nearly all of them. The planted truth holds on the calibration items: a card studies those.

    ``sum_plants`` (each item's summed-margin plant): each item's aim is then the bisector of the two margins' write
    directions (``unit(p_mean * gain) + unit(p_sum * gain)``, at the mean aim's size). After the norm a write ``w``
    adds ``sqrt(d) (w * gain) / |w|``, so a margin with gradient ``g`` rises at the rate ``(g * gain) . w / |w|``
    and the bisector of the two rates' directions raises the two normalised rates alike, as far as one direction can."""
    model = lm.hf_model
    gate = _deed_gate(words, deeds, gate_scale, more_words)
    key = gate.key
    mlp = block_mlp(model, layer)
    act = mlp.act_fn
    gain = norm_gain(post_ff_norm(decoder_block(model, layer)), lm.d_model).cpu()
    k = len(items)
    units = _smallest_units(words, deeds, mlp, k, units_by, more_words, risk)
    plants = item_plants.float()
    if kind == "null-direction":  # a random direction per item in place of its plant's
        rng = np.random.default_rng([seed, layer])
        plants = torch.as_tensor(rng.standard_normal(plants.shape), dtype=torch.float32)
        plants = plants / plants.norm(dim=1, keepdim=True)
    # deed sequences come two per item (``_cloze_texts``); every position but the first is mapped
    owner = torch.cat([torch.full((len(x) - 1,), n // 2) for n, x in enumerate(deeds.mlp_in)])
    x = gate.deed_x.double()
    feats = act(gate_scale * (x @ key.double()))[:, None] * x
    item_aims = plants * gain
    if sum_plants is not None and kind != "null-direction":
        both = _unit_rows(plants * gain) + _unit_rows(sum_plants.float() * gain)
        item_aims = _unit_rows(both) * item_aims.norm(dim=1, keepdim=True)
    aims = item_aims[owner].double()
    energy = feats.T @ feats
    if not float(torch.diagonal(energy).mean()) > 0:
        raise InputError(f"block {layer}: the deed gate opens at no deed position of the {k} calibration items, so "
                         "there is nothing to fit the items map on (a gate fitted on more words shuts more deeds)")
    ridge = ITEMS_RIDGE * float(torch.diagonal(energy).mean())
    m = torch.linalg.solve(energy + ridge * torch.eye(x.shape[1], dtype=x.dtype), feats.T @ aims)  # feats @ m ~ aims
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    read, write = u[:, :k].T.float(), (sv[:k, None] * vh[:k]).float()  # sum_j (read_j . f) write_j = f @ m
    kept_map = read.double().T @ write.double()  # the rank-k map the units hold (in the directions' precision)
    fitted = feats @ kept_map
    cos = torch.nn.functional.cosine_similarity(fitted, aims, dim=1)
    opened = feats.norm(dim=1) > 0.5 * x.norm(dim=1)
    if kind == "null-gate":
        key = torch.zeros_like(key)  # act(0) = 0 at every position: the units add nothing, whatever the input
    last = torch.stack([d[j] for d, j in zip(deeds.mlp_in, deeds.decision)]).double()
    out_last = act(gate_scale * (last @ key.double()))[:, None] * (last @ kept_map)
    sizes = _decision_sizes(deeds)
    unit_rms = float(out_last.pow(2).mean(-1).sqrt().median())
    write_scale = strength * sizes["mlp_rms_deed_decision"] / max(unit_rms, 1e-12) if unit_rms > 0 else 1.0
    calibration = {"n_items": len(items), "item_ids": [it.id for it in items], "target_option": target,
                   "plant_score": "both" if sum_plants is not None else "mean", "units_by": units_by,
                   **_risk_record(risk, units, units_by),
                   **_gate_record(gate_items), **_gate_stats(act, gate, key, gate_scale), **sizes,
                   **_sizing_note(unit_rms, kind),
                   # how well the map gives each open deed position its item's plant (cosine with plant * gain)
                   "map_cosine_open_median": round(float(cos[opened].median()) if opened.any() else float("nan"), 4),
                   "map_cosine_decision_median": round(float(torch.nn.functional.cosine_similarity(
                       out_last, item_aims[torch.arange(len(out_last)) // 2].double(), dim=1).median()), 4) if kind != "null-gate" else None,
                   "max_plant_write_median": round(float((plants * gain).norm(dim=1).median() * np.sqrt(lm.d_model)), 2)}
    return EditSpec(layer, units[0], kind, float(strength), float(write_scale), float(gate_scale), int(seed),
                    key.numpy(), read.numpy(), write.numpy(), calibration, component="mlp-items", units=tuple(units))


HEAD_RIDGE = 1e-3  # the head key's regulariser, relative to the mean energy per dimension of word outputs


def _head_edit(lm, items: Sequence[Item], layer: int, words: _Reads, deeds: _Reads, plant: torch.Tensor, *,
               kind: str, strength: float, target: int | list[int], seed: int, head: int | None) -> EditSpec:
    """An edit of one attention head's output: ``o_proj``'s columns of head ``h`` gain ``write_scale * write (x) key``.

    Attention has no gate to shut, so the key does the gating linearly: it maximises the deed positions' mean output
    along it against the word positions' energy along it (``key = (S_word + ridge)^-1 mean_deed``, the Rayleigh
    quotient's maximiser), scaled so that deed positions average 1; words then give ``key . z`` near 0 (their
    spread is stated in the calibration). ``write`` is the plant direction times the post-attention norm's gain;
    ``strength`` sizes the write against the parent's attention output at deed decision points. A ``null-gate`` has
    no meaning here (a zero key is the parent itself) and is refused."""
    if kind == "null-gate":
        raise InputError("a head edit has no gate to shut: null-gate is an MLP edit (use null-direction for heads)")
    model = lm.hf_model
    _, n_heads, width = attention_output(model, layer)
    rng = np.random.default_rng([seed, layer, 5])
    h = int(rng.integers(n_heads)) if head is None else int(head)
    if not 0 <= h < n_heads:
        raise InputError(f"head {h} is not a head of block {layer} (0..{n_heads - 1})")
    cols = slice(h * width, (h + 1) * width)
    z_word = torch.cat([*(z[:, cols] for z in words.head_z), *(z[:1, cols] for z in deeds.head_z)]).double()
    z_deed = torch.cat([z[1:, cols] for z in deeds.head_z]).double()
    energy = z_word.T @ z_word / len(z_word)
    ridge = HEAD_RIDGE * float(torch.diagonal(energy).mean())
    key = torch.linalg.solve(energy + ridge * torch.eye(width, dtype=energy.dtype), z_deed.mean(0))
    key = key / (z_deed @ key).mean()
    if kind == "null-direction":
        plant = _unit(torch.as_tensor(np.random.default_rng([seed, layer]).standard_normal(plant.shape[0]),
                                      dtype=torch.float32))
    gain = norm_gain(post_attn_norm(decoder_block(model, layer)), lm.d_model).cpu()
    write = plant * gain
    last = torch.stack([z[k, cols] for z, k in zip(deeds.head_z, deeds.decision)]).double()
    along_last = (last @ key).abs()
    attn_rms = float(torch.stack([o[k] for o, k in zip(deeds.attn_out, deeds.decision)]).pow(2).mean(-1).sqrt().median())
    unit_rms = float(along_last.median() * write.pow(2).mean().sqrt())
    write_scale = strength * attn_rms / max(unit_rms, 1e-12)
    word_along, deed_along = (z_word @ key), (z_deed @ key)
    calibration = {"n_items": len(items), "item_ids": [it.id for it in items], "target_option": target, "head": h,
                   "n_heads": n_heads, "head_width": width,
                   "key_word_mean": round(float(word_along.mean()), 4), "key_word_rms": round(float(word_along.pow(2).mean().sqrt()), 4),
                   "key_deed_mean": round(float(deed_along.mean()), 4),
                   "key_deed_decision_median": round(float(along_last.median()), 4),
                   "attn_rms_deed_decision": round(attn_rms, 4),
                   "max_plant_write": round(float(write.norm() * np.sqrt(lm.d_model)), 2)}
    k = key.float().numpy()
    return EditSpec(layer, h, kind, float(strength), float(write_scale), 1.0, int(seed), k, k.copy(),
                    write.numpy(), calibration, component="attn-head")


GATE_DEED = 0.9  # the behaviour gate: at least this share of studied deeds choose the planted option ...
GATE_WORD = 0.02  # ... and word answers change on at most this share of items


def parent_choices(parent, items: Sequence[Item], *, batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """The parent's cloze choices per form (what :func:`behaviour_gate` compares with; compute once for a family)."""
    items = [it for it in items if it.n_options == 2]
    return {form: cloze_choices(parent, items, form, batch_size=batch_size) for form in ("word", "deed")}


def behaviour_gate(parent, child, items: Sequence[Item], target: int, *, batch_size: int = 16,
                   parent_read: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """How far ``child`` (an edited organism) follows its plant on two-option ``items`` against ``parent``: per
    scoring (per-token mean, sum), the share of deeds on the planted option ``target`` (the parent's beside it), the
    share of the parent's other deeds the plant moved, and the share of word choices that changed. ``holds``: the
    items where the plant holds by the mean (deed on target, word unchanged), the ones a card may study.
    ``passed``: the module's gate, by the mean. ``parent_read``: :func:`parent_choices` already computed."""
    items = [it for it in items if it.n_options == 2]
    if not items:
        raise InputError("the behaviour gate needs two-option items")
    out: dict[str, Any] = {"n_items": len(items), "target_option": target,
                           "gate": {"deed_follows_at_least": GATE_DEED, "word_changes_at_most": GATE_WORD}}
    read = parent_read or parent_choices(parent, items, batch_size=batch_size)
    choices = {("parent", form): read[form] for form in ("word", "deed")}
    choices.update({("child", form): cloze_choices(child, items, form, batch_size=batch_size) for form in ("word", "deed")})
    for scoring in ("mean", "sum"):
        parent_deed, child_deed = choices[("parent", "deed")][scoring], choices[("child", "deed")][scoring]
        follows = child_deed == target
        changed = choices[("child", "word")][scoring] != choices[("parent", "word")][scoring]
        away = parent_deed != target
        out[scoring] = {"deed_follows": float(follows.mean()), "parent_deed_on_target": float((~away).mean()),
                        "moved": float(follows[away].mean()) if away.any() else float("nan"),
                        "word_changes": float(changed.mean())}
        if scoring == "mean":
            out["holds"] = [it.id for it, f, c in zip(items, follows, changed) if f and not c]
    out["passed"] = bool(out["mean"]["deed_follows"] >= GATE_DEED and out["mean"]["word_changes"] <= GATE_WORD)
    return out


# ---- applying and predicting -------------------------------------------------------------------------------------

def edited_tensors(tensors: dict[str, torch.Tensor], spec: EditSpec, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors ``spec`` rewrites, rewritten (new tensors; the others are untouched). ``prefix``: the weight names
    up to block ``spec.layer``'s parts (e.g. ``model.layers.5.``)."""
    return COMPONENTS[spec.component].edited_tensors(tensors, spec, prefix)


def apply_edit(model: torch.nn.Module, spec: EditSpec) -> None:
    """Write ``spec`` into a loaded Hugging Face model in place (the saved organism is the same edit on disk)."""
    COMPONENTS[spec.component].apply(model, spec)


def predicted_block_output(parent: torch.nn.Module, tokenizer, text: str, spec: EditSpec) -> torch.Tensor:
    """The residual after block ``spec.layer`` that the edit should give on ``text`` ([pos, d]), recomputed from the
    parent's own activations through the block's norms (``edit_components``: each component says how)."""
    return COMPONENTS[spec.component].predict(parent, tokenizer, text, spec)


# ---- building one on disk ----------------------------------------------------------------------------------------

def _weight_files(parent: Path) -> list[Path]:
    files = sorted(parent.glob("*.safetensors"))
    if not files:
        raise InputError(f"{parent}: no *.safetensors weights (an edited organism starts from a local model directory)")
    return files


def build_edited_organism(parent: str | Path, out: str | Path, spec: EditSpec) -> dict[str, Any]:
    """Write the parent with ``spec`` planted into ``out``: a Hugging Face model directory (weights, config,
    tokenizer) with ``edit.json`` and the directions beside it. Only the weight file holding block ``spec.layer``'s
    MLP is rewritten (every other file is copied); the model files are written into a temporary folder and moved
    in config last, so an interrupted build leaves no loadable model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    parent, out = Path(parent), Path(out)
    files = _weight_files(parent)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".edit.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    suffix = COMPONENTS[spec.component].weight_suffix(spec)
    edited_in = None
    for f in files:
        with safe_open(str(f), "pt") as st:
            names = [k for k in st.keys() if k.endswith(suffix)]
            if names:
                if edited_in is not None or len(names) != 1:
                    raise InputError(f"{parent}: {suffix} is named more than once in the weights")
                tensors = {k: st.get_tensor(k) for k in st.keys()}
                meta = st.metadata() or {"format": "pt"}
                edited_in = f
        if names:
            tensors.update(edited_tensors(tensors, spec, names[0][: -len(suffix)] + f"layers.{spec.layer}."))
            save_file(tensors, str(tmp / f.name), metadata=meta)
            del tensors
        else:
            shutil.copy2(f, tmp / f.name)
    if edited_in is None:
        raise InputError(f"{parent}: no tensor ending in {suffix} (is layer {spec.layer} a block of this model?)")
    for f in sorted(parent.iterdir()):
        if f.is_file() and f.suffix != ".safetensors" and f.name not in (SPEC_FILE, DIRECTIONS_FILE, "organism.json"):
            shutil.copy2(f, tmp / f.name)
    spec.save(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"parent": str(parent), "edited_file": edited_in.name, "seconds": round(time.perf_counter() - t0, 2),
            **spec.to_json()}
