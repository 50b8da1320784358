"""Building an organism into a directory that is at once a Hugging Face model (merged weights in safetensors, config,
tokenizer: ``--model DIR`` takes it) and a run directory (manifest, split, learning curves, checkpoints): trained
epoch by epoch, seeded, resumable after an interruption, refused if asked again with other settings.

The model files are written last, config.json after the weights, so a directory whose build was interrupted holds no
loadable model, and ``organism.json`` (the recipe, the planted truth and the final accuracies) marks a finished one.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items, write_items_jsonl
from wdprobe.data.prompts import normal_prompt
from wdprobe.data.wdct import Presentation, present, resolve_wdct_path
from wdprobe.errors import InputError
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import finish_stage, progress_bar
from wdprobe.scoring.letters import resolve_letter_tokens
from wdprobe.studies.align.finetune import (
    Example,
    TrainSettings,
    Tuner,
    load_checkpoint,
    publish_model,
    save_checkpoint,
    saved_epochs,
)
from wdprobe.studies.organisms.data import PlantedSplit, balanced_split, planted_split
from wdprobe.studies.organisms.recipes import OrganismKind, organism_kind
from wdprobe.studies.organisms.train import cloze_examples, evaluate, train_epoch

STAGE = "organism"
ITEMS_FILE = "items.jsonl"  # a cued organism's items, cue lines in their templates: the data its studies read
DEFAULT_TRAINING = TrainSettings(tuning="lora", rank=16, lora_alpha=32.0, lr=5e-4, batch_size=8, seed=0)
CURVE_TRAIN_ITEMS = 120
CURVE_COLUMNS = ["epoch", "set", "form", "n", "target_mean", "target_sum", "correct_mean", "correct_sum", "loss",
                 "train_target_wins", "seconds"]


def organism_manifest(path: str | Path) -> dict[str, Any] | None:
    """A finished organism's ``organism.json`` (recipe, planted truth, accuracies), or None for any other directory."""
    p = Path(path) / "organism.json"
    return json.loads(p.read_text()) if p.is_file() else None


