"""Cross-model activation patching: where is a variant's behaviour written?

Two models with one tokenizer (a parent and an organism, a base and an aligned model, two checkpoints) read the same
token sequences. The *source*'s activation at one *site* (a block's residual output, its attention or MLP
contribution, one attention head's output) replaces the *target*'s at chosen positions, and the target's continuation
log-likelihood is read. Patching the variant into the reference (denoising) asks which site *suffices* to carry the
variant's behaviour; patching the reference into the variant (noising) asks which site it *needs*. Unlike cross-form
patching, both runs read the same prompt and the same answer tokens, so the read-out is the choice itself, in content
space.

A site is one :class:`SiteKind` (one class and one :func:`register_site_kind` line each). A site whose source
activation equals the target's bit for bit at every patched position is not run: patching it changes nothing, so its
patched reading *is* the clean one (exact, and what makes edited organisms cheap: every site below the edit is skipped).
Sequences are right-padded, so every real token sits where it would alone; the vocabulary projection runs only at
positions that predict a continuation token.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from wdprobe.core.forward import prompt_token_ids
from wdprobe.core.option_scoring import encode_options
from wdprobe.errors import InterventionError
from wdprobe.methods.patching import frozen_parameters, rank_correlation

if TYPE_CHECKING:  # pragma: no cover
    from wdprobe.core.model import LoadedModel

POSITION_CLASSES = ("all", "prompt", "continuation")
UNEMBED_INPUT_HOOK = "unembed.hook_in"


class SiteKind:
    """Where one kind of site lives: its hook name at a block, how many units it splits into (heads), and how the
    source's activation is spliced into the target's. A new kind is one subclass and one registry line."""

    name: ClassVar[str]
    has_units: ClassVar[bool] = False
    needs_attn_result: ClassVar[bool] = False

    @staticmethod
    def hook(layer: int) -> str:
        raise NotImplementedError

    @staticmethod
    def n_units(lm: "LoadedModel") -> int:
        return 1

    @staticmethod
    def splice(target: torch.Tensor, source: torch.Tensor, where: Bool[torch.Tensor, "batch pos"],
               unit: int | None) -> torch.Tensor:
        """``target`` with ``source`` at the positions ``where`` marks (all of the activation's last dimensions)."""
        mask = where.reshape(where.shape + (1,) * (target.dim() - 2))
        return torch.where(mask, source.to(target.dtype), target)


SITE_KINDS: dict[str, type[SiteKind]] = {}


def register_site_kind(kind: type[SiteKind]) -> type[SiteKind]:
    """Add a site kind to :data:`SITE_KINDS` (refused when the name is taken)."""
    if kind.name in SITE_KINDS:
        raise InterventionError(f"site kind {kind.name!r} is registered already")
    SITE_KINDS[kind.name] = kind
    return kind


@register_site_kind
class ResidualSite(SiteKind):
    """The residual stream after block L: everything upstream of it, at once."""

    name = "resid"

    @staticmethod
    def hook(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"


@register_site_kind
class AttentionSite(SiteKind):
    """Block L's attention contribution as added to the residual (after Gemma's post-attention norm, where it has one)."""

    name = "attn"

    @staticmethod
    def hook(layer: int) -> str:
        return f"blocks.{layer}.hook_attn_out"


@register_site_kind
class MlpSite(SiteKind):
    """Block L's MLP contribution as added to the residual (after Gemma's post-feed-forward norm, where it has one)."""

    name = "mlp"

    @staticmethod
    def hook(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"


@register_site_kind
class HeadSite(SiteKind):
    """What one attention head writes: its output through its slice of the output projection (``hook_result``,
    ``[batch, pos, head, d_model]``, summed over heads into the attention output). Patching there catches a change
    of the head's output weights too, which its pre-projection output (``hook_z``) would not see. The bridge computes
    per-head results only on request: :func:`cross_model_patch` turns that on for the call when it patches heads."""

    name = "head"
    has_units = True
    needs_attn_result = True

    @staticmethod
    def hook(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_result"

    @staticmethod
    def n_units(lm: "LoadedModel") -> int:
        return int(lm.bridge.cfg.n_heads)

    @staticmethod
    def splice(target: torch.Tensor, source: torch.Tensor, where: Bool[torch.Tensor, "batch pos"],
               unit: int | None) -> torch.Tensor:
        out = target.clone()
        out[:, :, unit] = torch.where(where[..., None], source[:, :, unit].to(target.dtype), target[:, :, unit])
        return out


@dataclass(frozen=True)
class Site:
    """One place to patch: a registered ``kind`` at block ``layer`` (``unit``: the head, for head sites)."""

    kind: str
    layer: int
    unit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise InterventionError(f"unknown site kind {self.kind!r}: choose from {', '.join(SITE_KINDS)}")
        if SITE_KINDS[self.kind].has_units != (self.unit is not None):
            raise InterventionError(f"site {self.kind} at block {self.layer}: "
                                    + ("name the unit (head)" if SITE_KINDS[self.kind].has_units else "takes no unit"))

    @property
    def hook(self) -> str:
        """The bridge hook this site patches."""
        return SITE_KINDS[self.kind].hook(self.layer)

    @property
    def label(self) -> str:
        """``L4.mlp``, ``L12.head2``: how tables name the site."""
        return f"L{self.layer}.{self.kind}" + ("" if self.unit is None else str(self.unit))


def sites_for(lm: "LoadedModel", kinds: Sequence[str] = ("resid", "attn", "mlp"),
              layers: Sequence[int] | None = None) -> list[Site]:
    """Every site of the given kinds at the given blocks (all blocks by default), block by block."""
    n = lm.n_layers
    layers = range(n) if layers is None else layers
    out = []
    for layer in layers:
        if not 0 <= int(layer) < n:
            raise InterventionError(f"block {layer} out of range: {lm.name} has blocks 0..{n - 1}")
        for kind in kinds:
            if kind not in SITE_KINDS:
                raise InterventionError(f"unknown site kind {kind!r}: choose from {', '.join(SITE_KINDS)}")
            units = range(SITE_KINDS[kind].n_units(lm)) if SITE_KINDS[kind].has_units else [None]
            out.extend(Site(kind, int(layer), u) for u in units)
    return out


@dataclass
class CrossModelPatch:
    """What :func:`cross_model_patch` measured: summed continuation log-probabilities per sequence, clean and
    patched (``patched[s]`` for ``sites[s]``), and which sites were skipped because source equals target there."""

    sites: list[Site]
    target_clean: Float[np.ndarray, "seq"]
    source_clean: Float[np.ndarray, "seq"]
    patched: Float[np.ndarray, "site seq"]
    identical: Bool[np.ndarray, "site"]
    n_tokens: Int[np.ndarray, "seq"]
    positions: str
    dropped: Float[np.ndarray, "block site seq"] | None = None  # attribution's GradDrop estimates, block by block


def right_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded to the longest sequence, and the attention mask (every real token where it is alone)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(list(s)), 1
    return ids, mask


def patch_mask(lengths: Sequence[int], starts: Sequence[int], width: int, positions: str) -> torch.Tensor:
    """Which (row, position) take the source activation: every real token, the prompt before the decision point, or
    the decision point and the continuation (the positions that predict a continuation token, and its tokens)."""
    where = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, (n, s) in enumerate(zip(lengths, starts)):
        lo, hi = {"all": (0, n), "prompt": (0, s - 1), "continuation": (s - 1, n)}[positions]
        where[i, lo:hi] = True
    return where


@torch.no_grad()
def _continuation_logprob(lm: "LoadedModel", ids: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int],
                          starts: Sequence[int], hooks: Sequence[tuple[str, Callable]] = ()) -> np.ndarray:
    """Summed log-probability of each row's tokens ``starts[i]..lengths[i]-1`` under forward ``hooks``; the
    vocabulary projection only at the positions that predict them."""
    return continuation_logprob_tensor(lm, ids, mask, lengths, starts, hooks).double().numpy()


def continuation_logprob_tensor(lm: "LoadedModel", ids: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int],
                                 starts: Sequence[int], hooks: Sequence[tuple[str, Callable]] = ()) -> torch.Tensor:
    """:func:`_continuation_logprob` as a CPU tensor, differentiable when gradients are on."""
    k = max(n - s for n, s in zip(lengths, starts))
    at = torch.zeros((len(lengths), k), dtype=torch.long)
    for i, (n, s) in enumerate(zip(lengths, starts)):
        at[i, :n - s] = torch.arange(s - 1, n - 1)
        at[i, n - s:] = s - 1  # filler, masked below
    at = at.to(lm.device)

    def gather(x, hook=None):
        return torch.gather(x, 1, at[..., None].expand(-1, -1, x.shape[-1]))

    logits = lm.bridge.run_with_hooks(ids.to(lm.device), attention_mask=mask.to(lm.device),
                                      fwd_hooks=list(hooks) + [(UNEMBED_INPUT_HOOK, gather)]).float()
    nxt = torch.gather(ids.to(logits.device), 1, (at + 1).to(logits.device))
    lp = torch.gather(logits, 2, nxt[..., None])[..., 0] - torch.logsumexp(logits, -1)
    real = torch.arange(k)[None] < torch.tensor([n - s for n, s in zip(lengths, starts)])[:, None]
    return (lp.cpu() * real).sum(1)


@torch.no_grad()
def record_activations(lm: "LoadedModel", ids: torch.Tensor, mask: torch.Tensor, hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations at ``hooks`` for one batch (the vocabulary projection skipped: only the last position kept)."""
    got: dict[str, torch.Tensor] = {}
    canonical = {getattr(lm.bridge.hook_dict[h], "name", h): h for h in hooks}

    def keep(x, hook=None):
        got[canonical.get(hook.name, hook.name)] = x.detach().clone()
        return x

    lm.bridge.run_with_hooks(ids.to(lm.device), attention_mask=mask.to(lm.device),
                             fwd_hooks=[(h, keep) for h in hooks] + [(UNEMBED_INPUT_HOOK, lambda x, hook=None: x[:, -1:])])
    missing = [h for h in hooks if h not in got]
    if missing:
        raise InterventionError(f"{lm.name}: hooks {missing} did not fire")
    return got


@contextmanager
def _attn_results(models: Sequence["LoadedModel"], on: bool) -> Iterator[None]:
    """Per-head attention results computed for the ``with`` body (when ``on``), restored after, errors included."""
    before = [bool(getattr(lm.bridge.cfg, "use_attn_result", False)) for lm in models]
    try:
        if on:
            for lm in models:
                lm.bridge.set_use_attn_result(True)
        yield
    finally:
        if on:
            for lm, b in zip(models, before):
                lm.bridge.set_use_attn_result(b)


def check_same_architecture(target: "LoadedModel", source: "LoadedModel", sites: Sequence[Site]) -> None:
    """Refuse two models that cannot be patched into each other: another tokenizer, width or depth, or a site's hook
    missing in either."""
    if target.tokenizer.get_vocab() != source.tokenizer.get_vocab():
        raise InterventionError(f"cross-model patching needs one tokenizer: {target.name} and {source.name} differ")
    for s in sites:
        for lm in (target, source):
            if s.hook not in lm.bridge.hook_dict:
                raise InterventionError(f"site {s.label}: hook {s.hook!r} does not exist in {lm.name}")
    if target.d_model != source.d_model or target.n_layers != source.n_layers:
        raise InterventionError(f"{target.name} ({target.n_layers} blocks, width {target.d_model}) and {source.name} "
                                f"({source.n_layers} blocks, width {source.d_model}) are not the same architecture")


def cross_model_patch(target: "LoadedModel", source: "LoadedModel", sequences: Sequence[Sequence[int]],
                      starts: Sequence[int], sites: Sequence[Site], *, positions: str = "all", batch_size: int = 16,
                      record_bytes: int = 1 << 30, skip_identical: bool = True,
                      progress: Callable[[int], None] | None = None) -> CrossModelPatch:
    """Patch ``source``'s activation at each site into ``target`` and read the continuation log-likelihood.

    ``sequences`` are token ids (prompt then continuation), ``starts[i]`` the index of sequence i's first
    continuation token. ``positions`` chooses where the source's activation goes: ``all`` real tokens, the
    ``prompt`` before the decision point, or the ``continuation`` (the decision point and the continuation's tokens).
    Activations are recorded a group of blocks at a time, at most ``record_bytes`` per model and batch.
    ``skip_identical=False`` runs every site, even where source and target agree (for benchmarks and checks).
    ``progress(n)`` is called with the number of (site, sequence) readings finished."""
    if positions not in POSITION_CLASSES:
        raise InterventionError(f"positions {positions!r}: choose from {', '.join(POSITION_CLASSES)}")
    if len(sequences) != len(starts):
        raise InterventionError(f"{len(sequences)} sequences but {len(starts)} continuation starts")
    for i, (seq, s) in enumerate(zip(sequences, starts)):
        if not 1 <= s < len(seq):
            raise InterventionError(f"sequence {i}: continuation start {s} outside 1..{len(seq) - 1}")
    if not sites:
        raise InterventionError("no sites to patch")
    check_same_architecture(target, source, sites)
    with _attn_results([target, source], any(SITE_KINDS[s.kind].needs_attn_result for s in sites)):
        return _patch_all(target, source, sequences, starts, sites, positions, batch_size, record_bytes, skip_identical,
                          progress)


def _patch_all(target, source, sequences, starts, sites, positions, batch_size, record_bytes, skip_identical,
               progress) -> CrossModelPatch:
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0
    n = len(sequences)
    patched = np.zeros((len(sites), n))
    identical = np.ones(len(sites), dtype=bool)
    target_clean, source_clean = np.zeros(n), np.zeros(n)
    layers = sorted({s.layer for s in sites})
    order = sorted(range(n), key=lambda i: len(sequences[i]))  # similar lengths together: little padding
    for b in range(0, n, batch_size):
        rows = order[b:b + batch_size]
        lengths = [len(sequences[i]) for i in rows]
        row_starts = [int(starts[i]) for i in rows]
        ids, mask = right_padded([sequences[i] for i in rows], pad)
        where = patch_mask(lengths, row_starts, ids.shape[1], positions).to(target.device)
        target_clean[rows] = _continuation_logprob(target, ids, mask, lengths, row_starts)
        source_clean[rows] = _continuation_logprob(source, ids, mask, lengths, row_starts)
        per_block = ids.numel() * 4 * max(target.d_model, 1) * 4 * 2  # four site kinds, two models, float32
        group = max(1, int(record_bytes // max(per_block, 1)))
        for g in range(0, len(layers), group):
            chosen = [s for s in sites if s.layer in layers[g:g + group]]
            hooks = sorted({s.hook for s in chosen})
            src, tgt = record_activations(source, ids, mask, hooks), record_activations(target, ids, mask, hooks)
            for site in chosen:
                k = sites.index(site)
                sel = (slice(None), slice(None)) if site.unit is None else (slice(None), slice(None), site.unit)
                same = bool(torch.equal(src[site.hook][sel][where], tgt[site.hook][sel][where]))
                if same and skip_identical:
                    patched[k, rows] = target_clean[rows]
                else:
                    identical[k] = identical[k] and same
                    spliced = SITE_KINDS[site.kind].splice

                    def setter(x, hook=None, value=src[site.hook], unit=site.unit, splice=spliced):
                        return splice(x, value, where, unit)

                    patched[k, rows] = _continuation_logprob(target, ids, mask, lengths, row_starts, [(site.hook, setter)])
                if progress:
                    progress(len(rows))
            del src, tgt
    n_tokens = np.array([len(sq) - int(s) for sq, s in zip(sequences, starts)])
    return CrossModelPatch(list(sites), target_clean, source_clean, patched, identical, n_tokens, positions)


def option_sequences(lm: "LoadedModel", prompts: Sequence[str],
                     options: Sequence[Sequence[str]]) -> tuple[list[list[int]], list[int]]:
    """Token ids of every (prompt, option) as the cloze form scores it (the prompt with BOS, then
    ``" " + option`` without special tokens), option by option within each prompt, and where each option starts."""
    if len(prompts) != len(options):
        raise InterventionError(f"{len(prompts)} prompts but {len(options)} option lists")
    heads = prompt_token_ids(lm.tokenizer, prompts)
    seqs, starts = [], []
    for head, opts in zip(heads, options):
        for tail in encode_options(lm.tokenizer, opts):
            seqs.append(list(head) + list(tail))
            starts.append(len(head))
    return seqs, starts


def choice_margins(logprob: Float[np.ndarray, "... seq"], n_tokens: Int[np.ndarray, "seq"],
                   scoring: str) -> Float[np.ndarray, "... item"]:
    """Two-option items laid out option by option (sequence ``2i`` is item i's first option): the first option's
    score minus the second's, by the per-token ``mean`` or the ``sum``."""
    if scoring not in ("mean", "sum"):
        raise InterventionError(f"scoring {scoring!r}: choose mean or sum")
    if logprob.shape[-1] % 2:
        raise InterventionError(f"{logprob.shape[-1]} sequences: two options per item expected")
    score = logprob / n_tokens if scoring == "mean" else logprob
    return score[..., 0::2] - score[..., 1::2]


def restored_share(result: CrossModelPatch, scoring: str, toward: Int[np.ndarray, "item"] | None = None
                   ) -> tuple[Float[np.ndarray, "site"], Float[np.ndarray, "site item"], Float[np.ndarray, "item"]]:
    """How much of the source's shift each site carries into the target: per site, the summed change of the choice
    margin under the patch over the summed source-minus-target margin (1: the site alone reproduces the source's
    choices; 0: nothing), with the per-item changes and the per-item source shift beside it. ``toward`` (+1/-1 per
    item) signs margins so that positive points at the option of interest (by default the source's own shift)."""
    tgt = choice_margins(result.target_clean, result.n_tokens, scoring)
    src = choice_margins(result.source_clean, result.n_tokens, scoring)
    pat = choice_margins(result.patched, result.n_tokens, scoring)
    sign = np.ones_like(tgt) if toward is None else np.asarray(toward, dtype=float)
    shift = (src - tgt) * sign
    moved = (pat - tgt[None]) * sign[None]
    total = shift.sum()
    share = moved.sum(1) / total if total != 0 else np.full(len(result.sites), np.nan)
    return share, moved, shift


def _gradients(target: "LoadedModel", ids: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int],
               starts: Sequence[int], hooks: Sequence[str], drop: int | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
    """One forward and backward of the target: per hook its activation and the gradient of the summed continuation
    log-likelihood there, and the per-row log-likelihood. ``drop``: block whose attention and MLP contributions pass
    no gradient back (GradDrop); a site inside that block then gets a zero gradient."""
    stopped = set() if drop is None else {AttentionSite.hook(drop), MlpSite.hook(drop)}
    deltas: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(x, hook=None):
            if name in hooks:
                delta = torch.zeros_like(x, dtype=torch.float32, requires_grad=True)
                deltas[name], seen[name] = delta, x.detach()
                x = x + delta.to(x.dtype)
            return x.detach() if name in stopped else x
        return hook

    with frozen_parameters(target.hf_model), torch.enable_grad():
        lp = continuation_logprob_tensor(target, ids, mask, lengths, starts,
                                         [(h, make(h)) for h in sorted(set(hooks) | stopped)])
        if lp.requires_grad:  # rows are independent: each row's gradient is its own read-out's
            lp.sum().backward()
    grads = {h: d.grad if d.grad is not None else torch.zeros_like(d) for h, d in deltas.items()}
    return seen, grads, lp.detach().double().numpy()


def attribute_cross_model(target: "LoadedModel", source: "LoadedModel", sequences: Sequence[Sequence[int]],
                          starts: Sequence[int], sites: Sequence[Site], *, positions: str = "all",
                          batch_size: int = 8, grad_drop: bool = False) -> CrossModelPatch:
    """Attribution patching (AtP) of :func:`cross_model_patch`: every site's effect estimated at once from one
    forward and backward of the target per batch, as ``(source - target activation) . d(read-out)/d(activation)``
    summed over the patched positions. First order: exact where the read-out is linear in the site's activation,
    and the further off the larger the difference the site carries through later nonlinearities (check it against
    exact patching on a sample: :func:`attribution_agreement`). Identical sites are exactly unchanged, as in exact
    patching.

    ``grad_drop`` adds AtP*'s GradDrop (Kramar et al. 2024): for each block l one more backward with the gradient
    through block l's attention and MLP contributions stopped, kept as ``dropped[l]``. Effects that cancel between
    paths in the full gradient show in some dropped one; :func:`grad_drop_score` turns them into AtP*'s magnitude.
    A block below a site carries none of its effect, so there the plain estimate is kept without a pass. AtP*'s other
    fix (recomputing the attention softmax) concerns query and key sites, which are not patched here."""
    if positions not in POSITION_CLASSES:
        raise InterventionError(f"positions {positions!r}: choose from {', '.join(POSITION_CLASSES)}")
    if not sites:
        raise InterventionError("no sites to patch")
    check_same_architecture(target, source, sites)
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0
    n = len(sequences)
    est = np.zeros((len(sites), n))
    drops = list(range(target.n_layers)) if grad_drop else []
    dropped = np.zeros((target.n_layers, len(sites), n)) if grad_drop else None
    identical = np.ones(len(sites), dtype=bool)
    target_clean, source_clean = np.zeros(n), np.zeros(n)
    hooks = sorted({s.hook for s in sites})
    order = sorted(range(n), key=lambda i: len(sequences[i]))
    with _attn_results([target, source], any(SITE_KINDS[s.kind].needs_attn_result for s in sites)):
        for b in range(0, n, batch_size):
            rows = order[b:b + batch_size]
            lengths = [len(sequences[i]) for i in rows]
            row_starts = [int(starts[i]) for i in rows]
            ids, mask = right_padded([sequences[i] for i in rows], pad)
            where = patch_mask(lengths, row_starts, ids.shape[1], positions).to(target.device)
            source_clean[rows] = _continuation_logprob(source, ids, mask, lengths, row_starts)
            src = record_activations(source, ids, mask, hooks)
            seen, grads, target_clean[rows] = _gradients(target, ids, mask, lengths, row_starts, hooks, None)
            diffs: dict[int, torch.Tensor] = {}
            for k, site in enumerate(sites):
                sel = (slice(None), slice(None)) if site.unit is None else (slice(None), slice(None), site.unit)
                diff = src[site.hook][sel].float() - seen[site.hook][sel].float()
                diff = diff * where.reshape(where.shape + (1,) * (diff.dim() - 2))
                if bool(diff.abs().max() == 0):
                    continue
                identical[k] = False
                diffs[k] = diff
            del src, seen
            lowest = min((sites[k].layer for k in diffs), default=target.n_layers)
            for drop in [None] + drops:
                if drop is not None and drop >= lowest:
                    grads = _gradients(target, ids, mask, lengths, row_starts, hooks, drop)[1]
                for k, diff in diffs.items():
                    site = sites[k]
                    if drop is not None and drop < site.layer:  # block l is below the site: nothing to drop
                        dropped[drop, k, rows] = est[k, rows]
                        continue
                    sel = (slice(None), slice(None)) if site.unit is None else (slice(None), slice(None), site.unit)
                    value = (diff * grads[site.hook][sel].float()).flatten(1).sum(1).double().cpu().numpy()
                    if drop is None:
                        est[k, rows] = value
                    else:
                        dropped[drop, k, rows] = value
            del diffs, grads
    n_tokens = np.array([len(sq) - int(s) for sq, s in zip(sequences, starts)])
    return CrossModelPatch(list(sites), target_clean, source_clean, target_clean[None] + est, identical, n_tokens,
                           positions, None if dropped is None else target_clean[None, None] + dropped)


def grad_drop_score(result: CrossModelPatch, scoring: str,
                    toward: Int[np.ndarray, "item"] | None = None) -> Float[np.ndarray, "site"]:
    """AtP*'s GradDrop score per site from :func:`attribute_cross_model` ``(grad_drop=True)``: the mean over blocks of
    the absolute restored share (:func:`restored_share`) estimated with that block's gradient dropped. A magnitude:
    rank sites by it, compare it with the absolute exact share."""
    if result.dropped is None:
        raise InterventionError("no GradDrop estimates: attribute with grad_drop=True")
    shares = [np.abs(restored_share(replace(result, patched=layer, dropped=None), scoring, toward)[0])
              for layer in result.dropped]
    return np.mean(shares, axis=0)


def attribution_agreement(exact: Float[np.ndarray, "site"], estimate: Float[np.ndarray, "site"], *,
                          top: int = 5) -> dict[str, float]:
    """How far attribution can stand in for exact patching: Spearman rank correlation of the two per-site effects,
    and the share of exact patching's ``top`` sites (by absolute effect) that attribution also puts in its top."""
    exact, estimate = np.asarray(exact, float), np.asarray(estimate, float)
    if exact.shape != estimate.shape or exact.ndim != 1:
        raise InterventionError(f"per-site effects of one shape expected, got {exact.shape} and {estimate.shape}")
    k = min(top, exact.size)
    top_exact = set(np.argsort(-np.abs(exact))[:k])
    top_est = set(np.argsort(-np.abs(estimate))[:k])
    return {"spearman": rank_correlation(exact, estimate), "top_k": k, "top_k_agreement": len(top_exact & top_est) / k}
