"""One hook mechanism for every intervention: patching, projection patching, steering, attribution.

An intervention is a small *setter* on one hook point of one row of a batch: ``set`` a residual vector
(activation patching), ``project`` onto a source's component along a direction (patch only what a
probe direction carries), or ``add`` a vector (steering). Rows are prompts *or copies of prompts*:
many patches of the same prompt share one batched forward pass by sitting on different rows.
:func:`run_interventions` is the single loop that groups rows into token-budgeted batches, registers
one vectorised hook per hook point, and returns the next-token log-probabilities of chosen tokens,
computing the unembedding at the last position only (Gemma's vocabulary is most of a forward's cost).

Positions are indices into the *unpadded* prompt; negative indices count from the end (``-1`` is the
token where the answer letter is predicted). Left padding is handled here, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from wdprobe.core.forward import (
    LAST_POSITION_HOOK,
    default_batch_tokens,
    encode_prompts,
    length_batches,
    token_logprobs,
)
from wdprobe.core.packing import Tree, pack_trees, packed_forward, tree_batches
from wdprobe.errors import CaptureSpecError, InterventionError
from wdprobe.methods.capture import CaptureSpec

if TYPE_CHECKING:  # pragma: no cover
    from wdprobe.core.model import LoadedModel

RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")




def resid_hook(layer: int, kind: str, n_layers: int) -> str:
    """The canonical hook name of a residual-stream point, validated against the model's depth."""
    if kind not in RESID_KINDS:
        raise InterventionError(f"unknown residual hook kind {kind!r}: choose from {list(RESID_KINDS)}")
    if not 0 <= int(layer) < n_layers:
        raise InterventionError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    return f"blocks.{int(layer)}.hook_{kind}"


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``"all"``/None, ``"0,4,8"``, ``"2-10"`` or a list, validated (same syntax as capture)."""

    try:
        return list(CaptureSpec.parse(spec, n_layers).layers)
    except CaptureSpecError as e:
        raise InterventionError(str(e)) from None


def resolve_layers(layers: str | Sequence[int] | None, lm: "LoadedModel") -> list[int]:
    """:func:`parse_layers` against the model's depth."""
    return parse_layers(layers, lm.n_layers)


