"""Integration tests on the real embedded Gemma-3-270M (slow: the first run converts the GGUF), on the 20 items the
project ships, so they run on any fresh clone."""
import pytest
import torch

from wdprobe.core.forward import last_token_logits
from wdprobe.data.items import read_items
from wdprobe.data.prompts import normal_prompt
from wdprobe.data.wdct import present, select
from wdprobe.stages.score import score_wdct

pytestmark = pytest.mark.slow



def test_gemma_shape_and_exact_last_position_logits(gemma, example_items):
    assert gemma.bridge.cfg.n_layers == 18 and gemma.bridge.cfg.d_model == 640
    items = select(read_items(example_items), sample=4, seed=1)
    prompts = [normal_prompt(p, "deed") for p in present(items, seed=0)]
    batched = last_token_logits(gemma, prompts)
    for i, p in enumerate(prompts):
        ref = gemma.hf_model(**gemma.tokenizer(p, return_tensors="pt")).logits[0, -1]
        torch.testing.assert_close(batched[i], ref, atol=1e-3, rtol=1e-4)


def test_gemma_scores_a_handful_of_items(gemma, example_items, tmp_path):
    res = score_wdct(tmp_path / "run", data=example_items, lm=gemma, sample=8, seed=0, progress=False)
    m = res.metrics
    assert m["n_items"] == 8 and 0.0 <= m["cs_micro"] <= 1.0 and 0.0 < m["pcs_micro"] <= 1.0
    letters = res.run_dir / "manifest.json"
    import json

    st = json.loads(letters.read_text())["stages"]["score"]
    # Gemma's answer position puts far more mass on " A" than on "A" (measured, not assumed)
    assert st["letters"]["variant"] == "space"
    assert st["letters"]["calibration"]["space"] > 3 * st["letters"]["calibration"]["bare"]
    assert all(r["word_letter_mass"] > 0.01 for r in res.rows)
