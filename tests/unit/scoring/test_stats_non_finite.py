"""A NaN among the values a test reads stops it, naming where: before, a permutation test compared its null with a
NaN mean (always false) and reported its smallest p-value, a 'finding' from a missing number."""
import numpy as np
import pytest

from wdprobe.errors import NonFiniteError
from wdprobe.scoring.stats import mean_with_interval, paired_difference_test, sign_flip_max_test


def test_every_test_refuses_non_finite_values_and_names_the_entry():
    diffs = np.zeros((6, 3))
    diffs[4, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"item row 4, setting column 2; 1 in all"):
        sign_flip_max_test(diffs)
    with pytest.raises(NonFiniteError, match=r"item row 1; 1 in all"):
        paired_difference_test([0.1, np.inf, 0.2])
    with pytest.raises(NonFiniteError, match="the values averaged"):
        mean_with_interval([1.0, np.nan])
    # finite values: the tests run as before (all-zero differences are no effect)
    ok = sign_flip_max_test(np.zeros((6, 3)), n_perm=99)
    assert ok.effect == 0.0 and ok.p_value == 1.0
