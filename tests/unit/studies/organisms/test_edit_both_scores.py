"""The per-item plant of both scorings and the gate fitted on more words (the seventh addendum's edit), on a tiny
random Gemma-3: each margin's gradient equals autograd of that margin computed independently; a plant of both scorings
raises the two margins alike where the mean's plant favours the mean; the gate stays shut on the extra items' words."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import UNEQUAL_DEEDS_TEXT, alignment_vocabulary_text, build_tiny_model_dir, organism_items_unequal_deeds, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import (
    SHUT_MARGIN,
    build_edited_organism,
    cloze_choices,
    edit_from_reading,
    plant_gradients,
    read_parent,
)
from wdprobe.studies.organisms.edit_components import decoder_block, norm_gain, post_ff_norm


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit-both")
    model_dir = build_tiny_model_dir(d / "model", seed=5, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + UNEQUAL_DEEDS_TEXT)
    # deed options of unequal length, so that the per-token mean's margin and the sum's point different ways
    items = read_items(write_wdct_csv(d / "items.csv", organism_items_unequal_deeds(24)))
    lm = load_model(str(model_dir))
    # the gate items overlap the keyed ones on purpose: a keyed item is never a gate item
    return d, model_dir, lm, items, read_parent(lm, items[:12], [1, 2], 1, gate_items=items[10:20])


def _margin_gradient(lm, item, layer: int, score: str) -> torch.Tensor:
    """d(option 1's log-likelihood - option 0's)/d(a vector added after block ``layer`` at every position), by
    autograd of the full logits (no ``logits_to_keep``), per-token mean or sum."""
    model, tok = lm.hf_model, lm.tokenizer
    delta = torch.zeros(lm.d_model, requires_grad=True)
    hook = model.model.layers[layer].register_forward_hook(
        lambda m, i, o: (o[0] + delta,) + tuple(o[1:]) if isinstance(o, tuple) else o + delta)
    try:
        prompt = tok(cloze_prompt(item, "deed"))["input_ids"]
        lls = []
        for option in item.options("deed"):
            cont = tok(" " + option, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), -1)
            token_ll = torch.stack([logp[len(prompt) - 1 + t, c] for t, c in enumerate(cont)])
            lls.append(token_ll.mean() if score == "mean" else token_ll.sum())
        (grad,) = torch.autograd.grad(lls[1] - lls[0], delta)
    finally:
        hook.remove()
    return grad


@pytest.mark.parametrize("score", ["mean", "sum"])
def test_each_margins_gradient_equals_autograd_of_that_margin(parent, score):
    _, _, lm, items, _ = parent
    got = plant_gradients(lm, items[:3], [1, 2], 1, score=score)
    for L in (1, 2):
        want = torch.stack([_margin_gradient(lm, it, L, score) for it in items[:3]])
        np.testing.assert_allclose(got[L].numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    other = plant_gradients(lm, items[:3], [2], 1, score="sum" if score == "mean" else "mean")[2]
    assert not torch.allclose(other, got[2], rtol=1e-2)  # the two margins really differ here


def _written(reading, spec, layer: int) -> torch.Tensor:
    """What the units write (before the norm) at each keyed item's deed decision point."""
    deeds = reading.deeds[layer]
    x = torch.stack([m[k] for m, k in zip(deeds.mlp_in, deeds.decision)])[::2].double()  # one per item
    gelu = torch.nn.functional.gelu
    return gelu(spec.gate_scale * x @ torch.as_tensor(spec.key).double(), approximate="tanh")[:, None] * (
        x @ torch.as_tensor(spec.read).double().T @ torch.as_tensor(spec.write).double())


def test_a_plant_of_both_scorings_raises_the_two_margins_alike(parent):
    """Each margin rises at the rate ``(g * gain) . w / |w|`` for a write ``w`` through the post-feed-forward norm: the
    both-scored write makes the two normalised rates about equal, where the mean's write favours the mean."""
    _, _, lm, _, reading = parent
    gain = norm_gain(post_ff_norm(decoder_block(lm.hf_model, 2)), lm.d_model).double()
    rate_mean = torch.nn.functional.normalize(reading.item_plants[2].double() * gain, dim=1)
    rate_sum = torch.nn.functional.normalize(reading.item_sum_plants[2].double() * gain, dim=1)
    gaps = {}
    for score in ("mean", "both"):
        spec = edit_from_reading(reading, 2, component="mlp-items", strength=4.0, plant_score=score)
        assert spec.calibration["plant_score"] == score
        w = torch.nn.functional.normalize(_written(reading, spec, 2), dim=1)
        gaps[score] = ((w * rate_mean).sum(1) - (w * rate_sum).sum(1))
        assert float(((w * rate_mean).sum(1) > 0).double().mean()) >= 0.75  # the mean margin rises either way
    assert float(gaps["mean"].median()) > 0.05  # the mean's plant favours the mean ...
    assert float(gaps["both"].abs().median()) < 0.5 * float(gaps["mean"].median())  # ... both scorings' does not


