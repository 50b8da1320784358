"""Runners that place a learned subspace's interchange in a model, for :mod:`wdprobe.methods.subspace`.

Two instruments share the subspace kernel and differ only in where the source activation comes from:

- :class:`PairInterchange`: one model, counterfactual pairs. Base prompt i's residual at the decision point (the last
  prompt token, which predicts the first answer token) takes source prompt i's component in the subspace; the base's
  options are then scored as continuations (per-token mean log-likelihood, the cloze reading). Learned on word pairs
  and run on deed pairs, the same subspace is the cross-form instrument: each form read in its own token space.
- :class:`CrossModelInterchange`: two models with one tokenizer on the same prompts (a parent and an organism, a base
  and an aligned model): the reference's activation takes the variant's component at chosen positions (every token by
  default). Its IIA is the share of items where the reference then chooses as the variant does.

A runner is called as ``run(subspace, rows) -> [len(rows), n_options]`` scores, differentiable in the subspace and
never in the model (parameters are frozen for the call), and gives :meth:`first_order` inputs (the margin's gradients
at the intervened positions and the source-minus-base activations) for :func:`~wdprobe.methods.subspace.first_order_basis`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from wdprobe.core.forward import prompt_token_ids
from wdprobe.errors import InterventionError
from wdprobe.methods.cross_model import (
    POSITION_CLASSES,
    check_same_architecture,
    continuation_logprob_tensor,
    option_sequences,
    patch_mask,
    record_activations,
    right_padded,
)
from wdprobe.methods.patching import frozen_parameters
from wdprobe.methods.subspace import Subspace

if TYPE_CHECKING:  # pragma: no cover
    from wdprobe.core.model import LoadedModel


def _check_hook(lm: "LoadedModel", hook: str) -> None:
    if hook not in lm.bridge.hook_dict:
        raise InterventionError(f"hook {hook!r} does not exist in {lm.name}")


def _n_options(options: Sequence[Sequence[str]]) -> int:
    counts = {len(o) for o in options}
    if len(counts) != 1 or min(counts) < 2:
        raise InterventionError(f"every pair needs the same number (>= 2) of options; got counts {sorted(counts)}")
    return counts.pop()


class _OptionRows:
    """Option sequences of base prompts, laid out option by option, and the scoring of chosen rows."""

    def __init__(self, lm: "LoadedModel", prompts: Sequence[str], options: Sequence[Sequence[str]]) -> None:
        if len(prompts) != len(options):
            raise InterventionError(f"{len(prompts)} prompts but {len(options)} option lists")
        if not prompts:
            raise InterventionError("no prompts to intervene on")
        self.lm, self.k = lm, _n_options(options)
        self.seqs, self.starts = option_sequences(lm, prompts, options)
        self.n_tokens = torch.tensor([len(s) - st for s, st in zip(self.seqs, self.starts)], dtype=torch.float32)
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.seqs) // self.k

    def layout(self, rows: Sequence[int]) -> tuple[list[int], torch.Tensor, torch.Tensor, list[int], list[int]]:
        bad = [r for r in rows if not 0 <= int(r) < len(self)]
        if bad:
            raise InterventionError(f"rows {bad[:3]} outside 0..{len(self) - 1}")
        seq = [int(r) * self.k + j for r in rows for j in range(self.k)]
        ids, mask = right_padded([self.seqs[s] for s in seq], self.pad)
        return seq, ids, mask, [len(self.seqs[s]) for s in seq], [self.starts[s] for s in seq]

    def scores(self, lm: "LoadedModel", rows: Sequence[int], hooks=()) -> torch.Tensor:
        seq, ids, mask, lengths, starts = self.layout(rows)
        with frozen_parameters(lm.hf_model):
            total = continuation_logprob_tensor(lm, ids, mask, lengths, starts, hooks)
        return (total / self.n_tokens[seq]).view(len(rows), self.k)


def _margin_gradient(lm: "LoadedModel", rows: _OptionRows, hook: str, chosen: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of each chosen row's margin (first option's mean score minus the second's) with respect to the
    activation at ``hook``, and that activation, ``[sequence, pos, d]`` each on the CPU."""
    seen: dict[str, torch.Tensor] = {}

    def hook_fn(x, hook=None):
        delta = torch.zeros_like(x, dtype=torch.float32, requires_grad=True)
        seen["delta"], seen["x"] = delta, x.detach()
        return x + delta.to(x.dtype)

    with torch.enable_grad():
        s = rows.scores(lm, chosen, [(hook, hook_fn)])
        (s[:, 0] - s[:, 1]).sum().backward()
    return seen["delta"].grad.float().cpu(), seen["x"].float().cpu()


