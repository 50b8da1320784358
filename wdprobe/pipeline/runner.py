"""Running one registered stage: take the run's lock, time it, and mark it done, once, with what it depended on.

Every study's sequencer (``run_study``, ``run_pct``) and every single-stage command go through
:func:`run_timed`, so every stage is recorded the same way in the manifest: ``complete``, ``finished``,
the ``settings`` its result depends on, wall and CPU ``seconds``, and a one-line ``result``.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from wdprobe.runs.rundir import RunDir, now
from wdprobe.runs.stage import Stage, StageContext, StageResult, running


def run_timed(stage: Stage, ctx: StageContext, settings: Mapping[str, Any]) -> tuple[StageResult, float, float]:
    """Run ``stage`` under the run directory's lock; record it done; return (result, wall s, CPU s)."""
    ctx.run.lock()
    ctx.run.announce(stage.name)
    t0, c0 = time.perf_counter(), time.process_time()
    with running(ctx.run, stage.name) as reported:
        result = stage.run(ctx)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if ctx.shard is None:
        ctx.run.lock()  # a stage function may have released it (a sub-stage it finished, a chunk it saved)
        ctx.run.mark_done(stage.name, **{**reported, "settings": dict(settings), "seconds": round(seconds, 1),
                                         "cpu_seconds": round(cpu, 1), "result": result.summary})
    else:
        ctx.run.unlock()
    return result, seconds, cpu


def record_model_load(run: RunDir, name: str, seconds: float, cpu_seconds: float) -> None:
    """Model loading is timed on its own (whichever stage needed the model first)."""
    manifest = run.read_manifest()
    manifest["model_load"] = {"model": name, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                              "finished": now()}
    run.write_manifest(manifest)
