"""Findings are worded from their tests: a planted null at small n reads "inconclusive", a planted effect is
claimed, and two seeds of a null never word opposite conclusions unless their intervals exclude each other."""
import re

import numpy as np
from planted import planted_capture

from wdprobe.data.wdct import Item, Presentation
from wdprobe.reports.study import finding_behaviour, finding_probes
from wdprobe.reports.wording import decodable, interval, p_text, versus
from wdprobe.scoring.formats import item_columns
from wdprobe.scoring.letters import item_row
from wdprobe.scoring.orders import letter_prompt_row, orders_of
from wdprobe.stages.content_probes import content_tests
from wdprobe.stages.score import typed_item_row, wdct_metrics


def scored_rows(n_items: int, seed: int, copy: float = 0.0) -> list[dict]:
    """Item rows as the score stage writes them, from a model with a letter prior and per-item content
    preferences; with probability ``copy`` the deed prefers what the word prefers, else independently."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        item = Item(f"i{i}", ["Opinion", "EthV"][i % 2], "Q?", ("yes", "no"), "Act?", ("do", "don't"), correct=0)
        pres = Presentation(item, tuple(rng.permutation(2)), tuple(rng.permutation(2)))
        word = rng.dirichlet([1, 1])
        deed = word if rng.random() < copy else rng.dirichlet([1, 1])
        prior = [0.7, 0.3]
        prompt_rows = []
        for form, content in (("word", word), ("deed", deed)):
            for order, shown, in_content in orders_of(pres, form, "cyclic"):
                lp = np.log([prior[j] * content[c] for j, c in enumerate(order)])
                prompt_rows.append(letter_prompt_row(item, form, order, shown, in_content, lp))
        shown = {r["form"]: r for r in prompt_rows if r["shown"]}
        row = item_row(pres, *[np.array([shown[f]["lp_A"], shown[f]["lp_B"]]) for f in ("word", "deed")])
        row.update(item_columns(item, prompt_rows))
        rows.append(typed_item_row({k: str(v) for k, v in row.items()}))
    return rows


def behaviour(rows: list[dict]) -> str:
    return finding_behaviour({"metrics": wdct_metrics(rows)}).text


def test_wording_helpers_by_hand():
    assert interval(0.5, 0.41, 0.6) == "0.50 [0.41, 0.60]" and p_text(0.0004) == "p < 0.001"
    sig = {"effect": 0.2, "low": 0.1, "high": 0.3, "p_value": 0.01, "n": 50, "significant": True}
    assert versus(sig, above="up", below="down", neither="flat") == "up (p = 0.010, n = 50)"
    assert versus(dict(sig, effect=-0.2), above="up", below="down", neither="flat").startswith("down")
    assert versus(dict(sig, significant=False, p_value=0.3), above="up", below="down",
                  neither="flat") == "flat: inconclusive at n = 50 (p = 0.300)"
    assert decodable(None, "X") == "X: not measured"


def test_a_planted_null_at_small_n_is_worded_inconclusive():
    text = behaviour(scored_rows(30, seed=0))
    assert "content (order-averaged" in text and text.count("inconclusive at n = 30") >= 2
    assert "above the" not in text and "below the" not in text
    tests = content_tests(planted_capture(n_items=40, decide_at=None, bind_at=None, inconsistency_at=None), n_perm=100)
    probes = finding_probes({"content_probes": {"last": {k: t.summary() for k, t in tests.items()}}, "probes": {},
                             "n_layers": 5}).text
    assert "is decodable" not in probes and probes.count("inconclusive at n = 40 items") >= 3


def test_a_planted_effect_is_claimed():
    text = behaviour(scored_rows(200, seed=1, copy=0.9))
    content = text.split("content (order-averaged")[1].split(";")[0]
    assert "above the" in content  # deeds copy words' content preference: agreement beyond random pairing
    tests = content_tests(planted_capture(), n_perm=100)
    probes = finding_probes({"content_probes": {"last": {k: t.summary() for k, t in tests.items()}}, "probes": {},
                             "n_layers": 5}).text
    assert "the option the model decides on by content is decodable" in probes


def test_two_seeds_never_word_opposite_conclusions_without_disjoint_intervals():
    for seed in range(12):
        a, b = (behaviour(scored_rows(40, seed=2 * seed + k)) for k in (0, 1))
        for reading in ("paper-compatible", "content (order-averaged"):
            ca, cb = (t.split(reading)[1].split(";")[0] for t in (a, b))
            words = [("above" if "above the" in c else "below" if "below the" in c else "none") for c in (ca, cb)]
            if {"above", "below"} <= set(words):
                (la, ha), (lb, hb) = (tuple(map(float, re.search(r"\[([\d.]+), ([\d.]+)\]", c).groups())) for c in (ca, cb))
                assert ha < lb or hb < la, (seed, reading, ca, cb)


def test_patching_letter_split_is_worded_from_its_two_tests():
    from wdprobe.reports.study import letter_split_text

    def ev(effect, p):
        return {"effect": effect, "low": effect - 0.1, "high": effect + 0.1, "p_value": p, "n": 80, "setting": 9,
                "significant": p < 0.05}

    full = {"layer": 9, "flip_rate_same": 0.85, "flip_rate_opposite": 0.1}
    letter_only = {"n_items": 80, "full": full, "tests": {"stance_transport_full": ev(0.02, 0.4),
                                                          "letter_transport_full": ev(1.5, 0.001)}}
    text = letter_split_text(letter_only)
    assert "carries into the deed: the letter, not the stance" in text and "no more than chance" in text
    both = dict(letter_only, tests={"stance_transport_full": ev(0.8, 0.001), "letter_transport_full": ev(1.5, 0.001)})
    assert "both the stance and the letter" in letter_split_text(both)
    assert letter_split_text(None) == "" and letter_split_text({"full": full}) == ""


def test_notes_render_paragraphs_and_bullet_lists():
    from wdprobe.reports.html import notes_html

    notes = "# Title\n\n**Lead** paragraph\nwith a wrapped line.\n\n- first *point*\n  continued\n- second `code`\n\nLast."
    assert notes_html(notes) == ("<p><b>Lead</b> paragraph\nwith a wrapped line.</p><ul><li>first <i>point</i> continued"
                                 "</li><li>second <code>code</code></li></ul><p>Last.</p>")


def test_a_claim_is_worded_from_its_q_value_across_the_report_and_recorded():
    """A test significant in its own stage (best layer accounted for) but not once the report's other tests are
    counted is worded inconclusive and names its q; one that survives is claimed, and the claim is recorded with
    its ledger key so a report can show every claim rests on a supporting entry."""
    from wdprobe.reports.wording import asserted_claims

    test = {"metric": "accuracy", "best": 0.5419, "best_low": 0.51, "best_high": 0.57, "best_layer": 7,
            "control_at_best": 0.5, "threshold": 0.5409, "p_value": 10 / 201, "significant": True,
            "first_significant_layer": 7, "n_groups": 600, "within_domain_at_best": 0.53,
            "within_domain_control_at_best": 0.5, "ledger_key": "probes/content-summary.json#last/decide_deed"}
    with asserted_claims() as claims:
        lost = decodable(dict(test, q_value=0.21), "The deed choice")
    assert claims == [] and "is not shown to be decodable once the report's other tests are counted" in lost
    assert "q = 0.210 across the report" in lost and "within domains 0.53, random labels 0.50" in lost
    with asserted_claims() as claims:
        kept = decodable(dict(test, q_value=0.012), "The deed choice")
    assert kept.startswith("The deed choice is decodable") and "p = 0.050, q = 0.012" in kept
    assert claims == ["probes/content-summary.json#last/decide_deed"]
    ev = {"effect": 0.2, "low": 0.1, "high": 0.3, "p_value": 0.01, "n": 50, "significant": True, "q_value": 0.08}
    assert versus(ev, above="up", below="down", neither="flat") == (
        "flat: inconclusive at n = 50 (p = 0.010 in its own test, but q = 0.080 once the report's other tests are "
        "counted)")
    with asserted_claims() as claims:  # a claim on a test the report never gave a q is recorded as unlisted
        assert versus(dict(ev, q_value=None), above="up", below="down", neither="flat").startswith("up")
    from wdprobe.reports.wording import UNLISTED
    assert claims == [UNLISTED]


def test_a_finding_asserting_an_unsupported_test_is_caught():
    import pandas as pd

    from wdprobe.reports.claims import Finding, unsupported_claims
    from wdprobe.reports.wording import UNLISTED

    ledger = pd.DataFrame({"source": ["a.json", "a.json"], "test": ["x", "y"], "q": [0.01, 0.3]})
    assert unsupported_claims([Finding("ok", "t", claims=["a.json#x"])], ledger) == []
    problems = unsupported_claims([Finding("bad", "t", claims=["a.json#x", "a.json#y", UNLISTED, "b.json#z"])], ledger)
    assert len(problems) == 3 and "q = 0.300" in problems[0] and "does not hold" in problems[1]


def test_a_best_layer_tie_is_worded_as_a_tie():
    from wdprobe.methods.decoding import LayerTest
    from wdprobe.reports.wording import layer_words

    value = np.array([0.5, 0.8654, 0.7, 0.8654])
    t = LayerTest((0, 1, 2, 17), "accuracy", value, value - 0.1, value + 0.1, np.full(4, 0.5), np.full(50, 0.6), 80, 40)
    s = t.summary()
    assert s["best_layer"] == 1 and s["tied_best_layers"] == [1, 17]
    assert layer_words(s) == "layers 1 and 17 (tied)" and layer_words({"best_layer": 9}) == "layer 9"
    assert "at layers 1 and 17 (tied)" in decodable(dict(s, significant=True), "X")


def test_a_bracketed_interval_before_a_link_stays_text():
    from wdprobe.reports.html import inline_markdown

    assert inline_markdown("Wilson [0.72, 1.00]; [`components/`](../c/card.md)") == (
        "Wilson [0.72, 1.00]; <a href='../c/card.md'><code>components/</code></a>")
    assert inline_markdown("[a](b.md) and [c](d.md)") == "<a href='b.md'>a</a> and <a href='d.md'>c</a>"
