"""The logit-lens stage: read the captured residuals of a scored run through the final norm and
unembedding, per layer, word vs deed; write tidy tables, a headline and figures under ``lens/``.

One stage for every answer format: each read-out of the run (:func:`wdprobe.stages.readouts.readouts_for`) writes its
own readings (:meth:`~wdprobe.stages.readouts.Readout.lens`): by letter in the shown order and in content space, or
the cloze form at the options' decision point (``lens/cloze-*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wdprobe.core.model import load_for_run
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import finish_stage
from wdprobe.stages.readouts import scored_readouts


def run_lens(run_dir: str | Path, *, lm=None, progress: bool = True, format: str = "auto") -> dict[str, Any]:
    """The lens stage: captured ``resid_post`` at the final position -> ``lens/`` (CSV, JSON, HTML, PNG): by letter
    in the shown order, in content space (every order), and in the cloze form (``lens/cloze-*``), for every format the
    run was scored in (``auto``) or the one asked."""

    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if lm is None:
        lm = load_for_run(manifest)
    readouts = scored_readouts(run.path, format)
    out = run.path / "lens"
    out.mkdir(exist_ok=True)
    model = manifest["stages"]["score"]["config"]["model"]
    summary: dict[str, Any] = {}
    head: dict[str, Any] = {}
    pngs: list = []
    for ro in readouts:
        part, part_head, made = ro.lens(run, lm, out, model)
        summary.update(part)
        head.update(part_head)
        pngs += made
    finish_stage(run, "lens", headline=head, png=[str(p) for p in pngs if p])
    return summary
