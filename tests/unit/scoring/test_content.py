"""Letter-free behaviour: permutation averaging recovers a planted content preference whatever the letter
prior, and the prior whatever the content; arithmetic checked by hand for 2, 3 and 4 options."""
import numpy as np
import pytest

from wdprobe.errors import InputError
from wdprobe.scoring.content import (
    all_orders,
    canonical_logprobs,
    content_distribution,
    cyclic_orders,
    letter_prior,
    order_sensitive,
)


def planted(prior, content, orders):
    """Observed letter log-probs when p(letter j | order) ∝ prior[j] * content[order[j]]."""
    rows = [np.log([prior[j] * content[o[j]] for j in range(len(o))]) for o in orders]
    return np.array(rows)


def test_two_options_by_hand():
    # both orders answered "A" with 0.8: pure position, no content
    lp = np.log([[0.8, 0.2], [0.8, 0.2]])
    orders = cyclic_orders(2)
    assert orders == [(0, 1), (1, 0)]
    np.testing.assert_allclose(canonical_logprobs(lp, orders), np.log([[0.8, 0.2], [0.2, 0.8]]))
    np.testing.assert_allclose(content_distribution(lp, orders), [0.5, 0.5])  # sqrt(.8*.2) each, renormalised
    np.testing.assert_allclose(letter_prior(lp, orders), [0.8, 0.2])
    assert order_sensitive(lp, orders)


def test_three_options_by_hand():
    orders = cyclic_orders(3)
    assert orders == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    # option 0 gets 0.6 wherever it is shown, the others 0.2: pure content
    lp = np.log([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(content_distribution(lp, orders), [0.6, 0.2, 0.2])
    np.testing.assert_allclose(letter_prior(lp, orders), [1 / 3] * 3)  # (.6*.2*.2)^(1/3) per letter
    assert not order_sensitive(lp, orders)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("kind", ["cyclic", "all"])
def test_planted_content_and_prior_are_recovered_exactly(k, kind):
    rng = np.random.default_rng(k)
    orders = cyclic_orders(k) if kind == "cyclic" else all_orders(k)
    assert len(orders) == (k if kind == "cyclic" else {2: 2, 3: 6, 4: 24}[k])
    content = rng.dirichlet(np.ones(k))
    for prior in (np.ones(k) / k, rng.dirichlet(np.ones(k)), np.array([0.97] + [0.03 / (k - 1)] * (k - 1))):
        lp = planted(prior, content, orders)
        np.testing.assert_allclose(content_distribution(lp, orders), content, atol=1e-12)
        np.testing.assert_allclose(letter_prior(lp, orders), prior / prior.sum(), atol=1e-12)


def test_content_does_not_move_when_only_the_letter_prior_changes():
    orders = cyclic_orders(2)
    content = np.array([0.7, 0.3])
    weak, strong = planted([0.5, 0.5], content, orders), planted([0.95, 0.05], content, orders)
    np.testing.assert_allclose(content_distribution(weak, orders), content_distribution(strong, orders))
    # the shown-order reading (first order only) is fooled by the strong prior: it picks whatever sits under A
    assert np.argmax(canonical_logprobs(strong, orders)[1]) != np.argmax(content)


def test_bad_orders_are_refused():
    with pytest.raises(InputError, match="permutation"):
        content_distribution(np.zeros((2, 2)), [(0, 0), (1, 0)])
    with pytest.raises(InputError, match="one row per order"):
        content_distribution(np.zeros((3, 2)), cyclic_orders(2))
