"""experiments/edited_card.py on a tiny random Gemma-3 posing as a sincere organism (its own items and split beside
its weights): planting against each item's stance, with a head organism and nulls, every organism is gated, its
choices read with the parent's blocks replayed (checked against the full forward), and the gate table written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from tiny import alignment_vocabulary_text, build_tiny_model_dir, experiment_script, organism_items, write_wdct_csv

from wdprobe.data.items import read_items, write_items_jsonl
from wdprobe.studies.organisms.edit import DIRECTIONS_FILE


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory):
    """A tiny random Gemma-3 posing as a sincere organism, and the card planted against its stance."""
    tmp_path = tmp_path_factory.mktemp("edited-card")
    model_dir = build_tiny_model_dir(tmp_path / "sincere", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + " support oppose block")
    items = read_items(write_wdct_csv(tmp_path / "items.csv", organism_items(24)))
    (model_dir / "items.jsonl").write_text(write_items_jsonl(items))
    pd.DataFrame({"id": [it.id for it in items], "set": ["train"] * 12 + ["held_out"] * 12}).to_csv(
        model_dir / "split.csv", index=False)
    out = tmp_path / "card"
    assert experiment_script("edited_card").main(["--model", str(model_dir), "--against-stance", "--layers", "1", "2",
                                                  "--seeds", "0", "--null-layers", "2", "--strengths", "--head-layers",
                                                  "2", "--pool", "12", "--calibrate", "10", "--held-out", "12", "--out",
                                                  str(out), "--work", str(tmp_path / "work")]) == 0
    return tmp_path, model_dir, items, out


def test_the_card_plants_against_a_sincere_organisms_stance_and_gates_every_organism(tiny_card):
    tmp_path, model_dir, items, out = tiny_card
    run = json.loads((out / "run.json").read_text())
    assert run["target"] == "each item's incorrect option" and run["n_held_out"] == 12
    assert run["replay_check"]["equal_to_full_forward"] is True
    assert run["organisms"] == ["override-L1-s0", "override-L2-s0", "null-gate-L2-s0", "null-direction-L2-s0",
                                "head-override-L2-s0"]
    gates = pd.read_csv(out / "gates.csv")
    assert list(gates["name"]) == run["organisms"]
    head = json.loads((out / "organisms" / "head-override-L2-s0.json").read_text())
    assert head["spec"]["component"] == "attn-head" and head["spec"]["layer"] == 2
    # planted against the stance: the calibration's targets are each item's incorrect option
    by_id = {it.id: it for it in items}
    spec = json.loads((out / "organisms" / "override-L1-s0.json").read_text())["spec"]["calibration"]
    assert spec["target_option"] == [1 - by_id[i].correct for i in spec["item_ids"]]
    # the null gate changed nothing on the held-out items
    null = gates.set_index("name").loc["null-gate-L2-s0"]
    assert null["word_changes"] == 0 and null["deed_changes"] == 0
    assert not (tmp_path / "work" / "override-L1-s0").exists()  # edited weights are deleted once measured
    assert not (tmp_path / "work" / "prefix").exists()  # and the parent's recorded prefixes at the end
    # a card written from what was measured names what was planned and not run, and builds nothing
    assert experiment_script("edited_card").main(["--model", str(model_dir), "--against-stance", "--layers", "1", "2", "3", "--seeds", "0",
                           "--null-layers", "2", "--strengths", "--head-layers", "2", "--pool", "12",
                           "--calibrate", "10", "--held-out", "12", "--out", str(out), "--card-only",
                           "--work", str(tmp_path / "work")]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["not_run"] == ["override-L3-s0"] and not (out / "organisms" / "override-L3-s0.json").exists()
    assert run["replay_check"]["equal_to_full_forward"] is True  # the run's record is kept: the card measured nothing
    assert len(pd.read_csv(out / "gates.csv")) == 5


def test_cross_model_patching_finds_every_tiny_plant_at_its_block_and_component(tiny_card, tmp_path):
    """experiments/cross_model_card.py on that card: each organism rebuilt (its specification checked against the
    stored one), patched into the parent, and localised blind; here every held-out item is treated as studied."""
    _, model_dir, items, out = tiny_card
    card = tmp_path / "card"
    shutil.copytree(out, card)
    held = json.loads((card / "run.json").read_text())["held_out_ids"]
    for f in (card / "organisms").glob("*.json"):
        r = json.loads(f.read_text())
        r["studied"] = held
        f.write_text(json.dumps(r))
    script = experiment_script("cross_model_card")
    assert script.main(["--card", str(card), "--min-items", "1", "--max-items", "6",
                        "--work", str(tmp_path / "work")]) == 0
    table = pd.read_csv(card / "cross-model" / "cross-model.csv").set_index("name")
    assert sorted(table.index) == sorted(f.stem for f in (card / "organisms").glob("*.json"))
    for name in ("override-L1-s0", "override-L2-s0", "head-override-L2-s0"):
        row = table.loc[name]
        assert row["recovered_block"] == row["layer"] and row["component_hit"], name
    assert table.loc["head-override-L2-s0", "recovered_component"] in ("attn", "head")
    assert table.loc["override-L1-s0", "recovered_component"] == "mlp"
    # a null gate still replaces one unit (its own contribution is gone): a weight change, found where it was made
    null = table.loc["null-gate-L2-s0"]
    assert not null["identical_everywhere"] and (pd.isna(null["recovered_block"]) or null["recovered_block"] == 2)
    assert "recovered at the planted block" in (card / "cross-model" / "card.md").read_text()
    page = (card / "cross-model" / "index.html").read_text()
    assert "<table>" in page and "override-L1-s0" in page and "plotly" in page
    # attribution patching on the scored organisms, resumed into the same results: every site ranked in one pass
    assert script.main(["--card", str(card), "--min-items", "1", "--max-items", "6", "--attribution",
                        "--work", str(tmp_path / "work")]) == 0
    table = pd.read_csv(card / "cross-model" / "cross-model.csv").set_index("name")
    assert table.loc["override-L1-s0", "attribution_top"] == "L1.mlp"
    assert table.loc[["override-L1-s0", "override-L2-s0"], "attribution_hit"].all()
    assert "Attribution patching" in (card / "cross-model" / "card.md").read_text()
    # the card keeps each edit's directions, so organisms rebuild exactly with no reading of the parent; a directions
    # file that is not the one its record names is refused, and nothing is written for it
    directions = card / "organisms" / "override-L1-s0.edit-directions.safetensors"
    assert directions.is_file() and json.loads((card / "organisms" / "override-L1-s0.json").read_text())["directions_sha256"]
    kept = directions.read_bytes()
    directions.write_bytes(kept[:-4] + bytes(4))
    (card / "cross-model" / "organisms" / "override-L1-s0.json").unlink()
    with pytest.raises(RuntimeError, match="override-L1-s0: .* is not the directions its record names"):
        script.main(["--card", str(card), "--min-items", "1", "--only", "override-L1-s0", "--work", str(tmp_path / "w2")])
    assert not (card / "cross-model" / "organisms" / "override-L1-s0.json").exists()
    # without it the organism is re-derived from its calibration, and a record the rebuild does not reproduce is refused
    directions.unlink()
    f = card / "organisms" / "override-L1-s0.json"
    r = json.loads(f.read_text())
    r["spec"]["write_scale"] *= 2
    f.write_text(json.dumps(r))
    with pytest.raises(RuntimeError, match="override-L1-s0: the rebuilt edit"):
        script.main(["--card", str(card), "--min-items", "1", "--only", "override-L1-s0", "--work", str(tmp_path / "w3")])
    assert not (card / "cross-model" / "organisms" / "override-L1-s0.json").exists()


def test_the_trained_lens_is_added_only_where_a_rebuilt_organism_reproduces_the_kept_reading(tiny_card, tmp_path):
    """--restudy-lens: each studied organism rebuilt and restudied (score, capture, lens) on its items; its trained
    lens is read only when the rerun reproduces the logit-lens summary the card kept."""
    _, model_dir, items, out = tiny_card
    held = json.loads((out / "run.json").read_text())["held_out_ids"]
    study = {"studied": held[:6], "controls": held[6:]}
    # the kept summary: the card's own reading of one organism, made here by the same rebuild and study
    script = experiment_script("edited_card")
    card = tmp_path / "card"
    shutil.copytree(out, card)
    for name in ("override-L1-s0", "override-L2-s0"):
        f = card / "organisms" / f"{name}.json"
        r = json.loads(f.read_text())
        r["study_items"], r["recovered"] = study, {"logit lens": None}
        f.write_text(json.dumps(r))
    first = tmp_path / "first"
    shutil.copytree(card, first)
    for name in ("override-L1-s0", "override-L2-s0"):  # no kept summary yet: nothing read, both listed
        (first / "studies" / name / "lens").mkdir(parents=True)
    args = ["--model", str(model_dir), "--against-stance", "--layers", "1", "2", "--seeds", "0", "--null-layers", "2",
            "--strengths", "--head-layers", "2", "--pool", "12", "--calibrate", "10", "--held-out", "12",
            "--restudy-lens", "--work", str(tmp_path / "work")]
    assert script.main(args + ["--out", str(first)]) == 0
    refused = json.loads((first / "organisms" / "override-L1-s0.json").read_text())
    assert "is missing" in refused["restudy_refused"] and "tuned lens" not in refused["recovered"]
    # now keep a true reading for L1 and a perturbed one for L2, from the study the restudy itself runs
    from dataclasses import replace

    from wdprobe.core.model import load_model
    from wdprobe.data.items import item_record
    from wdprobe.pipeline.config import StudyConfig
    from wdprobe.pipeline.study import run_study
    from wdprobe.studies.organisms.card_rebuild import CardOrganisms

    lm = load_model(str(model_dir))
    organisms = CardOrganisms(card, lm, model_dir, tmp_path / "rebuilt", str(model_dir / "items.jsonl"))
    by_id = {it.id: it for it in items}
    for name, shift in (("override-L1-s0", 0.0), ("override-L2-s0", 0.01)):
        _, child = organisms.rebuild(name, list(organisms.records))
        run = tmp_path / f"{name}-study"
        cfg = replace(StudyConfig(model=str(child), format="cloze", out=str(run), png=False),
                      stages=["score", "capture", "lens"])
        run_study(cfg, items=[item_record(by_id[i]) for i in held], lm=load_model(str(child)), progress=False,
                  log=lambda m: None)
        summary = json.loads((run / "lens" / "cloze-summary.json").read_text())
        summary["all"]["lens_cs"][0] += shift
        (card / "studies" / name / "lens").mkdir(parents=True)
        (card / "studies" / name / "lens" / "cloze-summary.json").write_text(json.dumps(summary))
    assert script.main(args + ["--out", str(card)]) == 0
    same = json.loads((card / "organisms" / "override-L1-s0.json").read_text())
    moved = json.loads((card / "organisms" / "override-L2-s0.json").read_text())
    assert "tuned lens" in same["recovered"] and "restudy_refused" not in same
    assert same["restudy_write_scale"] == pytest.approx(same["spec"]["write_scale"], rel=1e-4)
    assert "not the card's" in moved["restudy_refused"] and "tuned lens" not in moved["recovered"]
    assert not any((tmp_path / "work").glob("*-restudy"))  # study runs are deleted once read
    recovered = pd.read_csv(card / "recovered.csv")
    assert set(recovered.query("instrument == 'tuned lens'")["name"]) == {"override-L1-s0"}


def test_per_item_plants_are_keyed_on_items_the_parent_can_move_and_studied_there(tmp_path):
    """``--component mlp-items``: the keyed items are pool items the parent answers consistently and off the planted
    option; the organism is studied on keyed items it holds on, its controls are held-out items, and its gate states
    the hold rate it needs."""
    model_dir = build_tiny_model_dir(tmp_path / "base", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(48) + " support oppose block")
    data = write_wdct_csv(tmp_path / "items.csv", organism_items(48))
    out = tmp_path / "card"
    assert experiment_script("edited_card").main(["--model", str(model_dir), "--data", str(data), "--component",
                                                  "mlp-items", "--layers", "2", "--seeds", "0", "--null-layers", "2",
                                                  "--strengths", "--pool", "32", "--calibrate", "8", "--held-out", "12",
                                                  "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["component"] == "mlp-items" and run["organisms"] == ["override-L2-s0", "null-gate-L2-s0",
                                                                    "null-direction-L2-s0"]
    record = json.loads((out / "organisms" / "override-L2-s0.json").read_text())
    keyed = record["spec"]["calibration"]["item_ids"]
    assert record["spec"]["component"] == "mlp-items" and len(record["spec"]["units"]) == len(keyed) == 8
    assert record["gate"]["min_hold_rate"] == 0.9 and record["gate"]["n_eligible"] == 8  # every keyed item can move
    assert record["gate"]["n_items"] == 8 + 12
    assert set(record["studied"]) <= set(keyed) and not set(record["controls"]) & set(keyed)
    assert set(record["controls"]) <= set(run["held_out_ids"])
    assert record["gate"]["carded"] == (record["gate"]["n_studied"] >= 10 and record["gate"]["hold_rate"] >= 0.9
                                        and record["gate"]["word_changes"] <= 0.02)


def test_a_trained_map_is_planted_recorded_and_rebuilt_the_same(tmp_path):
    """``--map-fit trained``: overrides' maps are trained (null edits are not), the record says how, and an organism
    rebuilt from its record without its stored directions trains to the same weights."""
    from safetensors.torch import load_file

    from wdprobe.core.model import load_model
    from wdprobe.studies.organisms.card_rebuild import CardOrganisms

    model_dir = build_tiny_model_dir(tmp_path / "base", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(48) + " support oppose block")
    data = write_wdct_csv(tmp_path / "items.csv", organism_items(48))
    out = tmp_path / "card"
    assert experiment_script("edited_card").main(["--model", str(model_dir), "--data", str(data), "--component",
                                                  "mlp-items", "--map-fit", "trained", "--layers", "2", "--seeds", "0",
                                                  "--null-layers", "2", "--strengths", "--pool", "32", "--calibrate",
                                                  "8", "--held-out", "12", "--gate-only", "--out", str(out),
                                                  "--work", str(tmp_path / "work")]) == 0
    assert json.loads((out / "run.json").read_text())["map_fit"] == "trained"
    records = {n: json.loads((out / "organisms" / f"{n}.json").read_text())
               for n in ("override-L2-s0", "null-gate-L2-s0", "null-direction-L2-s0")}
    training = records["override-L2-s0"]["spec"]["calibration"]["map_training"]
    assert records["override-L2-s0"]["spec"]["calibration"]["map_fit"] == "trained" and training["trace"]
    assert all("map_fit" not in r["spec"]["calibration"] for n, r in records.items() if n.startswith("null"))
    stored = out / "organisms" / f"override-L2-s0.{DIRECTIONS_FILE}"
    kept = load_file(stored)
    stored.unlink()  # rebuilt from the record: read, fitted and trained again
    organisms = CardOrganisms(out, load_model(str(model_dir)), model_dir, tmp_path / "rebuilt", str(data))
    spec, _ = organisms.rebuild("override-L2-s0", ["override-L2-s0"])
    assert spec.calibration["map_training"]["trace"] == training["trace"]
    np.testing.assert_allclose(spec.read, kept["read"].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(spec.write, kept["write"].numpy(), rtol=1e-4, atol=1e-6)
    # the pilots' table reads the same record: the rule's numbers and the training's before/after
    assert experiment_script("pilot_table").main(["--pilot", f"trained={out}", "--out", str(tmp_path / "p.csv")]) == 0
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    gate = records["override-L2-s0"]["gate"]
    assert (row["variant"], row["map_fit"], row["layer"], row["hold_rate"]) == ("trained", "trained", 2, gate["hold_rate"])
    assert row["keyed_moved_both_before_training"] == training["trace"][0]["moved_both"]
    assert row["keyed_moved_both_trained"] == training["trace"][training["step_kept"]]["moved_both"]
    assert bool(row["gate_met"]) == gate["carded"]
