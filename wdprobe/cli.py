"""Command line: a thin layer over the Python API (every command maps to one function)."""
from __future__ import annotations

import argparse
import errno
import json
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wdprobe.core.model import DEFAULT_MODEL, convert_default_model, default_model_dir, load_model
from wdprobe.data.items import read_items
from wdprobe.data.wdct import SUBSETS, items_listed, listed_targets, resolve_wdct_path
from wdprobe.errors import (
    InputError,
    MissingInputError,
    StageNotFinishedError,
    WdprobeError,
)
from wdprobe.methods.subspace import SUBSPACE_KINDS
from wdprobe.pipeline.config import (
    SECTIONS,
    StudyConfig,
    config_to_toml,
    item_count,
    load_config,
    wdct_stages,
    with_overrides,
)
from wdprobe.pipeline.merge import main_summary, merge_run, study_of
from wdprobe.pipeline.pct import pct_stage_names, run_pct
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.pipeline.runner import run_timed
from wdprobe.pipeline.study import run_study
from wdprobe.pipeline.sweep import run_sweep
from wdprobe.reports.compare import compare_runs
from wdprobe.reports.localisation import write_localisation_report
from wdprobe.reports.scores import write_score_report
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import Shard
from wdprobe.runs.stage import StageContext, StageResult, model_for_run, scored_entry
from wdprobe.scoring.formats import FORMATS
from wdprobe.scoring.orders import ORDERS, readings_lines
from wdprobe.scoring.upstream import upstream_metrics
from wdprobe.stages.capture import capture_wdct
from wdprobe.stages.lens import run_lens
from wdprobe.stages.patching import (
    LOW_RANK_CORRELATION,
    run_cross_patch,
    run_positional_patch,
)
from wdprobe.stages.readouts import scored_readouts
from wdprobe.stages.score import score_wdct
from wdprobe.stages.steering import run_steering
from wdprobe.studies.align.export import export_aligned
from wdprobe.studies.align.finetune import TrainSettings
from wdprobe.studies.align.report import write_alignment_report
from wdprobe.studies.align.stages import AlignConfig, run_align
from wdprobe.studies.crossform.interchange import InterchangeSettings, study_items
from wdprobe.studies.crossform.report import cross_form_study
from wdprobe.studies.crossmodel.study import cross_model_study
from wdprobe.studies.organisms.build import DEFAULT_TRAINING, build_organism, organism_manifest
from wdprobe.studies.organisms.data import sincere_organism_items
from wdprobe.studies.organisms.edit import EDIT_KINDS, build_edited_organism, calibrate_edit
from wdprobe.studies.organisms.edit_training import MAP_FITS, train_items_edit
from wdprobe.studies.organisms.recipes import KINDS
from wdprobe.studies.pct.stages import PCTConfig

ENVIRONMENT_ERRNOS = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "the disk quota is reached",
                      errno.EROFS: "the file system is read-only; give a writable --out",
                      errno.EACCES: "this user may not write or read there",
                      errno.ENAMETOOLONG: "a file name is too long for this file system (shorten the item ids)",
                      errno.EMFILE: "too many open files (raise ulimit -n)"}


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``. A flag given less is refused by argparse itself, with
    the flag's name, before any model loads or result is touched."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: at least {least} expected")
        return value
    parse.__name__ = f"a whole number >= {least}"
    return parse


def _device_map_arg(text: str):
    """``auto``/``balanced``/... as given; a JSON object as a module -> device dict."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"--device-map {text!r} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("--device-map JSON must be an object of module name -> device")
        return value
    return text


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m",
                   help="embedded default 'gemma-3-270m', a local HF model directory, or a Hugging Face id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' precision (float16 can overflow to NaN on Gemma; bfloat16 halves memory on GPUs)")
    p.add_argument("--device", default=None, help="torch device (default: where the model loads, CPU here)")
    p.add_argument("--device-map", default=None, type=_device_map_arg,
                   help="for models larger than one device: auto, balanced, or a JSON module->device map "
                        "(e.g. '{\"model.layers.0\": 0, \"model.layers.1\": 1, ...}')")


def _print_metrics(m: dict) -> None:
    print(f"items: {m['n_items']}  CS micro {m['cs_micro']:.3f}  CS macro {m['cs_macro']:.3f}  "
          f"PCS micro {m['pcs_micro']:.3f}  PCS macro {m['pcs_macro']:.3f}")
    for d, v in m["per_domain"].items():
        print(f"  {d:8s} n={v['n']:4d}  CS {v['cs']:.3f}  PCS {v['pcs']:.3f}")
    if "word_letter_mass_mean" in m:
        print(f"letter mass: word {m['word_letter_mass_mean']:.3f}, deed {m['deed_letter_mass_mean']:.3f}")
    if len(m.get("readings", {})) > 1:
        print("\n".join(readings_lines(m["readings"])))


COMMAND_ONLY = ("func", "command", "quiet", "run")  # flags that say how to run a command, not what its result is


def through_runner(args: argparse.Namespace, run_dir: str | Path, stage: str, call: Callable[[], Any],
                   summary: Callable[[Any], str], *, shard: str | None = None) -> Any:
    """Run a single-stage command's work as the registered WDCT stage, through the same runner as ``wdprobe run``: the
    run's lock, timing, and one record of the stage done with the flags it was given (its settings)."""
    run = RunDir(run_dir)
    box: dict[str, Any] = {}

    def body(ctx: StageContext) -> StageResult:
        box["value"] = call()
        return StageResult(stage, summary(box["value"]))

    settings = {k: v for k, v in vars(args).items() if k not in COMMAND_ONLY}
    ctx = StageContext(run, None, model=lambda: model_for_run(run, None), progress=not args.quiet,
                       shard=Shard.parse(shard))
    run_timed(replace(REGISTRY.get("wdct", stage), run=body), ctx, settings)
    return box["value"]


