"""wdprobe: measure and explain word-deed inconsistency in language models.

The public API is what ``__all__`` names; scripts import from here (``from wdprobe import load_model``).
Names load on first use, so ``import wdprobe`` stays quick and the command line starts fast. The layers
underneath (``core``, ``runs``, ``data``, ``scoring``, ``methods``, ``figures``, ``stages``,
``reports``, ``studies``, ``pipeline``) are documented in ``docs/architecture.md``.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from wdprobe.version import __version__

_PUBLIC: dict[str, str] = {
    # the model handle
    "load_model": "wdprobe.core.model", "LoadedModel": "wdprobe.core.model",
    # data
    "load_wdct": "wdprobe.data.wdct", "Item": "wdprobe.data.wdct", "read_items": "wdprobe.data.items",
    # stages a script calls on a run directory
    "score_wdct": "wdprobe.stages.score", "run_score": "wdprobe.stages.score", "run_capture": "wdprobe.stages.capture", "load_score": "wdprobe.stages.score", "ScoreResult": "wdprobe.stages.score",
    "load_items": "wdprobe.stages.score", "load_prompts": "wdprobe.stages.score",
    "run_content_probes": "wdprobe.stages.content_probes",
    "capture_wdct": "wdprobe.stages.capture", "load_activations": "wdprobe.stages.capture",
    "Activations": "wdprobe.stages.capture", "paired_forms": "wdprobe.stages.capture",
    "run_probes": "wdprobe.stages.probes", "run_lens": "wdprobe.stages.lens",
    "run_cross_patch": "wdprobe.stages.patching", "run_positional_patch": "wdprobe.stages.patching",
    "run_steering": "wdprobe.stages.steering",
    # what an instrument reads: one read-out per answer format
    "Readout": "wdprobe.stages.readouts", "Reading": "wdprobe.stages.readouts", "READOUTS": "wdprobe.stages.readouts",
    "readouts_for": "wdprobe.stages.readouts",
    # method kernels: arrays and models in, arrays out
    "DiffMeanProbe": "wdprobe.methods.probes", "logistic_probe": "wdprobe.methods.probes",
    "probe_layers": "wdprobe.methods.probes", "ProbeResults": "wdprobe.methods.probes",
    "LensTrajectory": "wdprobe.methods.lens", "lens_logits": "wdprobe.methods.lens",
    "decode_layers": "wdprobe.methods.decoding", "LayerTest": "wdprobe.methods.decoding",
    "content_distribution": "wdprobe.scoring.content", "letter_prior": "wdprobe.scoring.content",
    "mean_with_interval": "wdprobe.scoring.stats", "chance_agreement_test": "wdprobe.scoring.stats",
    "sign_flip_max_test": "wdprobe.scoring.stats",
    "CaptureSpec": "wdprobe.methods.capture", "capture_batch": "wdprobe.methods.capture",
    "Intervention": "wdprobe.methods.interventions", "run_interventions": "wdprobe.methods.interventions",
    "InterventionKind": "wdprobe.methods.interventions",
    "register_intervention_kind": "wdprobe.methods.interventions",
    "ProbeKind": "wdprobe.methods.probes", "register_probe_kind": "wdprobe.methods.probes",
    # declared configuration and the stage lifecycle
    "Options": "wdprobe.core.options", "option": "wdprobe.core.options", "finish_stage": "wdprobe.runs.stage",
    # studies and the pipeline
    "StudyConfig": "wdprobe.pipeline.config", "load_config": "wdprobe.pipeline.config",
    "run_study": "wdprobe.pipeline.study", "study_status": "wdprobe.pipeline.study",
    "PCTConfig": "wdprobe.studies.pct.stages", "run_pct": "wdprobe.pipeline.pct",
    "AlignConfig": "wdprobe.studies.align.stages", "run_align": "wdprobe.studies.align.stages",
    "build_organism": "wdprobe.studies.organisms.build", "organism_manifest": "wdprobe.studies.organisms.build",
    "instrument_card": "wdprobe.studies.organisms.card", "organism_results": "wdprobe.studies.organisms.card",
    "Run": "wdprobe.pipeline.results", "StageResults": "wdprobe.pipeline.results",
    "merge_run": "wdprobe.pipeline.merge", "run_sweep": "wdprobe.pipeline.sweep",
    "write_study_report": "wdprobe.reports.study", "compare_runs": "wdprobe.reports.compare",
    # the stage protocol and run directories
    "REGISTRY": "wdprobe.pipeline.registry", "Stage": "wdprobe.runs.stage", "StageContext": "wdprobe.runs.stage",
    "StageResult": "wdprobe.runs.stage", "StageRegistry": "wdprobe.runs.stage", "RunDir": "wdprobe.runs.rundir",
    "Shard": "wdprobe.runs.shards",
    # errors
    "WdprobeError": "wdprobe.errors", "InputError": "wdprobe.errors", "RunError": "wdprobe.errors",
    "RunMismatchError": "wdprobe.errors", "StageNotFinishedError": "wdprobe.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wdprobe' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
