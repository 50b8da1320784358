"""Steering controls: what each direction is, by construction, and what the summary says about the format it keeps."""
import numpy as np
import pandas as pd
import pytest

from wdprobe.errors import InterventionError
from wdprobe.methods.steering import (
    STEERING_CONTROLS,
    control_directions,
    steering_rows,
    summarise_steering,
)


def _residuals(n=12, layers=2, d=40, rank=4, seed=0):
    """Residuals that live in a ``rank``-dimensional subspace of a ``d``-dimensional space (as a model's activations
    occupy few of its directions), with the word answer planted along the subspace's first axis."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0]  # [d, rank]
    y = np.array([0, 1] * (n // 2))
    coords = rng.standard_normal((n, layers, rank))
    coords[:, :, 0] += 10.0 * y[:, None]
    return coords @ basis.T, y, basis


def test_pair_control_is_a_same_answer_difference_of_two_other_items():
    sources, y, _ = _residuals()
    unit = control_directions(["pair-random"], sources, y, np.ones(sources.shape[1:]), seed=3)["pair-random"]
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0)
    for i in range(len(y)):
        found = [(a, b) for a in range(len(y)) for b in range(len(y))
                 if a != b and i not in (a, b) and y[a] == y[b] == y[i]
                 and np.allclose(unit[i], (sources[a] - sources[b]) / np.linalg.norm(sources[a] - sources[b], axis=-1,
                                                                                     keepdims=True))]
        assert found, f"item {i}: no same-answer pair of other items gives its direction"
    again = control_directions(["pair-random"], sources, y, np.ones(sources.shape[1:]), seed=3)["pair-random"]
    other = control_directions(["pair-random"], sources, y, np.ones(sources.shape[1:]), seed=4)["pair-random"]
    assert np.array_equal(unit, again) and not np.allclose(unit, other)


def test_pair_control_stays_in_the_span_activations_take_and_the_isotropic_one_does_not():
    sources, y, basis = _residuals()
    rng = np.random.default_rng(1)
    iso = rng.standard_normal(sources.shape[1:])
    iso /= np.linalg.norm(iso, axis=-1, keepdims=True)
    dirs = control_directions(["random", "pair-random"], sources, y, iso, seed=0)
    outside = lambda v: np.linalg.norm(v - (v @ basis) @ basis.T, axis=-1)  # noqa: E731  (component off the span)
    assert outside(dirs["pair-random"]).max() < 1e-9
    assert outside(dirs["random"]).min() > 0.8  # 4 of 40 dimensions: a random unit vector is mostly outside
    np.testing.assert_array_equal(dirs["random"], np.broadcast_to(iso, sources.shape))  # the first release's control
    # same-answer pairs carry no planted answer difference: along the answer axis they hold only noise (a pair across
    # answers would point almost exactly along it: 10 / sqrt(100 + 6) = 0.97)
    along = np.abs(np.einsum("nld,d->nl", dirs["pair-random"], basis[:, 0]))
    assert along.mean() < 0.7


def test_pair_control_passes_over_duplicated_prompts_and_refuses_when_every_pair_is_one():
    sources, y, _ = _residuals(n=8)
    sources[[2, 4, 6]] = sources[0]  # items 0, 2, 4, 6 (all answer 0) are one prompt
    unit = control_directions(["pair-random"], sources, y, np.ones(sources.shape[1:]), seed=0)["pair-random"]
    assert np.all(np.isfinite(unit)) and np.allclose(np.linalg.norm(unit, axis=-1), 1.0)
    with pytest.raises(InterventionError, match="item 0 has identical residuals|other than item 0"):
        control_directions(["pair-random"], np.repeat(sources[:1], 8, 0), y, np.ones(sources.shape[1:]), seed=0)
    with pytest.raises(InterventionError, match="at least 3 items"):
        control_directions(["pair-random"], sources[:2], y[:2], np.ones(sources.shape[1:]), seed=0)
    with pytest.raises(InterventionError, match=r"unknown steering control\(s\) \['pair'\]: choose from"):
        control_directions(["pair"], sources, y, np.ones(sources.shape[1:]), seed=0)
    assert set(STEERING_CONTROLS) == {"random", "pair-random"}


def test_steering_rows_run_the_stance_then_every_control_and_refuse_mismatched_vectors():
    stance = np.ones((2, 1, 3))
    rows, keys = steering_rows(2, [5], [1.0, 2.0], stance, {"random": 2 * stance, "pair-random": 3 * stance})
    conds = [k["condition"] for k in keys]
    assert conds[:7] == ["clean", "stance", "stance", "random", "random", "pair-random", "pair-random"]
    assert len(rows) == 2 * 7
    added = rows[6].interventions[0]
    assert added.hook == "blocks.5.hook_resid_post" and np.allclose(added.value.numpy(), 3 * 2.0)
    with pytest.raises(InterventionError, match="'pair-random'"):
        steering_rows(2, [5], [1.0], stance, {"pair-random": np.ones((2, 1, 4))})


def test_summary_reports_each_items_mass_ratio_median_beside_the_ratio_of_means():
    items = pd.DataFrame({"consistent": [0, 1, 1]})
    # clean masses 0.8, 0.4, 0.1; steered 0.4, 0.4, 0.1 -> per item ratios 0.5, 1, 1 (median 1); ratio of means 0.9/1.3
    frame = pd.DataFrame({"item": [0, 1, 2, 0, 1, 2], "condition": ["clean"] * 3 + ["pair-random"] * 3,
                          "layer": [-1] * 3 + [2] * 3, "alpha": [0.0] * 3 + [4.0] * 3,
                          "toward_word": [-1, 1, 1, 1, 1, -1], "letter_mass": [0.8, 0.4, 0.1, 0.4, 0.4, 0.1]})
    row = summarise_steering(frame, items).iloc[0]
    assert row.condition == "pair-random"
    assert row.mass_ratio == pytest.approx(0.9 / 1.3) and row.mass_ratio_median == pytest.approx(1.0)
    assert row.flip_rate == 1.0 and row.break_rate == 0.5
