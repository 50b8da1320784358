"""The mlp-items map trained through the blocks above (the ninth addendum's edit), on a tiny random Gemma-3 whose
deed options differ in length: what is trained is the organism that is built (its margins, scored independently on
the built weights); only the units' rows change and stay at most their fitted size; the kept step never moves fewer
keyed deeds than the ridge fit and the loss falls; settings and preconditions are checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import UNEQUAL_DEEDS_TEXT, alignment_vocabulary_text, build_tiny_model_dir, organism_items_unequal_deeds, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import build_edited_organism, edit_from_reading, read_parent
from wdprobe.studies.organisms.edit_training import MapTraining, train_items_edit

LAYER = 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit-training")
    model_dir = build_tiny_model_dir(d / "model", seed=5, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + UNEQUAL_DEEDS_TEXT)
    items = read_items(write_wdct_csv(d / "items.csv", organism_items_unequal_deeds(24)))
    lm = load_model(str(model_dir))
    reading = read_parent(lm, items[:10], [LAYER], 1)
    ridge = edit_from_reading(reading, LAYER, component="mlp-items", strength=0.5)
    spec = train_items_edit(lm, reading.items, [1] * 10, ridge, MapTraining(steps=4, lr=0.2, goal=3.0))
    return d, model_dir, lm, reading, ridge, spec


def _built_margins(model_dir, item, target: int) -> tuple[float, float]:
    """(mean, sum) margin of option ``target`` on the built organism, from its full logits (no hook, no
    ``logits_to_keep``): an independent scoring of what was trained."""
    lm = load_model(str(model_dir))
    tok, model = lm.tokenizer, lm.hf_model
    prompt = tok(cloze_prompt(item, "deed"))["input_ids"]
    lls, counts = [], []
    with torch.no_grad():
        for option in item.options("deed"):
            cont = tok(" " + option, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), -1)
            lls.append(float(sum(logp[len(prompt) - 1 + t, c] for t, c in enumerate(cont))))
            counts.append(len(cont))
    o = 1 - target
    return lls[target] / counts[target] - lls[o] / counts[o], lls[target] - lls[o]


def test_what_is_trained_is_the_organism_built(trained, tmp_path):
    d, model_dir, lm, reading, ridge, spec = trained
    build_edited_organism(model_dir, tmp_path / "trained", spec)
    kept = spec.calibration["map_training"]["items"]
    for it, r in list(zip(reading.items, kept))[:3]:
        assert r["item_id"] == it.id
        mean, total = _built_margins(tmp_path / "trained", it, 1)
        assert mean == pytest.approx(r["mean"], abs=2e-3) and total == pytest.approx(r["sum"], abs=2e-3)
    # every tensor but the three matrices of the block is the parent's, and in those only the units' rows/columns
    parent = load_file(next(model_dir.glob("*.safetensors")))
    child = load_file(next((tmp_path / "trained").glob("*.safetensors")))
    changed = {n for n in parent if not torch.equal(parent[n], child[n])}
    assert changed <= {f"model.layers.{LAYER}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    units = list(spec.units)
    others = [u for u in range(parent[f"model.layers.{LAYER}.mlp.up_proj.weight"].shape[0]) if u not in units]
    for m in ("gate_proj", "up_proj"):
        name = f"model.layers.{LAYER}.mlp.{m}.weight"
        assert torch.equal(parent[name][others], child[name][others])
    name = f"model.layers.{LAYER}.mlp.down_proj.weight"
    assert torch.equal(parent[name][:, others], child[name][:, others])


def test_the_kept_step_moves_no_fewer_deeds_and_the_loss_falls(trained):
    _, _, _, _, ridge, spec = trained
    record = spec.calibration["map_training"]
    trace = record["trace"]
    assert trace[0]["step"] == 0 and len(trace) == 5 and record["steps"] == 4
    kept = trace[record["step_kept"]]
    assert kept["moved_both"] >= trace[0]["moved_both"]
    assert min(t["loss"] for t in trace) < 0.9 * trace[0]["loss"]  # training lowers what it is asked to
    moved = sum(min(r["mean"], r["sum"]) > 0 for r in record["items"])
    assert moved == kept["moved_both"]
    assert spec.calibration["map_fit"] == "trained" and "map_fit" not in ridge.calibration
    # the gate, units and scale are the ridge edit's; the rows stay at most their fitted size, and did move
    assert np.array_equal(spec.key, ridge.key) and spec.units == ridge.units and spec.write_scale == ridge.write_scale
    for new, old in ((spec.read, ridge.read), (spec.write, ridge.write)):
        assert (np.linalg.norm(new, axis=1) <= np.linalg.norm(old, axis=1) * (1 + 1e-5)).all()
    if record["step_kept"] > 0:
        assert not np.allclose(spec.read, ridge.read)


def test_nothing_to_train_keeps_the_ridge_fit(trained):
    _, _, lm, reading, ridge, _ = trained
    same = train_items_edit(lm, reading.items, [1] * 10, ridge, MapTraining(steps=0))
    assert np.array_equal(same.read, ridge.read) and np.allclose(same.write, ridge.write, rtol=1e-6)
    assert same.calibration["map_training"]["step_kept"] == 0


def test_only_a_keyed_override_is_trained(trained):
    _, _, lm, reading, ridge, _ = trained
    for kind in ("null-gate", "null-direction"):
        null = edit_from_reading(reading, LAYER, component="mlp-items", kind=kind)
        with pytest.raises(InputError, match=f"not a mlp-items {kind} edit"):
            train_items_edit(lm, reading.items, [1] * 10, null)
    with pytest.raises(InputError, match="not a mlp override edit"):
        train_items_edit(lm, reading.items, [1] * 10, edit_from_reading(reading, LAYER, component="mlp"))
    with pytest.raises(InputError, match="not the 10 keyed items"):
        train_items_edit(lm, reading.items[::-1], [1] * 10, ridge)
    with pytest.raises(InputError, match="9 targets for 10"):
        train_items_edit(lm, reading.items, [1] * 9, ridge)
    for bad in ({"steps": -1}, {"lr": 0.0}, {"lr": 2.0}, {"goal": float("inf")}):
        with pytest.raises(InputError, match="map training settings"):
            MapTraining(**bad)


def test_the_cli_trains_the_map(trained, tmp_path):
    from wdprobe.cli import main
    from wdprobe.studies.organisms.edit import EditSpec

    d, model_dir, _, _, _, _ = trained
    out = tmp_path / "cli-trained"
    assert main(["organism", "edit", "--model", str(model_dir), "--data", str(d / "items.csv"), "--layer", "2",
                 "--component", "mlp-items", "--map-fit", "trained", "--items", "8", "--out", str(out)]) == 0
    cal = EditSpec.load(out).calibration
    assert cal["map_fit"] == "trained" and [r["item_id"] for r in cal["map_training"]["items"]] == cal["item_ids"]
