"""An aligned run's model as a standard Hugging Face directory, so any tool (cross-model patching first) can read the
model that alignment produced beside the one it started from.

An alignment run keeps each epoch's trainable tensors (``checkpoints/epoch-NN/trainable.safetensors``), not a model:
the export rebuilds the run's tuner on its base model, loads the chosen epoch (the last by default), merges LoRA
adapters into their weights and writes the result with the base model's tokenizer. ``aligned.json`` beside it names
the run, the epoch and the checkpoint's sha256, so the exported directory says where it came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import load_model
from wdprobe.data.wdct import file_sha256
from wdprobe.errors import InputError, IntegrityError
from wdprobe.runs.rundir import RunDir
from wdprobe.studies.align.finetune import TrainSettings, Tuner, checkpoint_dir, load_checkpoint, publish_model, saved_epochs
from wdprobe.studies.align.stages import STAGE

RECORD = "aligned.json"


def export_aligned(run_dir: str | Path, out_dir: str | Path, *, epoch: int | None = None, model: str | None = None,
                   lm=None) -> dict[str, Any]:
    """Write the model of ``run_dir`` after ``epoch`` (default: its last saved epoch) into ``out_dir`` as a Hugging
    Face directory and return its record. ``model``: where to load the base model from when the name the run
    recorded is not loadable here (its revision must still match). ``lm``: an already loaded base model (its
    weights are changed: LoRA is merged into them)."""
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    stage = manifest.get("stages", {}).get(STAGE)
    if not stage or "config" not in stage:
        raise InputError(f"{run.path}: not an alignment run (no '{STAGE}' stage in its manifest.json)")
    config = stage["config"]
    epochs = saved_epochs(run.path)
    if not epochs:
        raise InputError(f"{run.path}: no saved checkpoint to export (checkpoints/epoch-NN/trainable.safetensors)")
    epoch = epochs[-1] if epoch is None else int(epoch)
    if epoch not in epochs:
        raise InputError(f"{run.path}: epoch {epoch} has no saved checkpoint; saved: {epochs}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: not empty; export into a new directory")
    train = TrainSettings.from_mapping(config["train"], source=f"{run.path / 'manifest.json'} [{STAGE}.train]")
    if lm is None:
        lm = load_model(model or config["model"], dtype=config.get("dtype", "float32"))
    if config.get("model_revision") and lm.revision != config["model_revision"]:
        raise IntegrityError(f"{run.path}: trained on {config['model']} revision {config['model_revision']}, but the "
                             f"model loaded is revision {lm.revision}: its checkpoint would be merged into other weights")
    tuner = Tuner(lm, train)
    load_checkpoint(run.path, epoch, tuner)
    out.mkdir(parents=True, exist_ok=True)
    publish_model(tuner, lm, out)
    record = {"run": str(run.path), "epoch": epoch, "form": config.get("form"), "method": config.get("method"),
              "base_model": config["model"], "base_revision": config.get("model_revision"),
              "checkpoint_sha256": file_sha256(checkpoint_dir(run.path, epoch) / "trainable.safetensors"),
              "train": config["train"]}
    atomic_write_json(out / RECORD, record)
    return record


def aligned_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The record of an exported aligned model (None for any other model directory)."""
    path = Path(model_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None
