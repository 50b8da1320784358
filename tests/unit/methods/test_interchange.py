"""Interchange runners on a tiny Gemma-3: a variant that differs from its reference by a planted vector added after
one block. Below the block the interchange changes nothing; at the block the planted direction carries all of the
variant's behaviour and training finds it; a full-rank subspace is exact patching; the decision-point runner equals
the source's own reading where nothing after the decision point could differ."""
import numpy as np
import pytest
import torch

from wdprobe.core.model import load_model
from wdprobe.errors import InterventionError
from wdprobe.methods.interchange import CrossModelInterchange, PairInterchange
from wdprobe.methods.subspace import (
    first_order_basis,
    fit_subspace,
    interchange_accuracy,
    interchange_scores,
    make_subspace,
    subspace_cosine,
)

PROMPTS = ["Should schools teach music ? Answer:", "Is it right to lie to a friend ? Answer:",
           "What is your view on city parks ? Answer:", "You find a wallet on the street . Answer:",
           "You lead a club . Which action will you take ? Answer:", "Your friend asks about a gift . Answer:"]
OPTIONS = [["No , honesty matters .", "A B"], ["music", "parks and roads"], ["Yes", "No , honesty"],
           ["You decide to return it .", "keep it"], ["share roles", "You decide to appoint leaders ."],
           ["the truth", "say you love it"]]
BLOCK = 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(reference, variant, planted unit direction): the variant adds 6 x its residual scale along the direction
    after block ``BLOCK`` at every position."""
    from tiny import build_tiny_model_dir

    path = build_tiny_model_dir(tmp_path_factory.mktemp("xi") / "ref", n_layers=3, initializer_range=0.3)
    ref, var = load_model(str(path)), load_model(str(path))
    g = torch.Generator().manual_seed(3)
    u = torch.randn(ref.d_model, generator=g)
    u = u / u.norm()

    def add(module, inputs, output):
        return (output[0] + 6.0 * u.to(output[0].dtype),) + tuple(output[1:]) if isinstance(output, tuple) else output + 6.0 * u

    var.hf_model.model.layers[BLOCK].register_forward_hook(add)
    return ref, var, u.numpy()


def _runner(ref, var, block):
    """The interchange at the residual entering ``block`` (a forward hook on a decoder block acts after the bridge's
    ``hook_resid_post`` of that block fired, so the plant is first visible entering the next one)."""
    return CrossModelInterchange(ref, var, f"blocks.{block}.hook_resid_pre", PROMPTS, OPTIONS)


def test_below_the_planted_block_nothing_changes(planted):
    ref, var, _ = planted
    run = _runner(ref, var, BLOCK)
    clean_ref, _ = run.clean()
    full = make_subspace("rotation", ref.d_model, k=ref.d_model)
    got = interchange_scores(full, run, list(range(len(PROMPTS))))
    assert np.allclose(got, clean_ref, atol=1e-5)


def test_a_full_rank_subspace_is_exact_patching_and_the_planted_direction_alone_suffices(planted):
    ref, var, u = planted
    run = _runner(ref, var, BLOCK + 1)
    _, clean_var = run.clean()
    assert not np.allclose(*run.clean(), atol=1e-2)  # the plant changes the reading
    rows = list(range(len(PROMPTS)))
    full = make_subspace("rotation", ref.d_model, k=ref.d_model)
    assert np.allclose(interchange_scores(full, run, rows), clean_var, atol=1e-4)
    one = make_subspace("direction", ref.d_model)
    one.start_from(u[:, None])
    assert np.allclose(interchange_scores(one, run, rows), clean_var, atol=1e-4)
    orthogonal = make_subspace("direction", ref.d_model)
    other = np.random.default_rng(0).standard_normal(ref.d_model)
    orthogonal.start_from((other - (other @ u) * u)[:, None])
    assert not np.allclose(interchange_scores(orthogonal, run, rows), clean_var, atol=1e-2)


def _many_prompts(n: int, seed: int = 0):
    """``n`` prompts and option pairs of random words from the tiny vocabulary: more items than the model's width, so
    that matching the variant's choices pins the direction down (six items leave a 64-d direction free)."""
    words = ("schools teach music lie friend city parks wallet street club action gift truth roads honesty leaders "
             "roles").split()
    rng = np.random.default_rng(seed)
    prompts = [" ".join(rng.choice(words, 6)) + " ? Answer:" for _ in range(n)]
    options = [[" ".join(rng.choice(words, 2)), " ".join(rng.choice(words, 3))] for _ in range(n)]
    return prompts, options


