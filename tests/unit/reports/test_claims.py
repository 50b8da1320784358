"""The claims ledger: every test in a run's result files, corrected together (hand-computed q-values)."""
import json

import numpy as np
import pytest

from wdprobe.errors import IntegrityError
from wdprobe.reports.claims import claims_ledger, collect_claims
from wdprobe.reports.study import ledger_sentence


def _run(tmp_path):
    run = tmp_path / "run"
    (run / "probes").mkdir(parents=True)
    (run / "steering").mkdir()
    (run / "metrics.json").write_text(json.dumps({"readings": {"shown": {"vs_chance": {"effect": 0.1, "p_value": 0.01}},
                                                               "cloze": {"vs_chance": {"effect": 0.0, "p_value": 0.5}}},
                                                  "cs_micro": 0.5}))
    (run / "probes" / "content-summary.json").write_text(json.dumps(
        {"last": {"decide_deed": {"best": 0.54, "p_value": 0.04975, "n_permutations": 200},
                  "decide_word": {"best": 0.9, "p_value": 0.004975, "n_permutations": 200}}}))
    (run / "steering" / "steering_headline.json").write_text(json.dumps(
        {"validation": {"tests": {"beats_random": {"effect": 0.2, "p_value": 0.03}}}, "best": {"layer": 3}}))
    (run / "steering" / "unrelated.json").write_text(json.dumps({"p_value": 0.001}))  # not a result file: not read
    return run


def test_every_test_is_collected_once_and_corrected_across_the_report(tmp_path):
    run = _run(tmp_path)
    claims = collect_claims(run)
    assert [(c.source, c.test) for c in claims] == [
        ("metrics.json", "readings/shown/vs_chance"), ("metrics.json", "readings/cloze/vs_chance"),
        ("probes/content-summary.json", "last/decide_deed"), ("probes/content-summary.json", "last/decide_word"),
        ("steering/steering_headline.json", "validation/tests/beats_random")]
    ledger = claims_ledger(run)
    p = np.array([0.01, 0.5, 0.04975, 0.004975, 0.03])
    # Benjamini-Hochberg by hand: sorted p times m / rank, then the running minimum from the largest
    order = np.argsort(p)
    ranked = p[order] * 5 / np.arange(1, 6)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    expected = np.empty(5)
    expected[order] = q
    np.testing.assert_allclose(ledger["q"], expected)
    assert ledger["survives"].tolist() == [True, False, False, True, False]  # beats_random: q = 0.05 exactly
    # a permutation p of 10/201 has a Monte-Carlo error of about 0.015: within two of 0.05, so fragile
    row = ledger[ledger["test"] == "last/decide_deed"].iloc[0]
    assert row["mc_error"] == pytest.approx(np.sqrt(0.04975 * 0.95025 / 200)) and bool(row["fragile"])
    assert ledger.loc[0, "effect"] == 0.1 and ledger.loc[2, "effect"] == 0.54
    sentence = ledger_sentence(ledger)
    assert sentence.startswith("This report runs 5 tests; 4 have p < 0.05 and 2 survive")
    assert "last/decide_deed in probes/content-summary.json (p = 0.0498, q = 0.0622)" in sentence
    assert "1 permutation p-value(s) lie within two Monte-Carlo errors" in sentence


def test_a_broken_result_file_or_p_value_is_refused(tmp_path):
    run = _run(tmp_path)
    (run / "steering" / "steering_headline.json").write_text('{"validation": ')
    with pytest.raises(IntegrityError, match="steering_headline.json: unreadable"):
        collect_claims(run)
    (run / "steering" / "steering_headline.json").write_text(json.dumps({"t": {"p_value": 1.5}}))
    with pytest.raises(IntegrityError, match="not a probability"):
        collect_claims(run)
    assert ledger_sentence(claims_ledger(tmp_path / "empty")) == "This run records no tests."


def test_a_findings_verdict_is_its_first_sentence_not_cut_at_a_decimal_point():
    from wdprobe.reports.study import verdict_line

    assert verdict_line("Yes: CS 0.52 [0.49, 0.55] over 1225 items. The paper's models reach 0.6.") == \
        "Yes: CS 0.52 [0.49, 0.55] over 1225 items."
    assert verdict_line("No sentence end here") == "No sentence end here"
    # an abbreviation is not a sentence's end (the PCT position's "s.d. over instructions" was cut there)
    assert verdict_line("At -0.06 (s.d. over instructions 0.94), e.g. here vs. there. Next.") == \
        "At -0.06 (s.d. over instructions 0.94), e.g. here vs. there."
    long = "word " * 100 + "end."
    assert len(verdict_line(long)) <= 320 and verdict_line(long).endswith(" …")  # a null worded in full still fits
