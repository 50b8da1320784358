"""One command for the whole study: score -> capture -> probes -> lens -> patching -> steering -> report.

Each stage is the public function a script would call (``score_wdct``, ``capture_wdct``, ``run_probes``,
``run_lens``, ``run_cross_patch``, ``run_positional_patch``, ``run_steering``, ``write_study_report``);
this module only sequences them over one run directory. A stage finished with the same settings is
skipped (the manifest's ``study.done`` records its settings and wall time); an interrupted stage resumes
from its saved parts; the model is loaded once, and only if some stage needs it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence
from wdprobe.pipeline.config import STAGES, StudyConfig, item_count
from wdprobe.runs.rundir import RunDir, now



class _LazyModel:
    """Loads the model on first use, once, and remembers how long that took."""

    def __init__(self, cfg: StudyConfig, lm=None):
        self.cfg, self.lm, self.seconds, self.cpu_seconds = cfg, lm, 0.0, 0.0

    def get(self):
        if self.lm is None:
            from wdprobe.core.model import load_model

            t0, c0 = time.perf_counter(), time.process_time()
            self.lm = load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device,
                                 device_map=self.cfg.device_map)
            self.seconds = round(time.perf_counter() - t0, 1)
            self.cpu_seconds = round(time.process_time() - c0, 1)
        return self.lm


def stage_settings(cfg: StudyConfig, stage: str) -> dict[str, Any]:
    """What a stage's result depends on; a finished stage reruns only when this changes."""
    common = {"model": cfg.model, "seed": cfg.seed}
    if stage == "score":
        return {**common, "data": cfg.data, "limit": cfg.limit, "sample": cfg.sample, "domains": cfg.domains,
                "dtype": cfg.dtype, **asdict(cfg.score)}
    if stage in ("capture", "probes", "patch_cross", "patch_positional", "steer"):
        return {**common, **asdict(getattr(cfg, stage))}
    if stage == "report":
        return {"report": str(cfg.report_dir), "notes": cfg.notes, "score_notes": cfg.score_notes}
    return common


def _do_score(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool) -> str:
    from wdprobe.stages.score import score_wdct

    res = score_wdct(run, model=cfg.model, data=cfg.data, seed=cfg.seed, limit=cfg.limit, sample=cfg.sample,
                     domains=cfg.domains, batch_size=cfg.score.batch_size, chat=cfg.score.chat, lm=model.get(),
                     progress=progress)
    m = res.metrics
    return f"{m['n_items']} items, CS {m['cs_micro']:.3f}, PCS {m['pcs_micro']:.3f}"


def _do_capture(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool) -> str:
    from wdprobe.stages.capture import capture_wdct

    c = cfg.capture
    capture_wdct(run, layers=c.layers, positions=c.positions, storage_dtype=c.storage_dtype, batch_size=c.batch_size,
                 lm=model.get(), progress=progress)
    return f"positions {', '.join(c.positions)}"


def _do_probes(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool) -> str:
    from wdprobe.stages.probes import run_probes

    p = cfg.probes
    missing = [x for x in p.positions if x not in cfg.capture.positions]
    if missing:
        raise ValueError(f"probes.positions {missing} were not captured (capture.positions = {cfg.capture.positions})")
    out = []
    for position in p.positions:
        head = run_probes(run, position=position, kinds=p.kinds, folds=p.folds, seed=cfg.seed, progress=progress)
        kind = "diffmean" if "diffmean" in head else p.kinds[0]
        out.append(f"{position}: word probe {head[kind]['word->word']:.2f}, transfer {head[kind]['word->deed_best']:.2f}")
    return "; ".join(out)


def _do_lens(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool) -> str:
    from wdprobe.stages.lens import run_lens

    s = run_lens(run, lm=model.get(), progress=progress)
    med = s["inconsistent"].get("item_divergence_layer_median")
    return f"inconsistent items part at layer {med:.0f} (median)" if med is not None else "no inconsistent items"


def _do_patch_cross(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool, restart: bool = False) -> str:
    from wdprobe.stages.patching import run_cross_patch

    c = cfg.patch_cross
    head = run_cross_patch(run, n_items=item_count(c.items), layers=c.layers, conditions=c.conditions, seed=cfg.seed,
                           batch_size=c.batch_size, lm=model.get(), progress=progress, restart=restart)
    if "full" in head:
        return f"full patch flips up to {head['full']['flip_rate']:.2f} of inconsistent items (layer {head['full']['layer']})"
    return "done"


def _do_patch_positional(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool, restart: bool = False) -> str:
    from wdprobe.stages.patching import run_positional_patch

    c = cfg.patch_positional
    out = []
    for form in c.forms:
        head = run_positional_patch(run, form=form, n_items=c.items, n_exact=c.exact_items, layers=c.layers,
                                    min_effect=c.min_effect, screen=c.screen, seed=cfg.seed, batch_size=c.batch_size,
                                    lm=model.get(), progress=progress, restart=restart)
        rho = head.get("rank_correlation_pooled")
        has_rho = rho is not None and not math.isnan(rho)
        out.append(f"{form}: {head['n_items']} items" + (f", attribution vs exact rho {rho:.2f}" if has_rho else ""))
    return "; ".join(out)


