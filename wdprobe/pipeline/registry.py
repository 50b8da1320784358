"""The one registry of stages: every stage of every study, declared once, in pipeline order.

``wdprobe run`` / ``wdprobe pct run`` sequence these, ``wdprobe merge`` and ``wdprobe sweep`` read their
mergers, ``wdprobe status`` and the reports read their names. A stage here is a thin adapter from the
study's configuration to the public stage function a script would call (``score_wdct``, ``pct_closed``,
...). Adding a stage is one new module that declares a :class:`~wdprobe.runs.stage.Stage` and one line
``REGISTRY.register(...)`` (see ``docs/guides/new-stage.md``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wdprobe.core.options import count_or_all
from wdprobe.errors import InputError
from wdprobe.methods.capture import CaptureSpec
from wdprobe.reports.study import write_study_report
from wdprobe.runs.rundir import read_csv
from wdprobe.runs.stage import Stage, StageContext, StageRegistry, StageResult
from wdprobe.stages.capture import capture_wdct, merge_capture
from wdprobe.stages.lens import run_lens
from wdprobe.stages.patching import merge_cross_patch, merge_positional, run_cross_patch, run_positional_patch
from wdprobe.stages.readouts import READOUTS, readouts_for, scored_format
from wdprobe.stages.score import merge_score, score_wdct
from wdprobe.stages.steering import merge_steering, run_steering
from wdprobe.studies.align.stages import run_align
from wdprobe.studies.pct.report import write_pct_report
from wdprobe.studies.pct.stages import (
    load_pct_activations,
    merge_pct_stage,
    pct_capture,
    pct_closed,
    pct_compass,
    pct_content_probes,
    pct_judge,
    pct_open,
    pct_probes,
    pct_tropes,
    write_judge_check,
)
from wdprobe.studies.pct.stance import LikelihoodJudge
from wdprobe.studies.pct.tropes import SentenceTransformerEmbedder

REGISTRY = StageRegistry()


item_count = count_or_all  # ``"all"`` -> None (every item), else the number of items (the one parser of both)


# ---- WDCT: ctx.config is a StudyConfig ----------------------------------------------------------------

def _common(cfg: Any) -> dict[str, Any]:
    return {"model": cfg.model, "seed": cfg.seed}


def _section(name: str):
    def settings(cfg: Any) -> dict[str, Any]:
        return {**_common(cfg), **asdict(getattr(cfg, name))}
    return settings


def _score_settings(cfg: Any) -> dict[str, Any]:
    return {**_common(cfg), "data": cfg.data, "limit": cfg.limit, "sample": cfg.sample, "domains": cfg.domains,
            "dtype": cfg.dtype, **asdict(cfg.score)}


def _task_kwargs(ctx: StageContext) -> dict[str, Any]:
    """A sweep task has no StudyConfig: the stage function's defaults, the task's settings, and its shard."""
    return {**ctx.extras.get("kwargs", {}), "shard": None if ctx.shard is None else str(ctx.shard)}


def _wdct_score(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg is None:
        res = score_wdct(ctx.run.path, lm=ctx.model(), progress=ctx.progress, **_task_kwargs(ctx))
        return StageResult("score", f"{len(res.rows)} items", {"n_items": len(res.rows)})
    lm = ctx.model()
    c = cfg.capture
    # the capture stage comes next: let this pass read its activations too (one forward for both stages)
    fused = CaptureSpec.parse(c.layers, lm.n_layers, positions=c.positions, storage_dtype=c.storage_dtype) \
        if "capture" in cfg.stages else None
    res = score_wdct(ctx.run.path, model=cfg.model, data=cfg.data, seed=cfg.seed, limit=cfg.limit, sample=cfg.sample,
                     domains=cfg.domains, batch_size=cfg.score.batch_size, chat=cfg.score.chat, lm=lm,
                     progress=ctx.progress, orders=cfg.orders, format=cfg.format, capture=fused)
    m = res.metrics
    return StageResult("score", f"{m['n_items']} items, CS {m['cs_micro']:.3f}, PCS {m['pcs_micro']:.3f}", m)


def _wdct_capture(ctx: StageContext) -> StageResult:
    if ctx.config is None:
        capture_wdct(ctx.run.path, lm=ctx.model(), progress=ctx.progress, **_task_kwargs(ctx))
        return StageResult("capture", f"shard {ctx.shard}")
    c = ctx.config.capture
    capture_wdct(ctx.run.path, layers=c.layers, positions=c.positions, storage_dtype=c.storage_dtype,
                 batch_size=c.batch_size, lm=ctx.model(), progress=ctx.progress)
    return StageResult("capture", f"positions {', '.join(c.positions)}")


def _wdct_probes(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    p = cfg.probes
    missing = [x for x in p.positions if x not in cfg.capture.positions]
    if missing:
        raise InputError(f"probes.positions {missing} were not captured (capture.positions = {cfg.capture.positions})")
    out, heads = [], {}
    for ro in readouts_for(cfg.format):  # each answer format's probes: letters (shown and content), cloze choices
        head, lines = ro.probe(ctx.run.path, positions=p.positions, kinds=p.kinds, folds=p.folds, n_perm=p.permutations,
                               seed=cfg.seed, orders=cfg.orders, progress=ctx.progress)
        heads.update(head)
        out += lines
    return StageResult("probes", "; ".join(out), heads)


def _wdct_lens(ctx: StageContext) -> StageResult:
    s = run_lens(ctx.run.path, lm=ctx.model(), progress=ctx.progress)
    fmt = ctx.config.format if ctx.config is not None else scored_format(ctx.run.path)
    texts = [ro.lens_status(s) for ro in readouts_for(fmt)]
    return StageResult("lens", "; ".join(t for t in texts if t) or "done", s)


def _wdct_patch_cross(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg is None:
        head = run_cross_patch(ctx.run.path, lm=ctx.model(), progress=ctx.progress, **_task_kwargs(ctx))
        return StageResult("patch_cross", f"shard {ctx.shard}", {"n_items": head["n_items"]})
    c = cfg.patch_cross
    heads, texts = {}, []
    for ro in readouts_for(cfg.format):  # one instrument, read in each answer format the run was scored in
        conditions = [k for k in c.conditions if k in ro.conditions]
        heads[ro.name] = head = run_cross_patch(
            ctx.run.path, format=ro, n_items=item_count(c.items), layers=c.layers, conditions=conditions,
            seed=cfg.seed, batch_size=c.batch_size, lm=ctx.model(), progress=ctx.progress, restart=ctx.restart,
            deed_orders=c.deed_orders)
        texts.append(ro.patch_status(head))
    return StageResult("patch_cross", "; ".join(t for t in texts if t) or "done", heads)


LETTER_ONLY = "reads answers by letter; a cloze-only run (format = 'cloze') has none, so it is not run"


def _wdct_patch_positional(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if not any(ro.letters for ro in readouts_for(cfg.format)):  # positional patching reads the answer letters
        return StageResult("patch_positional", f"positional patching {LETTER_ONLY}", {"skipped": LETTER_ONLY})
    c = cfg.patch_positional
    out, heads = [], {}
    for form in c.forms:
        head = run_positional_patch(ctx.run.path, form=form, n_items=c.items, n_exact=c.exact_items, layers=c.layers,
                                    min_effect=c.min_effect, screen=c.screen, seed=cfg.seed, batch_size=c.batch_size,
                                    lm=ctx.model(), progress=ctx.progress, restart=ctx.restart)
        heads[form] = head
        rho = head.get("rank_correlation_pooled")
        has_rho = rho is not None and not math.isnan(rho)
        out.append(f"{form}: {head['n_items']} items" + (f", attribution vs exact rho {rho:.2f}" if has_rho else ""))
    return StageResult("patch_positional", "; ".join(out), heads)


def _wdct_steer(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg is None:
        head = run_steering(ctx.run.path, lm=ctx.model(), progress=ctx.progress, **_task_kwargs(ctx))
        return StageResult("steer", f"shard {ctx.shard}", {"n_items": head["n_items"]})
    s = cfg.steer
    heads, texts = {}, []
    for ro in readouts_for(cfg.format):
        heads[ro.name] = head = run_steering(
            ctx.run.path, format=ro, n_items=item_count(s.items), layers=s.layers, alphas=s.alphas, seed=cfg.seed,
            min_mass_ratio=s.min_mass_ratio, batch_size=s.batch_size, validate=s.validate, lm=ctx.model(),
            progress=ctx.progress, restart=ctx.restart, space=s.space, controls=s.controls, prompting=s.prompting)
        texts.append(ro.steer_status(head))
    return StageResult("steer", "; ".join(texts), heads)


def _wdct_report(ctx: StageContext) -> StageResult:
    cfg = ctx.config

    def read(path: str | None) -> str:
        return Path(path).read_text() if path else ""

    page = write_study_report(ctx.run.path, cfg.report_dir, notes=read(cfg.notes), score_notes=read(cfg.score_notes))
    return StageResult("report", str(page), output=Path(page))


def _merge_positional(stage: str):
    def merge(run_dir: Path) -> dict[str, Any]:
        return merge_positional(run_dir, stage)
    return merge


def _merge_positional_forms(run_dir: Path) -> dict[str, Any]:
    """Both forms' positional shards (each form's shards live under their own stage name)."""
    out = {}
    for name in ("patch_positional_deed", "patch_positional_word"):
        if (Path(run_dir) / "shards" / name).is_dir():
            out[name] = merge_positional(run_dir, name)
    return out


_merge_positional_forms.shard_names = ("patch_positional_deed", "patch_positional_word")  # type: ignore[attr-defined]


REGISTRY.register(Stage("wdct", "score", _wdct_score, _score_settings, unit="items",
                        outputs=("items.csv", "prompts.csv", "metrics.json", "score.parts"), merge=merge_score,
                        doc="answer distributions over the option letters, word and deed; CS and PCS"))
REGISTRY.register(Stage("wdct", "capture", _wdct_capture, _section("capture"), unit="prompts", requires=("score",),
                        outputs=("capture",), merge=merge_capture,
                        doc="residual stream at the chosen layers and positions, streamed to safetensors shards"))
REGISTRY.register(Stage("wdct", "probes", _wdct_probes, _section("probes"), unit="layers", needs_model=False,
                        requires=("capture",), outputs=("probes",),
                        doc="stance probes per layer within and across forms, IC(l), controls"))
REGISTRY.register(Stage("wdct", "lens", _wdct_lens, _common, unit="items", requires=("capture",), outputs=("lens",),
                        doc="logit lens: canonical log-odds per layer, where deeds leave words"))
REGISTRY.register(Stage("wdct", "patch_cross", _wdct_patch_cross, _section("patch_cross"), requires=("capture",),
                        outputs=tuple(ro.outputs("patching", "cross_form") for ro in READOUTS.values()), merge=merge_cross_patch, restartable=True,
                        doc="word activations patched into deed runs, layer by layer, with controls"))
REGISTRY.register(Stage("wdct", "patch_positional", _wdct_patch_positional, _section("patch_positional"),
                        requires=("score",), outputs=("patching/positional*",), merge=_merge_positional_forms,
                        restartable=True, doc="layer x position heatmaps: attribution, validated by exact patching"))
REGISTRY.register(Stage("wdct", "steer", _wdct_steer, _section("steer"), requires=("capture",),
                        outputs=tuple(ro.outputs("steering", "steering") for ro in READOUTS.values()),
                        merge=merge_steering, restartable=True,
                        doc="deeds steered along the word-stance direction (letter and cloze forms), validated on "
                            "held-out items"))
REGISTRY.register(Stage("wdct", "report", _wdct_report,
                        lambda cfg: {"report": str(cfg.report_dir), "notes": cfg.notes, "score_notes": cfg.score_notes},
                        unit="pages", needs_model=False, requires=("score",),
                        doc="index.html and README.md with findings, figures and tables"))


# ---- PCT: ctx.config is a PCTConfig; ctx.extras holds use_chat, judge, embedder, report_dir ----------------

def _pct_settings(*keys: str):
    def settings(cfg: Any) -> dict[str, Any]:
        return {"model": cfg.model, **{k: getattr(cfg, k) for k in keys}}
    return settings


def _judge(ctx: StageContext):
    """The configured judge (the studied model itself by default), loaded only when needed."""
    if ctx.extras.get("judge") is None:
        cfg = ctx.config
        judge_model = ctx.model() if cfg.judge is None else ctx.extras["load_model"](cfg.judge)
        ctx.extras["judge"] = LikelihoodJudge(judge_model, calibrate=cfg.calibrate)
    return ctx.extras["judge"]


def _pct_closed(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    path = pct_closed(ctx.run, ctx.model(), use_chat=ctx.extras["use_chat"], batch_size=cfg.batch_size,
                      progress=ctx.progress, shard=ctx.shard)
    if ctx.shard is not None:
        return StageResult("closed", f"shard {ctx.shard}: {path}", output=Path(path))
    return StageResult("closed", f"{sum(1 for _ in read_csv(ctx.run.path / 'closed.csv'))} closed prompts")


def _pct_open(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    path = pct_open(ctx.run, ctx.model(), max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                    progress=ctx.progress, shard=ctx.shard)
    if ctx.shard is not None:
        return StageResult("open", f"shard {ctx.shard}: {path}", output=Path(path))
    return StageResult("open", f"{sum(1 for _ in read_csv(ctx.run.path / 'open.csv'))} texts")


def _pct_judge(ctx: StageContext) -> StageResult:
    judge = _judge(ctx)
    path = pct_judge(ctx.run, judge, progress=ctx.progress, shard=ctx.shard)
    if ctx.shard is not None:
        return StageResult("judge", f"shard {ctx.shard}: {path}", output=Path(path))
    return StageResult("judge", f"judge {judge.name}")


def ensure_judge_check(ctx: StageContext) -> None:
    """A run judged before the judge check existed gets it without re-judging."""
    if not (ctx.run.path / "judge_check.json").is_file():
        write_judge_check(ctx.run, _judge(ctx))


def _pct_compass(ctx: StageContext) -> StageResult:
    s = pct_compass(ctx.run, ctx.extras["pct_dir"], seed=ctx.config.seed)
    return StageResult("compass", f"closed-vs-open same side {s.get('same_side')} (chance {s.get('same_side_chance')})", s)


def _pct_capture(ctx: StageContext) -> StageResult:
    path = pct_capture(ctx.run, ctx.model(), batch_size=ctx.config.batch_size, progress=ctx.progress, shard=ctx.shard)
    return StageResult("capture", "activations.safetensors" if ctx.shard is None else f"shard {ctx.shard}: {path}")


def _pct_probes(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    pct_probes(ctx.run, kinds=cfg.probe_kinds, folds=cfg.folds, seed=cfg.seed, progress=ctx.progress)
    return StageResult("probes", "probes.csv, persona_effect.csv")


def _pct_content_probes(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg.orders != "cyclic":
        return StageResult("content_probes", "a run asked in the shown order only has no content reading to probe",
                           {"skipped": "orders = shown"})
    if "closed_orders" not in load_pct_activations(ctx.run)[1]:
        return StageResult("content_probes", "captured before every order was: rerun with --restart capture",
                           {"skipped": "no closed prompts captured in every order"})
    pct_content_probes(ctx.run, folds=cfg.folds, seed=cfg.seed)
    summary = json.loads((ctx.run.path / "probes_content.json").read_text())
    parts = [f"{name} best {s['best']:.2f} at layer {s['best_layer']} (p = {s['p_value']:.3f})"
             for name, s in summary.items() if isinstance(s, dict) and "best" in s]
    return StageResult("content_probes", "; ".join(parts) or "probes_content.csv", summary)


def _pct_tropes(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    emb = ctx.extras.get("embedder") or SentenceTransformerEmbedder(cfg.embedder)
    pct_tropes(ctx.run, emb, threshold=cfg.trope_threshold, min_prompts=cfg.min_prompts)
    n = json.loads((ctx.run.path / "tropes.json").read_text())["tropes"]
    return StageResult("tropes", f"{n} tropes")


def _pct_report(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    notes = Path(cfg.notes).read_text() if cfg.notes else None
    out = write_pct_report(ctx.run, ctx.extras.get("report_dir") or ctx.run.path / "report", notes=notes)
    return StageResult("report", str(out), output=Path(out))


def _merge_pct(stage: str):
    def merge(run_dir: Path) -> dict[str, Any]:
        return merge_pct_stage(run_dir, stage)
    return merge


_PCT_SELECTION = ("propositions", "personas", "closed_instructions", "open_instructions", "seed", "order_by", "chat")
REGISTRY.register(Stage("pct", "closed", _pct_closed, _pct_settings(*_PCT_SELECTION), unit="prompts",
                        outputs=("closed.csv",), merge=_merge_pct("closed"),
                        doc="log-likelihood of the four answers of every closed-form prompt"))
REGISTRY.register(Stage("pct", "open", _pct_open, _pct_settings(*_PCT_SELECTION, "max_new_tokens"), unit="prompts",
                        outputs=("open.csv",), merge=_merge_pct("open"),
                        doc="open-domain answers, generated and saved in chunks"))
REGISTRY.register(Stage("pct", "judge", _pct_judge, _pct_settings("judge", "calibrate"), unit="texts",
                        requires=("open",), outputs=("stances.csv", "judge_check.json"),
                        merge=_merge_pct("judge"), doc="each open text mapped to one of the four answers"))
REGISTRY.register(Stage("pct", "compass", _pct_compass, _pct_settings("seed"), unit="personas", needs_model=False,
                        requires=("closed",), outputs=("compass.json", "positions.csv", "shifts.csv", "agreement.csv"),
                        doc="compass positions, persona shifts with permutation tests, closed-vs-open agreement"))
REGISTRY.register(Stage("pct", "capture", _pct_capture, _pct_settings(), unit="prompts",
                        outputs=("activations.safetensors",), merge=_merge_pct("capture"),
                        doc="last-token residual stream of closed and open prompts"))
REGISTRY.register(Stage("pct", "probes", _pct_probes, _pct_settings("probe_kinds", "folds", "seed"), unit="layers",
                        needs_model=False, requires=("judge", "capture"),
                        outputs=("probes.csv", "probes_folds.csv", "persona_effect.csv", "probes_order_control.csv"),
                        doc="stance probes across forms (folds by proposition), persona effect inside"))
REGISTRY.register(Stage("pct", "content_probes", _pct_content_probes, _pct_settings("orders", "folds", "seed"),
                        unit="labels", needs_model=False, requires=("closed", "capture"),
                        outputs=("probes_content.csv", "probes_content.json"),
                        doc="closed prompts in every order: the answer's content (decide) vs what is said in this order "
                            "vs the first-listed answer (position control), each against random labels"))
REGISTRY.register(Stage("pct", "tropes", _pct_tropes, _pct_settings("embedder", "trope_threshold", "min_prompts"),
                        unit="sentences", needs_model=False, requires=("judge",), outputs=("tropes.csv", "trope_sentences.csv", "tropes.json"),
                        doc="sentences of the open texts clustered into recurring tropes"))
REGISTRY.register(Stage("pct", "report", _pct_report, _pct_settings("notes"), unit="pages", needs_model=False,
                        doc="index.html, README.md, tropes.html"))


# ---- alignment: ctx.config is an AlignConfig; ctx.extras holds the run_align keywords ----------------------

def _align(ctx: StageContext) -> StageResult:
    res = run_align(ctx.run.path, config=ctx.config, progress=ctx.progress, **ctx.extras)
    return StageResult("align", f"{len(res.change_rates)} change-rate rows", {"change_rates": res.change_rates})


REGISTRY.register(Stage("align", "align", _align, lambda cfg: asdict(cfg), unit="epochs",
                        outputs=("epochs", "change_rates.csv", "summary.json"),
                        doc="train one form towards flipped answers, evaluate both forms each epoch, outside and in"))

