"""float16 storage cannot hold every residual: the capture refuses instead of writing inf."""
import pytest
import torch

from wdprobe.errors import InputError
from wdprobe.stages.capture import _stored


def test_float16_overflow_is_refused_naming_the_tensor():
    t = torch.tensor([[1.0, -37988.0], [70000.0, 2.0]])
    with pytest.raises(InputError, match="resid_post/last.*70,000.*bfloat16"):
        _stored("resid_post/last", t, torch.float16)
    assert _stored("resid_post/last", t, torch.bfloat16).dtype == torch.bfloat16
    assert _stored("x", t[:1], torch.float16).dtype == torch.float16  # within range: stored (rounded to float16)
