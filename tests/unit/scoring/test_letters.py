import json

import numpy as np
import pytest
import torch

from wdprobe.core.forward import last_token_logits
from wdprobe.data.prompts import Demo, cot_prompt, normal_prompt, resolve_chat, wrap
from wdprobe.data.wdct import Item, Presentation, load_wdct, present
from wdprobe.errors import RunMismatchError
from wdprobe.scoring.letters import (
    item_row,
    letter_candidates,
    next_token_logprobs,
    resolve_letter_tokens,
)
from wdprobe.stages.score import load_score, score_wdct


def test_batched_equals_unbatched_under_left_padding(tiny_lm, wdct_csv):
    pres = present(load_wdct(wdct_csv), seed=0)
    prompts = [normal_prompt(p, f) for p in pres for f in ("word", "deed")]
    lengths = {len(tiny_lm.tokenizer.encode(p)) for p in prompts}
    assert len(lengths) > 3  # the batch really is padded
    batched = last_token_logits(tiny_lm, prompts)
    for i, p in enumerate(prompts):
        single = last_token_logits(tiny_lm, [p])[0]
        torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)
    # and equals the plain HF model's last-position logits on the unpadded prompt
    enc = tiny_lm.tokenizer(prompts[0], return_tensors="pt")
    ref = tiny_lm.hf_model(**enc).logits[0, -1]
    torch.testing.assert_close(batched[0], ref, atol=1e-4, rtol=1e-4)


def test_next_token_logprobs_keeps_prompt_order(tiny_lm, wdct_csv):
    pres = present(load_wdct(wdct_csv), seed=0)
    prompts = [normal_prompt(p, "deed") for p in pres]
    ids = [5, 6, 7]
    lp = next_token_logprobs(tiny_lm, prompts, ids, batch_size=2)  # length-sorted batches internally
    for i, p in enumerate(prompts):
        ref = torch.log_softmax(last_token_logits(tiny_lm, [p])[0].float(), -1)[ids].numpy()
        np.testing.assert_allclose(lp[i], ref, atol=1e-4)


def test_letter_candidates_and_resolution(tiny_lm, wdct_csv):
    cands = letter_candidates(tiny_lm.tokenizer, 4)
    a_id = tiny_lm.tokenizer.convert_tokens_to_ids("A")
    assert cands["bare"][0] == a_id
    pres = present(load_wdct(wdct_csv), seed=0)
    letters = resolve_letter_tokens(tiny_lm, [normal_prompt(p, "word") for p in pres])
    assert letters.variant in cands and letters.ids == cands[letters.variant]
    assert letters.calibration[letters.variant] == max(letters.calibration.values())


def test_letter_candidates_reject_tokenizer_without_letters(tiny_lm):
    class NoLetters:
        name_or_path = "nl"

        def encode(self, s, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="no single-token form"):
        letter_candidates(NoLetters(), 2)


def test_item_row_maps_letters_to_canonical_options():
    it = Item("i", "EthV", "Q", ("x", "y", "z"), "S", ("dx", "dy", "dz"), correct=0)
    pres = Presentation(it, word_order=(2, 0, 1), deed_order=(0, 1, 2))
    # word: letter A (canonical 2) gets most mass; deed: letter C (canonical 2) gets most
    word = np.log([0.6, 0.1, 0.1, 1e-9])
    deed = np.log([0.05, 0.05, 0.3, 1e-9])
    row = item_row(pres, word, deed)
    assert row["word_choice"] == 2 and row["word_letter"] == "A"
    assert row["deed_choice"] == 2 and row["deed_letter"] == "C"
    assert row["consistent"] == 1
    assert row["p_word_2"] == pytest.approx(0.75) and row["p_word_0"] == pytest.approx(0.125)
    assert row["p_deed_2"] == pytest.approx(0.75)
    assert row["word_letter_mass"] == pytest.approx(0.8) and row["deed_letter_mass"] == pytest.approx(0.4)
    assert row["pcs"] == pytest.approx(1.0)  # both forms put (.125, .125, .75) on canonical options
    assert row["word_is_correct"] == 0 and row["correct"] == 0
    assert row["p_word_3"] == ""