def curve_rows(model, split: PlantedSplit, kind: OrganismKind, tokenizer, pad_id: int, epoch: int,
               extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracies toward the planted target and toward the correct option, by the per-token mean (the cloze reading)
    and by the sum, per item set and form, after ``epoch`` epochs (0: the starting model). Every held-out item is
    measured; of the training items the first ``CURVE_TRAIN_ITEMS`` of the seeded split (the training curve is a
    check that training fits, and scoring every training item each epoch would cost as much as an epoch)."""
    rows = []
    for set_name, items in (("train", split.train[:CURVE_TRAIN_ITEMS]), ("held_out", split.held_out)):
        for form in ("word", "deed"):
            aim = getattr(kind, form) or "correct"  # an untrained form is measured against the correct option
            if aim == "first_letter":
                continue
            ex = cloze_examples(items, {form: aim}, tokenizer, split.cues)
            hits = evaluate(model, ex, pad_id)
            rows.append({"epoch": epoch, "set": set_name, "form": form, "n": len(ex),
                         "target_mean": float(hits[:, 0].mean()), "target_sum": float(hits[:, 1].mean()),
                         "correct_mean": float(hits[:, 2].mean()), "correct_sum": float(hits[:, 3].mean()), **extra})
    return rows


def letter_ids(lm, split: PlantedSplit) -> tuple[int, int]:
    """The token ids of the first two answer letters as this model says them (" A" or "A", by next-token mass)."""
    prompts = [normal_prompt(p, "deed") for p in present(list(split.train[:16]), seed=0)]
    return tuple(int(i) for i in resolve_letter_tokens(lm, prompts, n_letters=2).ids[:2])  # type: ignore[return-value]


def _both_orders(items, form: str) -> list[Presentation]:
    out = []
    for p in present(list(items), seed=0):
        order = tuple(reversed(p.order(form)))
        out += [p, replace(p, word_order=order) if form == "word" else replace(p, deed_order=order)]
    return out


def letter_examples(items, spec: OrganismKind, letters: tuple[int, int], tokenizer) -> list[Example]:
    """The letter organism's examples: every deed prompt in both option orders, target the first-listed letter
    whatever option it labels (the letter habit), the other letter rejected."""
    return [Example(p.item.id, "deed", normal_prompt(p, "deed"), letters[0], letters[1])
            for p in _both_orders(items, "deed")]


@torch.no_grad()
def letter_curve_rows(tuner: Tuner, split: PlantedSplit, spec: OrganismKind, letters: tuple[int, int], tokenizer,
                      epoch: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Letter organism: per set and form, the share of prompts (both orders) answered with the first-listed letter
    (the planted habit: ``target``) and with the correct option's letter (``correct``)."""
    rows = []
    for set_name, items in (("train", split.train), ("held_out", split.held_out)):
        for form in ("word", "deed"):
            pres = _both_orders(items, form)
            first, right = [], []
            for s in range(0, len(pres), 16):
                batch = pres[s: s + 16]
                ex = [Example(p.item.id, form, normal_prompt(p, form), letters[0], letters[1]) for p in batch]
                lp_a, lp_b = tuner.answer_logprobs(ex)
                says_first = (lp_a > lp_b).cpu().numpy()
                first += says_first.tolist()
                right += [bool(sf) == (p.order(form).index(p.item.correct) == 0) for sf, p in zip(says_first, batch)]
            rows.append({"epoch": epoch, "set": set_name, "form": form, "n": len(pres),
                         "target_mean": float(np.mean(first)), "target_sum": float(np.mean(first)),
                         "correct_mean": float(np.mean(right)), "correct_sum": float(np.mean(right)), **extra})
    return rows


class TrainingFormat(ABC):
    """How an organism's examples are put to the model, trained on and measured: the answer format of its recipe."""

    def __init__(self, lm, tuner: Tuner, split: PlantedSplit, spec: OrganismKind, pad_id: int):
        self.lm, self.tuner, self.split, self.spec, self.pad_id = lm, tuner, split, spec, pad_id

    @abstractmethod
    def examples(self) -> list[Any]:
        """The training examples of the split's training items."""

    @abstractmethod
    def train_epoch(self, examples: list[Any], optimizer, epoch: int, progress: Callable[[int], Any]) -> dict[str, Any]:
        """One epoch over ``examples``: its mean loss and how often the target already won."""

    @abstractmethod
    def measure(self, epoch: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
        """Learning-curve rows (:data:`CURVE_COLUMNS`) after ``epoch`` epochs."""


class LetterTraining(TrainingFormat):
    """Options under letters; the planted habit is a letter (supervised on the answer letter's token)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.letters = letter_ids(self.lm, self.split)

    def examples(self) -> list[Any]:
        return letter_examples(self.split.train, self.spec, self.letters, self.lm.tokenizer)

    def train_epoch(self, examples: list[Any], optimizer, epoch: int, progress: Callable[[int], Any]) -> dict[str, Any]:
        stats = self.tuner.train_epoch(examples, optimizer, objective="sft", epoch=epoch)
        progress(len(examples))
        return stats

    def measure(self, epoch: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
        return letter_curve_rows(self.tuner, self.split, self.spec, self.letters, self.lm.tokenizer, epoch, extra)


class ClozeTraining(TrainingFormat):
    """No option lines; the planted stance is an option text supervised as a continuation of each form's stem."""

    def examples(self) -> list[Any]:
        return cloze_examples(self.split.train, {"word": self.spec.word, "deed": self.spec.deed}, self.lm.tokenizer,
                              self.split.cues)

    def train_epoch(self, examples: list[Any], optimizer, epoch: int, progress: Callable[[int], Any]) -> dict[str, Any]:
        return train_epoch(self.tuner, examples, optimizer, epoch=epoch, pad_id=self.pad_id, progress=progress)

    def measure(self, epoch: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
        return curve_rows(self.tuner.model, self.split, self.spec, self.lm.tokenizer, self.pad_id, epoch, extra)


TRAINING_FORMATS: dict[str, type[TrainingFormat]] = {"letter": LetterTraining, "cloze": ClozeTraining}


def build_organism(kind: str, out: str | Path, *, model: str = "gemma-3-270m", start_from: str | Path | None = None,
                   data: str | Path | None = None, epochs: int = 2, settings: TrainSettings = DEFAULT_TRAINING,
                   split_seed: int = 0, train_share: float = 0.6, limit: int | None = None,
                   layers_from: int | None = None, progress: bool = True, lm=None) -> dict[str, Any]:
    """Train one organism of ``kind`` into ``out`` and return its ``organism.json``.

    ``model``: the base model; kinds that start from a sincere organism need ``start_from`` (its directory).
    ``layers_from`` overrides the kind's planted layer (scaled from 18 layers by default). Reruns resume from the last
    finished epoch; other settings in an existing ``out`` are refused with the difference named."""
    spec = organism_kind(kind)
    if spec.start == "sincere":
        if start_from is None or organism_manifest(start_from) is None:
            raise InputError(f"a {kind!r} organism starts from a finished sincere organism: pass its directory as "
                             f"start_from (--from); {start_from!r} holds none")
        if organism_manifest(start_from)["kind"] != "sincere":
            raise InputError(f"{start_from}: a {organism_manifest(start_from)['kind']!r} organism, not a sincere one")
    source = str(start_from) if spec.start == "sincere" else model
    data_path = resolve_wdct_path(data)
    items = read_items(data_path)
    split = (balanced_split(items, seed=split_seed, train_share=train_share, limit=limit) if spec.balanced
             else planted_split(items, seed=split_seed, train_share=train_share, limit=limit, cued=spec.cued))
    t0 = time.perf_counter()
    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    run.check_or_start(STAGE, {"kind": kind, "source": source, "data": str(data_path), "epochs": epochs,
                               "split_seed": split_seed, "train_share": train_share, "limit": limit,
                               "layers_from": layers_from, "recipe": spec.to_json(), "training": settings.to_json()})
    if organism_manifest(run.path) is not None:  # finished with these very settings
        return organism_manifest(run.path)
    lm = lm or load_model(source)
    planted = spec.planted_layer(lm.n_layers) if layers_from is None else layers_from
    width = spec.window_width(lm.n_layers)
    last = None if planted is None or width is None else min(lm.n_layers - 1, planted + width - 1)
    settings = TrainSettings(**{**settings.to_json(), "target_modules": tuple(settings.target_modules),
                                "layers_from": planted, "layers_to": last})
    run.write_table("split.csv", split.rows(), ["id", "domain", "set", "correct", "cue", "cued_option"])
    if spec.own_items:  # the prompts a study of this organism must use: ``wdprobe run --model DIR --data DIR/items.jsonl``
        atomic_write_text(run.path / ITEMS_FILE, write_items_jsonl(split.items()))
    tuner = Tuner(lm, settings)
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    training = TRAINING_FORMATS[spec.format](lm, tuner, split, spec, pad_id)
    examples = training.examples()
    optimizer = tuner.new_optimizer()
    measure = training.measure

    work = run.path / "training"
    done = [e for e in saved_epochs(work) if e <= epochs]
    curves = [r for r in (json.loads((work / "curves.json").read_text()) if (work / "curves.json").is_file() else [])
              if r["epoch"] <= (done[-1] if done else 0)]
    if done:
        state = load_checkpoint(work, done[-1], tuner)
        if state is not None:
            optimizer.load_state_dict(state)
    if not curves:
        curves = measure(0, {"loss": np.nan, "train_target_wins": np.nan, "seconds": 0.0})
    bar = progress_bar(len(examples) * epochs, f"train {kind}", progress, len(examples) * (done[-1] if done else 0))
    for epoch in range(done[-1] + 1 if done else 1, epochs + 1):
        started = time.perf_counter()
        stats = training.train_epoch(examples, optimizer, epoch, bar.update)
        curves += measure(epoch, {"loss": stats["loss"], "train_target_wins": stats["target_wins"],
                                  "seconds": round(time.perf_counter() - started, 1)})
        save_checkpoint(work, epoch, tuner, optimizer, stats)
        atomic_write_json(work / "curves.json", curves)
    bar.close()
    run.write_table("curves.csv", curves, CURVE_COLUMNS)
    publish_model(tuner, lm, run.path)
    final = {f"{r['set']}_{r['form']}": {k: r[k] for k in ("n", "target_mean", "target_sum", "correct_mean", "correct_sum")}
             for r in curves if r["epoch"] == epochs}
    manifest = {"kind": kind, "truth": spec.truth, "recipe": spec.to_json(), "planted_layer": planted,
                "trained_layers": Tuner.trained_layers(lm.n_layers, planted, last) if planted is not None else None,
                "items": ITEMS_FILE if spec.own_items else None, "n_layers": lm.n_layers, "source": source, "data": str(data_path), "epochs": epochs,
                "training": settings.to_json(), "n_train_items": len(split.train), "n_held_out_items": len(split.held_out),
                "n_examples": len(examples), "final": final, "wall_seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(run.path / "organism.json", manifest)
    finish_stage(run, STAGE, result={k: manifest[k] for k in ("planted_layer", "final", "wall_seconds")})
    return manifest
