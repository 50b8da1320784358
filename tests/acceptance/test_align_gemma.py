"""Alignment on the real Gemma-3-270M: adapters seen by the bridge, and one short training run (slow)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow



def test_lora_applied_to_the_bridge_equals_peft_on_gemma(fresh_gemma):
    gemma = fresh_gemma
    from wdprobe.core.forward import last_token_logits
    from wdprobe.studies.align.finetune import TrainSettings, Tuner

    tuner = Tuner(gemma, TrainSettings(rank=4, seed=0))
    for name, p in tuner.params.items():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    prompts = ["Is the sky blue?\nA. Yes\nB. No\nAnswer:", "Answer:"]
    weights = {k: v.detach().clone() for k, v in gemma.hf_model.state_dict().items()}
    before = last_token_logits(gemma, prompts).clone()
    with torch.no_grad():
        peft_logits = tuner.model(**tuner._encode(prompts), logits_to_keep=1).logits[:, -1]
    with tuner.applied():
        inside = last_token_logits(gemma, prompts)
    assert (inside - before).abs().max() > 0.1
    assert torch.allclose(inside, peft_logits, atol=2e-3)
    # restored: every weight bit for bit (the claim); the logits then agree up to the CPU kernels' run-to-run rounding
    # (a bit-exact logits check failed once in CI by 1e-4 although every weight was restored)
    after = gemma.hf_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert torch.allclose(last_token_logits(gemma, prompts), before, atol=1e-3)


def test_one_epoch_of_word_training_on_gemma(fresh_gemma, example_items, tmp_path):
    gemma = fresh_gemma
    from wdprobe.studies.align.finetune import TrainSettings
    from wdprobe.studies.align.stages import AlignConfig, load_epoch, run_align

    res = run_align(tmp_path / "run", data=example_items, lm=gemma, progress=False,
                    config=AlignConfig(n_items=8, held_out=0.5, method="sft", sft_epochs=1, orders="shown"),
                    train=TrainSettings(lr=1e-3, batch_size=4))
    rows0, resid0 = load_epoch(tmp_path / "run", 0)
    rows1, resid1 = load_epoch(tmp_path / "run", 1)
    assert resid0["word"].shape == (8, 18, 640)
    # the evaluation before training is plain scoring: the same answers as wdprobe's scorer gives
    import json

    from wdprobe.data.items import read_items
    from wdprobe.data.wdct import present
    from wdprobe.scoring.letters import build_prompts, item_row, next_token_logprobs
    from wdprobe.studies.align.stages import two_option_items

    letters = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["align"]["letters"]["ids"]
    pres = present(two_option_items(read_items(example_items), 8, 0), seed=0)
    pr = build_prompts(pres, setting="normal", tokenizer=gemma.tokenizer, use_chat=False)
    lp = next_token_logprobs(gemma, pr["word"] + pr["deed"], letters)
    scored = [item_row(p, lp[i], lp[8 + i]) for i, p in enumerate(pres)]
    assert [r["id"] for r in rows0] == [r["id"] for r in scored]
    assert np.allclose([float(r["p_word_0"]) for r in rows0], [r["p_word_0"] for r in scored], atol=1e-5)
    mass0 = np.mean([float(r["word_letter_mass"]) for r in rows0])
    mass1 = np.mean([float(r["word_letter_mass"]) for r in rows1])
    assert mass0 < 0.5 < mass1  # one epoch teaches the answer format (the base model puts ~15% on letters)
    assert not np.allclose(resid0["word"][:, -1], resid1["word"][:, -1])
    start = [r for r in res.change_rates if r["epoch"] == 0 and r["set"] == "train"][0]
    assert start["direct"] == 0.0 and start["n"] == 4
