"""The subspace kernel on planted toys (a read-out that sees one direction, or two): training recovers the planted
subspace and reaches full interchange accuracy, fails on labels that no subspace carries, the first-order start is
exact for a linear read-out, and bad input is refused."""
import numpy as np
import pytest
import torch

from wdprobe.errors import InterventionError
from wdprobe.methods.subspace import (
    SUBSPACE_KINDS,
    Direction,
    Subspace,
    first_order_basis,
    fit_subspace,
    interchange_accuracy,
    interchange_scores,
    make_subspace,
    register_subspace_kind,
    subspace_cosine,
)

D = 8


def _toy(n: int, seed: int, readers: np.ndarray):
    """Bases and sources in R^D, a read-out whose option scores are ``readers @ h``; each pair's label is the option
    the *source* gets (what an interchange of the variable the readers see should give the base)."""
    rng = np.random.default_rng(seed)
    base = torch.tensor(rng.standard_normal((n, D)), dtype=torch.float32)
    source = torch.tensor(rng.standard_normal((n, D)), dtype=torch.float32)
    w = torch.tensor(readers, dtype=torch.float32)
    labels = (source @ w.T).argmax(1).numpy()

    def run(sub: Subspace, rows):
        rows = list(rows)
        return sub.interchange(base[rows], source[rows]) @ w.T * 3.0

    return run, labels, base, source


def _planted(seed: int = 1) -> np.ndarray:
    p = np.random.default_rng(seed).standard_normal(D)
    return p / np.linalg.norm(p)


def test_one_direction_is_recovered_with_full_interchange_accuracy():
    p = _planted()
    run, labels, _, _ = _toy(240, 0, np.stack([p, -p]))
    sub = make_subspace("direction", D, seed=3)
    fit = fit_subspace(sub, run, labels, list(range(160)), epochs=40, batch_size=32, lr=0.05)
    held = list(range(160, 240))
    assert interchange_accuracy(interchange_scores(sub, run, held), labels[held]) >= 0.95
    assert subspace_cosine(sub.directions(), p) > 0.95
    assert fit.losses[-1] < fit.losses[0]


def test_labels_no_subspace_carries_are_not_learned():
    p = _planted()
    run, _, _, _ = _toy(240, 0, np.stack([p, -p]))
    noise = np.random.default_rng(9).integers(0, 2, 240)  # unrelated to the sources
    sub = make_subspace("direction", D, seed=3)
    fit_subspace(sub, run, noise, list(range(160)), epochs=40, batch_size=32, lr=0.05)
    held = list(range(160, 240))
    assert interchange_accuracy(interchange_scores(sub, run, held), noise[held]) < 0.7


def test_a_rotation_holds_a_planted_two_dimensional_variable():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((D, 3)))
    readers = q.T  # three options, each read along its own direction: the choice sees their two differences
    run, labels, _, _ = _toy(300, 2, readers)
    sub = make_subspace("rotation", D, k=2, seed=0)
    fit_subspace(sub, run, labels, list(range(220)), epochs=100, batch_size=32, lr=0.05)
    held = list(range(220, 300))
    # the learned span is the planted one (principal cosines about 0.99); held-out IIA then sits near 0.9 whatever the
    # floating-point path (0.89-0.91 across thread counts: three-way near-ties flip), so it is checked with margin
    # against a random 2-d subspace's, not at a knife's edge
    iia = interchange_accuracy(interchange_scores(sub, run, held), labels[held])
    chance = interchange_accuracy(interchange_scores(make_subspace("rotation", D, k=2, seed=7), run, held), labels[held])
    assert iia >= 0.85 and iia >= chance + 0.3
    learned = sub.directions()
    assert learned.shape == (D, 2)
    for a, b in ((0, 1), (1, 2)):
        assert subspace_cosine(learned, readers[a] - readers[b]) > 0.95


def test_boundless_keeps_few_dimensions_and_the_planted_one():
    p = _planted(5)
    run, labels, _, _ = _toy(240, 1, np.stack([p, -p]))
    sub = make_subspace("boundless", D, k=4, seed=0)
    fit_subspace(sub, run, labels, list(range(160)), epochs=100, batch_size=32, lr=0.05, temperature=(5.0, 0.05))
    held = list(range(160, 240))
    assert interchange_accuracy(interchange_scores(sub, run, held), labels[held]) >= 0.9
    kept = sub.directions()
    assert kept.shape[1] <= 2
    assert subspace_cosine(kept, p) > 0.9