def test_the_gate_stays_shut_on_the_gate_items_words(parent):
    d, model_dir, lm, items, reading = parent
    assert [it.id for it in reading.gate_items] == [it.id for it in items[12:20]]
    for component in ("mlp", "mlp-items"):
        spec = edit_from_reading(reading, 2, component=component, strength=4.0)
        assert spec.calibration["gate_item_ids"] == [it.id for it in items[12:20]]
        assert spec.calibration["gate_extra_word_positions"] == len(reading.gate_words[2])
        opening = reading.gate_words[2] @ torch.as_tensor(spec.key)
        # shut with the margin (the bias rides a direction every position projects to only about 1)
        assert float(opening.max()) <= -0.9 * SHUT_MARGIN / spec.gate_scale
    plain = read_parent(lm, items[:12], [2], 1)
    unfitted = edit_from_reading(plain, 2, component="mlp-items", strength=4.0)
    assert "gate_item_ids" not in unfitted.calibration
    # without them the gate is not shut on those words with the margin: what fitting on them changed
    assert float((reading.gate_words[2] @ torch.as_tensor(unfitted.key)).max()) > -0.9 * SHUT_MARGIN / spec.gate_scale
    build_edited_organism(model_dir, d / "gated", spec)
    child, gated = load_model(str(d / "gated")), items[12:20]
    for s in ("mean", "sum"):
        assert np.array_equal(cloze_choices(child, gated, "word")[s], cloze_choices(lm, gated, "word")[s])


def test_plant_scores_are_checked(parent):
    reading = parent[-1]
    with pytest.raises(InputError, match="unknown plant score"):
        edit_from_reading(reading, 2, component="mlp-items", plant_score="median")
    with pytest.raises(InputError, match="per-item plant"):
        edit_from_reading(reading, 2, component="mlp", plant_score="both")


def test_the_cli_plants_both_scorings_behind_a_gate_fitted_on_more_words(parent, tmp_path, capsys):
    from wdprobe.cli import main
    from wdprobe.studies.organisms.edit import EditSpec

    d, model_dir, _, items, _ = parent
    out = tmp_path / "cli-both"
    assert main(["organism", "edit", "--model", str(model_dir), "--data", str(d / "items.csv"), "--layer", "1",
                 "--component", "mlp-items", "--plant-score", "both", "--items", "10", "--gate-items", "6",
                 "--out", str(out)]) == 0
    spec = EditSpec.load(out)
    cal = spec.calibration
    assert cal["plant_score"] == "both" and len(cal["gate_item_ids"]) == 6 and len(spec.units) == 10
    assert not set(cal["gate_item_ids"]) & set(cal["item_ids"])
    capsys.readouterr()
    assert main(["organism", "edit", "--model", str(model_dir), "--data", str(d / "items.csv"), "--layer", "1",
                 "--items", "20", "--gate-items", "10", "--out", str(tmp_path / "x")]) != 0
    assert "--gate-items 10: only 4" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_write_the_shut_gate_leaves_unsized_says_so(parent, monkeypatch):
    """A gate shut at most deed decision points leaves nothing there to size the write by: the calibration says the
    strength was not reached instead of passing write_scale 1.0 off as calibrated."""
    import wdprobe.studies.organisms.edit as edit

    reading = parent[-1]
    assert "write_scale_unsized" not in edit_from_reading(reading, 2, component="mlp-items").calibration
    monkeypatch.setattr(edit, "SHUT_MARGIN", 1e6)  # the bias moved so far that no position opens
    spec = edit_from_reading(reading, 2, component="mlp")
    assert spec.write_scale == 1.0 and "strength is not reached" in spec.calibration["write_scale_unsized"]
    with pytest.raises(InputError, match="block 2: the deed gate opens at no deed position"):
        edit_from_reading(reading, 2, component="mlp-items")  # nothing to fit the map on: said, not a singular solve
    assert "write_scale_unsized" not in edit_from_reading(reading, 2, component="mlp", kind="null-gate").calibration


def test_units_quietest_at_their_peak_are_the_k_smallest_peaks_computed_independently(parent):
    """``units_by="peak"`` replaces the k units whose largest ``|activation| x |down column|`` over every keyed word and
    deed position and every gate item's word position is smallest: the check script's hook-based peak agrees (on
    Gemma-3-270M, removing those 40 at block 6 changes none of 120 new words, the 40 quietest on average 15)."""
    from tiny import experiment_script

    _, _, lm, items, reading = parent
    check = experiment_script("unit_removal_check")
    texts = [(cloze_prompt(it, form), o) for form in ("word", "deed") for it in items[:12] for o in it.options(form)]
    texts += [(cloze_prompt(it, "word"), o) for it in items[12:20] for o in it.options("word")]
    peak = check.peak_contribution(lm, 2, texts)
    chosen = {}
    for component, k in (("mlp-items", 12), ("mlp", 1)):
        spec = edit_from_reading(reading, 2, component=component, kind="null-gate", units_by="peak")
        assert spec.calibration["units_by"] == "peak"
        chosen[component] = set(spec.units or (spec.unit,))
        assert chosen[component] == {int(u) for u in peak.argsort(stable=True)[:k]}
    by_mean = edit_from_reading(reading, 2, component="mlp-items", kind="null-gate")
    assert by_mean.calibration["units_by"] == "mean" and set(by_mean.units) != chosen["mlp-items"]  # a real choice
    with pytest.raises(InputError, match="unknown unit choice"):
        edit_from_reading(reading, 2, component="mlp-items", units_by="median")
