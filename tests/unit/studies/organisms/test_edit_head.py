"""Head edits on a tiny random Gemma-3: one head's slice of one block's attention output matrix changes and nothing
else, the edited model's residual after the block is the one recomputed from the parent through both of Gemma-3's
output norms, the key is quiet on words and open on deeds, and what a head edit cannot mean is refused."""
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
    apply_edit,
    build_edited_organism,
    edit_from_reading,
    predicted_block_output,
    read_parent,
)

LAYER, HEAD = 2, 1


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit-head")
    model_dir = build_tiny_model_dir(d / "model", seed=4, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(20) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(20)))
    lm = load_model(str(model_dir))
    reading = read_parent(lm, items[:12], [1, LAYER], target=1, heads=True)
    return d, model_dir, lm, items, reading


@pytest.fixture(scope="module")
def edited(parent):
    d, model_dir, _, _, reading = parent
    spec = edit_from_reading(reading, LAYER, strength=4.0, component="attn-head", head=HEAD)
    build_edited_organism(model_dir, d / "edited", spec)
    return d / "edited", spec


def test_only_the_heads_columns_of_one_output_matrix_change(parent, edited):
    _, model_dir, lm, _, _ = parent
    out, spec = edited
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == [f"model.layers.{LAYER}.self_attn.o_proj.weight"]
    width = len(spec.key)
    cols = (before[changed[0]] != after[changed[0]]).any(0).nonzero().flatten().tolist()
    assert set(cols) <= set(range(HEAD * width, (HEAD + 1) * width)) and len(cols) > width // 2
    assert spec.component == "attn-head" and spec.unit == HEAD and spec.calibration["n_heads"] * width == before[changed[0]].shape[1]


def test_the_residual_after_the_block_is_the_one_recomputed_through_both_norms(parent, edited):
    _, _, lm, items, _ = parent
    out, spec = edited
    child = load_model(str(out))
    moved = 0.0
    for it in items[12:16]:
        for form in ("word", "deed"):
            text = cloze_prompt(it, form)
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                got = child.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
                parent_out = lm.hf_model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
            np.testing.assert_allclose(got.numpy(), predicted_block_output(lm.hf_model, lm.tokenizer, text, spec).numpy(),
                                       atol=1e-4, rtol=1e-4)
            if form == "deed":
                moved = max(moved, float((got - parent_out).abs().max()))
    assert moved > 1e-3  # the plant is not nothing


def test_the_key_is_quiet_on_words_and_open_on_deeds(edited):
    _, spec = edited
    c = spec.calibration
    assert c["key_deed_mean"] == pytest.approx(1.0, abs=1e-3)
    assert abs(c["key_word_mean"]) < 0.5 * c["key_deed_mean"]


def test_the_edit_applied_in_memory_is_the_one_on_disk_and_round_trips(parent, edited):
    _, model_dir, _, items, _ = parent
    out, spec = edited
    again = EditSpec.load(out)
    assert again.to_json() == spec.to_json() and again.component == "attn-head"
    fresh, child = load_model(str(model_dir)), load_model(str(out))
    apply_edit(fresh.hf_model, again)
    ids = fresh.tokenizer(cloze_prompt(items[13], "deed"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(fresh.hf_model(input_ids=ids).logits.numpy(), child.hf_model(input_ids=ids).logits.numpy(),
                                   atol=1e-5)


def test_what_a_head_edit_cannot_mean_is_refused_by_name(parent):
    _, _, lm, items, reading = parent
    with pytest.raises(InputError, match="no gate to shut"):
        edit_from_reading(reading, LAYER, kind="null-gate", component="attn-head")
    with pytest.raises(InputError, match="head 9 is not a head"):
        edit_from_reading(reading, LAYER, component="attn-head", head=9)
    with pytest.raises(InputError, match="unknown edit component"):
        edit_from_reading(reading, LAYER, component="residual")
    plain = read_parent(lm, items[:8], [LAYER])
    with pytest.raises(InputError, match="heads=True"):
        edit_from_reading(plain, LAYER, component="attn-head")


def test_cli_writes_a_head_edit_that_loads_blind(parent, tmp_path, capsys):
    from wdprobe.cli import main

    d, model_dir, _, _, _ = parent
    out = tmp_path / "cli-head"
    assert main(["organism", "edit", "--model", str(model_dir), "--data", str(d / "items.csv"), "--layer", "1",
                 "--component", "attn-head", "--head", "0", "--kind", "null-direction", "--out", str(out),
                 "--items", "12"]) == 0
    assert '"component": "attn-head"' in capsys.readouterr().out
    spec = EditSpec.load(out)
    assert (spec.layer, spec.unit, spec.kind, spec.component) == (1, 0, "null-direction", "attn-head")
    assert load_model(str(out)).n_layers == 4
