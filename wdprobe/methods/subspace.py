"""Interchange interventions on a learned subspace (distributed alignment search, DAS).

A probe shows a variable is *decodable* from a layer; an interchange intervention asks whether the model *uses* it
there. A subspace of the activation (orthonormal basis ``B``, ``[d, k]``) is hypothesised to carry a causal variable;
the base run's activation ``h`` takes the source run's component in it, ``h' = h + B diag(m) B^T (s - h)``, and the
base should then answer as the variable's source value dictates. The subspace is learned from counterfactual pairs by
gradient descent through the model (Geiger et al. 2023); its interchange-intervention accuracy (IIA) on held-out pairs
says whether the variable lives there.

Subspace kinds (one class and one :func:`register_subspace_kind` line each, :data:`SUBSPACE_KINDS`):

- ``direction``: one unit vector (1-d DAS);
- ``rotation``: ``k`` orthonormal directions (torch's orthogonal parametrisation);
- ``boundless``: a full learned rotation with a learned boundary, ``m_i = sigmoid((b - i) / T)`` over the rotated
  coordinates, ``T`` annealed and the mask's size penalised, so the data choose how many dimensions the variable
  takes (Boundless DAS, Wu et al. 2023).

The kernel is model-free. The caller passes a *runner*, ``run(subspace, rows) -> scores [len(rows), n_options]``,
differentiable in the subspace, which places the interchange wherever the instrument says (one model's decision
point, every position of two models on one prompt); the kernel owns the training loop, the first-order start and the
accuracy. :func:`first_order_basis` is the closed-form start: to first order the interchange along a unit ``u`` moves
pair i's margin by ``u^T (G_i^T D_i) u`` (``G_i`` the margin's gradients at the intervened positions, ``D_i`` the
source-minus-base activations), so the top eigenvectors of the signed, symmetrised sum are the directions that move
every pair furthest toward its label (exact when the read-out is linear in the activation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Float

from wdprobe.errors import InterventionError

Runner = Callable[["Subspace", Sequence[int]], torch.Tensor]


class Subspace(torch.nn.Module):
    """Where an interchange acts. Subclasses set ``name`` and implement :meth:`basis` and :meth:`mask`; a new kind is
    one subclass and one :func:`register_subspace_kind` line (see ``docs/guides/new-variant.md``)."""

    name: ClassVar[str]

    def __init__(self, d: int, k: int = 1) -> None:
        super().__init__()
        if d < 1 or not 1 <= k <= d:
            raise InterventionError(f"a subspace of {k} dimensions in a space of {d} is not possible")
        self.d, self.k = int(d), int(k)
        self.temperature = 1.0

    def basis(self) -> Float[torch.Tensor, "d k"]:
        raise NotImplementedError

    def mask(self) -> Float[torch.Tensor, "k"]:
        """Weight of each basis direction in the interchange (1 everywhere unless the kind learns a boundary)."""
        return torch.ones(self.k)

    def penalty(self) -> torch.Tensor:
        """Added to the training loss (the boundless kind's size penalty)."""
        return torch.zeros(())

    def interchange(self, base: Float[torch.Tensor, "... d"], source: Float[torch.Tensor, "... d"]
                    ) -> Float[torch.Tensor, "... d"]:
        """``base`` with its component in the subspace replaced by ``source``'s (in ``base``'s dtype)."""
        b = self.basis().to(device=base.device, dtype=torch.float32)  # the subspace may live on another device
        diff = (source.to(device=base.device, dtype=torch.float32) - base.to(torch.float32)) @ b
        return (base.to(torch.float32) + (diff * self.mask().to(diff.device)) @ b.T).to(base.dtype)

    def start_from(self, basis: Float[np.ndarray, "d j"]) -> None:
        """Begin training from ``basis``'s first columns (orthonormalised)."""
        raise NotImplementedError

    @torch.no_grad()
    def directions(self) -> Float[np.ndarray, "d k"]:
        """The directions the interchange uses once trained (a boundless subspace: those its mask keeps)."""
        b, m = self.basis().detach().float().cpu(), self.mask().detach().float().cpu()
        keep = m >= 0.5
        if not bool(keep.any()):
            keep = m == m.max()
        return b[:, keep].numpy()


SUBSPACE_KINDS: dict[str, type[Subspace]] = {}


def register_subspace_kind(kind: type[Subspace]) -> type[Subspace]:
    """Add a subspace kind to :data:`SUBSPACE_KINDS` (refused when the name is taken)."""
    if kind.name in SUBSPACE_KINDS:
        raise InterventionError(f"subspace kind {kind.name!r} is registered already")
    SUBSPACE_KINDS[kind.name] = kind
    return kind


def _orthonormal_columns(basis: np.ndarray, d: int, k: int, seed: int = 0) -> torch.Tensor:
    """``basis``'s first ``k`` columns made orthonormal, completed with seeded random columns when it has fewer."""
    b = np.asarray(basis, dtype=np.float64).reshape(d, -1)[:, :k]
    if b.shape[1] < k:
        rng = np.random.default_rng(seed)
        b = np.concatenate([b, rng.standard_normal((d, k - b.shape[1]))], 1)
    q, _ = np.linalg.qr(b)
    return torch.tensor(q[:, :k] * np.sign(np.sum(q[:, :k] * b, 0) + 1e-30), dtype=torch.float32)


@register_subspace_kind
class Direction(Subspace):
    """One unit vector: the variable is a single direction (1-d DAS)."""

    name = "direction"

    def __init__(self, d: int, k: int = 1, *, seed: int = 0) -> None:
        super().__init__(d, 1)
        g = torch.Generator().manual_seed(seed)
        self.vector = torch.nn.Parameter(torch.randn(d, generator=g))

    def basis(self) -> torch.Tensor:
        return (self.vector / self.vector.norm().clamp_min(1e-12))[:, None]

    def start_from(self, basis: np.ndarray) -> None:
        with torch.no_grad():
            self.vector.copy_(_orthonormal_columns(basis, self.d, 1)[:, 0])


@register_subspace_kind
class Rotation(Subspace):
    """``k`` orthonormal directions, kept orthonormal by torch's orthogonal parametrisation."""

    name = "rotation"

    def __init__(self, d: int, k: int = 1, *, seed: int = 0) -> None:
        super().__init__(d, k)
        g = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(d, k, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(k, d, generator=g))
        torch.nn.utils.parametrizations.orthogonal(self.linear)

    def basis(self) -> torch.Tensor:
        return self.linear.weight.T

    def start_from(self, basis: np.ndarray) -> None:
        q = _orthonormal_columns(basis, self.d, self.k)
        with torch.no_grad():
            self.linear.weight = q.T.contiguous()


@register_subspace_kind
class Boundless(Rotation):
    """A full rotation whose first coordinates are interchanged up to a learned boundary ``b``:
    ``m_i = sigmoid((b - i) / T)``. The trainer anneals ``T`` and the loss penalises ``sum(m) / d``."""

    name = "boundless"
    size_weight = 1.0  # the penalty on the mask's size (its share of the d dimensions), beside the interchange loss

    def __init__(self, d: int, k: int = 1, *, seed: int = 0) -> None:
        super().__init__(d, d, seed=seed)
        self.boundary = torch.nn.Parameter(torch.tensor(float(max(k, 1))))

    def mask(self) -> torch.Tensor:
        i = torch.arange(self.d, dtype=torch.float32, device=self.boundary.device)
        return torch.sigmoid((self.boundary - i - 0.5) / max(self.temperature, 1e-3))

    def penalty(self) -> torch.Tensor:
        return self.size_weight * self.mask().sum() / self.d


def make_subspace(kind: str, d: int, k: int = 1, *, seed: int = 0) -> Subspace:
    """A subspace of the registered ``kind`` (``k``: its dimension, or a boundless one's starting boundary)."""
    if kind not in SUBSPACE_KINDS:
        raise InterventionError(f"unknown subspace kind {kind!r}: choose from {', '.join(SUBSPACE_KINDS)}")
    return SUBSPACE_KINDS[kind](d, k, seed=seed)


def first_order_basis(grads: Sequence[Float[np.ndarray, "pos d"]], deltas: Sequence[Float[np.ndarray, "pos d"]],
                      signs: Sequence[float] | None = None, k: int = 1) -> tuple[Float[np.ndarray, "d k"], np.ndarray]:
    """The ``k`` directions whose interchange moves the pairs' margins furthest toward their labels, to first order.

    ``grads[i]``: the gradient of pair i's margin (first option's score minus the second's, or any signed read-out)
    at each intervened position; ``deltas[i]``: source minus base activation there; ``signs[i]``: +1 where the label
    wants the margin up, -1 down (default +1). Returns the top-``k`` eigenvectors of ``sym(sum_i s_i G_i^T D_i)`` and
    all its eigenvalues, largest first (the first-order margin gain of each direction, summed over pairs)."""
    if len(grads) != len(deltas) or not grads:
        raise InterventionError(f"{len(grads)} gradients for {len(deltas)} activation differences")
    signs = [1.0] * len(grads) if signs is None else list(signs)
    d = np.asarray(grads[0]).shape[-1]
    c = np.zeros((d, d))
    for g, delta, s in zip(grads, deltas, signs):
        g, delta = np.asarray(g, np.float64).reshape(-1, d), np.asarray(delta, np.float64).reshape(-1, d)
        if g.shape != delta.shape:
            raise InterventionError(f"gradient {g.shape} and activation difference {delta.shape} differ in shape")
        c += float(s) * g.T @ delta
    c = (c + c.T) / 2
    vals, vecs = np.linalg.eigh(c)
    order = np.argsort(-vals)
    return vecs[:, order[:k]], vals[order]


@dataclass
class FittedSubspace:
    """A trained subspace with its training trace: loss and training IIA per epoch."""

    subspace: Subspace
    losses: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    epochs: int = 0


def _batches(rows: Sequence[int], size: int, rng: np.random.Generator) -> list[list[int]]:
    order = [rows[i] for i in rng.permutation(len(rows))]
    return [order[b:b + size] for b in range(0, len(order), size)]


def fit_subspace(subspace: Subspace, run: Runner, labels: Sequence[int], rows: Sequence[int], *, epochs: int = 10,
                 batch_size: int = 16, lr: float = 1e-2, seed: int = 0,
                 temperature: tuple[float, float] = (10.0, 0.1),
                 progress: Callable[[int, float], None] | None = None) -> FittedSubspace:
    """Train ``subspace`` so that the interchanged base runs answer ``labels`` on ``rows`` (cross-entropy over the
    runner's option scores, plus the kind's penalty); ``temperature`` (first, last) is annealed geometrically over the
    epochs for kinds with a boundary. Seeded: the same call gives the same subspace.

    ``labels``: one option per pair, or ``[pair, option]`` probabilities (soft targets: e.g. a variant model's own
    choice distribution, which only the subspace that carries *all* of its difference reproduces; hard labels are
    met by any subspace that carries enough of it, so with few pairs they do not identify a direction)."""
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2):
        raise InterventionError(f"labels of shape {labels.shape}: one option per pair or [pair, option] probabilities")
    if not rows:
        raise InterventionError("no training pairs")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise InterventionError(f"epochs {epochs}, batch size {batch_size}, lr {lr}: all must be positive")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(subspace.parameters(), lr=lr)
    fitted = FittedSubspace(subspace)
    t0, t1 = temperature
    for epoch in range(epochs):
        subspace.temperature = t0 * (t1 / t0) ** (epoch / max(epochs - 1, 1))
        total, correct, n = 0.0, 0, 0
        for batch in _batches(list(rows), batch_size, rng):
            with torch.enable_grad():
                scores = run(subspace, batch).float()
                if labels.ndim == 1:
                    target = torch.as_tensor(labels[batch], dtype=torch.long, device=scores.device)
                else:
                    target = torch.as_tensor(labels[batch], dtype=torch.float32, device=scores.device)
                loss = torch.nn.functional.cross_entropy(scores, target) + subspace.penalty().to(scores.device)
                opt.zero_grad()
                loss.backward()
                opt.step()
            total += float(loss.detach()) * len(batch)
            hard = target if labels.ndim == 1 else target.argmax(1)
            correct += int((scores.detach().argmax(1) == hard).sum())
            n += len(batch)
        fitted.losses.append(total / n)
        fitted.train_accuracy.append(correct / n)
        fitted.epochs = epoch + 1
        if progress:
            progress(epoch, total / n)
        if not math.isfinite(total):
            raise InterventionError(f"interchange training diverged at epoch {epoch} (loss {total})")
    return fitted


