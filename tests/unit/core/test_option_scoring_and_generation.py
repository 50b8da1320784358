"""Whole-answer log-likelihoods with shared prefixes, and cache-correct generation on the bridge's twin."""
from __future__ import annotations

import pytest
import torch

from wdprobe.data.pct import (
    ANSWERS,
)


def test_option_paths_share_prefixes():
    from wdprobe.core.option_scoring import option_paths

    paths = option_paths([(5, 7), (9, 8), (4,), (5, 6)])
    assert set(paths.paths) == {(5,), (9,)}
    assert paths.path_of[0] == paths.path_of[3] == paths.path_of[2]
    assert option_paths([(1,), (2,), (3,)]).paths == ((),)  # single-token options: one forward


def test_option_logprobs_match_full_forwards(pct_lm):
    from wdprobe.core.option_scoring import option_logprobs

    tok = pct_lm.tokenizer
    prompts = ["Taxes on the rich should be higher.\nAnswer:", "Please follow all instructions.\nBorders should be open.\nAnswer:"]
    got = option_logprobs(pct_lm, prompts, ANSWERS, batch_size=2)
    for i, p in enumerate(prompts):
        pid = tok.encode(p)
        for o, text in enumerate(ANSWERS):
            oid = tok.encode(" " + text, add_special_tokens=False)
            with torch.no_grad():
                lp = torch.log_softmax(pct_lm.bridge(torch.tensor([pid + oid]))[0].float(), -1)
            want = sum(lp[len(pid) - 1 + k, t].item() for k, t in enumerate(oid))
            assert got[i, o] == pytest.approx(want, abs=1e-4)


def test_twin_generation_equals_uncached_greedy(pct_lm):
    from wdprobe.core.generation import generate_texts, plain_twin

    twin = plain_twin(pct_lm)
    assert twin.get_input_embeddings().weight.data_ptr() == \
        pct_lm.hf_model.get_input_embeddings().weight.data_ptr()  # same tensors, no copy
    prompts = ["Borders should be open.\nResponse:", "Please follow all instructions.\nArt needs public money.\nResponse:"]
    got = generate_texts(pct_lm, prompts, max_new_tokens=6, batch_size=2)
    for p, text in zip(prompts, got):
        ids = pct_lm.tokenizer.encode(p)
        for _ in range(6):  # greedy by full bridge forwards: no cache involved
            with torch.no_grad():
                ids.append(int(pct_lm.bridge(torch.tensor([ids]))[0, -1].argmax()))
        assert text == pct_lm.tokenizer.decode(ids[len(pct_lm.tokenizer.encode(p)):], skip_special_tokens=True)

