"""Shared-prefix packing: sequences that begin alike run their common prefix once.

A *tree* is a prefix and several branches (continuations). Packed into one row, the prefix comes first and the
branches follow one after another; a 4D attention mask lets each branch token see the prefix and the earlier
tokens of its own branch only, and position ids restart at the prefix length in every branch. Each branch then
computes exactly what the sequence ``prefix + branch`` computes alone (up to float rounding), while the prefix
costs one pass instead of one per branch. Users: the letter prompts of one item in several option orders (they
share everything up to the option lines), the cloze continuations of one prompt, and exact positional patching
(a patch at position p leaves positions < p untouched: the unpatched prefix is shared by every layer's patch).

One custom mask serves every layer, so a model with sliding-window attention can only be packed while every
branch's logical length fits the window (:func:`fits_window`); callers fall back to separate rows otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from wdprobe.core.forward import LAST_POSITION_HOOK, plan_batches
from wdprobe.core.vocab_reads import VocabularyReads
from wdprobe.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from wdprobe.core.model import LoadedModel


@dataclass(frozen=True)
class Tree:
    """A shared prefix and the branches that continue it (each branch non-empty)."""

    prefix: tuple[int, ...]
    branches: tuple[tuple[int, ...], ...]

    @property
    def n_tokens(self) -> int:
        """Packed length: the prefix once plus every branch."""
        return len(self.prefix) + sum(len(b) for b in self.branches)

    @property
    def longest(self) -> int:
        """The longest logical sequence (prefix + branch) the tree holds."""
        return len(self.prefix) + max(len(b) for b in self.branches)

    def sequence(self, k: int) -> tuple[int, ...]:
        return self.prefix + self.branches[k]


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all sequences share."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for t in range(n):
        if any(s[t] != first[t] for s in seqs[1:]):
            return t
    return n


def tree_of(seqs: Sequence[Sequence[int]]) -> Tree:
    """The tree of token sequences: their common prefix, kept one token short of the shortest sequence so that
    every branch holds at least its last token (where its next-token distribution is read)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise InputError("packing needs non-empty token sequences")
    k = min(common_prefix_length(seqs), min(len(s) for s in seqs) - 1)
    return Tree(tuple(seqs[0][:k]), tuple(tuple(s[k:]) for s in seqs))


def fits_window(lm: "LoadedModel", longest: int) -> bool:
    """Whether a tree whose longest logical sequence has ``longest`` tokens can be packed for this model (a
    sliding-window model needs every sequence inside its window: one mask serves every layer)."""
    window = getattr(lm.hf_model.config, "sliding_window", None)
    return window is None or longest <= window


@dataclass
class PackedBatch:
    """Trees packed one per row, left-padded: ids, 4D additive mask, position ids, and where each tree's
    sequences lie (``columns[t][k][j]``: the packed column of token j of tree t's sequence k)."""

    input_ids: Int[torch.Tensor, "row packed"]
    attention_mask: Float[torch.Tensor, "row 1 packed packed"]
    position_ids: Int[torch.Tensor, "row packed"]
    columns: list[list[list[int]]]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


