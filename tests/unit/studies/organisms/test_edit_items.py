"""The per-item edit (``mlp-items``) on a tiny random Gemma-3: it replaces exactly its ``k`` units of one block, plants
what its specification says (the residual after the block equals the prediction from the parent's activations), gives
each calibration item's deed its own plant rather than one shared direction, and its null gate adds nothing."""
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
    build_edited_organism,
    edit_from_reading,
    predicted_block_output,
    read_parent,
)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit-items")
    model_dir = build_tiny_model_dir(d / "model", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(24)))
    lm = load_model(str(model_dir))
    return d, model_dir, lm, items, read_parent(lm, items[:12], [1, 2], 1)


@pytest.fixture(scope="module")
def edited(parent):
    d, model_dir, _, _, reading = parent
    spec = edit_from_reading(reading, 2, component="mlp-items", strength=4.0)
    build_edited_organism(model_dir, d / "edited", spec)
    return d / "edited", spec


def test_the_edit_replaces_its_units_of_one_block_and_every_other_tensor_is_bit_identical(parent, edited):
    _, model_dir, _, items, _ = parent
    out, spec = edited
    assert len(spec.units) == 12 == len(set(spec.units)) and spec.unit == spec.units[0]
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == sorted(f"model.layers.2.mlp.{m}_proj.weight" for m in ("down", "gate", "up"))
    for name in changed:
        diff = before[name] != after[name]
        touched = diff.any(0 if "down" in name else 1).nonzero().flatten().tolist()
        assert set(touched) <= set(spec.units) and len(touched) >= len(spec.units) - 1


def test_the_residual_after_the_edited_block_is_the_predicted_one(parent, edited):
    _, _, lm, items, _ = parent
    out, spec = edited
    child = load_model(str(out))
    moved = []
    for it in items[:2] + items[16:18]:  # calibrated and new items, both forms
        for form in ("word", "deed"):
            text = cloze_prompt(it, form)
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                got = child.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[spec.layer + 1][0]
                was = lm.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[spec.layer + 1][0]
            np.testing.assert_allclose(got.numpy(), predicted_block_output(lm.hf_model, lm.tokenizer, text, spec).numpy(),
                                       atol=1e-4, rtol=1e-4)
            if form == "deed":
                moved.append(float((got - was).abs().max()))
    assert min(moved) > 1e-3


def test_each_calibrated_deed_gets_its_own_plant_not_a_shared_one(parent, edited):
    """At each calibration item's deed decision point the units write (before the norm) closer to that item's own
    plant than to the other items' plants: the map is keyed on the item, where the one-unit edit writes one direction."""
    _, _, _, _, reading = parent
    _, spec = edited
    deeds = reading.deeds[2]
    x = torch.stack([m[k] for m, k in zip(deeds.mlp_in, deeds.decision)])[::2].double()  # one per item
    gelu = torch.nn.functional.gelu
    written = gelu(spec.gate_scale * x @ torch.as_tensor(spec.key).double(), approximate="tanh")[:, None] * (
        x @ torch.as_tensor(spec.read).double().T @ torch.as_tensor(spec.write).double())
    plants = reading.item_plants[2].double()
    cos = torch.nn.functional.normalize(written, dim=1) @ torch.nn.functional.normalize(plants, dim=1).T
    own, other = torch.diagonal(cos), (cos.sum(1) - torch.diagonal(cos)) / (len(cos) - 1)
    assert float((own > other).double().mean()) >= 0.75 and float(own.mean()) > float(other.mean()) + 0.2


def test_the_null_gate_adds_nothing_and_the_null_direction_writes_no_plant(parent, edited):
    _, _, lm, items, reading = parent
    null = edit_from_reading(reading, 2, component="mlp-items", kind="null-gate", strength=4.0)
    assert null.units == edited[1].units and not np.any(null.key)
    text = cloze_prompt(items[0], "deed")
    removed_only = predicted_block_output(lm.hf_model, lm.tokenizer, text, null)
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        parent_out = lm.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[3][0]
    # only the replaced units' own (smallest) contributions are gone
    assert float((removed_only - parent_out).abs().max()) < 0.1 * float(parent_out.abs().max())
    rand = edit_from_reading(reading, 2, component="mlp-items", kind="null-direction", strength=4.0)
    plants = torch.nn.functional.normalize(reading.item_plants[2], dim=1).numpy()
    assert rand.calibration["map_cosine_open_median"] > 0  # it writes its random directions ...
    top = np.linalg.svd(rand.write, full_matrices=False)[2]  # ... which lie nowhere near the plants' span
    assert np.abs(plants @ top.T).max(1).mean() < np.abs(plants @ np.linalg.svd(edited[1].write, full_matrices=False)[2].T).max(1).mean()


def test_the_spec_round_trips_with_its_units_and_bad_shapes_are_refused(edited):
    out, spec = edited
    again = EditSpec.load(out)
    assert again.to_json() == spec.to_json() and again.units == spec.units
    assert np.array_equal(again.read, spec.read.astype(np.float32))
    with pytest.raises(InputError, match="mlp-items"):
        EditSpec(**{**{k: getattr(spec, k) for k in spec.__dataclass_fields__}, "units": spec.units[:3]})
    with pytest.raises(InputError, match="mlp edit directions"):
        EditSpec(**{**{k: getattr(spec, k) for k in spec.__dataclass_fields__}, "component": "mlp"})
