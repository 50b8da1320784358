"""Running one registered stage: take the run's lock, time it, and mark it done, once, with what it depended on.

Every study's sequencer (``run_study``, ``run_pct``) and every single-stage command go through
:func:`run_timed`, so every stage is recorded the same way in the manifest: ``complete``, ``finished``,
the ``settings`` its result depends on, wall and CPU ``seconds``, and a one-line ``result``.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Mapping

from wdprobe.errors import RunMismatchError
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.runs.rundir import PARTS_SETTINGS, RunDir, now
from wdprobe.runs.stage import Stage, StageContext, StageResult, running


def stage_fingerprint(run: RunDir, stage: Stage) -> str | None:
    """What a finished stage handed on, as one sha256: its settings, the content of its result tables (CSV) and the
    checksums of its saved parts. None while it is unfinished. Rerunning it to the same result gives the same
    fingerprint (no time stamps in it); redoing it with other settings or other items does not."""
    entry = run.stage_entry(stage.name)
    if not entry.get("complete"):
        return None
    h = hashlib.sha256(json.dumps(entry.get("config"), sort_keys=True, default=str).encode())
    for pattern in stage.result_globs:
        for f in sorted(run.path.glob(pattern)):
            if f.suffix == ".csv":
                h.update(f"{f.relative_to(run.path)}:{hashlib.sha256(f.read_bytes()).hexdigest()}".encode())
    label = run.parts_dir(stage.name) / PARTS_SETTINGS
    if label.is_file():
        h.update(json.dumps(json.loads(label.read_text()).get("parts", {}), sort_keys=True).encode())
    return h.hexdigest()


def output_digests(run: RunDir, stage: Stage) -> dict[str, str]:
    """The sha256 of every result file of a finished stage (its declared result tables and summaries), recorded in
    its manifest entry so readers can verify them (:func:`~wdprobe.runs.rundir.checked_result_text`)."""
    return {str(f.relative_to(run.path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for pattern in stage.result_globs for f in sorted(run.path.glob(pattern)) if f.is_file()}


def input_fingerprints(run: RunDir, stage: Stage) -> dict[str, str | None]:
    """The fingerprints of the stages ``stage`` requires, as they are now."""
    return {name: stage_fingerprint(run, REGISTRY.get(stage.study, name)) for name in stage.requires}


def recorded_inputs(run: RunDir, name: str) -> dict[str, str | None] | None:
    """The fingerprints a stage recorded of its inputs (kept under the manifest's ``inputs``, apart from the stage's
    own entry, so a stage refused before it began does not read as partial)."""
    return (run.read_manifest().get("inputs") or {}).get(name)


def record_inputs(run: RunDir, name: str, inputs: Mapping[str, str | None]) -> None:
    """Record what ``name`` is being made from (under the run's lock)."""
    with run.writing():
        manifest = run.read_manifest()
        manifest.setdefault("inputs", {})[name] = dict(inputs)
        run.write_manifest(manifest)


def check_chain(run: RunDir, stage: Stage, current: Mapping[str, str | None], *, own: bool = True) -> None:
    """Refuse to continue or reuse a stage whose saved work was made from another version of a stage it requires
    (redone since with other settings or items): its results would mix two inputs. Every stage upstream is checked
    the same way first (a stage reading a capture made from an earlier scoring is refused too); ``own=False`` checks
    only upstream (a restart redoes the stage itself). A report (redrawn whole every time) is exempt."""
    for name in stage.requires:
        upstream = REGISTRY.get(stage.study, name)
        check_chain(run, upstream, input_fingerprints(run, upstream))
    recorded = recorded_inputs(run, stage.name)
    if not own or stage.unit == "pages" or recorded is None:
        return
    changed = [name for name in current if recorded.get(name) != current[name]]
    if changed:
        raise RunMismatchError(
            f"{run.path}: the saved work of '{stage.name}' was made from {', '.join(repr(c) for c in changed)} as it "
            f"was before {'it was' if len(changed) == 1 else 'they were'} redone (other settings, items or results "
            f"since); continuing would mix the two. Start a new run directory"
            + (f", or redo it with `wdprobe run --restart {stage.name}`" if stage.restartable else
               f", or delete {stage.name}'s results and parts here and run it again"))


def run_timed(stage: Stage, ctx: StageContext, settings: Mapping[str, Any]) -> tuple[StageResult, float, float]:
    """Run ``stage`` under the run directory's lock; record it done; return (result, wall s, CPU s). A stage records
    the fingerprints of the stages it requires when it starts and when it finishes, and is refused when they changed
    in between (:func:`check_chain`; a restart redoes it from the new inputs)."""
    ctx.run.lock()
    inputs = input_fingerprints(ctx.run, stage) if ctx.shard is None else {}
    if ctx.shard is None:
        check_chain(ctx.run, stage, inputs, own=not ctx.restart)
        record_inputs(ctx.run, stage.name, inputs)
    ctx.run.announce(stage.name)
    t0, c0 = time.perf_counter(), time.process_time()
    with running(ctx.run, stage.name) as reported:
        result = stage.run(ctx)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if ctx.shard is None:
        ctx.run.lock()  # a stage function may have released it (a sub-stage it finished, a chunk it saved)
        ctx.run.mark_done(stage.name, **{**reported, "settings": dict(settings), "seconds": round(seconds, 1),
                                         "cpu_seconds": round(cpu, 1), "result": result.summary, "inputs": inputs,
                                         "outputs": output_digests(ctx.run, stage)})
    else:
        ctx.run.unlock()
    return result, seconds, cpu


def record_model_load(run: RunDir, name: str, seconds: float, cpu_seconds: float) -> None:
    """Model loading is timed on its own (whichever stage needed the model first)."""
    manifest = run.read_manifest()
    manifest["model_load"] = {"model": name, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                              "finished": now()}
    run.write_manifest(manifest)
