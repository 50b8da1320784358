"""Vocabulary reads gathered across forwards and projected together give what each forward's own logits give;
the batch planner wastes the least padding a run of neighbours allows."""
import dataclasses

import numpy as np
import pytest
import torch

from wdprobe.core import vocab_reads
from wdprobe.core.forward import length_batches, plan_batches
from wdprobe.core.vocab_reads import VocabularyReads, defers_unembedding, skip_unembedding

PROMPTS = ["Should schools teach music ? Answer:", "Is it right to lie to a friend ? A B Answer:",
           "Should you return a lost wallet ?", "GDP counts the value of all final goods . Answer: A",
           "You lead a club . Which action will you take ?"]


def _direct(lm, text):
    ids = lm.encode([text])["input_ids"]
    with torch.no_grad():
        return torch.log_softmax(lm.bridge.run_with_hooks(ids)[0].float(), dim=-1)


def _read_all(lm, chunk):
    reads = VocabularyReads(lm, chunk=chunk)
    for i, text in enumerate(PROMPTS):  # one forward per prompt; every position read, chunks cut across forwards
        ids = lm.encode([text])["input_ids"]
        n = ids.shape[1]
        hook = reads.hook(lambda x: x[0], [((i, t), (4, 5, 6)) for t in range(n)])
        with torch.no_grad():
            reads.after_forward(lm.bridge.run_with_hooks(ids, fwd_hooks=[hook]))
    reads.flush()
    return reads


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_deferred_reads_equal_each_forwards_own_log_probabilities(tiny_lm, chunk):
    assert defers_unembedding(tiny_lm)
    reads = _read_all(tiny_lm, chunk)
    assert reads.deferred
    for i, text in enumerate(PROMPTS):
        ref = _direct(tiny_lm, text)
        for t in range(ref.shape[0]):
            np.testing.assert_allclose(reads.logprobs[(i, t)], ref[t, [4, 5, 6]].numpy(), atol=1e-5)


def test_a_model_whose_logits_the_deferral_cannot_reproduce_unembeds_in_its_own_forward(tiny_lm, monkeypatch):
    lm = dataclasses.replace(tiny_lm, plain_cache={})
    # as if the model's forward scaled its logits after the output head (Cohere, Granite): the check must see it
    monkeypatch.setattr(vocab_reads, "unembed", lambda lm_, resid: 2 * lm_.hf_model.get_output_embeddings()(resid[None])[0])
    assert not defers_unembedding(lm)
    reads = _read_all(lm, 2)
    assert not reads.deferred
    for i, text in enumerate(PROMPTS):
        ref = _direct(lm, text)
        np.testing.assert_allclose(reads.logprobs[(i, 0)], ref[0, [4, 5, 6]].numpy(), atol=1e-5)


def test_skipping_the_unembedding_leaves_the_residuals_and_returns_no_logits(tiny_lm):
    ids = tiny_lm.encode(PROMPTS[:2])
    seen = {}

    def keep(x, hook=None):
        seen["x"] = x.clone()
        return x

    with torch.no_grad():
        out = tiny_lm.bridge.run_with_hooks(ids["input_ids"], attention_mask=ids["attention_mask"],
                                            fwd_hooks=[("blocks.1.hook_resid_post", keep), ("unembed.hook_in", skip_unembedding)])
        plain = {}
        tiny_lm.bridge.run_with_hooks(ids["input_ids"], attention_mask=ids["attention_mask"],
                                      fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook=None: plain.setdefault("x", x.clone()))])
    assert out.shape[1] == 0
    torch.testing.assert_close(seen["x"], plain["x"])


def test_planned_batches_split_where_lengths_jump_and_keep_every_limit():
    # by hand, 2 tokens a forward: one batch pads 2 and 2 up to 10 (40 + 2); two batches cost 20 + 4 + 2 x 2 = 28;
    # singletons 23 + 4 x 2 = 31; [10], [9], [2, 2]: 23 + 3 x 2 = 29
    assert plan_batches([10, 9, 2, 2], 8, 100, overhead_tokens=2) == [[0, 1], [2, 3]]
    assert plan_batches([10, 9, 2, 2], 8, 100, overhead_tokens=0) == [[0], [1], [2], [3]]
    # ... unless a forward costs more than the padding saved: 40 + 30 < 24 + 2 * 30
    assert plan_batches([10, 9, 2, 2], 8, 100, overhead_tokens=30) == [[0, 1, 2, 3]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=200).tolist()
    batches = plan_batches(lengths, 16, 1536)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len(b) <= 16 and (len(b) * max(lengths[i] for i in b) <= 1536 or len(b) == 1) for b in batches)
    assert all(lengths[b[0]] == max(lengths[i] for i in b) for b in batches)  # each batch led by its longest
    greedy = list(length_batches(lengths, 16, None))
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert padded(batches) <= padded(greedy)
    assert plan_batches([400], 4, 100) == [[0]]  # one entry over the budget still runs, alone


def test_token_log_probabilities_equal_the_full_log_softmax_at_those_tokens():
    from wdprobe.core.forward import token_logprobs

    logits = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(0)) * 5
    ids = torch.tensor([7, 0, 49])
    torch.testing.assert_close(token_logprobs(logits, ids), torch.log_softmax(logits, -1)[..., ids])
    # probabilities over the whole vocabulary still sum to one: the read tokens are not renormalised among themselves
    assert float(token_logprobs(logits, torch.arange(50)).exp().sum(-1).sub(1).abs().max()) < 1e-5
