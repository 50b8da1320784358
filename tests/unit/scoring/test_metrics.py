import math

import numpy as np
import pytest

from wdprobe.scoring.metrics import js_divergence, pcs, summarise


def test_jsd_hand_computed():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    # p=(.5,.5), q=(1,0): M=(.75,.25); KL(p||M)=.5log2(2/3)+.5log2(2); KL(q||M)=log2(4/3)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert js_divergence([0.5, 0.5], [1, 0]) == pytest.approx(0.5 * (kl_p + kl_q))
    assert pcs([0.5, 0.5], [1, 0]) == pytest.approx(1 - 0.5 * (kl_p + kl_q))
    # three options, row-wise
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    out = js_divergence(p, q)
    m = (p[0] + q[0]) / 2
    expect = 0.5 * sum(a * math.log2(a / b) for a, b in zip(p[0], m)) + 0.5 * sum(a * math.log2(a / b) for a, b in zip(q[0], m))
    assert out[0] == pytest.approx(expect) and out[1] == pytest.approx(0.0)


def test_cs_micro_and_macro_hand_computed():
    rows = ([{"domain": "Opinion", "consistent": 1, "pcs": 1.0}] * 3 + [{"domain": "Opinion", "consistent": 0, "pcs": 0.5}] +
            [{"domain": "Theory", "consistent": 0, "pcs": 0.0}])
    s = summarise(rows)
    assert s["cs_micro"] == pytest.approx(3 / 5)
    assert s["cs_macro"] == pytest.approx((3 / 4 + 0) / 2)
    assert s["pcs_micro"] == pytest.approx(3.5 / 5)
    assert s["pcs_macro"] == pytest.approx((3.5 / 4 + 0) / 2)
    assert s["per_domain"]["Opinion"] == {"n": 4, "cs": 0.75, "pcs": 0.875}
    assert set(s["per_domain"]) == {"Opinion", "Theory"}


def test_domains_are_the_rows_own_unless_named():
    rows = [{"domain": "Other", "consistent": 1, "pcs": 1.0}, {"domain": "EthV", "consistent": 0, "pcs": 0.5}]
    assert list(summarise(rows)["per_domain"]) == ["EthV", "Other"]  # WDCT's domains first, then the rest
    with pytest.raises(ValueError, match=r"rows have domains \['Other'\] outside \['EthV'\]"):
        summarise(rows, domains=["EthV"])