def pack_trees(trees: Sequence[Tree], *, pad_id: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> PackedBatch:
    """Pack ``trees`` one per row (left padding; a pad column attends to itself only, so no mask row is empty)."""
    if not trees:
        raise InputError("nothing to pack")
    width = max(t.n_tokens for t in trees)
    ids = torch.full((len(trees), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(trees), width), dtype=torch.long)
    allowed = torch.zeros((len(trees), width, width), dtype=torch.bool)
    columns: list[list[list[int]]] = []
    for r, tree in enumerate(trees):
        off = width - tree.n_tokens
        P = len(tree.prefix)
        allowed[r, :off, :off] = torch.eye(off, dtype=torch.bool)
        if P:
            ids[r, off: off + P] = torch.tensor(tree.prefix)
            pos[r, off: off + P] = torch.arange(P)
            allowed[r, off: off + P, off: off + P] = torch.tril(torch.ones(P, P, dtype=torch.bool))
        start = off + P
        cols = []
        for branch in tree.branches:
            n = len(branch)
            ids[r, start: start + n] = torch.tensor(branch)
            pos[r, start: start + n] = torch.arange(P, P + n)
            allowed[r, start: start + n, off: off + P] = True
            allowed[r, start: start + n, start: start + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            cols.append(list(range(off, off + P)) + list(range(start, start + n)))
            start += n
        columns.append(cols)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return PackedBatch(ids.to(device), mask.to(device), pos.to(device), columns)


def tree_batches(trees: Sequence[Tree], max_tokens: int, max_rows: int = 64) -> list[list[int]]:
    """Indices of trees in batches (longest first) of at most ``max_rows`` rows and ``max_tokens`` padded tokens,
    planned to waste the least padding (:func:`~wdprobe.core.forward.plan_batches`)."""
    return plan_batches([t.n_tokens for t in trees], max_rows, max_tokens)


def packed_forward(lm: "LoadedModel", batch: PackedBatch, reads: Sequence[tuple[int, int]],
                   hooks: Sequence[tuple[str, object]] = ()) -> Float[torch.Tensor, "n_reads vocab"]:
    """Logits at the packed ``(row, column)`` positions in ``reads``, in that order, under ``hooks``; the
    unembedding runs on those positions only."""
    width = batch.width
    flat = torch.tensor([r * width + c for r, c in reads], dtype=torch.long)

    def keep(x: torch.Tensor, hook: object = None) -> torch.Tensor:
        # only the read positions reach the unembedding, as one row (no padded read slots to project)
        return x.reshape(-1, x.shape[-1])[flat.to(x.device)][None]

    logits = lm.bridge.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids,
                                      fwd_hooks=list(hooks) + [(LAST_POSITION_HOOK, keep)])
    return logits[0]


@dataclass(frozen=True)
class TokenRead:
    """Log-probabilities of ``tokens`` as the token after logical position ``position`` of sequence
    ``branch`` of tree ``tree`` (negative positions count from the sequence's end)."""

    tree: int
    branch: int
    position: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class ResidualRead:
    """A weighted sum of residuals over logical positions of one sequence (one token, or a mean over a span);
    no positions reads zeros (an option the item does not have)."""

    tree: int
    branch: int
    weights: tuple[tuple[int, float], ...]


def _column(batch: PackedBatch, row: int, branch: int, position: int) -> int:
    cols = batch.columns[row][branch]
    if not -len(cols) <= position < len(cols):
        raise InputError(f"position {position} is outside a sequence of {len(cols)} tokens")
    return cols[position]


@torch.no_grad()
def tree_readout(lm: "LoadedModel", trees: Sequence[Tree], token_reads: Sequence[TokenRead],
                 residual_reads: Sequence[ResidualRead] = (), hooks: Sequence[str] = (), *,
                 max_batch_tokens: int | None = 1536, max_rows: int = 64,
                 on_batch=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Everything one pass over packed trees gives: next-token log-probabilities (one float64 array per token
    read) and residuals at ``hooks`` (``[len(residual_reads), len(hooks), d_model]`` float32). The unembedding
    runs only where a token read needs it. ``on_batch(n)`` gets the number of sequences finished."""
    by_tree_t: dict[int, list[int]] = {}
    for k, r in enumerate(token_reads):
        by_tree_t.setdefault(r.tree, []).append(k)
    by_tree_r: dict[int, list[int]] = {}
    for k, r in enumerate(residual_reads):
        by_tree_r.setdefault(r.tree, []).append(k)
    resid = np.zeros((len(residual_reads), len(hooks), lm.d_model), dtype=np.float32)
    dtype = next(lm.hf_model.parameters()).dtype
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    vocab = VocabularyReads(lm)
    for chosen in tree_batches(trees, max_batch_tokens if max_batch_tokens is not None else 8192, max_rows):
        batch = pack_trees([trees[t] for t in chosen], pad_id=pad, dtype=dtype, device=lm.device)
        columns, read_ids = [], []
        weights: list[tuple[int, int, float]] = []  # (read slot, flat column, weight)
        resid_ids = []
        for r, t in enumerate(chosen):
            for k in by_tree_t.get(t, []):
                tr = token_reads[k]
                columns.append(r * batch.width + _column(batch, r, tr.branch, tr.position))
                read_ids.append(k)
            for k in by_tree_r.get(t, []):
                rr = residual_reads[k]
                slot = len(resid_ids)
                resid_ids.append(k)
                weights += [(slot, r * batch.width + _column(batch, r, rr.branch, p), w) for p, w in rr.weights]
        flat = torch.tensor(columns, dtype=torch.long)
        got: dict[int, torch.Tensor] = {}
        fwd = []
        if resid_ids:
            W = torch.zeros((len(resid_ids), len(chosen) * batch.width), device=lm.device)
            for slot, col, w in weights:
                W[slot, col] += w

            def keeper(h: int):
                def keep(x: torch.Tensor, hook: object = None) -> torch.Tensor:
                    # x may sit on another device than the input (a model split over GPUs with device_map)
                    got[h] = W.to(x.device) @ x.reshape(-1, x.shape[-1]).float()
                    return x
                return keep

            fwd = [(name, keeper(h)) for h, name in enumerate(hooks)]
        read_hook = vocab.hook(lambda x: x.reshape(-1, x.shape[-1])[flat.to(x.device)],
                               [(k, token_reads[k].tokens) for k in read_ids])
        output = lm.bridge.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                                          position_ids=batch.position_ids, fwd_hooks=fwd + [read_hook])
        vocab.after_forward(output)
        if resid_ids:
            missing = [name for h, name in enumerate(hooks) if h not in got]
            if missing:
                raise InputError(f"hook(s) {missing} did not fire in {lm.name}")
            for h in range(len(hooks)):
                resid[resid_ids, h] = got[h].cpu().numpy()
        if on_batch:
            on_batch(sum(len(trees[t].branches) for t in chosen))
    vocab.flush()
    logprobs = [vocab.logprobs.get(k, np.zeros(0)) for k in range(len(token_reads))]
    return logprobs, resid



_SUPPORTED: dict[int, bool] = {}


def packing_supported(lm: "LoadedModel", tol: float = 1e-3) -> bool:
    """Whether this model honours packed trees (checked once per loaded model): two branches after a shared
    prefix must give the logits their sequences give alone. A model whose forward rejects 4D masks or position
    ids gets False, and its callers run sequences separately."""
    key = id(lm.bridge)
    if key not in _SUPPORTED:
        ids = lm.tokenizer.encode("Answer the following question. Is it right to help a friend? Answer:")
        seqs = [ids, ids[:-2] + ids[-1:]]
        try:
            with torch.no_grad():
                tree = tree_of(seqs)
                batch = pack_trees([tree], pad_id=0, dtype=next(lm.hf_model.parameters()).dtype, device=lm.device)
                logits = packed_forward(lm, batch, [(0, batch.width - 1)])  # the last branch ends the row
                alone = lm.bridge.run_with_hooks(torch.tensor([seqs[1]], device=lm.device))[0, -1]
            _SUPPORTED[key] = bool((logits[0].float() - alone.float()).abs().max() < tol * max(1.0, float(alone.abs().max())))
        except Exception:  # noqa: BLE001 - any failure means: do not pack this model
            _SUPPORTED[key] = False
    return _SUPPORTED[key]


def packable(lm: "LoadedModel", trees: Sequence[Tree]) -> list[int]:
    """Indices of the trees that can run packed on this model (it honours packed masks, and the tree fits its
    sliding window); the others must run as separate sequences."""
    if not trees or not packing_supported(lm):
        return []
    return [t for t, tree in enumerate(trees) if fits_window(lm, tree.longest)]
