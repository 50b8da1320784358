"""The max-over-layers decoding test: planted content and letter signals found at their planted layers; a
content probe cannot use a letter-only signal; no false alarms on noise beyond the nominal rate."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from wdprobe.errors import InputError
from wdprobe.methods.decoding import auroc, decode_layers, group_folds


def planted(n_items=200, layers=6, d=16, content_at=3, letter_at=5, content_size=0.8, letter_size=1.0, seed=0):
    """Two prompts per item (both orders): content constant within an item, the letter said alternates."""
    rng = np.random.default_rng(seed)
    items = np.repeat(np.arange(n_items), 2)
    content = rng.integers(0, 2, n_items)[items]
    letter = np.tile([0, 1], n_items)
    X = rng.normal(size=(2 * n_items, layers, d))
    if content_at is not None:
        X[:, content_at:, 0] += content_size * (2 * content - 1)[:, None]
    if letter_at is not None:
        X[:, letter_at:, 1] += letter_size * (2 * letter - 1)[:, None]
    return X, content, letter, items


def test_decide_and_bind_layers_are_recovered():
    X, content, letter, items = planted()
    decide = decode_layers(X, content, items, n_perm=100)
    bind = decode_layers(X, letter, items, n_perm=100, permute="rows")
    assert decide.significant and decide.first_significant() == 3
    assert bind.significant and bind.first_significant() == 5
    assert np.all(np.abs(decide.control - 0.5) < 0.05)  # the random-label control sits at chance
    assert decide.low[decide.best] < decide.value[decide.best] < decide.high[decide.best]


def test_a_content_probe_cannot_use_a_letter_only_signal():
    X, content, letter, items = planted(content_at=None, letter_size=3.0)
    res = decode_layers(X, content, items, n_perm=100)
    assert not res.significant and res.first_significant() is None
    assert np.all(res.value < 0.6)
    assert decode_layers(X, letter, items, n_perm=50, permute="rows").value.max() > 0.9  # the letter is there


def test_false_alarm_rate_on_noise_is_near_nominal():
    alarms = [decode_layers(*_noise(seed), n_perm=60, seed=seed).significant for seed in range(40)]
    assert np.mean(alarms) <= 0.15


def _noise(seed):
    X, content, _, items = planted(n_items=60, content_at=None, letter_at=None, seed=seed)
    return X, content, items


def test_cross_form_transfer_and_a_flipped_stance():
    X, content, _, items = planted(letter_at=None)
    deed = X.copy()
    same = decode_layers(X, content, items, test_X=deed, test_y=content, test_groups=items, n_perm=50)
    assert same.significant and same.first_significant() == 3
    flipped = deed.copy()
    flipped[:, :, 0] *= -1  # the deed represents the stance with the opposite sign
    res = decode_layers(X, content, items, test_X=flipped, test_y=content, test_groups=items, n_perm=50)
    assert res.value[4] < 0.3 and not res.significant


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=(50, 3)), 1)
    y = rng.integers(0, 2, 50)
    np.testing.assert_allclose(auroc(s, y[:, None]), [roc_auc_score(y, s[:, j]) for j in range(3)])


def test_folds_keep_groups_whole_and_bad_input_is_refused():
    groups = np.repeat(np.arange(10), 3)
    folds = group_folds(groups, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    for f in folds:
        assert all(np.sum(groups[f] == g) in (0, 3) for g in range(10))
    X, content, letter, items = planted(n_items=20)
    with pytest.raises(InputError, match="one label per group"):
        decode_layers(X, letter, items, n_perm=5)
    with pytest.raises(InputError, match="binary"):
        decode_layers(X, np.zeros(40, int), items)
    with pytest.raises(InputError, match="cannot be split"):
        group_folds(np.arange(3), 5)


def test_within_stratum_permutation_does_not_credit_what_the_stratum_explains():
    """Labels fixed by the domain (one domain always 1, the other always 0) and activations that encode only the
    domain: an unstratified test calls the label decodable; permuting within domains does not."""
    rng = np.random.default_rng(4)
    n = 200
    items = np.arange(n)
    domain = np.where(items < n // 2, "EthV", "Opinion")
    y = np.where(rng.random(n) < 0.9, (domain == "EthV").astype(int), 1 - (domain == "EthV").astype(int))
    X = rng.normal(size=(n, 3, 8))
    X[:, :, 0] += 2.0 * (domain == "EthV")[:, None]
    assert decode_layers(X, y, items, n_perm=100).significant
    res = decode_layers(X, y, items, n_perm=100, strata=domain)
    assert not res.significant and res.control.mean() > 0.65  # the control already reads the domain
    with pytest.raises(InputError, match="constant within a group"):
        decode_layers(np.repeat(X, 2, axis=0), np.repeat(y, 2), np.repeat(items, 2), strata=np.tile(["a", "b"], n))


def _ic_data(n_items: int, shared: bool, seed: int = 0):
    """Two orders per item and form; the deed *answer* departs from the word answer on 40% of items. With
    ``shared`` the deed activations still hold the word stance (a stance inside that the answer leaves);
    otherwise they follow the deed answer."""
    rng = np.random.default_rng(seed)
    word_y = rng.integers(0, 2, n_items)
    deed_y = np.where(rng.random(n_items) < 0.4, 1 - word_y, word_y)
    inside = word_y if shared else deed_y
    rows = {}
    for form, state, label in (("word", word_y, word_y), ("deed", inside, deed_y)):
        X = rng.standard_normal((2 * n_items, 3, 8))
        X[:, 1:, 0] += 3.0 * np.repeat(state, 2)[:, None]  # layers 1 and 2 hold the stance
        rows[form] = (X, np.repeat(label, 2), np.repeat(np.arange(n_items), 2))
    return rows, word_y, deed_y


def test_internal_consistency_sees_a_shared_stance_the_deed_answer_leaves():
    from wdprobe.methods.decoding import internal_consistency
    from wdprobe.scoring.stats import sign_flip_max_test

    for shared in (True, False):
        rows, word_y, deed_y = _ic_data(200, shared)
        r = internal_consistency(rows["word"][0], rows["deed"][0], rows["word"][1], rows["deed"][1], rows["word"][2],
                                 rows["deed"][2])
        assert r["agree"].shape == (200, 3) and r["consistent"].mean() == pytest.approx(np.mean(word_y == deed_y))
        test = sign_flip_max_test(r["agree"] - r["consistent"][:, None], n_perm=500)
        if shared:  # inside, deeds read as words: IC near 1 at layers 1-2 while CS is near 0.6
            assert r["agree"][:, 1:].mean() > 0.9 and test.p_value < 0.01 and test.setting in (1, 2)
        else:  # inside follows the answer: IC no higher than CS
            assert abs(r["agree"][:, 1:].mean() - r["consistent"].mean()) < 0.1 and test.p_value > 0.05
    # the forms differ by a large offset and their label rates differ (words mostly 1, deeds half 0): the form is
    # not a stance, and centring each form keeps IC at what the shared stance gives
    rng = np.random.default_rng(1)
    word_y = (rng.random(200) < 0.8).astype(int)
    deed_y = word_y.copy()
    deed_y[rng.random(200) < 0.5] = 0
    rows = {}
    for form, state, label, shift in (("word", word_y, word_y, 0.0), ("deed", word_y, deed_y, 6.0)):
        X = rng.standard_normal((400, 1, 8))
        X[:, 0, 0] += 3.0 * np.repeat(state, 2)
        X[:, 0, 1:4] += shift
        rows[form] = (X, np.repeat(label, 2), np.repeat(np.arange(200), 2))
    r = internal_consistency(rows["word"][0], rows["deed"][0], rows["word"][1], rows["deed"][1], rows["word"][2],
                             rows["deed"][2])
    # (a pooled, uncentred probe learns the form here: every word reads 1, every deed 0, IC = 0)
    assert r["agree"].mean() > r["consistent"].mean() + 0.15 and r["consistent"].mean() < 0.65
    with pytest.raises(InputError, match="every item's word and deed"):
        internal_consistency(rows["word"][0], rows["deed"][0][:-2], rows["word"][1], rows["deed"][1][:-2],
                             rows["word"][2], rows["deed"][2][:-2])


def test_internal_consistency_control_absorbs_what_the_domain_alone_shares():
    from wdprobe.methods.decoding import internal_consistency

    rng = np.random.default_rng(2)
    n = 200
    domain = np.repeat([0, 1], n // 2)
    for shared in (False, True):
        if shared:  # a stance of its own in both forms (layer 1); the deed answer leaves it on 40% of items
            word_y = rng.integers(0, 2, n)
            deed_y = np.where(rng.random(n) < 0.4, 1 - word_y, word_y)
        else:  # the domain decides 85% of the answers and is all the activations hold
            word_y = np.where(rng.random(n) < 0.85, domain, rng.integers(0, 2, n))
            deed_y = np.where(rng.random(n) < 0.85, domain, rng.integers(0, 2, n))
        rows = {}
        for form, label in (("word", word_y), ("deed", deed_y)):
            X = rng.standard_normal((2 * n, 2, 8))
            X[:, :, 0] += 3.0 * np.repeat(domain, 2)[:, None]
            if shared:
                X[:, 1, 1] += 3.0 * np.repeat(word_y, 2)
            rows[form] = (X, np.repeat(label, 2), np.repeat(np.arange(n), 2), np.repeat(domain, 2))
        r = internal_consistency(rows["word"][0], rows["deed"][0], rows["word"][1], rows["deed"][1], rows["word"][2],
                                 rows["deed"][2], n_perm=100, word_strata=rows["word"][3], deed_strata=rows["deed"][3])
        ic, null = r["agree"].mean(0), r["null_ic"]
        p = (1 + np.sum(null.max(axis=1) >= ic.max())) / (1 + len(null))
        assert null.shape == (100, 2)
        if shared:
            assert p < 0.05 and int(np.argmax(ic)) == 1 and ic[1] > 0.9
        else:  # readings agree because both prompts carry the domain, and the within-domain control agrees as much
            assert ic.max() > 0.7 and p > 0.05


def test_kappa_corrects_agreement_for_how_often_each_reading_says_one_stance():
    from wdprobe.methods.decoding import chance_corrected_agreement, internal_consistency

    # by hand: 10 items, both readings say 1 on 9; they agree on 8 (po = 0.8); chance pe = 0.9*0.9 + 0.1*0.1 = 0.82
    a = np.array([1] * 9 + [0])
    b = np.array([1] * 8 + [0, 1])
    assert chance_corrected_agreement(a, b) == pytest.approx((0.8 - 0.82) / (1 - 0.82))
    assert chance_corrected_agreement(a, a) == pytest.approx(1.0)
    assert np.isnan(chance_corrected_agreement(np.ones(5), np.ones(5)))  # nothing varies: no agreement to correct
    rows, _, _ = _ic_data(200, True)
    r = internal_consistency(rows["word"][0], rows["deed"][0], rows["word"][1], rows["deed"][1], rows["word"][2],
                             rows["deed"][2])
    assert r["kappa"].shape == (3,)
    for k in range(3):  # the per-layer kappa is the readings' own
        assert r["kappa"][k] == pytest.approx(chance_corrected_agreement(r["word"][:, k], r["deed"][:, k]), nan_ok=True)
    assert np.nanmax(r["kappa"][1:]) > 0.8  # a shared stance: agreement far above chance


def _clustered_letters(seed: int, n_items: int = 60):
    """No letter signal at all: each item says one letter in both orders (4% of prompts the other), and each item's
    activations share a strong item-specific offset, so an item's two rows are alike in labels and in activations."""
    rng = np.random.default_rng(seed)
    items = np.repeat(np.arange(n_items), 2)
    letter = rng.integers(0, 2, n_items)[items]
    flip = rng.random(2 * n_items) < 0.04
    letter[flip] = 1 - letter[flip]
    X = 0.3 * rng.normal(size=(2 * n_items, 6, 8)) + 2.0 * rng.normal(size=(n_items, 6, 8))[items]
    return X, letter, items


