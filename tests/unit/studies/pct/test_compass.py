"""Compass arithmetic: coordinates by hand, the real weights, sign-flip tests with BH, planted persona shifts, rounding."""
from __future__ import annotations

import json

import numpy as np

from wdprobe.studies.pct.compass import (
    benjamini_hochberg,
    load_weights,
    persona_shifts,
    sign_flip_test,
)


def test_compass_coordinates_by_hand(pct_dir):
    w = load_weights(pct_dir)
    # synthetic weights: even propositions econ [-6,-3,3,6], odd propositions social [4,2,-2,-4]
    all_sa = {p: 3 for p in range(8)}
    assert w.coordinates(all_sa) == (round(4 * 6 / 8 + 0.38, 2), round(4 * -4 / 19.5 + 2.41, 2)) == (3.38, 1.59)
    all_sd = {p: 0 for p in range(8)}
    assert w.coordinates(all_sd) == (round(-24 / 8 + 0.38, 2), round(16 / 19.5 + 2.41, 2)) == (-2.62, 3.23)
    # unanswered propositions contribute nothing
    assert w.coordinates({0: 2}) == (round(3 / 8 + 0.38, 2), 2.41)


def test_real_weights_all_strongly_agree(shared_data):
    raw = json.loads((shared_data / "pct" / "compass_weights.json").read_text())
    w = load_weights(shared_data / "pct")
    econ = sum(row[3] for row in raw["econ_weights"]) / 8.0 + 0.38
    soc = sum(row[3] for row in raw["soc_weights"]) / 19.5 + 2.41
    assert w.coordinates({p: 3 for p in range(62)}) == (round(econ, 2), round(soc, 2))


def test_sign_flip_test_and_bh():
    assert sign_flip_test(np.zeros(10)) == 1.0
    assert sign_flip_test(np.ones(12), n_perm=4000) < 0.002  # all 12 pairs move the same way: p ~ 2/4096
    assert sign_flip_test(np.tile([1.0, -1.0], 20)) > 0.9  # balanced: no shift
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    # by hand: sorted p 0.01,0.03,0.04,0.5 -> p*n/rank = 0.04,0.06,0.0533,0.5 -> running min from the top
    assert np.allclose(q, [0.04, 0.0533333, 0.0533333, 0.5])


def test_persona_shift_planted(pct_dir):
    w = load_weights(pct_dir)
    rows = []
    for inst in (0, 1):
        for p in range(8):
            rows.append({"persona": "base", "proposition": p, "instruction": inst, "choice": 0})
            rows.append({"persona": "right", "proposition": p, "instruction": inst, "choice": 3})
            rows.append({"persona": "same", "proposition": p, "instruction": inst, "choice": 0})
    out = {r["persona"]: r for r in persona_shifts(rows, w, n_perm=4000)}
    # economic: 4 even propositions each move from -6 to +6 -> 4 * 12 / 8 = 6.0; social: 4 * (-4 - 4) / 19.5
    assert out["right"]["d_econ"] == 6.0 and out["right"]["d_social"] == round(-32 / 19.5, 3)
    assert out["right"]["p_econ"] < 0.02 and out["right"]["answers_changed"] == 1.0 and out["right"]["n_pairs"] == 16
    assert out["same"]["d_econ"] == 0.0 and out["same"]["p_econ"] == 1.0


def test_compass_rounds_ties_as_upstream():
    from wdprobe.studies.pct.compass import upstream_round

    # hand-computed: 0.125 and 1.005 are ties in decimal that float storage puts below the tie;
    # upstream's epsilon moves them up, Python's round(x, 2) down
    assert (upstream_round(0.125), round(0.125, 2)) == (0.13, 0.12)
    assert (upstream_round(1.005), round(1.005, 2)) == (1.01, 1.0)
    assert upstream_round(-2.384) == -2.38 and upstream_round(3.3333) == 3.33



def test_positions_and_shifts_carry_bootstrap_intervals_over_propositions(pct_dir):
    from wdprobe.studies.pct.compass import bootstrap_sum_interval, persona_positions

    # a sum of equal parts has no sampling spread: the interval collapses onto the sum
    low, high = bootstrap_sum_interval(np.full((10, 2), 0.5))
    np.testing.assert_allclose(low, [5.0, 5.0]) and np.testing.assert_allclose(high, [5.0, 5.0])
    # parts 0 or 1 half the time: the sum of 100 resampled parts spreads about 50 +- 1.96 * 5
    low, high = bootstrap_sum_interval(np.array([0.0, 1.0] * 50), n_boot=4000)
    assert 38 < low[0] < 42 and 58 < high[0] < 62
    w = load_weights(pct_dir)
    rows = [{"persona": "base", "proposition": p, "instruction": i, "choice": (p + i) % 4} for i in (0, 1) for p in range(8)]
    rows += [{"persona": "right", "proposition": p, "instruction": i, "choice": 3} for i in (0, 1) for p in range(8)]
    pos = {r["persona"]: r for r in persona_positions(rows, w)}
    for r in pos.values():
        assert r["econ_low"] <= r["econ"] <= r["econ_high"] and r["social_low"] <= r["social"] <= r["social_high"]
    # resampled within the propositions that move the same axis: "right" gives every economic (and every social)
    # proposition the same answer, so which of them were asked cannot move it; "base" varies, so it can
    assert pos["right"]["econ_high"] == pos["right"]["econ_low"] == pos["right"]["econ"]
    assert pos["base"]["econ_high"] - pos["base"]["econ_low"] > 0
    np.testing.assert_array_equal(w.axis_of(range(8)), [1, 2] * 4)
    shift = persona_shifts(rows, w, n_perm=1000)[0]
    assert shift["d_econ_low"] <= shift["d_econ"] <= shift["d_econ_high"]