def test_training_and_the_first_order_start_find_the_planted_direction(planted):
    ref, var, u = planted
    prompts, options = _many_prompts(150)
    run = CrossModelInterchange(ref, var, f"blocks.{BLOCK + 1}.hook_resid_pre", prompts, options)
    clean_ref, clean_var = run.clean()
    grads, deltas = run.first_order(list(range(100)))
    assert all(np.allclose(dl, 6.0 * u, atol=1e-4) for dl in deltas)  # the planted difference, at every position
    shift = (clean_var[:, 0] - clean_var[:, 1]) - (clean_ref[:, 0] - clean_ref[:, 1])
    start, _ = first_order_basis(grads, deltas, np.sign(shift[:100]))
    assert subspace_cosine(start, u) > 0.8
    soft = np.exp(clean_var - clean_var.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)  # the variant's own choice distribution
    sub = make_subspace("direction", ref.d_model, seed=0)
    sub.start_from(start)
    fit = fit_subspace(sub, run, soft, list(range(100)), epochs=5, batch_size=25, lr=0.05)
    assert fit.losses[-1] <= fit.losses[0]
    assert subspace_cosine(sub.directions(), u) > 0.8
    held = list(range(100, 150))
    assert interchange_accuracy(interchange_scores(sub, run, held), clean_var[held].argmax(1)) >= 0.95
    flips = clean_ref[held].argmax(1) != clean_var[held].argmax(1)
    assert flips.any()  # held-out items the plant changes are among those the subspace restores


def test_the_decision_point_interchange_reads_the_source_where_nothing_else_can_differ(tiny_lm):
    lm = tiny_lm
    last = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    one_token = [["A", "B"]] * 3
    bases, sources = PROMPTS[:3], PROMPTS[3:6]
    run = PairInterchange(lm, last, bases, one_token, sources)
    full = make_subspace("rotation", lm.d_model, k=lm.d_model)
    got = interchange_scores(full, run, [0, 1, 2])
    want = PairInterchange(lm, last, sources, one_token, sources).rows.scores(lm, [0, 1, 2]).detach().numpy()
    assert np.allclose(got, want, atol=1e-4)  # one-token options read only the decision point's last residual
    same = PairInterchange(lm, last, bases, one_token, bases)
    assert np.allclose(interchange_scores(full, same, [0, 1, 2]), same.rows.scores(lm, [0, 1, 2]).detach().numpy(),
                       atol=1e-5)
    grads, deltas = run.first_order([0, 1])
    assert len(grads) == 2 and grads[0].shape == (2, lm.d_model) and deltas[0].shape == (2, lm.d_model)


def test_bad_input_names_the_culprit(planted, tiny_lm):
    ref, var, _ = planted
    with pytest.raises(InterventionError, match="hook 'blocks.9.hook_resid_post' does not exist"):
        CrossModelInterchange(ref, var, "blocks.9.hook_resid_post", PROMPTS, OPTIONS)
    with pytest.raises(InterventionError, match="positions 'middle'"):
        CrossModelInterchange(ref, var, "blocks.0.hook_resid_post", PROMPTS, OPTIONS, positions="middle")
    with pytest.raises(InterventionError, match="same number"):
        PairInterchange(tiny_lm, "blocks.0.hook_resid_post", PROMPTS[:2], [["a", "b"], ["a", "b", "c"]], PROMPTS[:2])
    with pytest.raises(InterventionError, match="2 base prompts but 1 source"):
        PairInterchange(tiny_lm, "blocks.0.hook_resid_post", PROMPTS[:2], OPTIONS[:2], PROMPTS[:1])
    run = _runner(ref, var, 0)
    with pytest.raises(InterventionError, match=r"rows \[7\] outside 0..5"):
        run(make_subspace("direction", ref.d_model), [7])
