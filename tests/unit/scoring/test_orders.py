"""Per-item readings across orders and formats, from planted letter log-probabilities (checked by hand)."""
import numpy as np
import pytest

from wdprobe.data.wdct import Item, Presentation
from wdprobe.errors import InputError
from wdprobe.scoring.formats import item_columns
from wdprobe.scoring.orders import (
    cloze_prompt_row,
    letter_prompt_row,
    orders_of,
    reading_metrics,
)

ITEM2 = Item("i2", "Opinion", "Q?", ("yes", "no"), "Act?", ("do", "don't"), correct=0)
ITEM3 = Item("i3", "NonEthV", "Q?", ("a", "b", "c"), "Act?", ("x", "y", "z"))


def planted_rows(item: Item, prior, content: dict, orders_kind="cyclic", shown=None):
    """Letter rows whose letter probabilities are prior[letter] * content[form][option under that letter]."""
    shown = shown or tuple(range(item.n_options))
    pres = Presentation(item, shown, shown)
    rows = []
    for form in ("word", "deed"):
        for order, is_shown, in_content in orders_of(pres, form, orders_kind):
            lp = np.log([prior[j] * content[form][c] for j, c in enumerate(order)])
            rows.append(letter_prompt_row(item, form, order, is_shown, in_content, lp))
    return rows


def test_orders_of_each_kind():
    pres = Presentation(ITEM3, (2, 0, 1), (1, 0, 2))
    assert orders_of(pres, "word", "shown") == [((2, 0, 1), True, False)]
    cyc = orders_of(pres, "word", "cyclic")  # (2, 0, 1) is a cyclic shift: shown among the content orders
    assert [o for o, _, _ in cyc] == [(0, 1, 2), (1, 2, 0), (2, 0, 1)] and cyc[2][1] and all(c for _, _, c in cyc)
    deed = orders_of(pres, "deed", "cyclic")  # (1, 0, 2) is not: added, outside the content average
    assert deed[-1] == ((1, 0, 2), True, False) and len(deed) == 4
    assert len(orders_of(pres, "word", "all")) == 6
    with pytest.raises(InputError, match="unknown orders"):
        orders_of(pres, "word", "random")


def test_two_options_by_hand_strong_letter_prior():
    # prior A = 0.9: each order answers by position, so the shown reading says "A" whatever the content.
    content = {"word": [0.6, 0.4], "deed": [0.3, 0.7]}
    out = item_columns(ITEM2, planted_rows(ITEM2, [0.9, 0.1], content))
    # word: order 01 -> option 0 (.54 vs .04), order 10 -> option 1 (.36 vs .06); deed: 0 then 1
    assert (out["word_order_sensitive"], out["deed_order_sensitive"]) == (1, 1)
    assert out["order_mean_consistent"] == pytest.approx(0.5)  # pairs (0,0) (0,1) (1,0) (1,1): two agree
    # content: the prior cancels -> word 0.6:0.4, deed 0.3:0.7
    assert (out["word_content_choice"], out["deed_content_choice"], out["content_consistent"]) == (0, 1, 0)
    assert out["pc_word_0"] == pytest.approx(0.6) and out["pc_deed_1"] == pytest.approx(0.7)
    assert out["prior_word_A"] == pytest.approx(0.9) and out["prior_deed_B"] == pytest.approx(0.1)
    assert (out["word_content_is_correct"], out["deed_content_is_correct"]) == (1, 0)


def test_content_reading_does_not_move_with_the_letter_prior():
    content = {"word": [0.5, 0.2, 0.3], "deed": [0.1, 0.6, 0.3]}
    readings = [item_columns(ITEM3, planted_rows(ITEM3, prior, content, orders_kind=kind))
                for prior in ([1 / 3] * 3, [0.8, 0.15, 0.05], [0.05, 0.15, 0.8]) for kind in ("cyclic", "all")]
    for r in readings:
        assert (r["word_content_choice"], r["deed_content_choice"]) == (0, 1)
        for f in ("word", "deed"):
            np.testing.assert_allclose([r[f"pc_{f}_{c}"] for c in range(3)], content[f], atol=1e-12)
    assert readings[0]["order_mean_consistent"] == 0.0  # no prior: every order reads the content
    assert readings[2]["order_mean_consistent"] > 0.0  # a strong prior makes orders agree by position


def test_shown_only_rows_leave_the_content_reading_blank():
    out = item_columns(ITEM2, planted_rows(ITEM2, [0.9, 0.1], {"word": [0.6, 0.4], "deed": [0.3, 0.7]}, "shown"))
    assert out["content_consistent"] == "" and out["cloze_consistent"] == ""


def test_cloze_mean_and_sum_choices_differ_for_unequal_lengths():
    # option 0: 2 tokens, total -2 (mean -1); option 1: 8 tokens, total -4 (mean -0.5)
    rows = [cloze_prompt_row(ITEM2, f, np.array([-2.0, -4.0]), np.array([2, 8])) for f in ("word", "deed")]
    out = item_columns(ITEM2, rows)
    assert (out["word_cloze_choice"], out["word_cloze_sum_choice"]) == (1, 0)
    assert out["cloze_consistent"] == 1 and out["cloze_sum_consistent"] == 1 and out["cloze_pcs"] == pytest.approx(1.0)
    assert rows[0]["score_1"] == pytest.approx(-0.5) and rows[0]["letter"] == ""


def test_reading_metrics_name_every_reading_with_intervals():
    rows = []
    for n, prior in enumerate(([0.9, 0.1], [0.5, 0.5]) * 10):
        item = Item(f"i{n}", "Opinion" if n % 2 else "EthV", "Q?", ("yes", "no"), "Act?", ("do", "don't"), correct=0)
        row = {"id": item.id, "domain": item.domain, "n_options": 2, "consistent": 1, "pcs": 1.0, "word_choice": 0,
               "deed_choice": 0,
               "word_is_correct": 1, "deed_is_correct": 0}
        row.update(item_columns(item, planted_rows(item, prior, {"word": [0.6, 0.4], "deed": [0.7, 0.3]})))
        rows.append(row)
    m = reading_metrics(rows)
    assert set(m) == {"shown", "content", "order_mean"}
    assert m["content"]["cs"]["micro"]["value"] == 1.0  # both forms prefer option 0 by content
    assert m["order_mean"]["cs"]["micro"]["value"] == pytest.approx(0.75)  # strong-prior items 0.5, flat items 1
    low, high = m["order_mean"]["cs"]["micro"]["low"], m["order_mean"]["cs"]["micro"]["high"]
    assert low <= 0.75 <= high
    assert m["content"]["order_sensitivity"]["word"]["value"] == pytest.approx(0.5)
    assert m["content"]["letter_prior"]["2"]["word"][0] == pytest.approx(np.mean([0.9, 0.5]))