class InterventionKind:
    """What an intervention does to the activation it sits on, for many rows at once: ``apply(current, value,
    direction)`` on ``[n, d]`` tensors returns the new ``[n, d]`` activations. A new kind is one subclass with a
    ``name`` and one :func:`register_intervention_kind` line (see ``docs/guides/new-variant.md``)."""

    name: ClassVar[str]
    needs_direction: ClassVar[bool] = False

    @staticmethod
    def apply(current: torch.Tensor, value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


INTERVENTION_KINDS: dict[str, type[InterventionKind]] = {}


def register_intervention_kind(kind: type[InterventionKind]) -> type[InterventionKind]:
    """Add an intervention kind to :data:`INTERVENTION_KINDS` (refused when the name is taken)."""
    if kind.name in INTERVENTION_KINDS:
        raise InterventionError(f"intervention kind {kind.name!r} is registered already")
    INTERVENTION_KINDS[kind.name] = kind
    return kind


@register_intervention_kind
class SetActivation(InterventionKind):
    """Activation patching: the activation becomes ``value``."""

    name = "set"

    @staticmethod
    def apply(current: torch.Tensor, value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return value


@register_intervention_kind
class AddVector(InterventionKind):
    """Steering: ``value`` is added to the activation."""

    name = "add"

    @staticmethod
    def apply(current: torch.Tensor, value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return current + value


@register_intervention_kind
class ProjectOnDirection(InterventionKind):
    """Projection patching: the activation's component along the unit ``direction`` becomes ``value``'s; the rest of
    the activation is kept."""

    name = "project"
    needs_direction = True

    @staticmethod
    def apply(current: torch.Tensor, value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return current + ((value - current) * direction).sum(-1, keepdim=True) * direction


@dataclass(frozen=True)
class Intervention:
    """One setter: at ``hook``, on token ``position`` of its row, apply the registered ``kind`` with ``value`` (and
    ``direction`` where the kind needs one)."""

    hook: str
    position: int
    kind: str
    value: torch.Tensor  # [d_model]
    direction: torch.Tensor | None = None  # unit vector, for kinds that need one (``project``)

    def __post_init__(self) -> None:
        if self.kind not in INTERVENTION_KINDS:
            raise InterventionError(f"unknown intervention kind {self.kind!r}: choose from {', '.join(INTERVENTION_KINDS)}")
        if INTERVENTION_KINDS[self.kind].needs_direction and self.direction is None:
            raise InterventionError(f"a {self.kind!r} intervention at {self.hook} needs a direction")


@dataclass
class Row:
    """One forward-pass row: a prompt (by index) and the interventions applied to it."""

    prompt: int
    interventions: list[Intervention] = field(default_factory=list)


Setter = tuple[int, int, str, torch.Tensor, torch.Tensor]  # (row, column, kind, value, direction)


def _apply(x: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, kinds: Sequence[tuple[str, torch.Tensor]],
           value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Every setter of one hook point: each kind applied at once to the rows that ask for it."""
    x = x.clone()
    cur = x[rows, pos].float()
    new = cur.clone()
    for name, which in kinds:
        new[which] = INTERVENTION_KINDS[name].apply(cur[which], value[which], direction[which])
    x[rows, pos] = new.to(x.dtype)
    return x


def _setter_hooks(per_hook: Mapping[str, Sequence[Setter]], device) -> list[tuple[str, Callable]]:
    """One vectorised hook per hook point from its setters ``(row, column, kind, value, direction)``."""
    hooks = []
    for name, ivs in per_hook.items():
        rows = torch.tensor([i[0] for i in ivs], device=device)
        pos = torch.tensor([i[1] for i in ivs], device=device)
        names = [i[2] for i in ivs]
        kinds = [(k, torch.tensor([j for j, n in enumerate(names) if n == k], device=device))
                 for k in dict.fromkeys(names)]
        value = torch.stack([i[3] for i in ivs]).float().to(device)
        direction = torch.stack([i[4] for i in ivs]).float().to(device)

        def hook(x, hook=None, rows=rows, pos=pos, kinds=kinds, value=value, direction=direction, name=name):
            if x.shape[-1] != value.shape[-1]:
                raise InterventionError(f"{name}: activation width {x.shape[-1]}, intervention vectors {value.shape[-1]}")
            return _apply(x, rows, pos, kinds, value, direction)

        hooks.append((name, hook))
    return hooks


def _hooks_for_batch(batch_rows: Sequence[Row], lengths: Sequence[int], T: int, device, n_layers: int,
                     hook_dict: Mapping[str, object]) -> list[tuple[str, Callable]]:
    per_hook: dict[str, list[Setter]] = {}
    for r, row in enumerate(batch_rows):
        n = lengths[r]
        for iv in row.interventions:
            if iv.hook not in hook_dict:
                raise InterventionError(f"hook {iv.hook!r} does not exist in this model "
                                        f"(residual hooks are blocks.0..{n_layers - 1}.hook_resid_pre/mid/post)")
            if not -n <= iv.position < n:
                raise InterventionError(f"position {iv.position} out of range for prompt {row.prompt} "
                                        f"({n} tokens) at {iv.hook}")
            p = T + iv.position if iv.position < 0 else T - n + iv.position
            d = iv.direction if iv.direction is not None else torch.zeros_like(iv.value)
            per_hook.setdefault(iv.hook, []).append((r, p, iv.kind, iv.value, d))
    return _setter_hooks(per_hook, device)


@torch.no_grad()
def run_interventions(lm, prompts: Sequence[str], rows: Sequence[Row], token_ids: Sequence[int], *,
                      batch_size: int = 64, max_batch_tokens: int | None | str = "auto",
                      progress: Callable[[int], None] | None = None, pack: bool | str = "auto") -> np.ndarray:
    """Log-probabilities of ``token_ids`` as the next token for every row, ``[len(rows), len(token_ids)]``.

    All rows of a batch run in one forward pass; each hook point gets one vectorised hook applying
    every setter aimed at it. A row without interventions is the clean run of its prompt.

    When every intervention sits on the final position (cross-form patching, steering), rows of the same
    prompt share its prefix: the prompt runs once with one copy of its final token per row, each copy
    seeing the prefix and itself only (a 4D attention mask, all copies at the final position id). Every
    copy computes exactly what a separate forward pass would, at a fraction of the cost; ``pack="auto"``
    checks that equality once per model and falls back to separate rows if the model does not honour it.
    """
    if lm.tokenizer.padding_side != "left":
        raise InterventionError("the tokenizer must pad on the left so that position -1 is every prompt's last token")
    for r in rows:
        if not 0 <= r.prompt < len(prompts):
            raise InterventionError(f"row refers to prompt {r.prompt}, but there are {len(prompts)} prompts")
    n_layers = lm.n_layers
    hook_dict = lm.bridge.hook_dict
    prompt_len = {}
    for r in rows:
        if r.prompt not in prompt_len:
            prompt_len[r.prompt] = len(encode_prompts(lm.tokenizer, [prompts[r.prompt]], "cpu")["input_ids"][0])
    lengths = [prompt_len[r.prompt] for r in rows]
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    ids = torch.tensor(list(token_ids), device=lm.device)
    final_only = all(iv.position == -1 for r in rows for iv in r.interventions)
    window = getattr(lm.hf_model.config, "sliding_window", None)
    # one custom mask serves every layer, so a prompt longer than a sliding window cannot share its prefix
    fits = window is None or max(lengths, default=0) <= window
    if pack is True and not fits:
        raise InterventionError(f"prefix sharing needs prompts within the model's sliding window ({window} tokens); "
                                f"the longest prompt has {max(lengths)}: use pack='auto' or pack=False")
    if pack and rows and final_only and fits and (pack is True or packing_works(lm, prompts[rows[0].prompt])):
        return _run_packed(lm, prompts, rows, prompt_len, ids, budget, progress)
    out = np.zeros((len(rows), len(token_ids)))
    for batch in length_batches(lengths, batch_size, budget):
        enc = lm.encode([prompts[rows[i].prompt] for i in batch])
        T = enc["input_ids"].shape[1]
        hooks = _hooks_for_batch([rows[i] for i in batch], [lengths[i] for i in batch], T, lm.device, n_layers, hook_dict)
        logits = lm.forward_last(enc["input_ids"], enc["attention_mask"], hooks).float()
        out[batch] = token_logprobs(logits, ids).cpu().numpy()
        if progress:
            progress(len(batch))
    return out


def residuals_at(lm, prompts: Sequence[str], hooks: Sequence[str], positions: Sequence[Sequence[int]] | None = None,
                 *, batch_size: int = 16) -> dict[str, list[torch.Tensor]]:
    """Clean residuals at ``hooks`` per prompt: ``{hook: [tensor[n_positions_i, d]]}`` (all positions by default)."""
    out: dict[str, list[torch.Tensor]] = {h: [None] * len(prompts) for h in hooks}  # type: ignore[list-item]
    lengths = [len(encode_prompts(lm.tokenizer, [p], "cpu")["input_ids"][0]) for p in prompts]
    for batch in length_batches(lengths, batch_size, None):
        enc = lm.encode([prompts[i] for i in batch])
        T = enc["input_ids"].shape[1]
        got: dict[str, torch.Tensor] = {}

        def keep(x, hook=None):
            got[hook.name] = x.detach().float()
            return x

        with torch.no_grad():
            lm.forward_last(enc["input_ids"], enc["attention_mask"], [(h, keep) for h in hooks])
        aliases = {h: _canonical(lm, h) for h in hooks}
        for h in hooks:
            x = got.get(h, got.get(aliases[h]))
            if x is None:
                raise InterventionError(f"hook {h!r} did not fire")
            for j, i in enumerate(batch):
                row = x[j, T - lengths[i]:]
                out[h][i] = row if positions is None else row[list(positions[i])]
    return out


def _canonical(lm, name: str) -> str:
    hp = lm.bridge.hook_dict.get(name)
    return getattr(hp, "name", name) if hp is not None else name


# ---- prefix sharing for final-position interventions -------------------------------------------------

MAX_COPIES = 256  # final-token copies per packed sequence
_PACKING_VERIFIED: dict[int, bool] = {}


def _packed_batch(lm, seqs: Sequence[tuple[list[int], int]]):
    """Left-padded packed sequences: (prefix ids + final id, n_copies) -> ids, 4D mask, position ids."""
    lens = [len(p) - 1 + r for p, r in seqs]
    L = max(lens)
    pad_id = lm.tokenizer.pad_token_id or 0
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    pos = torch.zeros((len(seqs), L), dtype=torch.long)
    allowed = torch.zeros((len(seqs), L, L), dtype=torch.bool)
    for b, ((p, r), n) in enumerate(zip(seqs, lens)):
        T = len(p)
        off = L - n
        ids[b, off: off + T - 1] = torch.tensor(p[:-1])
        ids[b, off + T - 1:] = p[-1]
        pos[b, off: off + T - 1] = torch.arange(T - 1)
        pos[b, off + T - 1:] = T - 1
        allowed[b, off: off + T - 1, off: off + T - 1] = torch.tril(torch.ones(T - 1, T - 1, dtype=torch.bool))
        q = torch.arange(off + T - 1, L)
        allowed[b, q, off: off + T - 1] = True
        allowed[b, q, q] = True
        allowed[b, :off, :off] = torch.eye(off, dtype=torch.bool)  # padding attends to itself: no empty rows
    dtype = next(lm.hf_model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return ids.to(lm.device), mask.to(lm.device), pos.to(lm.device), L


def _packed_forward(lm, seqs, seq_rows: Sequence[Sequence[Row]], n_layers: int):
    ids, mask, pos, L = _packed_batch(lm, seqs)
    rmax = max(r for _, r in seqs)
    per_hook: dict[str, list] = {}
    for b, rows in enumerate(seq_rows):
        first = L - len(rows)
        for c, row in enumerate(rows):
            for iv in row.interventions:
                if iv.hook not in lm.bridge.hook_dict:
                    raise InterventionError(f"hook {iv.hook!r} does not exist in this model "
                                            f"(residual hooks are blocks.0..{n_layers - 1}.hook_resid_pre/mid/post)")
                d = iv.direction if iv.direction is not None else torch.zeros_like(iv.value)
                per_hook.setdefault(iv.hook, []).append((b, first + c, iv.kind, iv.value, d))
    hooks = _setter_hooks(per_hook, lm.device)

    def keep_copies(x, hook=None):
        return x[:, L - rmax:, :]

    logits = lm.bridge.run_with_hooks(ids, attention_mask=mask, position_ids=pos,
                                      fwd_hooks=hooks + [(LAST_POSITION_HOOK, keep_copies)])
    return logits, rmax


def _run_packed(lm, prompts, rows, prompt_len, ids, budget, progress) -> np.ndarray:
    n_layers = lm.n_layers
    by_prompt: dict[int, list[int]] = {}
    for k, r in enumerate(rows):
        by_prompt.setdefault(r.prompt, []).append(k)
    seqs = []  # (prompt, row indices)
    for p, ks in by_prompt.items():
        for s in range(0, len(ks), MAX_COPIES):
            seqs.append((p, ks[s: s + MAX_COPIES]))
    tokens = {p: encode_prompts(lm.tokenizer, [prompts[p]], "cpu")["input_ids"][0].tolist() for p in by_prompt}
    cost = [prompt_len[p] - 1 + len(ks) for p, ks in seqs]
    out = np.zeros((len(rows), len(ids)))
    cap = budget if budget is not None else 8192
    for batch in length_batches(cost, 64, cap):
        chosen = [seqs[i] for i in batch]
        logits, rmax = _packed_forward(lm, [(tokens[p], len(ks)) for p, ks in chosen],
                                       [[rows[k] for k in ks] for _, ks in chosen], n_layers)
        lp = token_logprobs(logits, ids.to(logits.device)).cpu().numpy()
        for b, (_, ks) in enumerate(chosen):
            out[ks] = lp[b, rmax - len(ks):]
            if progress:
                progress(len(ks))
    return out


def packing_works(lm, prompt: str, tol: float = 1e-3) -> bool:
    """Whether this model honours packed final-token copies (checked once per loaded model): the copies'
    logits must equal a plain forward's. (Prompts longer than a sliding window are never packed.)"""
    key = id(lm.bridge)
    if key not in _PACKING_VERIFIED:
        enc = lm.encode([prompt])
        try:
            with torch.no_grad():
                ref = lm.forward_last(enc["input_ids"], enc["attention_mask"]).float()
                logits, _ = _packed_forward(lm, [(enc["input_ids"][0].tolist(), 3)], [[Row(0)] * 3],
                                            lm.n_layers)
            _PACKING_VERIFIED[key] = bool((logits[0].float() - ref).abs().max() < tol * max(1.0, float(ref.abs().max())))
        except Exception:  # a model whose forward rejects 4D masks or position ids: use separate rows
            _PACKING_VERIFIED[key] = False
    return _PACKING_VERIFIED[key]


# ---- shared-prefix trees: interventions on branches after a common prefix ----------------------------

@torch.no_grad()
def run_tree_interventions(lm, trees: Sequence[Tree], interventions: Sequence[Sequence[Sequence[Intervention]]],
                           token_ids: Sequence[int], *, max_batch_tokens: int | None | str = "auto",
                           progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Next-token log-probabilities of ``token_ids`` at the end of every branch of every tree, with
    ``interventions[t][k]`` applied to branch k of tree t: one ``[n_branches, len(token_ids)]`` array per tree.

    Intervention positions index the branch's logical sequence (prefix + branch) and must lie in the branch: the
    prefix is shared by every branch, so an intervention there is refused. Each branch computes what the
    sequence ``prefix + branch`` under its own interventions computes alone (:mod:`wdprobe.core.packing`).
    ``progress(n)`` is called with the number of branches finished."""
    if len(interventions) != len(trees) or any(len(iv) != len(t.branches) for iv, t in zip(interventions, trees)):
        raise InterventionError("interventions must give one list per branch of every tree")
    hook_dict = lm.bridge.hook_dict
    ids = torch.tensor(list(token_ids), device=lm.device)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    dtype = next(lm.hf_model.parameters()).dtype
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray] = [np.zeros((len(t.branches), len(ids))) for t in trees]
    for chosen in tree_batches(trees, budget if budget is not None else 8192):
        packed = pack_trees([trees[t] for t in chosen], pad_id=pad, dtype=dtype, device=lm.device)
        per_hook: dict[str, list[Setter]] = {}
        reads = []
        for r, t in enumerate(chosen):
            tree = trees[t]
            P = len(tree.prefix)
            for k, branch in enumerate(tree.branches):
                n = P + len(branch)
                for iv in interventions[t][k]:
                    if iv.hook not in hook_dict:
                        raise InterventionError(f"hook {iv.hook!r} does not exist in this model "
                                                f"(residual hooks are blocks.0..{lm.n_layers - 1}.hook_resid_pre/mid/post)")
                    pos = iv.position if iv.position >= 0 else n + iv.position
                    if not P <= pos < n:
                        raise InterventionError(f"tree {t}, branch {k}: position {iv.position} at {iv.hook} is not in "
                                                f"the branch (tokens {P}..{n - 1}); the shared prefix cannot be patched")
                    d = iv.direction if iv.direction is not None else torch.zeros_like(iv.value)
                    per_hook.setdefault(iv.hook, []).append((r, packed.columns[r][k][pos], iv.kind,
                                                             iv.value, d))
                reads.append((r, packed.columns[r][k][n - 1]))
        logits = packed_forward(lm, packed, reads, _setter_hooks(per_hook, lm.device))
        lp = token_logprobs(logits, ids.to(logits.device)).cpu().numpy()
        i = 0
        for t in chosen:
            k = len(trees[t].branches)
            out[t] = lp[i: i + k]
            i += k
            if progress:
                progress(k)
    return out
