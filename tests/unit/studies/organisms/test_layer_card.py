"""The card of curves: studied items by hand, blind recovery from hand-written study tables, scores on planted rows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wdprobe.errors import InputError
from wdprobe.studies.organisms.layer_card import (
    GATE_KEYED_HOLD,
    GATE_MIN_STUDIED,
    INSTRUMENTS,
    chance_of_hit,
    keyed_split,
    largest_rise,
    recover_layers,
    score_card,
    spearman_permutation,
    studied_items,
    tost_share,
    write_card_page,
)


def _read(word_mean, deed_mean, word_sum=None, deed_sum=None):
    a = np.asarray
    return {"word": {"mean": a(word_mean), "sum": a(word_sum if word_sum is not None else word_mean)},
            "deed": {"mean": a(deed_mean), "sum": a(deed_sum if deed_sum is not None else deed_mean)}}


def test_studied_items_follow_the_rules_item_by_item():
    ids = ["a", "b", "c", "d", "e", "f"]
    parent = _read([0, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0])
    # a: moved by both scorings -> studied; b: moved by the mean only -> neither; c: parent inconsistent -> neither;
    # d: parent already on target -> control (nothing changed); e: unchanged -> control; f: moved but its word changed
    child = _read([0, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 1], deed_sum=[1, 0, 1, 1, 0, 1])
    split = studied_items(ids, parent, child, target=1)
    assert split.studied == ["a"]
    assert split.controls == ["d", "e"]
    assert split.n_eligible == 4  # a, b, e, f: parent consistent and off target
    assert split.hold_rate == pytest.approx(0.25)
    assert split.word_changes == pytest.approx(1 / 6)
    assert split.deed_changes == pytest.approx(3 / 6)  # a, b and f changed by the mean
    assert not split.carded  # one studied item, words changed on 1/6
    # why the others of a, b, e, f fail: b moved by the mean only, e did not move, f's word changed
    assert split.why == {"deed_moved_mean": 3, "deed_moved_both": 2, "word_changed": 1}


def test_a_per_item_plant_is_studied_where_it_was_keyed_and_needs_the_hold_rate():
    """``keyed_split``: studied among the keyed items, controls among the others, words over both; carded only when
    it also holds on GATE_KEYED_HOLD of the eligible keyed items."""
    n = GATE_MIN_STUDIED + 2
    keyed_ids, held_ids = [f"k{j}" for j in range(n)], ["h0", "h1", "h2", "h3"]
    held = studied_items(held_ids, _read([0] * 4, [0] * 4), _read([0, 0, 0, 1], [0, 0, 1, 0]), 1)
    all_moved = studied_items(keyed_ids, _read([0] * n, [0] * n), _read([0] * n, [1] * n), 1)
    split = keyed_split(all_moved, held)
    assert split.studied == keyed_ids and split.controls == ["h0", "h1"]  # h2 moved, h3's word changed
    assert split.n_items == n + 4 and split.word_changes == pytest.approx(1 / (n + 4))
    assert split.word_changes_by_set == {"keyed": 0.0, "held_out": 0.25}
    quiet = keyed_split(all_moved, studied_items(held_ids, _read([0] * 4, [0] * 4), _read([0] * 4, [0] * 4), 1))
    assert quiet.carded and quiet.summary()["min_hold_rate"] == GATE_KEYED_HOLD
    # GATE_MIN_STUDIED moved of n: enough items for the one-unit gate, too few of the keyed ones for this one
    most = studied_items(keyed_ids, _read([0] * n, [0] * n), _read([0] * n, [1] * (n - 2) + [0, 0]), 1)
    assert most.carded and most.hold_rate < GATE_KEYED_HOLD
    assert not keyed_split(most, studied_items(held_ids, _read([0] * 4, [0] * 4), _read([0] * 4, [0] * 4), 1)).carded


def test_carded_needs_enough_studied_items_and_quiet_words():
    n = GATE_MIN_STUDIED
    ids = [str(k) for k in range(n + 2)]
    parent = _read([0] * (n + 2), [0] * (n + 2))
    moved = _read([0] * (n + 2), [1] * n + [0, 0])
    assert studied_items(ids, parent, moved, 1).carded
    fewer = _read([0] * (n + 2), [1] * (n - 1) + [0, 0, 0])
    assert not studied_items(ids, parent, fewer, 1).carded


def test_studied_items_refuses_choices_of_another_length():
    with pytest.raises(InputError, match="cover 2 items, not 3"):
        studied_items(["a", "b", "c"], _read([0, 0, 0], [0, 0, 0]), _read([0, 0], [0, 0]), 1)


def test_largest_rise_by_hand():
    assert largest_rise([0.5, 0.5, 0.9, 1.0], [0, 1, 2, 3]) == 2
    assert largest_rise([0.2, 0.4, 0.45, 0.9], [3, 4, 5, 6]) == 6
    assert largest_rise([0.9, 0.8, 0.7], [0, 1, 2]) is None  # no rise
    assert largest_rise([0.5], [0]) is None
    with pytest.raises(InputError):
        largest_rise([0.1, 0.2], [0, 1, 2])


def _write_study(run, jump_at: int, n_layers: int = 8, lens_median: float | None = 4.5,
                 tuned_median: float | None = None):
    layers = range(n_layers)
    (run / "lens").mkdir(parents=True)
    (run / "lens" / "cloze-summary.json").write_text(json.dumps(
        {"inconsistent": {"n": 6, "item_divergence_layer_median": lens_median,
                          "item_divergence_layer_hist": {"4": 2, "5": 2}, "item_divergence_never": 2}}))
    if tuned_median is not None:
        (run / "lens" / "cloze-tuned-summary.json").write_text(json.dumps(
            {"inconsistent": {"n": 6, "item_divergence_layer_median": tuned_median,
                              "item_divergence_layer_hist": {"1": 3, "2": 2}, "item_divergence_never": 1}}))
    (run / "probes").mkdir()
    curve = lambda: [0.3 if l < jump_at else 0.8 for l in layers]  # noqa: E731
    rows = [{"position": "last", "analysis": a, "layer": l, "metric": m, "value": v}
            for a, m in (("transfer_word_deed", "accuracy"), ("inconsistency", "auroc"))
            for l, v in zip(layers, curve())]
    pd.DataFrame(rows).to_csv(run / "probes" / "cloze-last.csv", index=False)
    (run / "patching").mkdir()
    pd.DataFrame([{"condition": c, "layer": l, "flip_rate": v if c == "full" else 0.9}
                  for c in ("full", "random") for l, v in zip(layers, curve())]).to_csv(
        run / "patching" / "cloze_cross_form_summary.csv", index=False)
    (run / "steering").mkdir()
    pd.DataFrame([{"condition": "stance", "layer": l, "alpha": a, "cs": v - (0.1 if a == 4 else 0)}
                  for l, v in zip(layers, curve()) for a in (4.0, 16.0)]).to_csv(
        run / "steering" / "cloze_steering_summary.csv", index=False)


def test_recover_layers_reads_each_instrument_blind(tmp_path):
    _write_study(tmp_path, jump_at=5)
    got = recover_layers(tmp_path)
    assert got["logit lens"] == 4  # median 4.5 rounded down
    assert got["lens_items"] == 4 and got["inconsistent_items"] == 6
    for name in ("word probe on deeds", "inconsistency prediction", "cross-form patching", "steering"):
        assert got[name] == 5, name
    assert got["tuned lens"] is None and "tuned_lens_items" not in got  # an older study: no trained lens read


def test_recover_layers_reads_the_trained_lens_from_its_own_summary(tmp_path):
    _write_study(tmp_path, jump_at=5, tuned_median=2.0)
    got = recover_layers(tmp_path)
    assert got["tuned lens"] == 2 and got["logit lens"] == 4
    assert got["tuned_lens_items"] == 5 and got["tuned_lens_never_parts"] == 1
    assert got["lens_items"] == 4 and got["lens_never_parts"] == 2


def test_recover_layers_gives_none_for_missing_tables(tmp_path):
    got = recover_layers(tmp_path)
    assert all(got[name] is None for name in INSTRUMENTS)
    _write_study(tmp_path / "run", jump_at=3, lens_median=None)
    assert recover_layers(tmp_path / "run")["logit lens"] is None


def test_chance_of_hit_by_hand():
    assert chance_of_hit([0], 18) == pytest.approx(2 / 18)
    assert chance_of_hit([5], 18) == pytest.approx(3 / 18)
    assert chance_of_hit([0, 5], 18) == pytest.approx(2.5 / 18)


def test_spearman_permutation_can_fail_and_succeed():
    x = np.arange(12)
    rho, p = spearman_permutation(x, x + 1, permutations=2000)
    assert rho == pytest.approx(1.0) and p < 0.002
    rho, p = spearman_permutation(x, -x, permutations=2000)
    assert rho == pytest.approx(-1.0) and p > 0.99
    assert spearman_permutation([1, 1, 1], [1, 2, 3])[1] == 1.0


def test_tost_share():
    assert tost_share(0, 120) < 0.01  # none of 120 changed: within 0.05 of zero
    assert tost_share(6, 120) > 0.05  # 5% changed: not shown to be below the margin
    assert tost_share(0, 0) == 1.0


def _rows(instrument, recovered, layers, family="override"):
    return [{"family": family, "layer": L, "seed": 0, "instrument": instrument, "recovered": r}
            for L, r in zip(layers, recovered)]


def test_score_card_on_planted_rows():
    layers = list(range(1, 17))
    rng = np.random.default_rng(0)
    rows = (_rows("logit lens", layers, layers)  # exact: localises, moves with L
            + _rows("word probe on deeds", [16] * 16, layers)  # always the last block: fails
            + _rows("inconsistency prediction", rng.integers(0, 18, 16), layers)
            + _rows("cross-form patching", [np.nan] * 16, layers)  # never recovers a layer
            + _rows("steering", [L + 1 for L in layers], layers)
            + _rows("logit lens", [4, 8], [4, 8], family="null-gate")  # two false positives
            + _rows("steering", [15, 15], [4, 8], family="null-gate"))
    nulls = [{"name": "null-gate-L4-s0", "n_items": 200, "word_changed": 0, "deed_changed": 1}]
    table, ledger = score_card(pd.DataFrame(rows), n_layers=18, null_changes=nulls)
    t = table.set_index("instrument")
    assert t.loc["logit lens", "verdict"] == "localises" and t.loc["logit lens", "moves_with_L"]
    assert t.loc["steering", "verdict"] == "localises"
    assert t.loc["word probe on deeds", "verdict"] == "does not localise"
    assert not t.loc["word probe on deeds", "moves_with_L"]
    assert t.loc["cross-form patching", "hits"] == 0 and t.loc["cross-form patching", "no_layer"] == 16
    assert t.loc["logit lens", "false_positives"] == 2 and t.loc["steering", "false_positives"] == 0
    assert len(ledger) == 2 * len(INSTRUMENTS) + 2
    tost = ledger[ledger["instrument"] == "null-gate-L4-s0".join(["null edit ", ""])]
    assert (tost["q"] < 0.05).all()  # 0 and 1 of 200 changed: within 0.05 of none
    assert (ledger["q"] >= ledger["p"] - 1e-12).all()  # BH never lowers a p-value


def test_score_card_refuses_rows_without_columns():
    with pytest.raises(InputError, match="lack"):
        score_card(pd.DataFrame([{"family": "override"}]), n_layers=18)


def test_card_page_puts_verdicts_first_and_folds_the_tables(tmp_path):
    layers = list(range(1, 9))
    rows = pd.DataFrame([{**r, "name": f"override-L{r['layer']}-s0"} for name in INSTRUMENTS
                         for r in _rows(name, layers, layers)])
    table, ledger = score_card(rows, n_layers=10)
    gate = {"n_eligible": 40, "n_studied": 12, "hold_rate": 0.3, "hold_low": 0.18, "hold_high": 0.45,
            "word_changes": 0.0, "deed_changes": 0.1, "carded": True, "studied_in_study": 12,
            "inconsistent_in_study": 12, "lens_items": 10, "seconds": 90, "seed": 0}
    gates = pd.DataFrame([{"name": f"override-L{L}-s0", "family": "override", "layer": L, "strength": 20.0, **gate}
                          for L in layers]
                         + [{"name": "strength-1-L8-s0", "family": "strength-1", "layer": 8, "strength": 1.0, **gate,
                             "n_studied": 3, "carded": False}])
    md = write_card_page(tmp_path, table, ledger, gates, rows, 10, reading="**Read this.**").read_text()
    assert "| strength-1-L8-s0 | 1 | 3 / 40 (0.30) | no | - | - | - | - | - |" in md
    assert "| override-L8-s0 | 20 | 12 / 40 (0.30) | yes | 8 | 8 | 8 | 8 | 8 |" in md
    assert "8 of 8 override organisms passed" in md
    assert md.index("| logit lens | localises") < md.index("Read this.")
    page = (tmp_path / "index.html").read_text()
    assert page.index("<table") < page.index("<b>Read this.</b>") < page.index("<details")
    assert "plotly" in page


def test_a_rerun_summary_reproduces_a_kept_one_within_its_tolerance():
    from wdprobe.studies.organisms.card_rebuild import same_summary

    kept = {"n_items": 4, "all": {"lens_cs": [0.5, 0.75], "hist": {"3": 2}}, "median": None}
    assert same_summary({**kept, "added_since": 7}, kept)  # a key a newer stage writes is not compared
    assert same_summary({**kept, "all": {"lens_cs": [0.5004, 0.75], "hist": {"3": 2}}}, kept)
    assert not same_summary({**kept, "all": {"lens_cs": [0.502, 0.75], "hist": {"3": 2}}}, kept)
    assert not same_summary({**kept, "all": {"lens_cs": [0.5, 0.75], "hist": {"3": 3}}}, kept)  # a count differs
    assert not same_summary({**kept, "all": {"lens_cs": [0.5], "hist": {"3": 2}}}, kept)
    assert not same_summary({k: v for k, v in kept.items() if k != "median"}, kept)  # a kept key is missing
    assert not same_summary({**kept, "median": 2.0}, kept)


def test_the_hold_rate_panel_draws_the_gate_a_per_item_card_needs():
    from wdprobe.figures.card import localisation_figure

    rows = pd.DataFrame([{"name": "override-L4-s0", "family": "override", "layer": 4, "seed": 0, "strength": 20.0,
                          "instrument": "logit lens", "recovered": 5.0}])
    gates = pd.DataFrame([{"name": "override-L4-s0", "family": "override", "layer": 4, "seed": 0, "hold_rate": 0.8,
                           "hold_low": 0.7, "hold_high": 0.9}])
    lines = lambda fig: [list(t.y) for t in fig.data if t.mode == "lines"]  # noqa: E731
    assert lines(localisation_figure(rows, ["logit lens"], 10, title="t", gates=gates)) == []
    keyed = localisation_figure(rows, ["logit lens"], 10, title="t", gates=gates.assign(min_hold_rate=0.9))
    assert lines(keyed) == [[0.9, 0.9]]
