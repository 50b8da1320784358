"""Cloze scoring: each (prompt, continuation) pair's log-likelihood equals the shared-prefix option scorer's."""
import numpy as np
import pytest

from wdprobe.core.option_scoring import continuation_logprobs, option_logprobs
from wdprobe.errors import InputError


def test_continuations_match_option_scoring_and_count_tokens(tiny_lm):
    prompts = ["What is your view on city parks?\nAnswer:", "Should schools teach music?\nAnswer:"]
    options = ["Parks matter more.", "Roads matter more.", "Yes, music is vital."]
    ref = option_logprobs(tiny_lm, prompts, options, batch_size=2)
    pairs = [(p, o) for p in prompts for o in options]
    total, n_tokens = continuation_logprobs(tiny_lm, [p for p, _ in pairs], [o for _, o in pairs], batch_size=4)
    np.testing.assert_allclose(total.reshape(2, 3), ref, atol=1e-4)
    expected = [len(tiny_lm.tokenizer.encode(" " + o, add_special_tokens=False)) for o in options] * 2
    assert n_tokens.tolist() == expected
    with pytest.raises(InputError, match="2 prompts but 1 continuations"):
        continuation_logprobs(tiny_lm, prompts, options[:1])
