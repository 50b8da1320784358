"""Planted-truth fixtures shared by unit tests: activations laid out as a cyclic-order capture writes them."""
import numpy as np
import pandas as pd

from wdprobe.stages.capture import Activations


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


def planted_cloze_capture(n_items=120, layers=5, d=12, decide_at=2, shared=True, seed=0):
    """One cloze prompt per (item, form), no letters; the content choice appears from ``decide_at``. With ``shared``
    the deed prompt holds the *word* choice inside (the deed answer leaves it on 40% of items), else its own."""
    rng = np.random.default_rng(seed)
    rows, X = [], []
    word_c = rng.integers(0, 2, n_items)
    deed_c = np.where(rng.random(n_items) < 0.6, word_c, 1 - word_c)
    for i in range(n_items):
        for form, c in (("word", word_c[i]), ("deed", deed_c[i])):
            inside = word_c[i] if shared else c
            x = rng.normal(size=(layers, d))
            x[decide_at:, 0] += 2.0 * (2 * inside - 1)
            X.append(x)
            rows.append({"prompt_index": len(rows), "id": f"it{i}", "domain": ["Opinion", "EthV"][i % 2], "form": form,
                         "format": "cloze", "n_options": 2, "order": "", "shown": 0, "in_content": 0, "choice": int(c),
                         "letter": "", "consistent": int(word_c[i] == deed_c[i]), "content_choice": int(c),
                         "content_consistent": int(word_c[i] == deed_c[i]), "correct": ""})
    return Activations(np.array(X), pd.DataFrame(rows), tuple(range(layers)), "resid_post", "last")