def _do_steer(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool, restart: bool = False) -> str:
    from wdprobe.stages.steering import run_steering

    s = cfg.steer
    head = run_steering(run, n_items=item_count(s.items), layers=s.layers, alphas=s.alphas, seed=cfg.seed,
                        min_mass_ratio=s.min_mass_ratio, batch_size=s.batch_size, validate=s.validate, lm=model.get(),
                        progress=progress, restart=restart)
    best = head.get("best")
    if not best:
        return "no setting kept the answer format"
    text = f"best layer {best['layer']}, alpha {best['alpha']:g}: CS {best['cs']:.2f} on the grid"
    val = head.get("validation")
    if val:
        text += f"; held out {val['stance']['cs']:.2f} vs clean {val['cs_clean']:.2f}"
    return text


def _do_report(cfg: StudyConfig, run: Path, model: _LazyModel, progress: bool) -> str:
    from wdprobe.reports.study import write_study_report

    def read(path: str | None) -> str:
        return Path(path).read_text() if path else ""

    page = write_study_report(run, cfg.report_dir, notes=read(cfg.notes), score_notes=read(cfg.score_notes))
    return str(page)


RUNNERS: dict[str, Callable[..., str]] = {
    "score": _do_score, "capture": _do_capture, "probes": _do_probes, "lens": _do_lens,
    "patch_cross": _do_patch_cross, "patch_positional": _do_patch_positional, "steer": _do_steer,
    "report": _do_report}
RESTARTABLE = {"patch_cross", "patch_positional", "steer"}


def study_status(run_dir: str | Path) -> dict[str, Any]:
    """The manifest's record of which stages ``wdprobe run`` finished, with settings and wall times."""
    return RunDir(run_dir).read_manifest().get("study", {})


def _record(run: RunDir, stage: str, settings: dict[str, Any], seconds: float, result: str, cfg: StudyConfig,
            cpu_seconds: float | None = None) -> None:
    manifest = run.read_manifest()
    study = manifest.setdefault("study", {})
    study["config"] = cfg.to_dict()
    study.setdefault("done", {})[stage] = {"settings": settings, "seconds": round(seconds, 1), "finished": now(),
                                           "result": result,
                                           "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1)}
    run.write_manifest(manifest)


def run_study(cfg: StudyConfig, *, progress: bool = True, restart: Sequence[str] = (), lm=None,
              log: Callable[[str], None] | None = None) -> Path:
    """Run every stage in ``cfg.stages`` in order into ``cfg.out_dir``; return the report page (or run dir).

    ``restart`` names stages to redo from scratch; every later stage is redone with them. ``lm`` lets a
    script reuse a loaded model."""
    from tqdm.auto import tqdm

    cfg.validate()
    bad = [s for s in restart if s not in RESTARTABLE]
    if bad:
        raise ValueError(f"--restart works for {sorted(RESTARTABLE)}; for {bad} use a new --out directory "
                         "(their results are what every later stage stands on)")
    stages = [s for s in STAGES if s in cfg.stages]
    run = RunDir(cfg.out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    model = _LazyModel(cfg, lm)
    say = log or (lambda msg: tqdm.write(msg))
    first_restart = min((stages.index(s) for s in restart if s in stages), default=len(stages))
    bar = tqdm(total=len(stages), desc="wdprobe run", unit="stage", disable=not progress, position=0,
               bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")
    page = run.path
    from wdprobe.figures.probes import png_enabled, png_export

    with png_export(cfg.png and png_enabled()):  # WDPROBE_PNG=0 in the environment also turns PNGs off
        for k, stage in enumerate(stages):
            page = _run_stage(cfg, run, stage, k, first_restart, model, progress, say, bar) or page
    bar.close()
    return page


def _run_stage(cfg: StudyConfig, run: RunDir, stage: str, k: int, first_restart: int, model: _LazyModel,
               progress: bool, say: Callable[[str], None], bar) -> Path | None:
    """One stage: skip it when finished with the same settings, else run it and record settings and time."""
    settings = stage_settings(cfg, stage)
    done = study_status(run.path).get("done", {}).get(stage)
    redo = k >= first_restart
    same = done is not None and json.dumps(done["settings"], sort_keys=True) == json.dumps(settings, sort_keys=True)
    if stage != "report" and same and not redo:  # the report is always redrawn: cheap, and it reads every stage
        say(f"[{stage}] already done ({done['seconds']:.0f} s on {done['finished']}): {done['result']}")
        bar.update(1)
        return None
    bar.set_description_str(f"wdprobe run [{stage}]")
    t0, c0 = time.perf_counter(), time.process_time()
    loaded_before = model.lm is not None
    kwargs = {"restart": True} if redo and stage in RESTARTABLE else {}
    result = RUNNERS[stage](cfg, run.path, model, progress, **kwargs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not loaded_before and model.lm is not None and model.seconds:
        seconds -= model.seconds  # model loading is recorded on its own
        cpu -= model.cpu_seconds
        _record(run, "load_model", {"model": cfg.model}, model.seconds, model.lm.name, cfg, model.cpu_seconds)
    _record(run, stage, settings, seconds, result, cfg, cpu)
    say(f"[{stage}] {seconds:.0f} s: {result}")
    bar.update(1)
    return Path(result) if stage == "report" else None
