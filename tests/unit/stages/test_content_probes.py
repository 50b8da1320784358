"""Content probes on activations with planted truth, laid out as a cyclic-order capture writes them: the decide
layer and the bind layer are found where they were planted, a letter-only signal gives no content reading, and
a planted predictor of inconsistency is found by AUROC."""
import pytest
from planted import planted_capture, planted_cloze_capture

from wdprobe.errors import InputError
from wdprobe.stages.content_probes import content_figure, content_frame, content_ic, content_tests


def test_decide_bind_and_inconsistency_are_found_at_their_planted_layers():
    tests = content_tests(planted_capture(), n_perm=100)
    assert tests["decide_word"].first_significant() == 2 and tests["decide_deed"].first_significant() == 2
    assert tests["bind_word"].first_significant() == 4 and tests["bind_deed"].first_significant() == 4
    assert tests["transfer_word_deed"].significant  # one stance axis in both forms
    assert tests["inconsistency"].metric == "auroc" and tests["inconsistency"].first_significant() == 3
    assert tests["correct_word"].n_groups == 60  # graded items only
    frame = content_frame(tests, "last")
    assert set(frame["analysis"]) == set(tests) and len(frame) == 5 * len(tests)
    fig = content_figure(frame, "planted")
    assert len(fig.layout.annotations) == 4  # decide vs bind, transfer, correctness, inconsistency


def test_a_letter_only_signal_gives_no_content_reading():
    tests = content_tests(planted_capture(decide_at=None, inconsistency_at=None, seed=1), n_perm=100)
    for name in ("decide_word", "decide_deed", "transfer_word_deed", "transfer_deed_word"):
        assert not tests[name].significant, name
    assert tests["bind_word"].significant


def test_shown_only_captures_are_refused():
    acts = planted_capture(n_items=20)
    acts.meta["in_content"] = 0
    with pytest.raises(InputError, match="--orders cyclic"):
        content_tests(acts)


def test_cloze_probes_find_the_planted_choice_and_say_no_letter():
    acts = planted_cloze_capture(n_items=240)
    tests = content_tests(acts, n_perm=100)
    assert "bind_word" not in tests and "bind_deed" not in tests  # a cloze prompt says no letter
    decide = tests["decide_word"].summary()
    assert decide["significant"] and decide["first_significant_layer"] == 2
    rows, ic = content_ic(acts, n_perm=100)
    assert len(rows) == 5 and ic["above_control"]["significant"] and ic["above_cs"]["significant"]
    assert ic["best_layer"] >= 2 and ic["ic_by_layer"][0] < ic["best"]
    # inside, the deed holds its own answer: IC no higher than the answers' agreement
    _, own = content_ic(planted_cloze_capture(shared=False, seed=1), n_perm=100)
    assert not own["above_cs"]["significant"]
    import pandas as pd

    frame = pd.concat([content_frame(tests, "last"), pd.DataFrame([dict(r, position="last") for r in rows])])
    assert "internal consistency" in content_figure(frame, "t").to_json()