class PairInterchange:
    """Interchange at ``hook`` of one model between base and source prompts, at each prompt's decision point."""

    def __init__(self, lm: "LoadedModel", hook: str, base_prompts: Sequence[str], base_options: Sequence[Sequence[str]],
                 source_prompts: Sequence[str], *, batch_size: int = 16) -> None:
        _check_hook(lm, hook)
        if len(source_prompts) != len(base_prompts):
            raise InterventionError(f"{len(base_prompts)} base prompts but {len(source_prompts)} source prompts")
        self.lm, self.hook = lm, hook
        self.rows = _OptionRows(lm, base_prompts, base_options)
        self.sources = self._decision_residuals(source_prompts, batch_size)

    def _decision_residuals(self, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
        heads = prompt_token_ids(self.lm.tokenizer, prompts)
        out = torch.zeros((len(heads), self.lm.d_model), dtype=torch.float32)
        for b in range(0, len(heads), batch_size):
            chunk = heads[b:b + batch_size]
            ids, mask = right_padded(chunk, self.rows.pad)
            x = record_activations(self.lm, ids, mask, [self.hook])[self.hook]
            last = torch.tensor([len(h) - 1 for h in chunk])
            out[b:b + len(chunk)] = x[torch.arange(len(chunk)), last.to(x.device)].float().cpu()
        return out

    def __len__(self) -> int:
        return len(self.rows)

    def _where(self, rows: Sequence[int]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        seq, _, _, _, starts = self.rows.layout(rows)
        pos = torch.tensor([s - 1 for s in starts])
        src = self.sources[[int(r) for r in rows for _ in range(self.rows.k)]]
        return seq, pos, src

    def __call__(self, subspace: Subspace, rows: Sequence[int]) -> torch.Tensor:
        _, pos, src = self._where(rows)

        def setter(x, hook=None):
            at = torch.arange(x.shape[0], device=x.device)
            new = x.clone()
            new[at, pos.to(x.device)] = subspace.interchange(x[at, pos.to(x.device)], src.to(x.device))
            return new

        return self.rows.scores(self.lm, rows, [(self.hook, setter)])

    def first_order(self, rows: Sequence[int], *, batch_size: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per row: the gradient of its margin (first option's mean score minus the second's) at the decision points
        of its option sequences, ``[k, d]``, and source minus base activation there (``batch_size`` rows a pass)."""
        if self.rows.k != 2:
            raise InterventionError("the first-order start reads two-option pairs")
        grads: list[np.ndarray] = []
        deltas: list[np.ndarray] = []
        for b in range(0, len(rows), batch_size):
            chunk = list(rows[b:b + batch_size])
            _, pos, src = self._where(chunk)
            grad, base = _margin_gradient(self.lm, self.rows, self.hook, chunk)
            at = torch.arange(len(pos))
            grad, delta = grad[at, pos], src - base[at, pos]
            grads += [grad[2 * i:2 * i + 2].numpy() for i in range(len(chunk))]
            deltas += [delta[2 * i:2 * i + 2].numpy() for i in range(len(chunk))]
        return grads, deltas


class CrossModelInterchange:
    """Interchange at ``hook`` from ``variant`` into ``reference`` on the same prompts and options, at ``positions``
    (``all`` real tokens, the ``prompt`` before the decision point, or the ``continuation``)."""

    def __init__(self, reference: "LoadedModel", variant: "LoadedModel", hook: str, prompts: Sequence[str],
                 options: Sequence[Sequence[str]], *, positions: str = "all") -> None:
        if positions not in POSITION_CLASSES:
            raise InterventionError(f"positions {positions!r}: choose from {', '.join(POSITION_CLASSES)}")
        check_same_architecture(reference, variant, [])
        for lm in (reference, variant):
            _check_hook(lm, hook)
        self.reference, self.variant, self.hook, self.positions = reference, variant, hook, positions
        self.rows = _OptionRows(reference, prompts, options)
        self._source: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def clean(self, rows: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Option scores of the reference and of the variant without intervention, ``[len(rows), k]`` each."""
        rows = list(range(len(self))) if rows is None else list(rows)
        with torch.no_grad():
            return (self.rows.scores(self.reference, rows).double().numpy(),
                    self.rows.scores(self.variant, rows).double().numpy())

    def _sources(self, seq: Sequence[int], width: int) -> torch.Tensor:
        """The variant's activations at the hook for sequences ``seq``, right-padded to ``width`` (recorded once)."""
        todo = [s for s in seq if s not in self._source]
        if todo:
            ids, mask = right_padded([self.rows.seqs[s] for s in todo], self.rows.pad)
            x = record_activations(self.variant, ids, mask, [self.hook])[self.hook].float().cpu()
            for i, s in enumerate(todo):
                self._source[s] = x[i, :len(self.rows.seqs[s])].clone()
        out = torch.zeros((len(seq), width, self.reference.d_model), dtype=torch.float32)
        for i, s in enumerate(seq):
            out[i, :len(self.rows.seqs[s])] = self._source[s]
        return out

    def _where(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seq, ids, _, lengths, starts = self.rows.layout(rows)
        return patch_mask(lengths, starts, ids.shape[1], self.positions), self._sources(seq, ids.shape[1])

    def __call__(self, subspace: Subspace, rows: Sequence[int]) -> torch.Tensor:
        where, src = self._where(rows)

        def setter(x, hook=None):
            w = where.to(x.device)[..., None]
            return torch.where(w, subspace.interchange(x, src.to(x.device)), x)

        return self.rows.scores(self.reference, rows, [(self.hook, setter)])

    def first_order(self, rows: Sequence[int], *, batch_size: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per row: the margin's gradient at every intervened position of its option sequences, ``[pos, d]``, and the
        variant-minus-reference activation there (``batch_size`` rows a pass)."""
        if self.rows.k != 2:
            raise InterventionError("the first-order start reads two-option items")
        grads: list[np.ndarray] = []
        deltas: list[np.ndarray] = []
        for b in range(0, len(rows), batch_size):
            chunk = list(rows[b:b + batch_size])
            where, src = self._where(chunk)
            grad, base = _margin_gradient(self.reference, self.rows, self.hook, chunk)
            diff = src - base
            for i in range(len(chunk)):
                pick = [2 * i, 2 * i + 1]
                grads.append(grad[pick][where[pick]].numpy())
                deltas.append(diff[pick][where[pick]].numpy())
        return grads, deltas