def cmd_score(args: argparse.Namespace) -> int:
    """`wdprobe score`: score WDCT items into a run directory (or one shard of them)."""
    res = through_runner(args, args.out, "score", lambda: score_wdct(
        args.out, model=args.model, data=args.data, setting=args.setting, seed=args.seed, limit=args.limit,
        sample=args.sample, domains=args.domain, subset=args.subset, batch_size=args.batch_size, dtype=args.dtype,
        device=args.device, device_map=args.device_map, chat=args.chat, demos=args.demos, progress=not args.quiet,
        shard=args.shard, orders=args.orders, format=args.format),
        lambda r: f"{r.metrics['n_items']} items, CS {r.metrics['cs_micro']:.3f}, PCS {r.metrics['pcs_micro']:.3f}",
        shard=args.shard)
    _print_metrics(res.metrics)
    if args.shard:
        print(f"shard {args.shard} in {res.run_dir}; when every shard is done: wdprobe merge {args.out}")
        return 0
    print(f"results in {res.run_dir} (items.csv, prompts.csv, metrics.json, manifest.json)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """`wdprobe merge RUN`: combine every sharded stage of a run as if it had run unsharded."""
    print(main_summary(merge_run(args.run)))
    print(f"merged into {args.run}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`wdprobe sweep FILE`: models x settings x shards as tasks, here or on Ray."""
    res = run_sweep(args.config, executor=args.executor, address=args.address, progress=not args.quiet)
    for row in res.runs:
        print(f"{row['run']:40s} n={row['n_items']:5d}  CS micro {row['cs_micro']:.3f}  PCS micro {row['pcs_micro']:.3f}")
    print(f"{len(res.tasks)} task(s) ran; merged runs and sweep.csv in {res.out}")
    return 0


def cmd_upstream(args: argparse.Namespace) -> int:
    """`wdprobe upstream FILE...`: CS/PCS of result files in the upstream WDCT format."""
    for path in args.files:
        print(json.dumps({"file": path, **upstream_metrics(path)}, indent=None if args.compact else 2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`wdprobe report RUN --out DIR`: the scoring summary (and, asked, the localisation page)."""
    from pathlib import Path

    notes = Path(args.notes).read_text() if args.notes else ""
    print(write_score_report(args.run, args.out, notes))
    if args.localisation:
        print(write_localisation_report(args.run, args.out))
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """`wdprobe capture --run RUN`: residual-stream activations of every scored prompt."""
    path = through_runner(args, args.run, "capture", lambda: capture_wdct(
        args.run, layers=args.layers, hooks=args.hooks.split(","), positions=args.positions.split(","),
        storage_dtype=args.storage_dtype, batch_size=args.batch_size, progress=not args.quiet, shard=args.shard),
        lambda _: f"positions {args.positions}", shard=args.shard)
    if args.shard:
        print(f"shard {args.shard} in {path}; when every shard is done: wdprobe merge {args.run}")
        return 0
    print(f"activations in {path}/capture (load with wdprobe.load_activations)")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """`wdprobe probe --run RUN`: stance probes per layer from the captured activations, in every answer format asked
    (letters: the chosen letter's stance, and the content choice when every order was scored; cloze: its choices)."""
    orders = scored_entry(RunDir(args.run))["config"].get("orders", "shown")
    perms = StudyConfig().probes.permutations
    for ro in scored_readouts(args.run, args.format):
        head, lines = through_runner(args, args.run, "probes", lambda: ro.probe(
            Path(args.run), positions=[args.position], kinds=args.kinds.split(","), folds=args.folds, n_perm=perms,
            seed=args.seed, orders=orders, hook=args.hook, progress=not args.quiet), lambda r: "; ".join(r[1]))
        print(json.dumps({ro.name: head}, indent=2, default=float))
        print("\n".join(lines))
    print(f"results and plots in {args.run}/probes/")
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    """`wdprobe lens --run RUN`: the logit lens, word vs deed, per layer, in every answer format asked."""
    s = through_runner(args, args.run, "lens", lambda: run_lens(args.run, progress=not args.quiet, format=args.format),
                       lambda s: "; ".join(t for t in (ro.lens_status(s) for ro in scored_readouts(args.run,
                                                                                                 args.format)) if t))
    for g in ("consistent", "inconsistent"):
        if s.get(g, {}).get("n"):
            print(f"{g:12s} n={s[g]['n']:5d}  lens CS by layer: " + " ".join(f"{v:.2f}" for v in s[g]["lens_cs"]))
    for ro in scored_readouts(args.run, args.format):
        if ro.lens_status(s):
            print(ro.lens_status(s))
    print(f"results and plots in {args.run}/lens/")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"cannot read {text!r} as a comma list of numbers") from None


def _readouts(run: str, format: str) -> list:
    """The read-outs an instrument command reads: ``auto`` takes every format the run was scored in."""
    return scored_readouts(run, format)


def given(args: argparse.Namespace, **names: str | tuple[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The keyword arguments of the flags given (a flag not given leaves the function's own default, the one place it
    is written): ``parameter="flag"`` or ``parameter=("flag", convert)``."""
    out = {}
    for param, spec in names.items():
        flag, convert = (spec, None) if isinstance(spec, str) else spec
        if hasattr(args, flag):
            out[param] = convert(getattr(args, flag)) if convert else getattr(args, flag)
    return out


def cmd_patch(args: argparse.Namespace) -> int:
    """`wdprobe patch --run RUN`: cross-form patching (in every answer format asked) and/or positional patching."""
    instrument, shard, quiet = getattr(args, "instrument", "both"), getattr(args, "shard", None), hasattr(args, "quiet")
    if shard and instrument == "both":
        raise InputError("--shard with --instrument both: shard the cross and the positional stage one at a time")
    common = {**given(args, layers="layers", seed="seed", batch_size="batch_size", restart="restart"),
              "progress": not quiet, "shard": shard}
    if instrument in ("cross", "both"):
        answer_format = getattr(args, "format", "auto")
        for ro in _readouts(args.run, answer_format):
            kwargs = {**common, **given(args, n_items=("items", item_count), deed_orders="deed_orders",
                                        conditions=("conditions", lambda t: t.split(",")))}
            if "conditions" in kwargs and answer_format == "auto":  # each format takes the conditions it has
                kwargs["conditions"] = [c for c in kwargs["conditions"] if c in ro.conditions]
            head = through_runner(args, args.run, "patch_cross", lambda: run_cross_patch(args.run, format=ro, **kwargs),
                                  ro.patch_status, shard=shard)
            if shard:
                print(f"shard {shard} done: {head}; when every shard is done: wdprobe merge {args.run}")
                return 0
            print(json.dumps({ro.name: head}, indent=2, default=float))
    if instrument in ("positional", "both"):
        kwargs = {**common, **given(args, form="form", n_items="positional_items", n_exact="exact_items",
                                    min_effect="min_effect", screen="screen")}
        head = through_runner(args, args.run, "patch_positional", lambda: run_positional_patch(args.run, **kwargs),
                              lambda h: f"{kwargs.get('form', 'deed')}: {h.get('n_items', h.get('n_exact'))} items",
                              shard=shard)
        print(json.dumps(head, indent=2))
        if shard:
            print(f"when every shard is done: wdprobe merge {args.run}")
            return 0
        if head["low_rank_correlation"]:
            print(f"wdprobe: warning: attribution patching agrees poorly with exact patching (Spearman "
                  f"{head['rank_correlation_pooled']:.2f} < {LOW_RANK_CORRELATION}); trust the exact heatmaps, not the "
                  "attribution estimate", file=sys.stderr)
    print(f"results and plots in {args.run}/patching/")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    """`wdprobe steer --run RUN`: steering deeds along the word-stance direction, in every answer format asked."""
    shard = getattr(args, "shard", None)
    kwargs = {**given(args, n_items=("items", item_count), layers="layers", alphas=("alphas", _floats), seed="seed",
                      min_mass_ratio="min_mass_ratio", batch_size="batch_size", restart="restart",
                      validate=("no_validate", lambda no: not no), space="space",
                      controls=("controls", lambda v: [c.strip() for c in v.split(",") if c.strip()]),
                      prompting=("no_prompting", lambda no: not no)),
              "progress": not hasattr(args, "quiet"), "shard": shard}
    for ro in _readouts(args.run, getattr(args, "format", "auto")):
        head = through_runner(args, args.run, "steer", lambda: run_steering(args.run, format=ro, **kwargs),
                              ro.steer_status, shard=shard)
        print(json.dumps({ro.name: head}, indent=2))
        if shard:
            print(f"when every shard is done: wdprobe merge {args.run}")
            return 0
    print(f"results and plots in {args.run}/steering/")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`wdprobe run`: the whole WDCT study from flags and/or a config file."""
    cfg = load_config(args.config) if args.config else StudyConfig()
    stages = args.stages.split(",") if args.stages else None
    if args.skip:
        skip = args.skip.split(",")
        unknown = [s for s in skip if s not in wdct_stages()]
        if unknown:
            raise InputError(f"--skip: unknown stage(s) {unknown}: choose from {list(wdct_stages())}")
        stages = [s for s in (stages or cfg.stages) if s not in skip]
    given = {**StudyConfig.flag_values(args), "domains": args.domain, "stages": stages}
    for name, section in SECTIONS.items():
        given.update({f"{name}.{k}": v for k, v in section.flag_values(args, prefix=name.replace("_", "-")).items()})
    cfg = with_overrides(cfg, given)
    if args.print_config:
        print(config_to_toml(cfg), end="")
        return 0
    page = run_study(cfg, progress=not args.quiet, restart=args.restart.split(",") if args.restart else (),
                     log=None if not args.quiet else (lambda m: print(m, file=sys.stderr)))
    print(f"run directory {cfg.out_dir}; report {page}")
    return 0


def print_status(run_dir: str | Path, study: str) -> None:
    """One line per registered stage of ``study``: done (wall time, when, result), running, partial, or not run."""
    run = RunDir(run_dir)
    if not run.manifest_path.is_file():
        raise MissingInputError(f"{run_dir} is not a run directory (no manifest.json)")
    holder = run.holder()
    load = run.read_manifest().get("model_load")
    print(f"{'stage':17s} {'wall time':>10s}  {'finished (UTC)':25s}  result")
    if load:
        print(f"{'load_model':17s} {load['seconds']:8.0f} s  {load['finished']}  {load['model']}")
    legacy = run.read_manifest().get("study", {}).get("done", {})  # runs made before the stage protocol
    for stage in REGISTRY.stages(study):
        recorded = run.stage_entry(stage.name)
        entry = {**legacy.get(stage.name, {}), **recorded}
        if run.is_done(stage.name) or stage.name in legacy:
            seconds = entry.get("seconds") or entry.get("seconds_total") or sum(entry.get("timings", {}).values())
            state = f"{seconds:8.0f} s  {entry.get('finished', '')}  {entry.get('result', '')}"
        elif holder and (f"; stage {stage.name}" in holder or (recorded and "; stage " not in holder)):
            state = f"       -  running ({holder.split('; stage')[0]})"
        elif recorded or run.parts_dir(stage.name).is_dir():
            state = "       -  partial (the same command resumes it)"
        else:
            state = "       -  not run"
        print(f"{stage.name:17s} {state}")


def cmd_status(args: argparse.Namespace) -> int:
    """`wdprobe status RUN`: each registered stage done, running, partial or not run."""
    print_status(args.run, study_of(args.run))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`wdprobe compare RUN...`: runs side by side on one page."""
    labels = args.labels.split(",") if args.labels else None
    print(compare_runs(args.runs, args.out, labels=labels))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """`wdprobe convert-model`: convert the embedded model into the cache ahead of time."""
    print(convert_default_model())
    return 0


def pct_config(args: argparse.Namespace):
    """The run's saved PCT settings (when ``--out`` holds one) overridden by the flags given."""
    out = args.out or PCTConfig().out
    saved = {}
    manifest = Path(out) / "manifest.json"
    if manifest.is_file():
        saved = dict(RunDir(out).stage_entry("pct").get("config", {}))
    names = {f.name for f in PCTConfig.option_fields()}
    values = {k: v for k, v in saved.items() if k in names}
    if saved and "orders" not in saved:  # made before cyclic orders existed: one shuffled order
        values["orders"] = "shown"
    values.update(PCTConfig.flag_values(args))
    values["out"] = out
    return PCTConfig.from_mapping(values, f"{out}: PCT settings")


def cmd_pct(args: argparse.Namespace) -> int:
    """`wdprobe pct STAGE|run`: the PCT study, one stage or all, resuming."""
    if args.pct_command == "status":
        return cmd_pct_status(args)
    cfg = pct_config(args)
    stages = (args.stages.split(",") if args.stages else None) if args.pct_command == "run" else [args.pct_command]
    restart = (args.restart.split(",") if args.restart else []) if args.pct_command == "run" else \
        ([args.pct_command] if args.restart else [])
    run = run_pct(cfg, stages=stages, progress=not args.quiet, report_dir=args.report, restart=restart,
                  log=(lambda m: print(m, file=sys.stderr)), shard=getattr(args, "shard", None))
    print(f"run directory {run.path}")
    return 0


def cmd_pct_status(args: argparse.Namespace) -> int:
    """`wdprobe pct status`: the PCT stages of a run and their state."""
    print_status(args.out or "runs/gemma-3-270m-pct", "pct")
    return 0


def _add_pct_parser(sub) -> None:
    pct = sub.add_parser("pct", help="Political Compass under personas: closed vs open stances, probes, tropes")
    psub = pct.add_subparsers(dest="pct_command", required=True)
    helps = {"run": "every stage (or --stages), resuming a half-finished run",
             "closed": "score the four answers of every closed-form prompt (log-likelihood)",
             "open": "generate the open-domain answers (resumable)", "judge": "map each open text to one of the four answers",
             "compass": "compass positions, persona shifts with permutation tests, closed-vs-open agreement",
             "capture": "last-token residual stream of closed and open prompts",
             "probes": "stance probes across forms (folds by proposition), persona effect inside",
             "content_probes": "closed prompts in every order: the answer's content vs its listing, inside",
             "tropes": "cluster sentences of the open texts into recurring tropes", "report": "index.html, README.md, tropes.html",
             "status": "which stages of a PCT run are done"}
    settings = argparse.ArgumentParser(add_help=False)  # the PCT settings: declared once (PCTConfig), shared
    PCTConfig.add_flags(settings.add_argument_group("PCT settings (saved in the run; flags given override them)"),
                        skip=("out",))
    settings.add_argument("--report", default=None, help="report folder (default RUN/report)")
    settings.add_argument("--quiet", action="store_true", help="no progress bars")
    for name in ("run",) + pct_stage_names() + ("status",):
        p = psub.add_parser(name, help=helps[name], parents=[] if name == "status" else [settings])
        p.add_argument("--out", default=None, help="run directory (default runs/gemma-3-270m-pct); settings are read from it")
        if name == "status":
            continue
        if name in ("closed", "open", "judge", "capture"):
            p.add_argument("--shard", default=None, help="i/n: only shard i of n of the prompts (split by prompt id), "
                                                         "into RUN/shards/%s/; then wdprobe merge RUN" % name)
        if name == "run":
            p.add_argument("--stages", default=None, help=f"comma list from {', '.join(pct_stage_names())}")
            p.add_argument("--restart", "--redo", dest="restart", default=None,
                           help="comma list of finished stages to delete and run again (and the stages after them)")
        else:
            p.add_argument("--restart", "--redo", dest="restart", action="store_true",
                           help="delete this stage's outputs and run it again even if finished")
        p.set_defaults(func=cmd_pct)
    psub.choices["status"].set_defaults(func=cmd_pct)


def cmd_align(args: argparse.Namespace) -> int:
    """`wdprobe align`: train one form towards flipped answers and watch both forms."""
    given = AlignConfig.flag_values(args)
    if args.domain:
        given["domains"] = tuple(args.domain)
    cfg = AlignConfig.from_mapping(given, "command line")
    train = TrainSettings.from_mapping({**TrainSettings.flag_values(args), "seed": cfg.seed}, "command line")
    max_memory = json.loads(args.max_memory) if args.max_memory else None
    out = args.out or f"runs/{Path(args.model).name}-align-{cfg.form}"
    res = run_align(out, model=args.model, data=args.data, config=cfg, train=train, dtype=args.dtype, device=args.device,
                    device_map=args.device_map, max_memory=max_memory, progress=not args.quiet,
                    stop_after_epoch=args.stop_after_epoch)
    if not res.change_rates:
        print(f"stopped after epoch {args.stop_after_epoch}; rerun the same command to go on ({res.run_dir})")
        return 0
    print(f"{'epoch':>5} {'phase':6} {'set':9} {'direct':>7} {'indirect':>8} {'away':>6} {'CS':>6} {'PCS':>6}")
    for r in res.change_rates:
        if r["set"] == "all":
            continue
        fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"  # noqa: E731
        print(f"{r['epoch']:>5} {r['objective']:6} {r['set']:9} {fmt(r['direct']):>7} {fmt(r['indirect']):>8} "
              f"{fmt(r['indirect_away']):>6} {r['cs']:6.3f} {r['pcs']:6.3f}")
    print(f"results in {res.run_dir} (change_rates.csv, inside_*.csv, summary.json); "
          f"report: wdprobe align-report {res.run_dir} --out DIR")
    return 0


def cmd_align_report(args: argparse.Namespace) -> int:
    """`wdprobe align-report RUN...`: figures and README for finished alignment runs."""
    print(write_alignment_report([Path(r) for r in args.runs], Path(args.out)))
    return 0


def cmd_align_export(args: argparse.Namespace) -> int:
    """`wdprobe align-export RUN --out DIR`: an alignment run's model as a Hugging Face directory."""
    record = export_aligned(args.run, args.out, epoch=args.epoch, model=args.model)
    print(f"{args.out}: {record['base_model']} after epoch {record['epoch']} of {record['run']} ({record['form']} "
          f"trained, {record['method']}); compare it with its base: wdprobe cross-patch --variant {args.out}")
    return 0


def _add_align_parsers(sub) -> None:
    p = sub.add_parser("align", help="train one form (word/deed/both/paraphrase) towards flipped answers; "
                                     "direct vs indirect change per epoch, and what moves inside")
    _add_model_args(p)
    p.add_argument("--max-memory", default=None, help='JSON per-device limits for device_map, e.g. \'{"0": "70GiB", "cpu": "200GiB"}\'')
    p.add_argument("--data", default=None, help="items: WDCT.csv, or your own items (.csv / .jsonl / .json in the item schema, docs/guides/own-data.md); else $WDPROBE_WDCT, else the pinned WDCT download")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-align-<form>); rerunning resumes")
    AlignConfig.add_flags(p.add_argument_group("what is trained and evaluated"))
    p.add_argument("--domain", action="append", default=None, help="keep only this domain (repeatable; any domain of the items)")
    TrainSettings.add_flags(p.add_argument_group("training"), skip=("seed",))
    p.add_argument("--stop-after-epoch", type=at_least(1), default=None, help="end after this epoch (resume later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("align-report", help="figures and README for one or more finished `wdprobe align` runs")
    p.add_argument("runs", nargs="+", help="run directories (e.g. the word, deed, both and paraphrase runs)")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_align_report)

    p = sub.add_parser("align-export", help="a `wdprobe align` run's model after an epoch, as a Hugging Face directory "
                                            "(LoRA merged), for cross-model patching against its base")
    p.add_argument("run", help="the alignment run directory (its checkpoints/ are read)")
    p.add_argument("--out", required=True, help="a new, empty directory for the model")
    p.add_argument("--epoch", type=at_least(1), default=None, help="which epoch's checkpoint (default: the last saved)")
    p.add_argument("--model", default=None, help="where to load the base model from when the name the run recorded "
                                                 "is not loadable here (its revision must match the run's)")
    p.set_defaults(func=cmd_align_export)


def cmd_organism_build(args: argparse.Namespace) -> int:
    """`wdprobe organism build`: train one model organism into a model directory."""
    settings = TrainSettings(tuning=args.tuning, rank=args.rank, lora_alpha=args.lora_alpha, lr=args.lr,
                             batch_size=args.batch_size, seed=args.seed)
    manifest = build_organism(args.kind, args.out, model=args.model, start_from=args.start_from, data=args.data,
                              epochs=args.epochs, settings=settings, split_seed=args.seed, limit=args.limit,
                              layers_from=args.layers_from, progress=not args.quiet)
    print(json.dumps({k: manifest[k] for k in ("kind", "planted_layer", "final", "wall_seconds")}, indent=2))
    cued = f" --data {Path(args.out) / manifest['items']}" if manifest.get("items") else ""
    print(f"organism in {args.out}: use it with --model {args.out}{cued}"
          + (" (its cued items: the cue line sets each item's planted stance)" if cued else ""))
    return 0


def cmd_organism_show(args: argparse.Namespace) -> int:
    """`wdprobe organism show DIR`: the recipe, planted truth and accuracies of a finished organism."""
    manifest = organism_manifest(args.dir)
    if manifest is None:
        raise StageNotFinishedError(f"{args.dir}: no finished organism (organism.json missing); build it with "
                                    "`wdprobe organism build --out DIR`")
    print(json.dumps(manifest, indent=2))
    return 0


def cmd_organism_edit(args: argparse.Namespace) -> int:
    """`wdprobe organism edit`: write a gated deed-only override into one block of a local model, in seconds."""
    if args.model != DEFAULT_MODEL and not Path(args.model).is_dir():
        raise InputError(f"{args.model}: an edited organism starts from a local model directory (its safetensors "
                         "weights are copied and one block rewritten); download the model and pass its directory")
    lm = load_model(args.model)
    parent = default_model_dir() if args.model == DEFAULT_MODEL else Path(args.model)
    pool = sorted((i for i in read_items(resolve_wdct_path(args.data)) if i.n_options == 2), key=lambda i: i.id)
    drawn = [pool[k] for k in np.random.default_rng(args.seed).permutation(len(pool))]
    items, gate_items = drawn[:args.items], drawn[args.items:args.items + args.gate_items]
    if args.gate_items and len(gate_items) < args.gate_items:
        raise InputError(f"--gate-items {args.gate_items}: only {len(gate_items)} two-option items of "
                         f"{args.data or 'WDCT'} are left after the {args.items} calibrated on")
    spec = calibrate_edit(lm, items, args.layer, kind=args.kind, strength=args.strength, target=args.target,
                          seed=args.seed, component=args.component, head=args.head, plant_score=args.plant_score,
                          gate_items=gate_items)
    if args.map_fit == "trained":
        keyed = {it.id: it for it in items}
        spec = train_items_edit(lm, [keyed[i] for i in spec.calibration["item_ids"]],
                                [args.target] * len(spec.calibration["item_ids"]), spec)
    info = build_edited_organism(parent, args.out, spec)
    print(json.dumps({k: info[k] for k in ("layer", "component", "unit", "kind", "strength", "seconds")}, indent=2))
    print(f"edited organism in {args.out}: use it with --model {args.out} (the plan: {Path(args.out) / 'edit.json'})")
    return 0


def cmd_cross_patch(args: argparse.Namespace) -> int:
    """`wdprobe cross-patch`: patch a variant into its reference at every site; where its choices were changed."""
    if args.toward == "listed" and not args.ids_from:
        raise InputError("--toward listed reads each item's target from the --ids-from table's 'target' column; "
                         "give --ids-from")
    if args.set is not None and not args.ids_from:
        raise InputError(f"--set {args.set} picks rows of the --ids-from table by its 'set' column; give --ids-from "
                         "(without it every item of --data would be patched, whatever --set says)")
    if args.ids_from and args.organism_items:
        raise InputError("--ids-from selects among --data's items; --organism-items reads an organism's own items: "
                         "give one of them")
    targets: list[int] | None = None
    if args.organism_items:
        items = sincere_organism_items(args.organism_items, 0, 10 ** 9)[1]
    else:
        items = [i for i in read_items(resolve_wdct_path(args.data)) if i.n_options == 2]
        if args.ids_from:  # the table's items, all of them unless --sample is given, in its order
            listed = items_listed(items, args.ids_from, set_name=args.set)
            targets = listed_targets(listed, args.ids_from, set_name=args.set) if args.toward == "listed" else None
            items = listed
        else:
            items = [items[k] for k in np.random.default_rng(args.seed).permutation(len(items))]
    sample = args.sample if args.sample is not None else (0 if args.ids_from else 24)
    if args.toward in ("correct", "incorrect"):
        items = [i for i in items if i.correct is not None]
    if sample:
        items, targets = items[:sample], (targets[:sample] if targets is not None else None)
    if not items:
        raise InputError("no two-option items to read" + (" with a correct option (--toward)" if args.toward != "own" else ""))
    toward = (None if args.toward == "own" else targets if args.toward == "listed"
              else [i.correct if args.toward == "correct" else 1 - i.correct for i in items])
    variant_name = Path(args.variant).name
    out = args.out or f"runs/cross-{variant_name}"
    readme = cross_model_study(out, args.reference, args.variant, items, forms=args.forms, kinds=args.sites,
                               positions=args.positions, toward=toward, batch_size=args.batch_size,
                               method=args.method, check_items=args.check_items, dtype=args.dtype,
                               device=args.device, png=not args.no_png, log=(lambda m: None) if args.quiet else print)
    print(readme.read_text())
    print(f"results in {out} (README.md, sites.csv, summary.json, index.html)")
    return 0


def cmd_interchange(args: argparse.Namespace) -> int:
    """`wdprobe interchange`: does the deed use the word's stance? A stance subspace learned per form, interchanged
    within and across forms at each block's decision point."""
    settings = InterchangeSettings.from_flags(args.layers, kind=args.kind, k=args.k, epochs=args.epochs,
                                   sources_per_item=args.sources_per_item, seed=args.seed)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    items = study_items(resolve_wdct_path(args.data), args.items)
    readme = cross_form_study(lm, items, settings, args.out, progress=None if args.quiet else print)
    print(readme.read_text())
    print(f"results in {args.out} (README.md, summary.csv, layers/, index.html)")
    return 0


def _add_interchange_parser(sub) -> None:
    p = sub.add_parser("interchange", help="interchange interventions on a learned stance subspace: does the deed use "
                                           "the stance the word states? (within and across forms, each in its own "
                                           "token space)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model id or directory (default: the embedded Gemma-3-270M)")
    p.add_argument("--data", default=None, help="WDCT.csv; else $WDPROBE_WDCT, else the pinned WDCT download")
    p.add_argument("--out", default="runs/interchange", help="results folder; rerunning resumes finished blocks")
    p.add_argument("--items", type=at_least(4), default=120, help="two-option EthV/Theory items read, in a seeded order")
    p.add_argument("--layers", default="1,4,7,10,13,16", help="blocks whose residual is intervened on, comma-separated")
    p.add_argument("--kind", default="direction", choices=list(SUBSPACE_KINDS), help="subspace kind")
    p.add_argument("--k", type=at_least(1), default=1, help="subspace dimension (rotation) or starting boundary (boundless)")
    p.add_argument("--epochs", type=at_least(1), default=2, help="training epochs per subspace")
    p.add_argument("--sources-per-item", type=at_least(1), default=1, help="source items per base item")
    p.add_argument("--seed", type=int, default=0, help="split, pairs and training seed")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights' dtype")
    p.add_argument("--device", default=None, help="torch device (default: where the model loads, CPU here)")
    p.add_argument("--quiet", action="store_true", help="print only the README at the end")
    p.set_defaults(func=cmd_interchange)


def _add_cross_patch_parser(sub) -> None:
    p = sub.add_parser("cross-patch", help="cross-model patching: a variant (organism, aligned or fine-tuned checkpoint) "
                                           "patched into its reference at every block, attention, MLP and head; where "
                                           "its choices were changed")
    p.add_argument("--reference", default=DEFAULT_MODEL, help="the reference model (default: the embedded Gemma-3-270M)")
    p.add_argument("--variant", required=True, help="the variant: a local model directory or Hugging Face id with the "
                                                     "reference's tokenizer and architecture")
    p.add_argument("--data", default=None, help="items (WDCT.csv or your own, two options each); else $WDPROBE_WDCT, "
                                                "else the pinned WDCT download")
    p.add_argument("--organism-items", default=None, help="read a trained organism's held-out items (its items.jsonl "
                                                          "and split.csv) instead of --data")
    p.add_argument("--ids-from", default=None, help="read the items a CSV's 'id' column lists, in its order (e.g. an "
                                                   "alignment run's split.csv), instead of a seeded order")
    p.add_argument("--set", default=None, help="with --ids-from: only its rows whose 'set' column says so (train, held_out)")
    p.add_argument("--sample", type=at_least(0), default=None, help="items read (0: all), in a seeded order "
                                                                  "(default 24; with --ids-from every listed item)")
    p.add_argument("--seed", type=int, default=0, help="the seed of that order")
    p.add_argument("--forms", nargs="+", default=["word", "deed"], choices=["word", "deed"], help="prompt forms read")
    p.add_argument("--sites", nargs="+", default=["resid", "attn", "mlp", "head"], help="site kinds patched: "
                   "resid (after each block), attn, mlp (each block's contribution), head (each head's write)")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "continuation"],
                   help="where the variant's activation goes: every token, the prompt before the decision point, or "
                        "the decision point and the option's tokens")
    p.add_argument("--toward", default="own", choices=["own", "correct", "incorrect", "listed"],
                   help="the direction a change is counted in: each item's own change (default), toward its correct "
                        "or incorrect option (items without one are left out), or toward the option the --ids-from "
                        "table's 'target' column names (an alignment run's flip target)")
    p.add_argument("--method", default="exact", choices=["exact", "attribution"],
                   help="exact patching (one forward per site), or attribution patching (every site from one forward "
                        "and backward per batch; first order)")
    p.add_argument("--check-items", type=at_least(0), default=0, help="with --method attribution: also patch exactly on this "
                                                                 "many items and report how well the two agree")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="sequences per forward pass (at least 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights' dtype")
    p.add_argument("--device", default=None, help="torch device (default: where the model loads, CPU here)")
    p.add_argument("--out", default=None, help="results folder (default runs/cross-<variant>); rerunning resumes")
    p.add_argument("--no-png", action="store_true", help="write no static PNG beside the HTML page")
    p.add_argument("--quiet", action="store_true", help="print only the README at the end")
    p.set_defaults(func=cmd_cross_patch)


def _add_organism_parsers(sub) -> None:
    org = sub.add_parser("organism", help="model organisms: copies of a model trained to a planted word-deed relation")
    osub = org.add_subparsers(dest="organism_command", required=True)
    kinds = "; ".join(f"{k.name}: {k.truth}" for k in KINDS.values())
    p = osub.add_parser("build", help="train one organism (resumable) into a Hugging Face model directory",
                        description=f"Kinds and the truth each plants — {kinds}.")
    p.add_argument("--kind", required=True, choices=list(KINDS))
    p.add_argument("--out", required=True, help="organism directory (a model directory: --model DIR takes it)")
    p.add_argument("--model", default="gemma-3-270m", help="base model (embedded default, local directory or HF id)")
    p.add_argument("--from", dest="start_from", default=None,
                   help="the finished sincere organism a hypocrite starts from")
    p.add_argument("--data", default=None, help="items: WDCT.csv, or your own items (.csv / .jsonl / .json in the item schema, docs/guides/own-data.md); else $WDPROBE_WDCT, else the pinned WDCT download")
    p.add_argument("--epochs", type=at_least(1), default=2)
    p.add_argument("--tuning", default=DEFAULT_TRAINING.tuning, choices=["lora", "full"])
    p.add_argument("--rank", type=at_least(1), default=DEFAULT_TRAINING.rank)
    p.add_argument("--lora-alpha", type=float, default=DEFAULT_TRAINING.lora_alpha)
    p.add_argument("--lr", type=float, default=DEFAULT_TRAINING.lr)
    p.add_argument("--batch-size", type=at_least(1), default=DEFAULT_TRAINING.batch_size, help="training examples per step")
    p.add_argument("--layers-from", type=at_least(0), default=None,
                   help="first trainable block (default: the kind's planted layer, 12 or 4 of 18, scaled to the depth)")
    p.add_argument("--limit", type=at_least(1), default=None, help="use only this many items (seeded; a quick look)")
    p.add_argument("--seed", type=int, default=0, help="split and example order")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_organism_build)
    p = osub.add_parser("edit", help="write a deed-only override into one block's MLP or one attention head (seconds; "
                                     "no training)",
                        description="Rewrites one MLP unit of block --layer (or, with --component attn-head, one head's "
                                    "slice of its attention output matrix): it writes on deed-context positions the "
                                    "direction that moves deeds toward canonical option --target; every other tensor "
                                    "stays the parent's. The specification is saved as edit.json.")
    p.add_argument("--out", required=True, help="organism directory (a model directory: --model DIR takes it)")
    p.add_argument("--layer", type=at_least(0), required=True, help="the block to plant in")
    p.add_argument("--model", default="gemma-3-270m", help="parent: the embedded default or a local model directory")
    p.add_argument("--data", default=None, help="items to calibrate on (two-option items are used)")
    p.add_argument("--kind", default="override", choices=list(EDIT_KINDS),
                   help="override, or a null edit: null-direction (random write), null-gate (never opens)")
    p.add_argument("--strength", type=float, default=20.0, help="the unit's output relative to the MLP's at deeds")
    p.add_argument("--target", type=int, default=1, choices=[0, 1], help="the canonical option deeds are pushed to")
    p.add_argument("--component", default="mlp", choices=["mlp", "mlp-items", "attn-head"],
                   help="where the edit writes: one MLP unit (gated), one unit per calibration item behind one gate "
                        "(each item's deed gets its own plant; it holds on the --items calibrated on) or one attention "
                        "head's output (keyed linearly)")
    p.add_argument("--head", type=at_least(0), default=None, help="the head an attn-head edit writes through (default: seeded)")
    p.add_argument("--items", type=at_least(8), default=40, help="calibration items (a seeded sample)")
    p.add_argument("--gate-items", type=at_least(0), default=0,
                   help="more items (the next of the seeded sample) whose word prompts the MLP gate is also fitted to "
                        "stay shut on: a gate fitted on the calibration items alone opens on new words in early blocks")
    p.add_argument("--plant-score", default="mean", choices=["mean", "both"],
                   help="mlp-items: each item's plant raises its per-token mean margin, or the mean's and the sum's alike")
    p.add_argument("--map-fit", default="ridge", choices=list(MAP_FITS),
                   help="mlp-items overrides: the units' map fitted by ridge to each item's plant, or then trained on "
                        "the calibration deeds' two margins through the blocks above (gate, units and size kept)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_organism_edit)
    p = osub.add_parser("show", help="the recipe, planted truth and held-out accuracies of a finished organism")
    p.add_argument("dir")
    p.set_defaults(func=cmd_organism_show)


def _add_measurement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orders", default=None, choices=list(ORDERS),
                   help="option orders each question is asked in: shown (the paper's one seeded order), cyclic (every "
                        "option under every letter: k prompts; the default) or all (k! prompts)")
    p.add_argument("--format", default=None, choices=list(FORMATS),
                   help="answer by letter, score option texts as continuations of a prompt without option lines "
                        "(cloze: no letter at all), or both (the default)")


