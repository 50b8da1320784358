"""Sweeps: models x settings x shards as independent tasks, run in this process or fanned out on Ray.

A sweep file (TOML) names the models, a grid of scoring settings and a shard count::

    [sweep]
    out = "runs/sweep"            # one run directory per (model, setting combination) under here
    models = ["gemma-3-270m", "/models/Llama-3-8B"]
    data = "WDCT.csv"             # optional: else $WDPROBE_WDCT or the pinned download
    shards = 4                    # each run's items split by id into 4 tasks
    stages = ["score", "capture"] # optional (default ["score"]): also capture, patch_cross, steer, in order
    num_cpus = 1                  # Ray resources per task
    num_gpus = 0

    [grid]                        # every combination becomes one run
    seed = [0, 1]

    [fixed]                       # the same for every run
    sample = 200
    dtype = "float32"
    orders = "cyclic"             # option orders and answer format, as `wdprobe score --orders/--format`
    format = "both"

Every task is one stage of one shard of one run (``score_wdct(..., shard="i/n")``, ``capture_wdct(...)``, ...)
writing its own shard directory, so a task that dies is rerun alone and a half-finished sweep resumes
(finished shards are skipped). Stages run one after another: when all shards of a stage are done, each run's
shards are merged (:mod:`wdprobe.merge`) before the next stage's tasks start. The sweep writes ``sweep.csv``
(one row per run).
Ray is optional (``pip install 'wdprobe[ray]'``); ``executor="local"`` needs nothing but wdprobe.
"""
from __future__ import annotations

import itertools
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import load_model
from wdprobe.errors import SweepConfigError
from wdprobe.pipeline.merge import mergers
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import Shard, shard_dir
from wdprobe.runs.stage import StageContext
from wdprobe.stages.score import load_score

SETTING_KEYS = {"seed", "setting", "sample", "limit", "domains", "subset", "dtype", "batch_size", "chat", "demos",
                "device_map", "orders", "format"}
EXECUTORS = ("local", "ray")
SWEEP_STAGES = tuple(s.name for s in REGISTRY.stages("wdct") if s.shardable and s.name != "patch_positional")




@dataclass(frozen=True)
class SweepTask:
    """One shard of one run: everything a worker needs, as plain values (Ray ships it to the worker)."""

    run: str
    model: str
    data: str | None
    settings: tuple[tuple[str, Any], ...]
    shard: str
    stage: str = "score"

    @property
    def key(self) -> str:
        return f"{Path(self.run).name}[{self.shard}]" + ("" if self.stage == "score" else f":{self.stage}")


@dataclass
class SweepSpec:
    """A sweep read from its TOML file: models x grid of scoring settings x shards, and the stages to run."""

    out: Path
    models: list[str]
    data: str | None = None
    shards: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    grid: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    stages: list[str] = field(default_factory=lambda: ["score"])

    def runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(run directory, model, settings) for every model x grid combination."""
        keys = sorted(self.grid)
        out = []
        for model in self.models:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                combo = dict(zip(keys, values))
                name = Path(model.rstrip("/")).name + "".join(f"-{k}{v}" for k, v in combo.items())
                out.append((str(self.out / name), model, {**self.fixed, **combo}))
        return out

    def tasks(self, stage: str = "score") -> list[SweepTask]:
        return [SweepTask(run, model, self.data, tuple(sorted(settings.items())), f"{i}/{self.shards}", stage)
                for run, model, settings in self.runs() for i in range(self.shards)]


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepConfigError(f"{path}: not valid TOML ({exc})") from None
    sweep = raw.get("sweep")
    if not isinstance(sweep, dict):
        raise SweepConfigError(f"{path}: needs a [sweep] table with out, models and shards")
    unknown = set(sweep) - {"out", "models", "data", "shards", "num_cpus", "num_gpus", "stages"}
    if unknown:
        raise SweepConfigError(f"{path}: unknown [sweep] key(s) {sorted(unknown)}")
    models = sweep.get("models")
    if not models or not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise SweepConfigError(f"{path}: [sweep] models must be a non-empty list of model names or paths")
    grid, fixed = raw.get("grid", {}), raw.get("fixed", {})
    for table, name in ((grid, "grid"), (fixed, "fixed")):
        bad = set(table) - SETTING_KEYS
        if bad:
            raise SweepConfigError(f"{path}: [{name}] key(s) {sorted(bad)} are not scoring settings; "
                                   f"choose from {sorted(SETTING_KEYS)}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise SweepConfigError(f"{path}: [grid] {k} must be a non-empty list of values")
    shards = sweep.get("shards", 1)
    if not isinstance(shards, int) or shards < 1:
        raise SweepConfigError(f"{path}: [sweep] shards must be a positive integer, not {shards!r}")
    stages = sweep.get("stages", ["score"])
    if not isinstance(stages, list) or not stages or stages[0] != "score" or any(x not in SWEEP_STAGES for x in stages):
        raise SweepConfigError(f"{path}: [sweep] stages must start with 'score' and use {list(SWEEP_STAGES)} "
                               f"(in pipeline order), not {stages!r}")
    data = sweep.get("data")
    if data and not Path(data).is_absolute() and (path.parent / data).exists():
        data = str(path.parent / data)  # relative to the sweep file
    out = Path(sweep.get("out", "runs/sweep"))
    return SweepSpec(out=out if out.is_absolute() else Path.cwd() / out, models=models, data=data,
                     shards=shards, num_cpus=sweep.get("num_cpus", 1), num_gpus=sweep.get("num_gpus", 0), stages=stages,
                     grid=grid, fixed=fixed)


# ---- one task ------------------------------------------------------------------------------------

_MODELS: dict[tuple, Any] = {}  # loaded models per worker process: tasks of one model share a load


def task_done(task: SweepTask) -> bool:
    """Whether a sweep task's shard finished (so a resumed sweep skips it)."""
    return RunDir(shard_dir(task.run, task.stage, Shard.parse(task.shard))).is_done(task.stage)