def test_a_null_that_keeps_labels_clustered_by_item_holds_its_false_alarm_rate():
    """Labels that cluster by item have the item count, not the row count, as their sample size: permuting rows
    gives a null too narrow and calls noise decodable; moving whole items' label sequences does not."""
    rows = [decode_layers(*_clustered_letters(s), n_perm=60, seed=s, permute="rows").significant for s in range(40)]
    clusters = [decode_layers(*_clustered_letters(s), n_perm=60, seed=s, permute="clusters").significant
                for s in range(40)]
    assert np.mean(rows) > 0.15  # the row null's false alarms, measured: 0.275 at these seeds
    assert np.mean(clusters) <= 0.1
    X, _, letter, items = planted(n_items=100)  # every item alternates its letter with the order: still a null
    assert decode_layers(X, letter, items, n_perm=60, permute="clusters").first_significant() == 5  # a real letter
    with pytest.raises(InputError, match="constant within a group"):
        decode_layers(X, letter, items, n_perm=5, permute="clusters", strata=np.tile(["a", "b"], 100))
    with pytest.raises(InputError, match="permute must be"):
        decode_layers(X, letter, items, n_perm=5, permute="items")


def test_within_domain_accuracy_separates_a_domain_reader_from_a_stance_reader():
    """Labels whose rate differs by domain (EthV mostly 1, Opinion mostly 0): activations that encode only the domain
    reach a high pooled accuracy and chance within domains; activations that encode the label reach both."""
    rng = np.random.default_rng(5)
    n = 300
    items = np.arange(n)
    domain = np.where(items < n // 2, "EthV", "Opinion")
    y = np.where(rng.random(n) < 0.85, (domain == "EthV").astype(int), 1 - (domain == "EthV").astype(int))
    domain_only = rng.normal(size=(n, 2, 8))
    domain_only[:, :, 0] += 3.0 * (domain == "EthV")[:, None]
    reader = decode_layers(domain_only, y, items, n_perm=50, strata=domain)
    assert reader.value.max() > 0.75 and np.all(np.abs(reader.within - 0.5) < 0.12)
    assert reader.n_strata == 2 and np.all(np.abs(reader.within_control - 0.5) < 0.05)
    stance = rng.normal(size=(n, 2, 8))
    stance[:, 1, 0] += 3.0 * (2 * y - 1)
    res = decode_layers(stance, y, items, n_perm=50, strata=domain)
    assert res.within[1] > 0.85 and res.within[0] < 0.65
    summary = res.summary()
    assert summary["within_domain_at_best"] == pytest.approx(res.within[1]) and summary["n_domains"] == 2
    assert decode_layers(stance, y, items, n_perm=5).within is None  # no domains given: nothing to state