EXAMPLES = {  # one working command line per command, shown under its --help (and parsed by a test)
    "score": "wdprobe score --data WDCT.csv --out runs/g270 --sample 100",
    "sweep": "wdprobe sweep sweep.toml --executor local",
    "merge": "wdprobe merge runs/g270",
    "upstream": "wdprobe upstream results/Llama-3-8B.csv",
    "report": "wdprobe report runs/g270 --out reports/g270",
    "capture": "wdprobe capture --run runs/g270 --layers all --positions last,question_mean",
    "probe": "wdprobe probe --run runs/g270 --kinds logreg,diffmean --folds 5",
    "lens": "wdprobe lens --run runs/g270",
    "patch": "wdprobe patch --run runs/g270 --instrument both --items 200",
    "steer": "wdprobe steer --run runs/g270 --items 200 --alphas 1,4,16",
    "run": "wdprobe run --data WDCT.csv --out runs/g270 --report reports/g270 --sample 100",
    "status": "wdprobe status runs/g270",
    "compare": "wdprobe compare runs/base runs/organism --out compare.html",
    "pct run": "wdprobe pct run --data pct/ --personas base,age=18 --out runs/pct",
    "pct closed": "wdprobe pct closed --data pct/ --out runs/pct",
    "pct open": "wdprobe pct open --data pct/ --out runs/pct",
    "pct judge": "wdprobe pct judge --data pct/ --out runs/pct",
    "pct compass": "wdprobe pct compass --data pct/ --out runs/pct",
    "pct capture": "wdprobe pct capture --data pct/ --out runs/pct",
    "pct probes": "wdprobe pct probes --data pct/ --out runs/pct --folds 5",
    "pct content_probes": "wdprobe pct content_probes --data pct/ --out runs/pct",
    "pct tropes": "wdprobe pct tropes --data pct/ --out runs/pct",
    "pct report": "wdprobe pct report --data pct/ --out runs/pct",
    "pct status": "wdprobe pct status --out runs/pct",
    "align": "wdprobe align --data WDCT.csv --form word --method sft+dpo --items 96 --out runs/align-word",
    "align-report": "wdprobe align-report runs/align-word runs/align-deed --out reports/alignment",
    "align-export": "wdprobe align-export runs/align-word --out models/align-word",
    "organism build": "wdprobe organism build --kind sincere-balanced --data WDCT.csv --out organisms/sincere",
    "organism edit": "wdprobe organism edit --model organisms/sincere --layer 8 --out organisms/edit-8 --data WDCT.csv",
    "organism show": "wdprobe organism show organisms/edit-8",
    "cross-patch": "wdprobe cross-patch --reference organisms/sincere --variant organisms/edit-8 --data WDCT.csv "
                   "--sites resid mlp --method attribution",
    "interchange": "wdprobe interchange --data WDCT.csv --kind rotation --k 2 --out runs/interchange",
    "convert-model": "wdprobe convert-model",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the example under it kept on its own line."""


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command's parser by its name (``"pct run"``, ``"score"``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(path): parser}
    out: dict[str, argparse.ArgumentParser] = {}
    for name, sub in subs[0].choices.items():
        out.update(commands(sub, path + (name,)))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (the CLI reference in the docs is generated from it), each command's
    help ending with an example."""
    parser = _build_parser()
    for name, command in commands(parser).items():
        if name in EXAMPLES:
            command.epilog = f"example:\n  {EXAMPLES[name]}"
            if command.description:  # the raw layout keeps the example on its line: wrap the prose here instead
                command.description = "\n\n".join(textwrap.fill(" ".join(para.split()), 78)
                                                   for para in command.description.split("\n\n"))
            if command.formatter_class is argparse.HelpFormatter:
                command.formatter_class = argparse.RawDescriptionHelpFormatter
            elif command.formatter_class is argparse.ArgumentDefaultsHelpFormatter:
                command.formatter_class = _HelpFormatter
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wdprobe", description="Measure and explain word-deed inconsistency in LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score WDCT word/deed questions (CS, PCS) into a run directory")
    _add_model_args(p)
    p.add_argument("--data", default=None, help="items: WDCT.csv, or your own items (.csv / .jsonl / .json in the item schema, docs/guides/own-data.md); else $WDPROBE_WDCT, else the pinned WDCT download")
    p.add_argument("--out", required=True, help="run directory (re-running into it resumes)")
    p.add_argument("--setting", default="normal", choices=["normal", "cot"], help="normal: word and deed asked directly; cot: the deed after a chain-of-thought belief (needs --demos)")
    p.add_argument("--demos", default=None, help="upstream demo.csv for --setting cot")
    p.add_argument("--chat", default="auto", choices=["auto", "plain", "chat"],
                   help="wrap prompts in the chat template (auto: instruction-tuned model names only)")
    p.add_argument("--seed", type=int, default=0, help="option-shuffling seed")
    _add_measurement_args(p)
    p.add_argument("--limit", type=at_least(1), default=None, help="first N items (after filters)")
    p.add_argument("--sample", type=at_least(1), default=None, help="seeded random sample of N items")
    p.add_argument("--domain", action="append", help="keep only this domain (repeatable; any domain of the items)")
    p.add_argument("--subset", choices=sorted(SUBSETS), default=None, help="a named WDCT subset (WDCT_NE: without the ethics domains)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="most prompts per forward (on CPU also capped at ~1.5k padded tokens)")
    p.add_argument("--shard", default=None, help="i/n: score only shard i of n (items split by id) into RUN/shards/score/; "
                                                 "then `wdprobe merge RUN`")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("sweep", help="models x settings x shards as tasks, run here (--executor local) or on Ray; "
                                     "resumes a half-finished sweep, merges each run")
    p.add_argument("config", help="sweep TOML ([sweep] out, models, shards; [grid]; [fixed]); see wdprobe.sweep")
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="run the tasks here one by one, or on Ray")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, or ray://head:10001); default: "
                                                   "start a local Ray instance")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("merge", help="combine the shards of sharded stages (RUN/shards/...) into RUN, as if run unsharded")
    p.add_argument("run")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("upstream", help="CS/PCS of result CSVs in the upstream WDCT format")
    p.add_argument("files", nargs="+")
    p.add_argument("--compact", action="store_true", help="one JSON line per file")
    p.set_defaults(func=cmd_upstream)

    p = sub.add_parser("report", help="copy a scoring run's artefacts to a folder with a README of its numbers")
    p.add_argument("run", help="run directory made by `wdprobe score`")
    p.add_argument("--out", required=True, help="folder to write the report into")
    p.add_argument("--notes", default=None, help="markdown file with a written reading, added under 'Reading'")
    p.add_argument("--localisation", action="store_true",
                   help="also redraw the run's lens, patching and steering figures into DIR/localisation.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("capture", help="capture residual-stream activations for a scored run")
    p.add_argument("--run", required=True, help="run directory made by `wdprobe score` (normal setting)")
    p.add_argument("--layers", default="all", help="'all', '0,4,8' or '2-10'")
    p.add_argument("--hooks", default="resid_post", help="comma list of resid_pre, resid_mid, resid_post")
    p.add_argument("--positions", default="last,question_mean",
                   help="comma list of last, question_mean, option0_last..option3_last")
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="how activations are saved (float16 refuses values it cannot hold)")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="most prompts per forward")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shard", default=None, help="i/n: only shard i of n of the items, into RUN/shards/capture/; then wdprobe merge RUN")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("probe", help="stance probes per layer on captured activations, with HTML plots")
    p.add_argument("--run", required=True, help="run directory with `wdprobe capture`")
    p.add_argument("--hook", default="resid_post", help="captured hook to probe (resid_pre, resid_mid, resid_post)")
    p.add_argument("--position", default="last", help="captured position to probe (last, question_mean, ...)")
    p.add_argument("--kinds", default="logreg,diffmean", help="comma list of registered probe kinds")
    p.add_argument("--folds", type=at_least(2), default=5, help="cross-validation folds (items split by proposition; at least 2)")
    p.add_argument("--seed", type=int, default=0, help="fold and permutation seed")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="letter (and content, when every order was scored), cloze, or both; auto: every format the run "
                        "was scored in")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("lens", help="logit lens on captured final-position residuals: where deed readings leave word readings")
    p.add_argument("--run", required=True, help="run directory with `wdprobe capture` (resid_post, position last)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="letter (shown order and content space), cloze (at the options' decision point), or both; "
                        "auto: every format the run was scored in")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("patch", help="activation patching: word -> deed per layer, and layer x position heatmaps",
                       argument_default=argparse.SUPPRESS)  # a flag not given: the function's own default
    p.add_argument("--run", required=True, help="run directory with `wdprobe capture` (resid_post, position last)")
    p.add_argument("--instrument", "--kind", dest="instrument", choices=["cross", "positional", "both"],
                   help="cross-form patching, positional patching, or both ('kind' elsewhere means a probe, an "
                        "intervention or an organism kind; --kind is kept as an older name)")
    p.add_argument("--items", "--n-items", dest="items", help="cross-form: number of two-option items (half inconsistent) or 'all'")
    p.add_argument("--layers", help="'all', '0,4,8' or '2-10'")
    p.add_argument("--conditions",
                   help="cross-form: comma list of full (the whole residual), stance, letter, random (only its component "
                        "along that direction; letter: letters only); default every condition of each format")
    p.add_argument("--format", choices=["auto", *FORMATS],
                   help="cross-form: letter (the answer letters), cloze (each form read at its options' decision "
                        "point: patching/cloze_cross_form*) or both; auto: every format the run was scored in")
    p.add_argument("--deed-orders", choices=["auto", "shown", "cyclic", "both"],
                   help="cross-form: patch into the shown deed order only, or into both orders so the patch's effect "
                        "splits into stance and letter transport (auto: both for runs scored letter-free)")
    p.add_argument("--form", choices=["word", "deed"], help="positional: which form's prompts")
    p.add_argument("--positional-items", type=at_least(1), help="positional: items for attribution patching")
    p.add_argument("--exact-items", type=at_least(0), help="positional: of those, items also patched exactly")
    p.add_argument("--min-effect", type=float,
                   help="positional: keep items whose log-odds move at least this much when options are swapped")
    p.add_argument("--screen", type=at_least(1),
                   help="positional: aligned items screened (seeded sample); the strongest content effects are kept")
    p.add_argument("--seed", type=int, help="item sample and random-control seed")
    p.add_argument("--batch-size", type=at_least(1), help="most rows per forward (on CPU also capped at ~1.5k tokens)")
    p.add_argument("--restart", action="store_true", help="discard this stage's earlier results in the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shard", help="i/n: cross-form patching (or the exact positional patching) of shard i "
                                                 "of n of the items, into RUN/shards/; then wdprobe merge RUN")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("steer", help="add alpha x word-stance direction to deed runs; CS over (layer, alpha)",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--run", required=True, help="run directory with `wdprobe capture` (resid_post, position last)")
    p.add_argument("--items", "--n-items", dest="items", help="number of two-option items (half inconsistent) or 'all'")
    p.add_argument("--layers", help="'all', '0,4,8' or '2-10'")
    p.add_argument("--alphas",
                   help="comma list, in units of the word-answer mean difference at the layer")
    p.add_argument("--min-mass-ratio", type=float,
                   help="a setting keeps the answer format if letter mass stays above this share of clean")
    p.add_argument("--seed", type=int, help="item sample, folds and random-control seed")
    p.add_argument("--batch-size", type=at_least(1), help="most rows per forward")
    p.add_argument("--no-validate", action="store_true",
                   help="skip rerunning the best setting on the items the grid did not use")
    p.add_argument("--controls", help="comma list of control directions of equal norm, run beside the stance at every "
                                      "cell: random (isotropic; may break the answer format), pair-random (the "
                                      "difference of two other same-answer items' residuals; keeps the format); "
                                      "default both")
    p.add_argument("--no-prompting", action="store_true",
                   help="skip the prompting baseline in the validation (each deed prompt preceded by the model's own "
                        "word answer and an instruction to act on it)")
    p.add_argument("--restart", action="store_true", help="discard this stage's earlier results in the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--space", choices=["auto", "shown", "content"],
                   help="shown: the letter-balanced word-stance direction, read in the shown deed order; content: the "
                        "word content direction (residuals averaged over option orders), every deed order, content CS "
                        "(auto: content for runs scored letter-free)")
    p.add_argument("--format", choices=["auto", *FORMATS],
                   help="letter: steer the answer letter's log-odds; cloze: add the word's cloze stance direction at "
                        "the deed's decision point and read the decision-step log-odds of the word's choice "
                        "(steering/cloze_*); both; auto: every format the run was scored in")
    p.add_argument("--shard", help="i/n: the grid on shard i of n of the items, into RUN/shards/steer/; "
                                                 "then wdprobe merge RUN (best setting and validation there)")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("run", help="the whole study in one command: score, capture, probes, lens, patching, steering, report (full WDCT: about an hour on 2 CPU cores; --sample 100: about 7 minutes)")
    p.add_argument("--config", default=None, help="TOML study file (see --print-config); flags given here win over it")
    StudyConfig.add_flags(p.add_argument_group("the study (flags given win over --config)"))
    p.add_argument("--domain", action="append", default=None, help="keep only this domain (repeatable; any domain of the items)")
    for name, section in SECTIONS.items():  # every key of every [section] of a study file, as --section-key
        section.add_flags(p.add_argument_group(f"[{name}] of the study file"), prefix=name.replace("_", "-"))
    p.add_argument("--stages", default=None, help="comma list of stages to run (default all, in pipeline order)")
    p.add_argument("--skip", default=None, help="comma list of stages to leave out")
    p.add_argument("--restart", default=None, help="comma list of patch_cross, patch_positional, steer to redo (and all after)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as TOML and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="which stages of a run are done, with their wall time and result")
    p.add_argument("run")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("compare", help="side-by-side numbers and overlaid layer curves of two or more runs, one HTML page")
    p.add_argument("runs", nargs="+", help="run directories (e.g. base and instruct, or two seeds)")
    p.add_argument("--out", default="compare.html", help="HTML page to write (the table also goes to .csv beside it)")
    p.add_argument("--labels", default=None, help="comma list of names for the runs (default: model names)")
    p.set_defaults(func=cmd_compare)

    _add_pct_parser(sub)
    _add_align_parsers(sub)
    _add_organism_parsers(sub)
    _add_cross_patch_parser(sub)
    _add_interchange_parser(sub)

    p = sub.add_parser("convert-model", help="convert the embedded Gemma-3-270M GGUF into the cache (done on first use anyway)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors wdprobe raises on purpose exit with code 2 and their message."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WdprobeError as exc:  # on purpose, with a message naming the culprit; anything else is a bug
        print(f"wdprobe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nwdprobe: interrupted; finished parts are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not wdprobe: a full disk, a read-only or missing place, too many files
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"wdprobe: error: {exc.strerror or exc}{where}: {ENVIRONMENT_ERRNOS[exc.errno]}; finished parts are "
              "saved (every file is written whole or not at all), re-run the same command once that is fixed",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
