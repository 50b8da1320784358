"""Bootstrap intervals over items: micro and macro means checked by hand, coverage of a planted rate, seeding."""
import numpy as np
import pytest

from wdprobe.errors import InputError
from wdprobe.scoring.stats import (
    Evidence,
    Interval,
    bootstrap_interval,
    chance_agreement_test,
    mean_with_interval,
    paired_difference_test,
    sign_flip_max_test,
)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.binomial(1, 0.6, 40), rng.binomial(1, 0.6, 4000)
    lo, hi = bootstrap_interval(small, seed=1)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_interval(large, seed=1, n_boot=500)
    assert hi2 - lo2 < (hi - lo) / 5 and lo2 < 0.6 < hi2
    assert bootstrap_interval(small, seed=1) == (lo, hi)  # seeded


def test_micro_and_macro_point_values_by_hand():
    # domain a: 1, 1, 0 (mean 2/3); domain b: 0 (mean 0) -> micro 2/4, macro (2/3 + 0) / 2 = 1/3
    res = mean_with_interval([1, 1, 0, 0], ["a", "a", "a", "b"], n_boot=200)
    assert res["micro"].value == pytest.approx(0.5)
    assert res["macro"].value == pytest.approx(1 / 3)
    assert res["micro"].n == 4
    for iv in res.values():
        assert 0.0 <= iv.low <= iv.high <= 1.0


def test_constant_values_give_a_zero_width_interval():
    res = mean_with_interval([0.25] * 30, ["x"] * 15 + ["y"] * 15, n_boot=100)
    assert (res["micro"].low, res["micro"].high) == pytest.approx((0.25, 0.25))
    assert (res["macro"].low, res["macro"].high) == pytest.approx((0.25, 0.25))


def test_the_interval_covers_a_planted_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    hits = sum(mean_with_interval(rng.binomial(1, 0.3, 200), n_boot=400, seed=i)["micro"].excludes(0.3) is False
               for i in range(200))
    assert 0.90 <= hits / 200 <= 0.99


def test_interval_helpers_and_bad_input():
    iv = Interval(0.5, 0.4, 0.6, 10)
    assert iv.excludes(0.7) and not iv.excludes(0.45) and str(iv) == "0.500 [0.400, 0.600]"
    with pytest.raises(InputError, match="group labels"):
        mean_with_interval([1, 0], ["a"])
    with pytest.raises(InputError, match="at least one item"):
        mean_with_interval([])


def test_chance_agreement_finds_planted_agreement_and_not_noise():
    rng = np.random.default_rng(0)
    word = rng.integers(0, 2, 300)
    copy = np.where(rng.random(300) < 0.8, word, 1 - word)  # deed copies the word answer 80% of the time
    t = chance_agreement_test(word, copy, n_perm=500)
    assert t.significant and t.direction() == 1 and t.reference == pytest.approx(0.5, abs=0.05)
    assert t.low < t.effect < t.high
    against = chance_agreement_test(word, 1 - copy, n_perm=500)
    assert against.direction() == -1
    noise = [chance_agreement_test(rng.integers(0, 2, 40), rng.integers(0, 2, 40), n_perm=300, seed=s).significant
             for s in range(60)]
    assert np.mean(noise) <= 0.12


def test_chance_agreement_respects_strata():
    # stratum a always answers 0 in both forms, stratum b always 1: agreement 1, but also 1 under within-stratum
    # shuffles, so there is no evidence of item-level agreement; ignoring strata would call it significant
    word = np.array([0] * 20 + [1] * 20)
    strata = ["a"] * 20 + ["b"] * 20
    assert not chance_agreement_test(word, word.copy(), strata, n_perm=300).significant
    assert chance_agreement_test(word, word.copy(), n_perm=300).significant


def test_sign_flip_max_test_accounts_for_picking_the_best_setting():
    rng = np.random.default_rng(1)
    noise = rng.choice([-1.0, 0.0, 1.0], size=(60, 18), p=[0.2, 0.6, 0.2])
    naive = max(paired_difference_test(noise[:, j], n_perm=500).p_value for j in range(18))
    corrected = sign_flip_max_test(noise, n_perm=500)
    assert corrected.p_value > min(paired_difference_test(noise[:, j], n_perm=500).p_value for j in range(18))
    assert naive <= 1.0 and corrected.setting == int(np.argmax(noise.mean(0)))
    planted = noise.copy()
    planted[:, 7] = rng.choice([0.0, 1.0], size=60, p=[0.5, 0.5])  # half the items gain at setting 7
    t = sign_flip_max_test(planted, n_perm=500)
    assert t.significant and t.setting == 7 and t.effect == pytest.approx(planted[:, 7].mean())
    alarms = [sign_flip_max_test(rng.choice([-1.0, 0.0, 1.0], size=(40, 10)), n_perm=200, seed=s).significant
              for s in range(60)]
    assert np.mean(alarms) <= 0.12


def test_test_round_trips_through_json():
    t = paired_difference_test([1.0, 0.0, 1.0, 1.0, 0.0, 1.0] * 5, n_perm=200)
    assert Evidence.from_json(t.to_json()) == t and t.direction() == 1


def test_wilson_interval_by_hand():
    from wdprobe.scoring.stats import wilson_interval

    # p = 0.5, n = 100, z = 1.959964: centre 0.5, half-width z/(1+z^2/n) * sqrt(0.0025 + z^2/40000) = 0.0962
    lo, hi = wilson_interval([0.5, 0.0, 1.0], [100, 10, 10])
    assert lo[0] == pytest.approx(0.4038, abs=1e-4) and hi[0] == pytest.approx(0.5962, abs=1e-4)
    assert lo[1] == pytest.approx(0.0, abs=1e-12) and 0.25 < hi[1] < 0.3  # 0 of 10: [0, 0.278]
    assert hi[2] == pytest.approx(1.0, abs=1e-12) and lo[2] == pytest.approx(1 - hi[1])
    # statsmodels gives what the closed form gave (the code it replaced) on a grid, and a share of no items no interval
    share, n = np.linspace(0, 1, 11), np.array([1, 3, 7, 10, 20, 33, 50, 100, 250, 1000, 5000])
    z = 1.959963984540054
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    lo, hi = wilson_interval(share, n)
    np.testing.assert_allclose(lo, centre - half, atol=1e-12)
    np.testing.assert_allclose(hi, centre + half, atol=1e-12)
    assert np.isnan(wilson_interval([0.5], [0])).all()


def test_proportion_difference_matches_newcombes_worked_example():
    from wdprobe.scoring.stats import proportion_difference

    # Newcombe (1998), Stat Med 17:873, method 10 on 56/70 vs 48/80: 0.2000, 95% CI 0.0524 to 0.3339
    e = proportion_difference(56, 70, 48, 80)
    assert e.effect == pytest.approx(0.2) and e.low == pytest.approx(0.0524, abs=5e-4)
    assert e.high == pytest.approx(0.3339, abs=5e-4) and e.significant and e.n == 150
    same = proportion_difference(10, 20, 10, 20)
    assert same.effect == 0 and same.p_value == pytest.approx(1.0) and not same.significant
