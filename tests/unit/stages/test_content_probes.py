"""Content probes on activations with planted truth, laid out as a cyclic-order capture writes them: the decide
layer and the bind layer are found where they were planted, a letter-only signal gives no content reading, and
a planted predictor of inconsistency is found by AUROC."""
import numpy as np
import pandas as pd
import pytest

from wdprobe.errors import InputError
from wdprobe.stages.capture import Activations
from wdprobe.stages.content_probes import content_figure, content_tests


def planted_capture(n_items=120, layers=5, d=12, decide_at=2, bind_at=4, inconsistency_at=3, seed=0):
    """Two orders per (item, form); content choice per item and form; the letter said follows a strong A prior."""
    rng = np.random.default_rng(seed)
    rows, X = [], []
    word_c = rng.integers(0, 2, n_items)
    deed_c = np.where(rng.random(n_items) < 0.6, word_c, 1 - word_c)
    for i in range(n_items):
        for form, c in (("word", word_c[i]), ("deed", deed_c[i])):
            for order in ("01", "10"):
                letter = "A" if rng.random() < 0.8 else "B"
                x = rng.normal(size=(layers, d))
                if decide_at is not None:
                    x[decide_at:, 0] += 1.2 * (2 * c - 1)
                if bind_at is not None:
                    x[bind_at:, 1] += 2.0 * (1 if letter == "B" else -1)
                if inconsistency_at is not None and form == "deed":
                    x[inconsistency_at:, 2] += 1.5 * (word_c[i] != deed_c[i])
                X.append(x)
                rows.append({"prompt_index": len(rows), "id": f"it{i}", "domain": "Opinion", "form": form,
                             "n_options": 2, "order": order, "shown": int(order == "01"), "in_content": 1,
                             "choice": int(order[0 if letter == "A" else 1]), "letter": letter, "consistent": 0,
                             "content_choice": int(c), "content_consistent": int(word_c[i] == deed_c[i]),
                             "correct": 0 if i % 2 else ""})
    return Activations(np.array(X), pd.DataFrame(rows), tuple(range(layers)), "resid_post", "last")


def test_decide_bind_and_inconsistency_are_found_at_their_planted_layers():
    tests = content_tests(planted_capture(), n_perm=100)
    assert tests["decide_word"].first_significant() == 2 and tests["decide_deed"].first_significant() == 2
    assert tests["bind_word"].first_significant() == 4 and tests["bind_deed"].first_significant() == 4
    assert tests["transfer_word_deed"].significant  # one stance axis in both forms
    assert tests["inconsistency"].metric == "auroc" and tests["inconsistency"].first_significant() == 3
    assert tests["correct_word"].n_groups == 60  # graded items only
    fig = content_figure(tests, "planted")
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
