"""Lens kinds: the tuned lens recovers a planted linear map from a layer to the final residual (where the logit lens
reads the layer as it is), equals the logit lens where its translators are identity (an unbounded penalty, or a layer
that is the final one), is cross-fitted so that no prompt is read through translators fitted on it, and refuses bad
input."""
import numpy as np
import pytest

from wdprobe.errors import InputError
from wdprobe.methods.lens import LENS_KINDS, LogitLens, TunedLens, cross_fitted, lens_logits, make_lens, register_lens_kind


def _planted(n: int = 400, d: int = 12, seed: int = 0):
    """Final residuals and three layers: a rotation and shift of the final one, a noisy copy, the final one itself."""
    rng = np.random.default_rng(seed)
    final = rng.standard_normal((n, d))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    layers = np.stack([final @ q + 0.5, final + 0.01 * rng.standard_normal((n, d)), final], 1)
    return layers.astype(np.float32), final.astype(np.float32)


def test_the_tuned_lens_recovers_a_planted_map_the_logit_lens_misses():
    resid, final = _planted()
    lens = TunedLens(ridge=1e-6).fit(resid[:300], final[:300])
    out = lens.translate(resid[300:])
    for k in range(3):
        assert np.allclose(out[:, k], final[300:], atol=0.05)
    assert not np.allclose(LogitLens().translate(resid[300:])[:, 0], final[300:], atol=0.5)


def test_identity_translators_are_the_logit_lens():
    resid, final = _planted()
    huge = TunedLens(ridge=1e12).fit(resid, final)
    assert np.allclose(huge.translate(resid)[:, 1:], resid[:, 1:], atol=1e-3)  # the penalty keeps W at 0
    exact = TunedLens(ridge=1.0).fit(resid, final)
    assert np.allclose(exact.weights[2], 0, atol=1e-9) and np.allclose(exact.bias[2], 0, atol=1e-6)
    assert np.allclose(exact.translate(resid)[:, 2], resid[:, 2], atol=1e-5)  # the final layer reads as it is


def test_identity_translators_read_as_the_logit_lens_on_a_model(tiny_lm):
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((6, 2, tiny_lm.d_model)).astype(np.float32)
    final = resid[:, -1]
    lens = TunedLens(ridge=1e12).fit(resid, final)
    ids = [5, 6]
    assert np.allclose(lens_logits(tiny_lm, lens.translate(resid), ids), lens_logits(tiny_lm, resid, ids), atol=1e-4)


def test_cross_fitting_reads_each_group_through_a_lens_fitted_without_it():
    resid, final = _planted(n=60)
    groups = [f"item{i // 3}" for i in range(60)]  # three prompts per item
    out = cross_fitted("tuned", resid, final, groups, folds=4, seed=1, ridge=0.1)
    assert out.shape == resid.shape
    # recompute one prompt's reading by hand: a lens fitted on every group of the other folds
    unique = np.array(sorted(set(groups), key=str))
    order = unique[np.random.default_rng(1).permutation(len(unique))]
    fold_of = {g: k % 4 for k, g in enumerate(order)}
    mine = fold_of[groups[0]]
    train = np.array([fold_of[g] != mine for g in groups])
    want = TunedLens(ridge=0.1).fit(resid[train], final[train]).translate(resid[:1])
    assert np.allclose(out[:1], want, atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="unknown lens kind 'prism'"):
        make_lens("prism")
    with pytest.raises(InputError, match="registered already"):
        register_lens_kind(TunedLens)
    with pytest.raises(InputError, match="must be positive"):
        TunedLens(ridge=0)
    with pytest.raises(InputError, match="not fitted"):
        TunedLens().translate(np.zeros((1, 2, 3)))
    with pytest.raises(InputError, match=r"\[n, layers, d\]"):
        TunedLens().fit(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="2 groups cannot make 5 folds"):
        cross_fitted("tuned", np.zeros((4, 2, 3)), np.zeros((4, 3)), ["a", "a", "b", "b"])
    assert {"logit", "tuned"} <= set(LENS_KINDS)


def test_the_divergence_statistic_speaks_for_every_inconsistent_item():
    """Four inconsistent items by hand: two part for good (at layers 1 and 2), two whose final readings agree (never
    part). The median of the parting ones is 1.5; over every item, with "never" after the last layer, it is never."""
    import pandas as pd

    from wdprobe.methods.lens import LensTrajectory

    word = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=float)
    deed = np.array([[1, -1, -1], [1, 1, -1], [-1, -1, 1], [1, 1, 1], [1, 1, 1]], dtype=float)
    items = pd.DataFrame({"id": list("abcde"), "domain": ["x"] * 5, "y_word": [1] * 5, "y_deed": [0, 0, 0, 0, 1],
                          "consistent": [0, 0, 0, 0, 1]})
    inc = LensTrajectory(word, deed, items, (0, 1, 2)).summary()["inconsistent"]
    assert inc["n"] == 4 and inc["item_divergence_n_parting"] == 2 and inc["item_divergence_never"] == 2
    assert inc["item_divergence_layer_median"] == 1.5
    assert inc["item_divergence_layer_median_every_item"] is None  # half never part: the median item never does
    three = LensTrajectory(word[:3], deed[:3], items.iloc[:3].reset_index(drop=True), (0, 1, 2)).summary()
    assert three["inconsistent"]["item_divergence_layer_median_every_item"] == 2.0  # parts at 1, 2, never -> 2
