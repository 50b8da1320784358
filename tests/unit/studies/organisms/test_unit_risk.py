"""Each MLP unit's word risk (the tenth addendum's unit choice), on a tiny random Gemma-3: the first-order removal
effect equals the margin's change when the unit is really removed, to first order (a finite difference on a fraction
of the unit); the edit replaces the k units of least risk, and removing them moves the word margins less than removing
the k quietest at their peak."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny import alignment_vocabulary_text, build_tiny_model_dir, organism_items, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import edit_from_reading, read_parent
from wdprobe.studies.organisms.edit_components import block_mlp, matrix
from wdprobe.studies.organisms.unit_risk import removal_effects, word_risk

LAYER = 1


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("unit-risk")
    model_dir = build_tiny_model_dir(d / "model", seed=5, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(24)))
    lm = load_model(str(model_dir))
    return lm, items, read_parent(lm, items[:8], [LAYER, 2], 1, gate_items=items[8:14], unit_risk=True)


def _word_margins(lm, items) -> np.ndarray:
    """[n, 2]: (per-token mean, sum) word margin of option 0 over option 1, from the full logits."""
    tok, model = lm.tokenizer, lm.hf_model
    out = []
    with torch.no_grad():
        for it in items:
            prompt = tok(cloze_prompt(it, "word"))["input_ids"]
            lls, ks = [], []
            for option in it.options("word"):
                cont = tok(" " + option, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].double(), -1)
                lls.append(float(sum(logp[len(prompt) - 1 + t, c] for t, c in enumerate(cont))))
                ks.append(len(cont))
            out.append((lls[0] / ks[0] - lls[1] / ks[1], lls[0] - lls[1]))
    return np.array(out)


def test_the_removal_effect_is_the_margins_first_order_change(parent):
    lm, items, _ = parent
    effects = removal_effects(lm, items[:3], [LAYER])[LAYER]
    base = _word_margins(lm, items[:3])
    np.testing.assert_allclose(effects["margin_mean"].numpy(), base[:, 0], atol=1e-4)
    np.testing.assert_allclose(effects["margin_sum"].numpy(), base[:, 1], atol=1e-4)
    down = matrix(block_mlp(lm.hf_model, LAYER), "down_proj")
    eps = 1e-2
    for u in effects["sum"].abs().sum(0).argsort(descending=True)[:3].tolist():  # the units that matter most
        kept = down[:, u].detach().clone()
        margins = {}
        try:
            for sign in (1, -1):  # a fraction eps of the unit removed, and added: a central difference
                with torch.no_grad():
                    down[:, u] = kept * (1 - sign * eps)
                margins[sign] = _word_margins(lm, items[:3])
        finally:
            with torch.no_grad():
                down[:, u] = kept
        moved = (margins[1] - margins[-1]) / (2 * eps)
        np.testing.assert_allclose(effects["mean"][:, u].numpy(), moved[:, 0], rtol=0.02, atol=2e-3)
        np.testing.assert_allclose(effects["sum"][:, u].numpy(), moved[:, 1], rtol=0.02, atol=2e-3)


def test_risk_is_the_largest_relative_move(parent):
    effects = {"mean": torch.tensor([[0.1, -0.4], [0.05, 0.0]]), "sum": torch.tensor([[0.3, 0.0], [-1.0, 0.2]]),
               "margin_mean": torch.tensor([0.2, -0.1]), "margin_sum": torch.tensor([1.0, 2.0])}
    # unit 0: mean 0.5, 0.5; sum 0.3, 0.5 -> 0.5; unit 1: mean 2.0, 0; sum 0, 0.1 -> 2.0
    np.testing.assert_allclose(word_risk(effects).numpy(), [0.5, 2.0])


def test_the_edit_replaces_the_units_of_least_risk_and_they_move_words_least(parent):
    lm, items, reading = parent
    risk = reading.word_risk[LAYER]
    assert risk.shape == (matrix(block_mlp(lm.hf_model, LAYER), "down_proj").shape[1],)
    spec = edit_from_reading(reading, LAYER, component="mlp-items", units_by="words", kind="null-gate")
    assert list(spec.units) == [int(u) for u in risk.argsort(stable=True)[:8]]
    cal = spec.calibration
    assert cal["units_by"] == "words" and cal["word_risk_units_max"] == pytest.approx(float(risk[list(spec.units)].max()), abs=1e-5)
    peak = edit_from_reading(reading, LAYER, component="mlp-items", units_by="peak", kind="null-gate")
    measured = items[:14]  # the words the risk was read on
    base = _word_margins(lm, measured)
    moves = {}
    down = matrix(block_mlp(lm.hf_model, LAYER), "down_proj")
    for name, units in (("words", list(spec.units)), ("peak", list(peak.units))):
        kept = down[:, units].detach().clone()
        with torch.no_grad():
            down[:, units] = 0.0
        try:
            moves[name] = np.abs((_word_margins(lm, measured) - base) / np.abs(base)).max()
        finally:
            with torch.no_grad():
                down[:, units] = kept
    assert moves["words"] < moves["peak"]


def test_word_risk_is_asked_for(parent):
    lm, items, _ = parent
    plain = read_parent(lm, items[:8], [LAYER], 1)
    assert plain.word_risk == {}
    with pytest.raises(InputError, match="word risk at block 1"):
        edit_from_reading(plain, LAYER, component="mlp-items", units_by="words")
    three = replace(items[0], word_options=items[0].word_options + ("Maybe.",),
                    deed_options=items[0].deed_options + ("Maybe.",))
    with pytest.raises(InputError, match="two-option"):
        removal_effects(lm, [three], [LAYER])
