"""Bootstrap intervals over items: micro and macro means checked by hand, coverage of a planted rate, seeding."""
import numpy as np
import pytest

from wdprobe.errors import InputError
from wdprobe.scoring.stats import Interval, bootstrap_interval, mean_with_interval


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