@torch.no_grad()
def interchange_scores(subspace: Subspace, run: Runner, rows: Sequence[int], *, batch_size: int = 16
                       ) -> Float[np.ndarray, "row option"]:
    """The runner's option scores on ``rows`` under the interchange (no gradients)."""
    out = [run(subspace, list(rows[b:b + batch_size])).float().cpu().numpy() for b in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 2))


def interchange_accuracy(scores: Float[np.ndarray, "row option"], labels: Sequence[int] | np.ndarray) -> float:
    """Interchange-intervention accuracy: the share of pairs whose intervened answer is their label (the most
    probable option of soft labels)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(1)
    if scores.shape[0] != labels.shape[0]:
        raise InterventionError(f"{scores.shape[0]} scored pairs for {labels.shape[0]} labels")
    return float(np.mean(scores.argmax(1) == labels)) if labels.size else float("nan")


def subspace_cosine(learned: Float[np.ndarray, "d k"], planted: Float[np.ndarray, "d"]) -> float:
    """How much of a planted unit direction the learned subspace holds: the norm of its projection (|cos| for 1-d)."""
    b = np.asarray(learned, np.float64).reshape(len(planted), -1)
    p = np.asarray(planted, np.float64)
    p = p / max(np.linalg.norm(p), 1e-30)
    q, _ = np.linalg.qr(b)
    return float(np.linalg.norm(q.T @ p))