def run_task(task: SweepTask) -> dict[str, Any]:
    """Score one shard of one run (in this process or a Ray worker); returns its timing."""

    t0 = time.perf_counter()
    settings = dict(task.settings)
    key = (task.model, settings.get("dtype", "float32"), str(settings.get("device_map")))
    loaded = key in _MODELS
    if not loaded:
        _MODELS.clear()  # one model at a time per process
        _MODELS[key] = load_model(task.model, dtype=settings.get("dtype", "float32"), device_map=settings.get("device_map"))
    t_load = time.perf_counter() - t0
    lm = _MODELS[key]
    kwargs = {k: v for k, v in settings.items() if k not in ("dtype", "device_map")} if task.stage == "score" else {}
    if task.stage == "score":
        kwargs["data"] = task.data
    ctx = StageContext(RunDir(task.run), None, lambda: lm, progress=False, shard=Shard.parse(task.shard),
                       extras={"kwargs": kwargs})
    items = REGISTRY.get("wdct", task.stage).run(ctx).headline.get("n_items")
    if task.stage == "capture":
        items = None
    return {"task": task.key, "stage": task.stage, "run": task.run, "shard": task.shard, "items": items,
            "load_seconds": round(t_load, 3), "model_reused": loaded, "seconds": round(time.perf_counter() - t0, 3)}


# ---- executors -----------------------------------------------------------------------------------

def _run_local(tasks: Sequence[SweepTask], progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    return [run_task(t) for t in tqdm(tasks, desc="sweep tasks", disable=not progress)]


def _run_ray(tasks: Sequence[SweepTask], spec: SweepSpec, address: str | None, progress: bool) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise SweepConfigError("the Ray executor needs Ray: pip install 'wdprobe[ray]' (or use --executor local)") from None
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)  # a local instance on this machine's CPUs/GPUs
    remote = ray.remote(run_task).options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=1)
    pending = [remote.remote(t) for t in tasks]
    out = []
    with tqdm(total=len(pending), desc="sweep tasks (ray)", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            out.extend(ray.get(done))
            bar.update(len(done))
    return out


@dataclass
class SweepResult:
    """A finished sweep: where it wrote, one row per run, and each task's timing."""

    out: Path
    runs: list[dict]
    tasks: list[dict]


def run_sweep(spec: SweepSpec | str | Path, *, executor: str = "local", address: str | None = None,
              progress: bool = True) -> SweepResult:
    """Run every unfinished task of a sweep, merge each run's shards, and write ``sweep.csv``."""

    if executor not in EXECUTORS:
        raise SweepConfigError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")

    spec = load_sweep(spec) if not isinstance(spec, SweepSpec) else spec
    t0 = time.perf_counter()
    timings: list[dict] = []
    n_tasks = n_todo = 0
    for stage in spec.stages:  # a stage's shards all finish and merge before the next stage reads them
        tasks = spec.tasks(stage)
        todo = [t for t in tasks if not task_done(t)]
        n_tasks, n_todo = n_tasks + len(tasks), n_todo + len(todo)
        timings += _run_local(todo, progress) if executor == "local" else _run_ray(todo, spec, address, progress)
        for run, _, _ in spec.runs():
            mergers("wdct")[stage](Path(run))
    wall = time.perf_counter() - t0
    rows = []
    for run, model, settings in spec.runs():
        metrics = load_score(run).metrics  # merged by the stage loop above
        rows.append({"run": Path(run).name, "model": model, **{k: settings.get(k) for k in spec.grid},
                     "n_items": metrics["n_items"], "cs_micro": metrics["cs_micro"], "cs_macro": metrics["cs_macro"],
                     "pcs_micro": metrics["pcs_micro"], "pcs_macro": metrics["pcs_macro"]})
    spec.out.mkdir(parents=True, exist_ok=True)
    RunDir(spec.out).write_table("sweep.csv", rows, list(rows[0]) if rows else ["run"])
    atomic_write_json(spec.out / "sweep.json", {"executor": executor, "address": address, "stages": spec.stages,
                                                "tasks": n_tasks, "ran": n_todo, "skipped": n_tasks - n_todo,
                                                "wall_seconds": round(wall, 3), "task_timings": timings})
    return SweepResult(spec.out, rows, timings)
