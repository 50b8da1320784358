"""Every finished stage of a run directory as labelled objects, in one call: ``Run("runs/x").probes``.

Stages save long-form tables (one row per item, layer, position, condition, ...), so a stage's results load as
pandas DataFrames whose columns carry the labels (``pivot_table`` turns any of them into a layer x position array),
and its JSON summaries as dicts. Captured activations load as :class:`~wdprobe.stages.capture.Activations` (an
``[prompt, layer, d_model]`` array with one metadata row per prompt). A stage that has not finished is refused by
name, never read half-written.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from wdprobe.errors import InputError, MissingInputError, StageNotFinishedError
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.runs.rundir import RunDir, checked_result_text
from wdprobe.stages.capture import Activations, load_activations

__all__ = ["Run", "StageResults", "RESULT_FILES"]

# What each WDCT stage's results are, as globs relative to the run directory: derived from the outputs each stage
# declares in the registry (a stage's outputs also hold parts and HTML figures, which are not results).
RESULT_FILES: dict[str, tuple[str, ...]] = {s.name: s.result_globs for s in REGISTRY.stages("wdct")}


class StageResults(Mapping[str, Any]):
    """One finished stage's tables (DataFrames) and summaries (dicts), keyed by file name without extension
    (``results["resid_post-last"]``); loaded when first asked for."""

    def __init__(self, stage: str, files: dict[str, Path], entry: dict[str, Any], run_dir: Path | None = None):
        self.stage, self._files, self.entry, self.run_dir = stage, files, entry, run_dir
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._files:
            raise KeyError(f"stage {self.stage!r} has no result {key!r}; it has {sorted(self._files)}")
        if key not in self._loaded:
            path = self._files[key]
            text = checked_result_text(self.run_dir, path) if self.run_dir else path.read_text()
            self._loaded[key] = pd.read_csv(io.StringIO(text)) if path.suffix == ".csv" else json.loads(text)
        return self._loaded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the stage."""
        return {k: self[k] for k in self._files if self._files[k].suffix == ".csv"}

    @property
    def result(self) -> Any:
        """The one-line result the manifest recorded for the stage."""
        return self.entry.get("result")

    def __repr__(self) -> str:
        return f"StageResults({self.stage!r}: {', '.join(sorted(self._files))})"


class Run:
    """A run directory read back: ``Run(path).score``, ``.probes``, ``.lens``, ``.patch_cross``,
    ``.patch_positional``, ``.steer`` (one :class:`StageResults` each, for WDCT runs; ``.stage(name)`` for any
    registered stage, PCT's included), ``.activations(...)``, ``.items`` and ``.metrics``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise MissingInputError(f"{self.path}: not a run directory (no manifest.json)")
        self._run = RunDir(self.path)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._run.read_manifest()

    @property
    def finished(self) -> list[str]:
        """The stages that finished, in the order they are recorded."""
        return [name for name, entry in self.manifest.get("stages", {}).items()
                if isinstance(entry, dict) and entry.get("complete")]

    def stage(self, name: str) -> StageResults:
        """A finished stage's results; an unknown or unfinished stage is refused by name."""
        known = {s.name for study in ("wdct", "pct") for s in REGISTRY.stages(study)}
        if name not in known:
            raise InputError(f"unknown stage {name!r}; stages are {sorted(known)}")
        if not self._run.is_done(name):
            raise StageNotFinishedError(f"{self.path}: stage {name!r} has not finished (finished: {self.finished})")
        globs = RESULT_FILES.get(name)
        if globs is None:  # another study's stage
            globs = next(s for study in ("wdct", "pct") for s in REGISTRY.stages(study) if s.name == name).result_globs
        files: dict[str, Path] = {}
        for pattern in globs:
            for path in sorted(self.path.glob(pattern)):
                files[path.stem] = path
        return StageResults(name, files, self._run.stage_entry(name), self.path)

    def __getattr__(self, name: str) -> StageResults:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in RESULT_FILES:
            return self.stage(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}; stages: {sorted(RESULT_FILES)}")

    @property
    def items(self) -> pd.DataFrame:
        """One row per item: choices and distributions per form, consistency in every reading."""
        return self.stage("score")["items"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.stage("score")["metrics"]

    def activations(self, hook: str = "resid_post", position: str = "last", *, orders: str = "shown",
                    format: str = "letter") -> Activations:
        """Captured activations, ``array[prompt, layer, d_model]`` with ``meta`` (one row per prompt)."""
        return load_activations(self.path, hook, position, orders=orders, format=format)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: finished {', '.join(self.finished) or 'nothing'})"
