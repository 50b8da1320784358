"""Activations read while scoring, kept for the capture stage: one forward serves both.

``wdprobe run`` with both stages asks the scoring pass to read the residuals the capture stage will want (same
hooks, layers and positions); they are saved beside the scored parts, one checksummed safetensors file per
scored chunk, keyed by prompt (item id, form, format, order). The capture stage takes every prompt it finds
here instead of running it again, and drops the folder once its own shards are written. A stash made for
another capture spec or model revision is ignored and removed, so nothing read here can be stale.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wdprobe.core.cache import atomic_write_json
from wdprobe.methods.capture import CaptureSpec
from wdprobe.runs.rundir import RunDir, read_checked, write_checked

STASH = "capture.pending"
PromptKey = tuple[str, str, str, str]  # item id, form, format ("letter"/"cloze"), order ("" for cloze)


def _label(spec: CaptureSpec, revision: str) -> dict:
    return {"spec": spec.to_json(), "model_revision": revision}


class CaptureStash:
    """Where a scoring pass leaves activations for the capture stage of the same run."""

    def __init__(self, run: RunDir, spec: CaptureSpec, revision: str):
        self.path = run.path / STASH
        self.spec = spec
        self.label = _label(spec, revision)
        meta = self.path / "spec.json"
        if self.path.is_dir() and (not meta.is_file() or json.loads(meta.read_text()) != self.label):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta, self.label)

    def add(self, keys: Sequence[PromptKey], acts: dict[str, np.ndarray]) -> None:
        """Save one chunk's activations, ``{"{hook}/{position}": [len(keys), n_layers, d_model]}``."""
        from safetensors.torch import save

        if not keys:
            return
        n = 1 + max((int(f.stem[5:]) for f in self.path.glob("part-*.safetensors") if f.stem[5:].isdigit()), default=-1)
        tensors = {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in acts.items()}
        write_checked(self.path / f"part-{n:05d}.safetensors",
                      save(tensors, metadata={"keys": json.dumps([list(k) for k in keys])}))


def read_stash(run: RunDir, spec: CaptureSpec, revision: str) -> dict[PromptKey, dict[str, np.ndarray]]:
    """Every stashed prompt's activations, if the stash was made for this spec and model revision (else none)."""
    from safetensors.torch import load

    path = run.path / STASH
    meta = path / "spec.json"
    if not meta.is_file() or json.loads(meta.read_text()) != _label(spec, revision):
        return {}
    out: dict[PromptKey, dict[str, np.ndarray]] = {}
    for f in sorted(path.glob("part-*.safetensors")):
        data = read_checked(f)
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")  # safetensors: header length, then the JSON header
        keys = json.loads(json.loads(data[8: 8 + n])["__metadata__"]["keys"])
        for r, k in enumerate(keys):
            out[tuple(k)] = {name: t[r].numpy() for name, t in tensors.items()}
    return out


def drop_stash(run_dir: Path) -> None:
    """Remove the stash (the capture stage has written its own shards)."""
    shutil.rmtree(Path(run_dir) / STASH, ignore_errors=True)