def test_chat_template_auto_and_override(tmp_path, tiny_lm):
    tok = tiny_lm.tokenizer
    assert resolve_chat("auto", "my-model-instruct", tok) is False  # tiny tokenizer has no template
    tok_chat = type(tok).from_pretrained(tiny_lm.path)
    tok_chat.chat_template = "{% for m in messages %}<bos>user: {{ m['content'] }}\n{% endfor %}model:"
    assert resolve_chat("auto", "gemma-3-270m-it", tok_chat) is True
    assert resolve_chat("auto", "gemma-3-270m", tok_chat) is False
    assert resolve_chat("plain", "x-instruct", tok_chat) is False
    assert wrap("Q\nAnswer:", tok_chat, True) == "<bos>user: Q\nAnswer:\nmodel:"
    with pytest.raises(ValueError, match="no"):
        wrap("Q", tok, True)


def test_cot_prompt_uses_three_other_demos():
    demos = [Demo(f"d{i}", "Explain.", f"Question {i}", f"Belief: b{i}\nAnswer: A") for i in range(6)]
    it = Item("d2", "Opinion", "Q", ("a", "b"), "S", ("da", "db"))
    pres = Presentation(it, (0, 1), (1, 0))
    text = cot_prompt(pres, demos, seed=0)
    assert text == cot_prompt(pres, demos, seed=0)
    assert "Question 2" not in text and text.count("Belief: b") == 3
    assert text.endswith("S\nA. db\nB. da\nBelief:\n")


def test_score_run_resumes_and_refuses_other_settings(tiny_lm, wdct_csv, tmp_path):
    out = tmp_path / "run"
    first = score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    assert len(first.rows) == 6 and first.metrics["n_items"] == 6
    assert first.metrics["n_multi_option_items"] == 2
    parts = sorted((out / "score.parts").glob("part-*.csv"))
    assert len(parts) == 3
    # simulate a crash after two chunks: drop the last part and the final tables
    parts[-1].unlink()
    (out / "items.csv").unlink()
    (out / "metrics.json").unlink()
    again = score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    assert again.rows == first.rows
    assert json.loads((out / "metrics.json").read_text()) == first.metrics
    assert load_score(out).rows == first.rows
    manifest = json.loads((out / "manifest.json").read_text())
    st = manifest["stages"]["score"]
    assert st["complete"] and st["data"]["sha256"] and st["letters"]["variant"] in ("space", "bare")
    assert manifest["environment"]["wdprobe"]
    with pytest.raises(RunMismatchError, match="seed"):
        score_wdct(out, data=wdct_csv, lm=tiny_lm, seed=1, progress=False)


def test_score_cot_setting_runs(tiny_lm, wdct_csv, tmp_path):
    import csv

    demo = tmp_path / "demo.csv"
    with open(demo, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "Type", "Prompt", "Question", "Belief"])
        for i in range(5):
            w.writerow([f"d{i}", "Opinion", "Explain the belief", "Which action will you take?\nA. x\nB. y", "Belief: I believe\nAnswer: A"])
    res = score_wdct(tmp_path / "cot", data=wdct_csv, lm=tiny_lm, setting="cot", demos=demo, progress=False)
    assert len(res.rows) == 6
    assert all(0 <= r["pcs"] <= 1 for r in res.rows)


def test_letter_copy_baseline_hand_computed():
    from wdprobe.stages.score import wdct_metrics

    base = {"domain": "Opinion", "n_options": 2, "pcs": 1.0, "word_letter_mass": 0.5, "deed_letter_mass": 0.5,
            "word_is_correct": None, "deed_is_correct": None}
    rows = [dict(base, word_order="01", deed_order="10", word_letter="A", deed_letter="B", word_choice=0, deed_choice=0, consistent=1),
            dict(base, word_order="01", deed_order="01", word_letter="B", deed_letter="B", word_choice=1, deed_choice=1, consistent=1),
            dict(base, word_order="10", deed_order="01", word_letter="A", deed_letter="A", word_choice=1, deed_choice=0, consistent=0)]
    m = wdct_metrics(rows)
    # copying the word letter into the deed: item 1 -> canonical 0 vs 1 (no), item 2 -> 1 vs 1 (yes), item 3 -> 1 vs 0 (no)
    assert m["cs_letter_copy_baseline"] == pytest.approx(1 / 3)
    assert m["same_letter_rate"] == pytest.approx(2 / 3)
    assert m["cs_micro"] == pytest.approx(2 / 3)
    assert m["word_chose_A"] == pytest.approx(2 / 3)


def test_batches_cover_every_prompt_once_within_caps(tiny_lm):
    from wdprobe.core.forward import iter_batches

    prompts = [" ".join(["Answer"] * n) for n in (3, 9, 1, 7, 7, 2, 12, 5)]
    lengths = [len(tiny_lm.tokenizer.encode(p)) for p in prompts]
    batches = list(iter_batches(tiny_lm, prompts, batch_size=3, max_batch_tokens=20))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(prompts)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 20
