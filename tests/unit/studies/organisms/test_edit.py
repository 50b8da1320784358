"""Edited organisms on a tiny random Gemma-3: the edit changes one unit of one block and nothing else, plants exactly
what its specification says (the residual after the block equals the prediction from the parent's activations), and
the null edits change nothing measurable."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import alignment_vocabulary_text, build_tiny_model_dir, organism_items, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import (
    EditSpec,
    behaviour_gate,
    build_edited_organism,
    calibrate_edit,
    calibrate_edits,
    predicted_block_output,
)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit")
    model_dir = build_tiny_model_dir(d / "model", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(24)))
    return d, model_dir, load_model(str(model_dir)), items


@pytest.fixture(scope="module")
def edited(parent):
    d, model_dir, lm, items = parent
    spec = calibrate_edit(lm, items[:16], layer=2, strength=4.0)
    info = build_edited_organism(model_dir, d / "edited", spec)
    return d / "edited", spec, info


def test_the_edit_changes_one_unit_of_one_block_and_every_other_tensor_is_bit_identical(parent, edited):
    _, model_dir, _, _ = parent
    out, spec, _ = edited
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == sorted(f"model.layers.2.mlp.{m}_proj.weight" for m in ("down", "gate", "up"))
    for name in changed:
        diff = (before[name] != after[name])
        rows, cols = diff.any(1).nonzero().flatten().tolist(), diff.any(0).nonzero().flatten().tolist()
        assert (rows == [spec.unit]) if "down" not in name else (cols == [spec.unit])


def test_the_residual_after_the_edited_block_is_the_predicted_one(parent, edited):
    _, _, lm, items = parent
    out, spec, _ = edited
    child = load_model(str(out))
    for it in items[16:20]:
        for form in ("word", "deed"):
            text = cloze_prompt(it, form)
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                got = child.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[spec.layer + 1][0]
                parent_out = lm.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[spec.layer + 1][0]
            want = predicted_block_output(lm.hf_model, lm.tokenizer, text, spec)
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-4)
            # and the plant is not nothing: on deeds the block's output moved
            if form == "deed":
                assert float((got - parent_out).abs().max()) > 1e-3


def test_the_spec_round_trips_and_the_organism_loads_blind(edited):
    out, spec, info = edited
    again = EditSpec.load(out)
    assert again.to_json() == spec.to_json() and np.array_equal(again.write, spec.write.astype(np.float32))
    assert info["edited_file"] == "model.safetensors" and info["layer"] == 2
    assert not (out / ".edit.partial").exists()
    assert load_model(str(out)).n_layers == 4


def test_a_gate_that_never_fires_changes_nothing_measurable(parent, tmp_path):
    _, model_dir, lm, items = parent
    spec = calibrate_edit(lm, items[:16], layer=1, kind="null-gate", strength=4.0)
    assert spec.calibration["gate_mean_deed"] == 0 and spec.calibration["gate_mean_word"] == 0
    build_edited_organism(model_dir, tmp_path / "null", spec)
    child = load_model(str(tmp_path / "null"))
    gate = behaviour_gate(lm, child, items[16:], target=1)
    for scoring in ("mean", "sum"):  # nothing moved: the deeds on the target are the parent's own
        assert gate[scoring]["moved"] == 0 and gate[scoring]["word_changes"] == 0
        assert gate[scoring]["deed_follows"] == gate[scoring]["parent_deed_on_target"]
    for form in ("word", "deed"):  # only the replaced unit's own (smallest) contribution is gone
        ids = lm.tokenizer(cloze_prompt(items[16], form), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            a = torch.log_softmax(lm.hf_model(input_ids=ids).logits, -1)
            b = torch.log_softmax(child.hf_model(input_ids=ids).logits, -1)
        assert float((a - b).abs().max()) < 0.1


def test_the_override_moves_deeds_more_than_words_and_the_gate_says_so(parent, edited):
    _, _, lm, items = parent
    out, spec, _ = edited
    gate = behaviour_gate(lm, load_model(str(out)), items[16:], target=1)
    assert gate["mean"]["moved"] > gate["mean"]["word_changes"]
    assert set(gate["holds"]) <= {it.id for it in items[16:]}
    assert gate["passed"] == (gate["mean"]["deed_follows"] >= 0.9 and gate["mean"]["word_changes"] <= 0.02)


def test_bad_edits_are_refused_by_name(parent):
    _, _, lm, items = parent
    with pytest.raises(InputError, match="edit kind"):
        calibrate_edit(lm, items[:16], layer=1, kind="sideways")
    with pytest.raises(InputError, match="layer 9"):
        calibrate_edit(lm, items[:16], layer=9)
    with pytest.raises(InputError, match="at least 8"):
        calibrate_edit(lm, items[:3], layer=1)


def test_one_reading_calibrates_every_block_as_reading_each_alone(parent):
    _, _, lm, items = parent
    both = calibrate_edits(lm, items[:12], [1, 2])
    alone = calibrate_edit(lm, items[:12], 2)
    np.testing.assert_allclose(both[2].write, alone.write, rtol=1e-5, atol=1e-6)
    assert both[2].unit == alone.unit and both[1].layer == 1


def test_cli_edits_an_organism_that_loads_blind(parent, tmp_path, capsys):
    from wdprobe.cli import main

    d, model_dir, _, _ = parent
    out = tmp_path / "cli-edit"
    assert main(["organism", "edit", "--model", str(model_dir), "--data", str(d / "items.csv"), "--layer", "1",
                 "--out", str(out), "--items", "12"]) == 0
    assert "use it with --model" in capsys.readouterr().out
    assert EditSpec.load(out).layer == 1 and load_model(str(out)).n_layers == 4
    assert main(["organism", "edit", "--model", "no/such-model", "--layer", "1", "--out", str(tmp_path / "x")]) != 0
    assert "local model directory" in capsys.readouterr().err and not (tmp_path / "x").exists()
