"""The instrument card's arithmetic on hand-made result tables: each rule passes, fails or says 'not measured' exactly
as its words say."""
from __future__ import annotations

import pandas as pd

from wdprobe.studies.organisms.card import RULES, instrument_card, rules_markdown


def _test(best, layer, p, significant, control=0.5):
    return {"best": best, "best_layer": layer, "p_value": p, "significant": significant, "control_at_best": control}


def _hypocrite(L, *, transfer_below=0.3, flip_at=None, median=None, gain_below=0.0, best_patch=None, steer_layer=None,
               steer_margin=0.2, mass=1.0):
    layers = range(18)
    flip_at = L if flip_at is None else flip_at
    transfer = pd.DataFrame([{"analysis": "transfer_word_deed", "layer": l,
                              "value": 0.7 if l >= flip_at else transfer_below,
                              "low": (0.6 if l >= flip_at else transfer_below - 0.1),
                              "high": (0.8 if l >= flip_at else transfer_below + 0.1)} for l in layers])
    best_patch = L + 1 if best_patch is None else best_patch
    patch = pd.DataFrame([{"condition": "full", "layer": l,
                           "cs_after": 0.2 + (0.6 if l == best_patch else (gain_below if l <= L - 2 else 0.1))}
                          for l in layers])
    steer_layer = L if steer_layer is None else steer_layer
    return {"planted_layer": L, "probe_curves": transfer, "patch_curves": patch,
            "lens": {"inconsistent": {"item_divergence_layer_median": L + 1 if median is None else median}},
            "patch": {"cs_clean_decision_step": 0.2, "tests": {"restores_full": {"p_value": 0.001, "significant": True}}},
            "steer": {"validation": {"layer": steer_layer, "stance": {"cs": 0.3 + steer_margin, "mass_ratio": mass},
                                     "random": {"cs": 0.3}, "tests": {"beats_random": {"p_value": 0.01, "significant": True}}}},
            "probes": {"last": {"inconsistency": _test(0.8, L, 0.005, True)}}}


def _results(**hyp):
    sincere = {"probes": {"last": {"decide_word": _test(0.9, 5, 0.005, True), "decide_deed": _test(0.85, 7, 0.005, True)}}}
    letter = {"letter_split": {"tests": {"letter_transport_full": {"effect": 1.2, "p_value": 0.001, "significant": True},
                                         "stance_transport_full": {"effect": 0.01, "p_value": 0.7, "significant": False}}}}
    return {"sincere": sincere, "hypocrite": _hypocrite(12, **hyp), "hypocrite-early": _hypocrite(4), "letter": letter}


def _verdicts(results):
    return {(v.instrument, v.organism): v for v in instrument_card(results)}


def test_recovered_truths_pass_every_rule():
    v = _verdicts(_results())
    assert len(v) == len(RULES) and all(x.passed for x in v.values()), [x for x in v.values() if not x.passed]
    assert v[("logit lens: moves with L", "hypocrite vs hypocrite-early")].recovered.startswith("medians 5 -> 13")


def test_each_rule_fails_as_its_words_say():
    v = _verdicts(_results(median=15))  # outside [12, 14]
    assert v[("logit lens: divergence layer", "hypocrite")].passed is False
    assert v[("logit lens: divergence layer", "hypocrite-early")].passed is True
    assert _verdicts(_results(transfer_below=0.5))[("probes: word probe on deeds", "hypocrite")].passed is False
    assert _verdicts(_results(flip_at=20))[("probes: word probe on deeds", "hypocrite")].passed is False
    assert _verdicts(_results(gain_below=0.06))[("cross-form patching", "hypocrite")].passed is False  # > 0.05 below L
    assert _verdicts(_results(gain_below=0.05))[("cross-form patching", "hypocrite")].passed is True
    assert _verdicts(_results(best_patch=8))[("cross-form patching", "hypocrite")].passed is False
    assert _verdicts(_results(steer_margin=0.09))[("steering", "hypocrite")].passed is False
    assert _verdicts(_results(mass=0.85))[("steering", "hypocrite")].passed is False
    assert _verdicts(_results(steer_layer=11))[("steering", "hypocrite")].passed is False


def test_missing_results_are_not_measured_never_passed():
    results = _results()
    del results["letter"]
    del results["hypocrite"]["steer"]
    v = _verdicts(results)
    assert v[("letter split", "letter")].passed is None and v[("letter split", "letter")].word == "not measured"
    assert v[("steering", "hypocrite")].passed is None
    assert "| cross-form patching | hypocrite |" in rules_markdown()


def test_card_page_tallies_verdicts_and_lists_the_organisms(tmp_path):
    import json

    from wdprobe.studies.organisms.card import write_instrument_card

    orgs = {}
    for name, layer in (("sincere", None), ("hypocrite", 12)):
        d = tmp_path / name
        d.mkdir()
        final = {f"{s}_{f}": {"target_mean": 0.9, "correct_mean": 0.9 if name == "sincere" or f == "word" else 0.1}
                 for s in ("train", "held_out") for f in ("word", "deed")}
        (d / "organism.json").write_text(json.dumps({"planted_layer": layer, "final": final, "wall_seconds": 600}))
        orgs[name] = (d, None)  # no study yet: every rule reads "not measured"
    card = write_instrument_card(orgs, tmp_path / "card").read_text()
    assert f"0 of {len(RULES)} rules pass, 0 fail, {len(RULES)} not measured." in card
    assert "| hypocrite | 12 | 0.90 | 0.90 | 0.90 | 0.10 | 10.0 | — |" in card
    assert "</table>" in (tmp_path / "card" / "index.html").read_text()


def test_an_unvalidated_steering_cell_fails_and_says_why():
    """No validation is a fail, and the verdict names the reason the headline recorded (not a guessed one)."""
    results = _results()
    results["hypocrite"]["steer"] = {"best": {"layer": 3, "alpha": 16.0}, "validation": None,
                                     "validation_skipped": "86 items outside the grid; too few of one choice"}
    v = _verdicts(results)[("steering", "hypocrite")]
    assert v.passed is False and "layer 3, alpha 16" in v.recovered and "too few of one choice" in v.recovered
    results["hypocrite"]["steer"] = {"best": None, "validation": None}
    v = _verdicts(results)[("steering", "hypocrite")]
    assert v.passed is False and "no grid setting kept" in v.recovered
