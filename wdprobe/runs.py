"""Run directories: plain artefacts (CSV/JSON) plus a manifest, written atomically, resumable.

A stage writes its results in parts (one CSV per chunk of items, each written atomically), so a
crash or Ctrl-C loses at most the chunk in flight; re-running into the same directory reads the
finished parts and only computes what is missing. The manifest records what produced the run and
refuses to mix runs made with different settings.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .cache import atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"


class RunMismatchError(RuntimeError):
    """The run directory was made with different settings than the ones asked for now."""


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class RunDir:
    """One run directory: ``manifest.json`` plus per-stage artefacts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {}
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, dict(manifest, updated=now()))

    def check_or_start(self, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Start a stage or resume it; refuse when the directory holds a run of different settings."""
        manifest = self.read_manifest()
        previous = manifest.get("stages", {}).get(stage, {}).get("config")
        if previous is not None:
            diff = {k: (previous.get(k), v) for k, v in config.items() if previous.get(k) != v}
            if diff:
                detail = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                raise RunMismatchError(f"{self.path} already holds a '{stage}' run with other settings ({detail}); "
                                       "use a new --out directory, delete this one, or pass --restart to redo the stage")
        manifest.setdefault("created", now())
        manifest.setdefault("environment", environment())
        manifest.setdefault("stages", {}).setdefault(stage, {})["config"] = dict(config)
        self.write_manifest(manifest)
        return manifest

    def update_stage(self, stage: str, **fields: Any) -> None:
        manifest = self.read_manifest()
        manifest.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        self.write_manifest(manifest)

    def reset_stage(self, stage: str, outputs: Sequence[str] = ()) -> None:
        """Forget a stage: its manifest entry, its parts and the named output files/folders (for --restart)."""
        import shutil

        manifest = self.read_manifest()
        if stage in manifest.get("stages", {}):
            del manifest["stages"][stage]
            self.write_manifest(manifest)
        shutil.rmtree(self.parts_dir(stage), ignore_errors=True)
        for name in outputs:
            for p in self.path.glob(name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # parts --------------------------------------------------------------------------------------
    def parts_dir(self, stage: str) -> Path:
        return self.path / f"{stage}.parts"

    def read_parts(self, stage: str) -> list[dict[str, str]]:
        d = self.parts_dir(stage)
        rows: list[dict[str, str]] = []
        for p in sorted(d.glob("part-*.csv")) if d.is_dir() else []:
            rows.extend(read_csv(p))
        return rows

    def write_part(self, stage: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        d = self.parts_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        n = len(list(d.glob("part-*.csv")))
        path = d / f"part-{n:05d}.csv"
        atomic_write_text(path, rows_to_csv(rows, columns))
        return path

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        path = self.path / name
        atomic_write_text(path, rows_to_csv(rows, columns))
        return path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, str]:
    import torch
    import transformers

    from importlib.metadata import PackageNotFoundError, version

    try:
        tl = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover - import problems surface elsewhere
        tl = "unavailable"
    from . import __version__

    return {"wdprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "transformer_lens": tl, "machine": platform.machine(),
            "threads": str(torch.get_num_threads())}


class Timer:
    """Wall-clock seconds of named steps, for manifests."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
