"""The stage protocol: what every step over a run directory declares, once, and the helpers they share.

A *stage* reads and writes one run directory. Every stage of every study (WDCT, PCT, alignment) is a
:class:`Stage`: its name and study, the settings its result depends on, its unit of work, the files it
writes, whether it needs the model, which stages must be done first, and how its shards merge. The
pipeline, ``wdprobe merge``, ``wdprobe sweep``, ``wdprobe status`` and the reports read these
declarations from one :class:`StageRegistry` (``wdprobe.pipeline.registry.REGISTRY``); nothing else
lists stages.

Every stage runs with one signature, ``run(ctx: StageContext) -> StageResult``, and says it is done one
way: the runner marks it done (``complete: true``, a time stamp, its settings, timing and result in the manifest entry);
stage functions only report what they finished with :func:`finish_stage`.
"""
from __future__ import annotations

import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from wdprobe.core.model import LoadedModel, load_for_run
from wdprobe.errors import InputError, StageNotFinishedError
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import Shard

if TYPE_CHECKING:  # pragma: no cover
    from tqdm import tqdm as Bar


@dataclass
class StageContext:
    """What a stage gets to run: the run directory, its study's configuration, and a model on demand.

    ``config`` is the study's configuration object (``StudyConfig``, ``PCTConfig``, ...); ``model()`` loads
    the model on first call and returns the same handle afterwards; ``extras`` carries objects a script
    passes through (a judge, an embedder, a report folder)."""

    run: RunDir
    config: Any
    model: Callable[[], LoadedModel]
    progress: bool = True
    restart: bool = False
    shard: Shard | None = None
    log: Callable[[str], None] = print
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageResult:
    """What a stage reports back: a one-line summary for the log, its headline numbers, its main output."""

    stage: str
    summary: str
    headline: Mapping[str, Any] = field(default_factory=dict)
    output: Path | None = None


@dataclass(frozen=True)
class Stage:
    """A step over a run directory, declared once.

    ``settings(config)`` returns what the stage's result depends on (a finished stage reruns only when
    it changes); ``unit`` names what the stage iterates over and saves in parts (items, prompts, layers);
    ``outputs`` are globs relative to the run directory that the stage writes (deleted by a restart);
    ``merge(run_dir)`` combines ``RUN/shards/<name>/i-of-n`` into the run, when the stage can be sharded."""

    study: str
    name: str
    run: Callable[[StageContext], StageResult]
    settings: Callable[[Any], dict[str, Any]]
    unit: str = "items"
    needs_model: bool = True
    outputs: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    merge: Callable[[Path], Mapping[str, Any]] | None = None
    restartable: bool = False
    doc: str = ""

    @property
    def key(self) -> str:
        return f"{self.study}:{self.name}"

    @property
    def shardable(self) -> bool:
        return self.merge is not None

    @property
    def result_globs(self) -> tuple[str, ...]:
        """The stage's results (tables and summaries), derived from its declared ``outputs``: a ``.csv``/``.json``
        output itself; a folder or a ``stem*`` glob, its CSV and JSON files; parts and other files (figures, tensors)
        are not results."""
        out: list[str] = []
        for pattern in self.outputs:
            if pattern.endswith((".csv", ".json")):
                out.append(pattern)
            elif pattern.endswith(".parts") or Path(pattern).suffix:
                continue
            else:
                stem = pattern if pattern.endswith("*") else f"{pattern}/*"
                out += [f"{stem}.csv", f"{stem}.json"]
        return tuple(out)


class StageRegistry:
    """Stages by study, in pipeline order (later stages read earlier ones). New stages join with
    :meth:`register`, optionally ``after=`` an existing one."""

    def __init__(self) -> None:
        self._stages: dict[str, list[Stage]] = {}

    def register(self, stage: Stage, *, after: str | None = None) -> Stage:
        stages = self._stages.setdefault(stage.study, [])
        if any(s.name == stage.name for s in stages):
            raise InputError(f"stage {stage.key} is registered already")
        unknown = [r for r in stage.requires if r not in {s.name for s in stages}]
        if unknown:
            raise InputError(f"stage {stage.key} requires {unknown}, which are not registered before it")
        if after is None:
            stages.append(stage)
        else:
            names = [s.name for s in stages]
            if after not in names:
                raise InputError(f"cannot register {stage.key} after unknown stage {after!r}; stages: {names}")
            stages.insert(names.index(after) + 1, stage)
        return stage

    def unregister(self, study: str, name: str) -> None:
        self._stages[study] = [s for s in self._stages.get(study, []) if s.name != name]

    def studies(self) -> list[str]:
        return list(self._stages)

    def stages(self, study: str) -> list[Stage]:
        if study not in self._stages:
            raise InputError(f"unknown study {study!r}; studies: {self.studies()}")
        return list(self._stages[study])

    def names(self, study: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages(study))

    def get(self, study: str, name: str) -> Stage:
        for s in self.stages(study):
            if s.name == name:
                return s
        raise InputError(f"unknown {study} stage {name!r}; stages are {', '.join(self.names(study))}")

    def mergeable(self, study: str) -> dict[str, Callable[[Path], Mapping[str, Any]]]:
        """Merge functions by the stage name their shards are saved under, in pipeline order."""
        out: dict[str, Callable[[Path], Mapping[str, Any]]] = {}
        for s in self.stages(study):
            if s.merge is not None:
                for shard_name in getattr(s.merge, "shard_names", (s.name,)):
                    out[shard_name] = s.merge
        return out


