"""Planted-signal tests: synthetic activations whose answer is known by construction."""
import numpy as np
import pytest

from wdprobe.methods.probes import DiffMeanProbe, item_folds, probe_layers

N, D = 240, 24


def _acts(rng, labels, direction, strength=3.0, noise=1.0):
    x = rng.normal(scale=noise, size=(len(labels), D))
    return x + strength * np.outer(2 * labels - 1, direction)


def _mean(res, metric, probe="diffmean", layer=0):
    df = res.to_frame()
    sel = df[(df.metric == metric) & (df.probe == probe) & (df.layer == layer)]
    return sel["value"].mean()


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def _unit(rng):
    u = rng.normal(size=D)
    return u / np.linalg.norm(u)


@pytest.mark.parametrize("probe", ["diffmean", "logreg"])
def test_shared_direction_transfers(rng, probe):
    u = _unit(rng)
    y = rng.integers(0, 2, N)
    word = _acts(rng, y, u)[:, None]
    deed = _acts(rng, y, u)[:, None]
    res = probe_layers(word, deed, y, y, kinds=(probe,))
    assert _mean(res, "word->word", probe) > 0.95
    assert _mean(res, "word->deed", probe) > 0.95 and _mean(res, "deed->word", probe) > 0.95
    assert _mean(res, "ic", probe) > 0.95
    # mass-mean directions are nearly identical; weakly regularised logistic directions pick up noise
    assert res.to_frame().query("metric == 'cosine'")["value"].iloc[0] > (0.9 if probe == "diffmean" else 0.6)
    assert abs(_mean(res, "random", probe) - 0.5) < 0.1


def test_word_only_direction_does_not_transfer(rng):
    u = _unit(rng)
    y = rng.integers(0, 2, N)
    word = _acts(rng, y, u)[:, None]
    deed = rng.normal(size=(N, D))[:, None]
    res = probe_layers(word, deed, y, y, kinds=("diffmean",))
    assert _mean(res, "word->word") > 0.95
    assert abs(_mean(res, "word->deed") - 0.5) < 0.1
    assert abs(_mean(res, "deed->deed") - 0.5) < 0.12


def test_letter_only_signal_is_caught_by_the_letter_control(rng):
    u = _unit(rng)
    letter_w, letter_d = rng.integers(0, 2, N), rng.integers(0, 2, N)
    stance = rng.integers(0, 2, N)  # independent of the letter, as under shuffled options
    word = _acts(rng, letter_w, u)[:, None]
    deed = _acts(rng, letter_d, u)[:, None]
    res = probe_layers(word, deed, stance, stance, letter_word=letter_w, letter_deed=letter_d, kinds=("logreg",))
    assert _mean(res, "letter", "logreg") > 0.95
    assert abs(_mean(res, "word->word", "logreg") - 0.5) < 0.1
    assert abs(_mean(res, "deed->deed", "logreg") - 0.5) < 0.1


def test_internal_word_stance_under_inconsistent_deeds(rng):
    # Both forms represent the *word* stance inside, but 30% of deed answers differ: IC > CS.
    u = _unit(rng)
    y_word = rng.integers(0, 2, N)
    flip = rng.random(N) < 0.3
    y_deed = np.where(flip, 1 - y_word, y_word)
    word = _acts(rng, y_word, u)[:, None]
    deed = _acts(rng, y_word, u)[:, None]
    res = probe_layers(word, deed, y_word, y_deed, kinds=("diffmean",))
    assert res.cs == pytest.approx(1 - flip.mean())
    assert _mean(res, "ic") > 0.95 > res.cs + 0.15
    assert _mean(res, "reads_word_stance") > 0.95


def test_shared_item_content_raises_random_probe_ic(rng):
    # Each item has a content vector shared by its word and deed prompt, and no stance signal: a
    # random-label probe then agrees with itself across forms well above its chance level.
    content = rng.normal(scale=3.0, size=(N, D))
    y = rng.integers(0, 2, N)
    word = (content + rng.normal(size=(N, D)))[:, None]
    deed = (content + rng.normal(size=(N, D)))[:, None]
    res = probe_layers(word, deed, y, y, kinds=("diffmean",))
    assert _mean(res, "ic_random") > _mean(res, "ic_random_chance") + 0.2
    assert abs(_mean(res, "word->word") - 0.5) < 0.1


def test_item_folds_never_split_an_item():
    folds = item_folds(53, 5)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(53))
    for tr, te in folds:
        assert not set(tr) & set(te) and len(tr) + len(te) == 53


def test_diffmean_hand_case():
    X = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    p = DiffMeanProbe().fit(X, y)
    np.testing.assert_allclose(p.direction_, [2.0, 0.0])
    assert p.threshold_ == pytest.approx(2.0)  # direction . midpoint (1, .5)
    assert p.predict(np.array([[0.9, 5.0], [1.1, -5.0]])).tolist() == [0, 1]


def test_mismatched_shapes_are_rejected(rng):
    with pytest.raises(ValueError, match="same items"):
        probe_layers(np.zeros((10, 1, 4)), np.zeros((9, 1, 4)), np.zeros(10), np.zeros(10))


def test_ic_chance_exposes_a_constant_probe(rng):
    from wdprobe.methods.probes import _chance_agreement

    assert _chance_agreement(np.zeros(10), np.zeros(10)) == 1.0
    assert _chance_agreement(np.array([0, 1, 0, 1]), np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    # no signal at all: IC is whatever the prediction rates give, and ic_chance tracks it
    y = rng.integers(0, 2, N)
    res = probe_layers(rng.normal(size=(N, 1, D)), rng.normal(size=(N, 1, D)), y, y, kinds=("diffmean",))
    assert abs(_mean(res, "ic") - _mean(res, "ic_chance")) < 0.1


def test_accuracy_is_balanced_so_chance_is_one_half():
    from wdprobe.methods.probes import accuracy

    y = np.array([0] * 9 + [1])
    assert accuracy(y, np.zeros(10)) == pytest.approx(0.5)  # majority guess: 0.9 plain, 0.5 balanced
    assert accuracy(y, y) == 1.0
    assert accuracy(np.zeros(4), np.array([0, 0, 1, 1])) == 0.5  # one class in the test set: plain accuracy


def test_the_logistic_probes_inner_cv_keeps_an_items_rows_together():
    from wdprobe.methods.probes import fit_probe

    rng = np.random.default_rng(0)
    n = 40
    X = rng.normal(size=(2 * n, 6))
    y = np.concatenate([np.arange(n) % 2, np.arange(n) % 2])
    groups = np.concatenate([np.arange(n), np.arange(n)])  # item i's word row and deed row
    est = fit_probe("logreg", 0, X, y, groups)
    splits = est[-1].cv
    assert len(splits) == 3
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    # without groups the default inner CV is used (and, on stacked word+deed rows, would split items)
    assert fit_probe("logreg", 0, X, y)[-1].cv == 3


def test_order_averaged_lens_cancels_a_planted_letter_preference():
    from wdprobe.methods.lens import order_averaged

    rng = np.random.default_rng(0)
    content = rng.normal(size=(5, 4))  # 5 (item, form) keys x 4 layers
    letter = rng.normal(size=(1, 4)) * 3  # a strong per-layer preference for letter B over A
    keys, rows = [], []
    for k in range(5):
        for sign in (1, -1):  # order 01 puts option 1 under B (+letter), order 10 under A (-letter)
            keys.append(("it", k))
            rows.append(content[k] + sign * letter[0])
    got_keys, mean = order_averaged(np.array(rows), keys)
    assert got_keys == [("it", k) for k in range(5)]
    np.testing.assert_allclose(mean, content)
