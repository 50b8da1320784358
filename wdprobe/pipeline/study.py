"""One command for the whole study: score -> capture -> probes -> lens -> patching -> steering -> report.

Each stage is the public function a script would call (``score_wdct``, ``capture_wdct``, ``run_probes``,
``run_lens``, ``run_cross_patch``, ``run_positional_patch``, ``run_steering``, ``write_study_report``);
this module only sequences them over one run directory. A stage finished with the same settings is
skipped (the manifest's ``study.done`` records its settings and wall time); an interrupted stage resumes
from its saved parts; the model is loaded once, and only if some stage needs it.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from wdprobe.core.model import load_model
from wdprobe.data.items import items_path, read_items
from wdprobe.data.wdct import resolve_wdct_path, select
from wdprobe.errors import InputError, MissingInputError
from wdprobe.figures.probes import png_enabled, png_export
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.pipeline.runner import check_chain, input_fingerprints, record_model_load, run_timed
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import StageContext


class _LazyModel:
    """Loads the model on first use, once, and remembers how long that took."""

    def __init__(self, cfg: StudyConfig, lm=None):
        self.cfg, self.lm, self.seconds, self.cpu_seconds = cfg, lm, 0.0, 0.0

    def get(self):
        if self.lm is None:
            t0, c0 = time.perf_counter(), time.process_time()
            self.lm = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device,
                                 device_map=self.cfg.device_map)
            self.seconds = round(time.perf_counter() - t0, 1)
            self.cpu_seconds = round(time.process_time() - c0, 1)
        return self.lm


def stage_settings(cfg: StudyConfig, stage: str) -> dict[str, Any]:
    """What a stage's result depends on; a finished stage reruns only when this changes."""
    return REGISTRY.get("wdct", stage).settings(cfg)


def restartable() -> set[str]:
    """WDCT stages ``--restart`` can redo (their outputs are not what earlier stages stand on)."""
    return {s.name for s in REGISTRY.stages("wdct") if s.restartable}


def study_status(run_dir: str | Path) -> dict[str, Any]:
    """The study's configuration and, in pipeline order, the manifest entry of every finished WDCT stage
    (``load_model`` first when a model was loaded)."""
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    done: dict[str, Any] = {}
    if "model_load" in manifest:
        done["load_model"] = manifest["model_load"]
    done.update({name: run.stage_entry(name) for name in REGISTRY.names("wdct") if run.is_done(name)})
    return {"config": manifest.get("study", {}).get("config"), "done": done}


def check_inputs(cfg: StudyConfig) -> None:
    """Fail before anything is loaded or written: the items file must parse and the selection (domains, sample,
    limit) must match items; a model given as a path must be a directory."""
    if cfg.data:
        select(read_items(cfg.data), domains=cfg.domains or None, sample=cfg.sample,
               seed=cfg.seed, limit=cfg.limit)
    elif "score" in cfg.stages and not RunDir(cfg.out_dir).is_done("score"):
        resolve_wdct_path(None)  # the pinned download (or $WDPROBE_WDCT) now: without it, fail before the model converts
    looks_like_path = cfg.model.startswith((".", "/", "~")) or Path(cfg.model).suffix in (".safetensors", ".bin")
    if looks_like_path and not Path(cfg.model).expanduser().is_dir():
        raise MissingInputError(f"model directory not found: {cfg.model}")


def run_study(cfg: StudyConfig, *, progress: bool = True, restart: Sequence[str] = (), lm=None,
              log: Callable[[str], None] | None = None, items: Any = None) -> Path:
    """Run every stage in ``cfg.stages`` in order into ``cfg.out_dir``; return the report page (or run dir).

    ``restart`` names stages to redo from scratch; every later stage is redone with them. ``lm`` lets a
    script reuse a loaded model. ``items`` (a pandas DataFrame or a list of dicts in the item schema) replaces
    ``cfg.data``: they are validated and kept in the run directory as ``data/items.jsonl``."""
    from tqdm.auto import tqdm

    cfg = cfg.validate_options().sized()  # every "auto" resolved for the study's size, so stages scale with the sample
    if items is not None:  # items_path validates them before it writes anything
        cfg = replace(cfg, data=str(items_path(items, Path(cfg.out_dir) / "data" / "items.jsonl")))
    check_inputs(cfg)
    bad = [s for s in restart if s not in restartable()]
    if bad:
        raise InputError(f"--restart works for {sorted(restartable())}; for {bad} use a new --out directory "
                         "(their results are what every later stage stands on)")
    stages = [s for s in REGISTRY.names("wdct") if s in cfg.stages]
    run = RunDir(cfg.out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    model = _LazyModel(cfg, lm)
    say = log or (lambda msg: tqdm.write(msg))
    first_restart = min((stages.index(s) for s in restart if s in stages), default=len(stages))
    bar = tqdm(total=len(stages), desc="wdprobe run", unit="stage", disable=not progress, position=0,
               bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")
    page = run.path

    with png_export(cfg.png and png_enabled()):  # WDPROBE_PNG=0 in the environment also turns PNGs off
        for k, stage in enumerate(stages):
            page = _run_stage(cfg, run, stage, k, first_restart, model, progress, say, bar) or page
    bar.close()
    return page


def _run_stage(cfg: StudyConfig, run: RunDir, stage: str, k: int, first_restart: int, model: _LazyModel,
               progress: bool, say: Callable[[str], None], bar) -> Path | None:
    """One stage: skip it when finished with the same settings, else run it and record settings and time."""
    spec = REGISTRY.get("wdct", stage)
    settings = spec.settings(cfg)
    entry = run.stage_entry(stage)
    redo = k >= first_restart
    same = run.is_done(stage) and "settings" in entry and \
        json.dumps(entry["settings"], sort_keys=True) == json.dumps(settings, sort_keys=True)
    if same and not redo:  # a finished stage is reused only while what it read is unchanged
        check_chain(run, spec, input_fingerprints(run, spec))
    if stage != "report" and same and not redo:  # the report is always redrawn: cheap, and it reads every stage
        say(f"[{stage}] already done ({entry['seconds']:.0f} s on {entry['finished']}): {entry['result']}")
        bar.update(1)
        return None
    bar.set_description_str(f"wdprobe run [{stage}]")
    loaded_before = model.lm is not None
    ctx = StageContext(run, cfg, model.get, progress=progress, restart=redo and spec.restartable, log=say)
    result, seconds, cpu = run_timed(spec, ctx, settings)
    if not loaded_before and model.lm is not None:
        record_model_load(run, model.lm.name, model.seconds, model.cpu_seconds)
        run.update_stage(stage, seconds=round(seconds - model.seconds, 1), cpu_seconds=round(cpu - model.cpu_seconds, 1))
        seconds -= model.seconds
    manifest = run.read_manifest()
    manifest.setdefault("study", {})["config"] = cfg.to_dict()
    run.write_manifest(manifest)
    say(f"[{stage}] {seconds:.0f} s: {result.summary}")
    bar.update(1)
    return result.output if stage == "report" else None
