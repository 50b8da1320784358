"""The PCT study over one run directory: its registered stages in order, resuming a half-finished run.

Stages (``wdprobe.pipeline.registry``, study ``pct``): ``closed`` -> ``open`` -> ``judge`` -> ``compass``
-> ``capture`` -> ``probes`` -> ``tropes`` -> ``report``. The run's selection and model are fixed when it
starts (a resume with other settings is refused); a finished stage is skipped unless named in ``restart``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from wdprobe.core.model import LoadedModel, load_model
from wdprobe.data.pct import resolve_pct_dir
from wdprobe.data.prompts import INSTRUCT_NAME, resolve_chat
from wdprobe.errors import InputError
from wdprobe.pipeline.registry import REGISTRY, ensure_judge_check
from wdprobe.pipeline.runner import run_timed
from wdprobe.runs.rundir import RunDir, now
from wdprobe.runs.shards import Shard
from wdprobe.runs.stage import StageContext, require_done
from wdprobe.studies.pct.stages import PCTConfig, write_prompts

__all__ = ["run_pct", "pct_stage_names"]


def pct_stage_names() -> tuple[str, ...]:
    """The PCT stages in pipeline order, from the registry."""
    return REGISTRY.names("pct")


def run_pct(cfg: PCTConfig, *, stages: Sequence[str] | None = None, progress: bool = True, lm: LoadedModel | None = None,
            judge: Any = None, embedder: Any = None, report_dir: str | Path | None = None,
            log: Callable[[str], None] = print, restart: Sequence[str] = (), shard: str | None = None) -> RunDir:
    """Run (or resume) the PCT study; finished stages are skipped, except those in ``restart`` (their outputs
    are deleted first: use after changing a judge, embedder or code)."""
    names = pct_stage_names()
    shardable = [s.name for s in REGISTRY.stages("pct") if s.shardable]
    wanted = list(names if stages is None else stages)
    if shard is not None and (len(wanted) != 1 or wanted[0] not in shardable):
        raise InputError(f"--shard runs one of the stages {', '.join(shardable)} at a time (then `wdprobe merge RUN`)")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise InputError(f"unknown PCT stage(s) {unknown}; stages are {', '.join(names)}")
    unknown_restart = [s for s in restart if s not in names]
    if unknown_restart:
        raise InputError(f"cannot restart unknown stage {unknown_restart[0]!r}; stages are {', '.join(names)}")
    run = RunDir(cfg.out)
    run.check_or_start("pct", {k: v for k, v in cfg.to_json().items() if k not in ("out", "notes", "batch_size")})
    for stage in restart:
        run.reset_stage(stage, REGISTRY.get("pct", stage).outputs)
    holder: dict[str, LoadedModel | None] = {"lm": lm}

    def model() -> LoadedModel:
        if holder["lm"] is None:
            log(f"loading {cfg.model} ...")
            holder["lm"] = load_model(cfg.model)
        m = run.read_manifest()
        if "model" not in m:
            m["model"] = holder["lm"].manifest()
            run.write_manifest(m)
        return holder["lm"]

    if not (run.path / "prompts.csv").is_file():
        maybe_chat = cfg.chat == "chat" or (cfg.chat == "auto" and bool(INSTRUCT_NAME.search(cfg.model)))
        tok = model().tokenizer if maybe_chat else None
        use_chat = resolve_chat(cfg.chat, cfg.model, tok) if tok is not None else False
        write_prompts(run, cfg, tok, use_chat)
        run.update_stage("prompts", use_chat=use_chat, finished=now())
    use_chat = bool(run.stage_entry("prompts")["use_chat"])
    ctx = StageContext(run, cfg, model, progress=progress, shard=Shard.parse(shard), log=log,
                       extras={"use_chat": use_chat, "judge": judge, "embedder": embedder, "report_dir": report_dir,
                               "pct_dir": resolve_pct_dir(cfg.data) if "compass" in wanted else None,
                               "load_model": load_model})
    for name in wanted:
        stage = REGISTRY.get("pct", name)
        if name != "report" and run.is_done(name):
            log(f"{name}: done ({run.stage_entry(name).get('result', '')})")
            if name == "judge":
                ensure_judge_check(ctx)
            continue
        for needed in stage.requires:
            require_done(run, name, needed, f"wdprobe pct {needed} --out {run.path}")
        result, seconds, _ = run_timed(stage, ctx, stage.settings(cfg))
        if shard is not None:
            log(f"{name} shard {shard}: {result.output} ({seconds:.0f} s); when every shard is done: wdprobe merge {run.path}")
    run.unlock()
    return run