# ---- the stage lifecycle: one way a stage is marked done ------------------------------------------------

_RUNNING: dict[tuple[str, str], dict[str, Any]] = {}  # (run directory, stage) -> the fields its functions reported


@contextmanager
def running(run: RunDir, stage: str) -> Iterator[dict[str, Any]]:
    """The runner's scope for one stage (:func:`wdprobe.pipeline.runner.run_timed`): the stage functions called inside
    report their fields (headline, figures, counts) into the yielded dict with :func:`finish_stage`, and the runner
    marks the stage done once, with those fields and its own (settings, wall and CPU seconds, result)."""
    key = (str(run.path.resolve()), stage)
    _RUNNING[key] = fields = {}
    try:
        yield fields
    finally:
        _RUNNING.pop(key, None)


def finish_stage(run: RunDir, stage: str, **fields: Any) -> None:
    """A stage function's work is done: hand its fields to the runner around it, or, called from a script with no
    runner around it, record the stage done now. Every stage is marked done through here or the runner, never by a
    stage function itself (``tests/unit/test_architecture.py`` checks)."""
    key = (str(run.path.resolve()), stage)
    if key in _RUNNING:
        _RUNNING[key].update(fields)
        return
    run.mark_done(stage, **fields)


# ---- helpers every stage shares ------------------------------------------------------------------------

def require_done(run: RunDir, stage: str, needed: str, command: str) -> None:
    """Refuse to start ``stage`` before ``needed`` is done, naming the command that does it."""
    if not run.is_done(needed):
        raise StageNotFinishedError(f"{run.path}: stage '{stage}' needs '{needed}' finished first ({command})")


def stage_seconds(run: RunDir, stage: str, t0: float) -> dict[str, float]:
    """This call's wall time and the stage's total over resumed calls, for the manifest."""
    spent = time.perf_counter() - t0
    before = run.stage_entry(stage).get("seconds_total", 0.0)
    return {"seconds": round(spent, 1), "seconds_total": round(before + spent, 1)}


def model_for_run(run: RunDir, lm: LoadedModel | None) -> LoadedModel:
    """The model a script passed, else the one the run was scored with (placed as it was then)."""
    if lm is not None:
        return lm
    return load_for_run(run.read_manifest())


def progress_bar(total: int, desc: str, progress: bool, initial: int = 0, unit: str = "row") -> "Bar":
    """A tqdm bar (silent when ``progress`` is false)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not progress)


def scored_entry(run: RunDir) -> dict[str, Any]:
    """The manifest entry of the run's finished scoring stage (every later WDCT stage starts here), or an
    error naming the command that scores it."""
    return run.require_done("score", score_command(run))


def score_command(run: RunDir) -> str:
    """The command that finishes (resumes) a run's scoring as it was started: its model, items and measurement
    settings as recorded, so the hint works when pasted (without them it would score the default model on WDCT
    and be refused as other settings)."""
    entry = run.stage_entry("score")
    flags = dict(entry.get("settings") or {})
    config = entry.get("config") or {}
    model = (entry.get("model") or {}).get("path") or flags.get("model")
    data = (entry.get("data") or {}).get("path") or flags.get("data")
    parts = ["wdprobe score", "--out", shlex.quote(str(run.path))]
    for flag, value in (("--model", model), ("--data", data), ("--setting", config.get("setting")),
                        ("--seed", config.get("seed")), ("--orders", config.get("orders")),
                        ("--format", config.get("format")), ("--dtype", config.get("dtype"))):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def scored_model_name(run: RunDir) -> str:
    """The model name the run's scoring stage recorded."""
    return scored_entry(run)["config"]["model"]


def saved_ids(run: RunDir, stage: str, column: str = "id") -> set[str]:
    """Ids of the units a stage has saved in its parts so far."""
    return {r[column] for r in run.read_parts(stage)}


def work_left(units: Sequence[Any], done: Mapping[str, Any] | set[str], key: Callable[[Any], str],
              shard: Shard | None = None) -> list[Any]:
    """The units not saved yet (and in ``shard``, when given), in their order."""
    return [u for u in units if key(u) not in done and (shard is None or shard.holds(key(u)))]


def save_in_parts(run: RunDir, stage: str, todo: Sequence[Any], *, chunk_size: int, columns: Sequence[str],
                  compute: Callable[[Sequence[Any]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The resume skeleton every chunked stage shares: compute ``todo`` a chunk at a time and save each
    chunk as one part as soon as it is done, so a crash or Ctrl-C loses at most the chunk in flight.
    Returns the new rows."""
    new: list[dict[str, Any]] = []
    for chunk in chunks(todo, chunk_size):
        rows = compute(chunk)
        run.write_part(stage, rows, columns)
        new.extend(rows)
    return new


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive chunks of ``size``: the unit a stage saves as one part (a crash loses at most one)."""
    if size < 1:
        raise InputError(f"chunk size must be at least 1, not {size}")
    for s in range(0, len(items), size):
        yield items[s: s + size]
