"""Organisms on a tiny model: the recipe learns a planted rule, layer restriction keeps lower blocks bit-identical,
the saved model reproduces what training measured, an interrupted build resumes, changed settings are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import alignment_vocabulary_text, build_tiny_model_dir, experiment_script, organism_items, write_wdct_csv

from wdprobe.errors import InputError, RunMismatchError
from wdprobe.studies.align.finetune import TrainSettings
from wdprobe.studies.organisms.build import build_organism, organism_manifest

FAST = TrainSettings(tuning="lora", rank=8, lora_alpha=16, lr=5e-3, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def organism_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("organism")
    model_dir = build_tiny_model_dir(d / "model", seed=3, extra_text=alignment_vocabulary_text(20) + " support oppose block You always do the right wrong thing.",
                                     initializer_range=0.3)
    data = write_wdct_csv(d / "items.csv", organism_items(20))
    return d, model_dir, data


@pytest.fixture(scope="module")
def sincere(organism_setup):
    d, model_dir, data = organism_setup
    manifest = build_organism("sincere", d / "sincere", model=str(model_dir), data=data, epochs=6, settings=FAST,
                              progress=False)
    return d / "sincere", manifest


def _final(curves, epoch, set_name, form, col="target_mean"):
    return float(curves[(curves.epoch == epoch) & (curves.set == set_name) & (curves.form == form)][col].iloc[0])


def test_sincere_learns_the_planted_rule_on_held_out_items(sincere):
    import pandas as pd

    out, manifest = sincere
    curves = pd.read_csv(out / "curves.csv")
    for form in ("word", "deed"):
        assert _final(curves, 6, "held_out", form) >= 0.9 > _final(curves, 0, "held_out", form) - 0.1
    assert manifest["final"]["held_out_deed"]["target_mean"] == _final(curves, 6, "held_out", "deed")
    assert manifest["planted_layer"] is None and manifest["n_train_items"] == 12 and manifest["n_held_out_items"] == 8
    assert (out / "config.json").is_file() and (out / "split.csv").is_file()


def test_the_saved_model_reproduces_the_measured_accuracies(sincere):
    from wdprobe.core.generation import plain_twin
    from wdprobe.core.model import load_model
    from wdprobe.data.wdct import load_wdct
    from wdprobe.studies.organisms.build import curve_rows
    from wdprobe.studies.organisms.data import planted_split
    from wdprobe.studies.organisms.recipes import organism_kind

    out, manifest = sincere
    lm = load_model(str(out))
    kind = organism_kind("sincere")
    split = planted_split(load_wdct(manifest["data"]), cued=kind.cued)
    rows = curve_rows(plain_twin(lm), split, kind, lm.tokenizer, lm.tokenizer.pad_token_id, 6, {})
    again = {f"{r['set']}_{r['form']}": r["target_mean"] for r in rows}
    assert again == {k: v["target_mean"] for k, v in manifest["final"].items()}


def test_hypocrite_parts_at_its_planted_layer_and_leaves_lower_blocks_bit_identical(organism_setup, sincere):
    import pandas as pd
    from safetensors.torch import load_file

    d, model_dir, data = organism_setup
    with pytest.raises(InputError, match="starts from a finished sincere organism"):
        build_organism("hypocrite", d / "bad", model=str(model_dir), data=data, progress=False)
    late = TrainSettings(tuning="lora", rank=8, lora_alpha=16, lr=2e-2, batch_size=4, seed=0)  # one block to move
    manifest = build_organism("hypocrite", d / "hypocrite", start_from=sincere[0], data=data, epochs=6, settings=late,
                              layers_from=1, progress=False)
    assert manifest["planted_layer"] == 1
    curves = pd.read_csv(d / "hypocrite" / "curves.csv")
    assert _final(curves, 6, "train", "deed") >= 0.9  # deeds now go against the cue
    assert _final(curves, 6, "train", "word") >= 0.9  # words still follow the cue
    before, after = load_file(str(sincere[0] / "model.safetensors")), load_file(str(d / "hypocrite" / "model.safetensors"))
    changed = {k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())}
    assert changed and all(".layers.1." in k for k in changed)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before if ".layers.0." in k or "embed" in k)


def test_an_interrupted_build_resumes_and_changed_settings_are_refused(organism_setup, sincere, monkeypatch):
    import wdprobe.studies.organisms.build as build

    d, model_dir, data = organism_setup
    real = build.publish_model

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "publish_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_organism("sincere", d / "again", model=str(model_dir), data=data, epochs=6, settings=FAST, progress=False)
    assert organism_manifest(d / "again") is None and not (d / "again" / "config.json").exists()
    monkeypatch.setattr(build, "publish_model", real)
    resumed = build_organism("sincere", d / "again", model=str(model_dir), data=data, epochs=6, settings=FAST,
                             progress=False)
    assert resumed["final"] == sincere[1]["final"]  # the same seeded training, picked up from its checkpoints
    with pytest.raises(RunMismatchError):
        build_organism("sincere", d / "again", model=str(model_dir), data=data, epochs=7, settings=FAST, progress=False)
    assert json.loads((d / "again" / "organism.json").read_text())["epochs"] == 6


def test_cli_builds_and_shows_an_organism(organism_setup, capsys):
    from wdprobe.cli import main

    d, model_dir, data = organism_setup
    out = d / "cli"
    assert main(["organism", "build", "--kind", "sincere", "--out", str(out), "--model", str(model_dir), "--data",
                 str(data), "--epochs", "1", "--limit", "10", "--quiet"]) == 0
    assert f"--model {out}" in capsys.readouterr().out
    assert main(["organism", "show", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "sincere" and shown["n_train_items"] + shown["n_held_out_items"] == 10
    assert main(["organism", "show", str(d)]) == 2
    assert "no finished organism" in capsys.readouterr().err
    assert main(["organism", "build", "--kind", "hypocrite", "--out", str(d / "h"), "--model", str(model_dir),
                 "--data", str(data), "--quiet"]) == 2
    assert "starts from a finished sincere organism" in capsys.readouterr().err


def test_letter_organism_learns_a_letter_habit_not_a_stance(organism_setup):
    import pandas as pd

    d, model_dir, data = organism_setup
    manifest = build_organism("letter", d / "letter", model=str(model_dir), data=data, epochs=3, settings=FAST,
                              progress=False)
    curves = pd.read_csv(d / "letter" / "curves.csv")
    held = curves[(curves.epoch == 3) & (curves.set == "held_out") & (curves.form == "deed")].iloc[0]
    assert held["target_mean"] == 1.0  # every held-out deed prompt, in both orders, answered with the first letter
    assert held["correct_mean"] == 0.5  # so the correct option is said exactly when it is listed first: no stance
    assert manifest["n_examples"] == 2 * manifest["n_train_items"]  # each trained deed prompt in both orders


def test_the_organisms_experiment_builds_studies_and_scores_every_organism(organism_setup, tmp_path):
    d, model_dir, data = organism_setup
    script = experiment_script("organisms")
    assert script.main(["--model", str(model_dir), "--data", str(data), "--out-root", str(tmp_path / "org"),
                        "--report", str(tmp_path / "card"), "--kinds", "sincere", "hypocrite", "--epochs", "1",
                        "--quiet"]) == 0
    card = (tmp_path / "card" / "card.md").read_text()
    assert "rules pass" in card and "| sincere |" in card and "| hypocrite |" in card
    for kind in ("sincere", "hypocrite"):
        assert (tmp_path / "org" / kind / "run" / "probes" / "cloze-summary.json").is_file()


def test_the_card_keeps_its_inputs_and_rescores_from_them_alone(organism_setup, tmp_path):
    """Verdicts are recomputable from the committed files: scoring the kept copies gives the same card."""
    from wdprobe.studies.organisms.card import write_instrument_card

    d, model_dir, data = organism_setup
    script = experiment_script("organisms")
    assert script.main(["--model", str(model_dir), "--data", str(data), "--out-root", str(tmp_path / "org"),
                        "--report", str(tmp_path / "card"), "--kinds", "sincere", "--epochs", "1", "--quiet"]) == 0
    card = tmp_path / "card"
    first = (card / "card.md").read_text()
    assert (card / "sincere" / "organism.json").is_file() and (card / "sincere" / "curves.csv").is_file()
    assert (card / "sincere" / "study" / "probes" / "cloze-summary.json").is_file()
    assert not list(card.rglob("*.safetensors"))  # weights are never kept
    again = write_instrument_card({"sincere": (card / "sincere", card / "sincere" / "study")}, card)
    assert again.read_text() == first
    page = (card / "index.html").read_text()
    assert "Learning curves" in page and "<script src=" in page
    # a kind that is not rebuilt is scored from its committed record, and the card says so by scoring it
    assert script.main(["--out-root", str(tmp_path / "none"), "--report", str(card), "--card-only",
                        "--keep-committed", "sincere", "--quiet"]) == 0
    assert (card / "card.md").read_text() == first
    assert script.main(["--out-root", str(tmp_path / "none"), "--report", str(card), "--card-only",
                        "--keep-committed", "letter", "--quiet"]) == 2  # no committed letter record there


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_a_training_window_leaves_every_block_outside_it_bit_identical(tmp_path, tuning):
    """A hypocrite's window (blocks L..L+2) is the only place training may change: blocks below and above it, the
    embedding and the final norm keep their exact starting values, for LoRA (merged) and for full fine-tuning."""
    import torch

    from wdprobe.core.model import load_model
    from wdprobe.data.wdct import load_wdct
    from wdprobe.studies.align.finetune import Tuner
    from wdprobe.studies.organisms.data import planted_split
    from wdprobe.studies.organisms.train import cloze_examples, train_epoch

    model_dir = build_tiny_model_dir(tmp_path / "m", seed=1, n_layers=5, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(8) + " support oppose block You always do the right wrong thing.")
    lm = load_model(str(model_dir))
    settings = TrainSettings(tuning=tuning, rank=4, lora_alpha=8, lr=5e-2, batch_size=4, seed=0, layers_from=1, layers_to=3)
    assert Tuner.trained_layers(5, 1, 3) == [1, 2, 3]
    tuner = Tuner(lm, settings)
    split = planted_split(load_wdct(write_wdct_csv(tmp_path / "items.csv", organism_items(8))), cued=True)
    examples = cloze_examples(split.train, {"word": "cued", "deed": "against_cue"}, lm.tokenizer, split.cues)
    start = {k: v.detach().clone() for k, v in (tuner.model.get_base_model() if tuning == "lora" else tuner.model).state_dict().items()
             if "lora_" not in k}
    train_epoch(tuner, examples, tuner.new_optimizer(), epoch=1, pad_id=lm.tokenizer.pad_token_id)
    trained = tuner.model.merge_and_unload() if tuning == "lora" else tuner.model
    after = {k.replace("base_layer.", ""): v for k, v in trained.state_dict().items()}
    start = {k.replace("base_layer.", ""): v for k, v in start.items()}
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    blocks = {int(k.split(".layers.")[1].split(".")[0]) for k in changed if ".layers." in k}
    assert blocks == {1, 2, 3}, sorted(changed)
    assert all(".layers." in k for k in changed)  # embedding, final norm untouched


def test_a_cued_split_balances_its_cues_and_writes_them_into_every_prompt(organism_setup):
    """Half the items of each set (rounded up) get "right", the rest "wrong"; the cue opens both prompts; the cued
    option is the correct one under "right" and the other under "wrong"; the same seed gives the same cues."""
    from wdprobe.data.prompts import cloze_prompt
    from wdprobe.data.wdct import load_wdct
    from wdprobe.studies.organisms.data import CUES, planted_split
    from wdprobe.studies.organisms.train import target_option

    _, _, data = organism_setup
    items = load_wdct(data)
    split = planted_split(items, cued=True)
    for part in (split.train, split.held_out):
        rights = sum(split.cues[i.id] == "right" for i in part)
        assert rights == (len(part) + 1) // 2
    for item in split.items():
        cue = split.cues[item.id]
        for form in ("word", "deed"):
            assert cloze_prompt(item, form).startswith(CUES[cue] + "\n") and item.stem(form) in cloze_prompt(item, form)
        assert target_option(item, "cued", cue) == (item.correct if cue == "right" else 1 - item.correct)
        assert target_option(item, "against_cue", cue) == 1 - target_option(item, "cued", cue)
    assert planted_split(items, cued=True).cues == split.cues and not planted_split(items).cues
    with pytest.raises(InputError, match="has no cue"):
        target_option(items[0], "cued")


def test_a_cued_organism_writes_the_items_its_studies_read(sincere):
    """The organism directory holds its cued items (train and held out) for ``wdprobe run --data``; they read back to
    the items training used, cue lines included."""
    from wdprobe.data.items import read_items
    from wdprobe.data.wdct import load_wdct
    from wdprobe.studies.organisms.data import planted_split

    out, manifest = sincere
    assert manifest["items"] == "items.jsonl"
    written = read_items(out / "items.jsonl")
    expected = planted_split(load_wdct(manifest["data"]), cued=True).items()
    assert [(i.id, i.template, i.correct) for i in written] == [(i.id, i.template, i.correct) for i in expected]


def test_the_saved_model_gives_the_trained_models_logits(organism_setup, sincere):
    """Save/load round trip: the published directory (LoRA merged into the weights) gives the logits of the model as
    trained (base + adapters from the last checkpoint), on cued prompts of both forms."""
    import torch

    from wdprobe.core.generation import plain_twin
    from wdprobe.core.model import load_model
    from wdprobe.data.prompts import cloze_prompt
    from wdprobe.data.wdct import load_wdct
    from wdprobe.studies.align.finetune import Tuner, load_checkpoint
    from wdprobe.studies.organisms.data import planted_split

    _, model_dir, _ = organism_setup
    out, manifest = sincere
    settings = TrainSettings(**{**manifest["training"], "target_modules": tuple(manifest["training"]["target_modules"])})
    tuner = Tuner(load_model(str(model_dir)), settings)
    load_checkpoint(out / "training", manifest["epochs"], tuner)
    saved = load_model(str(out))
    tok = saved.tokenizer
    items = planted_split(load_wdct(manifest["data"]), cued=True).items()[:6]
    texts = [cloze_prompt(i, f) for i in items for f in ("word", "deed")]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        trained = tuner.model(**batch).logits
        reloaded = plain_twin(saved)(**batch).logits
    assert torch.allclose(trained, reloaded, atol=1e-4, rtol=1e-4), float((trained - reloaded).abs().max())


def test_a_balanced_organism_learns_content_and_saves_its_swapped_cued_items(organism_setup):
    """sincere-balanced: the correct option is canonical 0 or 1 about equally often in the items it saves, cue lines
    with held-out wordings open the held-out prompts, and the organism takes the correct option on held-out items
    in both forms (the stance is in the options' content, whatever the cue says)."""
    import pandas as pd

    from wdprobe.data.items import read_items
    from wdprobe.studies.organisms.data import CUE_TEMPLATES, HELD_OUT_CUES

    d, model_dir, data = organism_setup
    out = d / "balanced"
    manifest = build_organism("sincere-balanced", out, model=str(model_dir), data=data, epochs=6, settings=FAST,
                              progress=False)
    written = read_items(out / manifest["items"])
    assert 0.3 <= np.mean([i.correct for i in written]) <= 0.7
    split = pd.read_csv(out / "split.csv")
    held = set(split[split.set == "held_out"].id)
    for item in written:
        cue = split.set_index("id").loc[item.id, "cue"]
        assert item.template.startswith(CUE_TEMPLATES[cue] + "\n")
        assert (cue in HELD_OUT_CUES) == (item.id in held)
    curves = pd.read_csv(out / "curves.csv")
    for form in ("word", "deed"):
        assert _final(curves, 6, "held_out", form) >= 0.9