def test_first_order_gain_is_exact_for_a_linear_read_out():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(D)
    base, source = rng.standard_normal((5, D)), rng.standard_normal((5, D))
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    grads = [w[None]] * 5  # margin = w . h: its gradient is w at every pair
    deltas = [(s - b)[None] for s, b in zip(source, base)]
    signs = np.sign(rng.standard_normal(5))
    _, _ = first_order_basis(grads, deltas, signs)
    c = sum(s * np.outer(g[0], dl[0]) for s, g, dl in zip(signs, grads, deltas))
    moved = sum(s * (w @ (b + u * (u @ (src - b))) - w @ b) for s, b, src in zip(signs, base, source))
    assert u @ c @ u == pytest.approx(moved, abs=1e-10)
    top, vals = first_order_basis(grads, deltas, signs, k=2)
    assert top.shape == (D, 2) and vals[0] >= vals[1]
    assert top[:, 0] @ ((c + c.T) / 2) @ top[:, 0] == pytest.approx(vals[0])


def test_the_first_order_start_finds_the_planted_direction_on_the_toy():
    p = _planted(2)
    run, labels, base, source = _toy(200, 3, np.stack([p, -p]))
    g = [(3.0 * 2 * p)[None]] * 200  # margin = 6 p . h
    deltas = [(source[i] - base[i]).numpy()[None] for i in range(200)]
    signs = [1.0 if lab == 0 else -1.0 for lab in labels]
    top, _ = first_order_basis(g, deltas, signs)
    assert subspace_cosine(top, p) > 0.9
    sub = make_subspace("direction", D)
    sub.start_from(top)
    assert subspace_cosine(sub.directions(), p) > 0.9


def test_training_is_seeded():
    p = _planted()
    run, labels, _, _ = _toy(64, 0, np.stack([p, -p]))
    a, b = (make_subspace("direction", D, seed=1) for _ in range(2))
    for s in (a, b):
        fit_subspace(s, run, labels, list(range(64)), epochs=3, batch_size=16, seed=7)
    assert np.array_equal(a.directions(), b.directions())


def test_the_interchange_replaces_only_the_subspace_component():
    sub = make_subspace("rotation", D, k=2, seed=0)
    b, s = torch.randn(4, D), torch.randn(4, D)
    out = sub.interchange(b, s)
    basis = sub.basis().detach()
    assert torch.allclose(out @ basis, s @ basis, atol=1e-5)
    rest = torch.eye(D) - basis @ basis.T
    assert torch.allclose(out @ rest, b @ rest, atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(InterventionError, match="unknown subspace kind 'cube'"):
        make_subspace("cube", D)
    with pytest.raises(InterventionError, match="9 dimensions in a space of 8"):
        make_subspace("rotation", D, k=9)
    with pytest.raises(InterventionError, match="registered already"):
        register_subspace_kind(Direction)
    with pytest.raises(InterventionError, match="no training pairs"):
        fit_subspace(make_subspace("direction", D), lambda s, r: torch.zeros(len(r), 2), [0], [])
    with pytest.raises(InterventionError, match="3 scored pairs for 2 labels"):
        interchange_accuracy(np.zeros((3, 2)), [0, 1])
    with pytest.raises(InterventionError, match="differ in shape"):
        first_order_basis([np.zeros((2, D))], [np.zeros((1, D))])
    assert set(SUBSPACE_KINDS) >= {"direction", "rotation", "boundless"}


def test_a_new_subspace_kind_is_one_class_and_one_registry_line():
    """The worked example of docs/guides/new-variant.md: a direction held to the span of given candidates."""
    p = _planted(3)
    rng = np.random.default_rng(0)
    candidates = torch.tensor(np.stack([p + 0.3 * rng.standard_normal(D), rng.standard_normal(D)], 1), dtype=torch.float32)

    class InSpan(Subspace):
        name = "in-span-test"

        def __init__(self, d, k=1, *, seed=0):
            super().__init__(d, 1)
            self.span = torch.linalg.qr(candidates)[0]
            self.weights = torch.nn.Parameter(torch.ones(self.span.shape[1]))

        def basis(self):
            v = self.span @ self.weights
            return (v / v.norm())[:, None]

        def start_from(self, basis):
            with torch.no_grad():
                self.weights.copy_(self.span.T @ torch.as_tensor(basis[:, 0], dtype=torch.float32))

    register_subspace_kind(InSpan)
    try:
        run, labels, _, _ = _toy(200, 0, np.stack([p, -p]))
        sub = make_subspace("in-span-test", D)
        fit_subspace(sub, run, labels, list(range(150)), epochs=30, batch_size=25, lr=0.05)
        learned = sub.directions()[:, 0]
        span = np.linalg.qr(candidates.numpy())[0]
        assert np.allclose(span @ (span.T @ learned), learned, atol=1e-5)  # it stayed in the span
        best = span @ (span.T @ p)
        assert subspace_cosine(sub.directions(), best / np.linalg.norm(best)) > 0.95  # the span's best direction
    finally:
        SUBSPACE_KINDS.pop("in-span-test")
