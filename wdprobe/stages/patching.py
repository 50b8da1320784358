"""The patching stages on a run directory: cross-form patching (for every read-out) and positional patching.

Cross-form patching is one instrument for every answer format: the read-out (:mod:`wdprobe.stages.readouts`)
says which deed runs are patched, where, with which word sources and directions, and how the answer is read.
Each stage reads the scored run (prompts, letters) and its capture (stance directions, word residuals),
writes finished chunks of items atomically into ``{stage}.parts`` (so an interrupted run resumes), then
tidy CSVs, a headline JSON and plotly figures under ``patching/`` or ``steering/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import unquote

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.forward import encode_prompts
from wdprobe.data.prompts import normal_prompt, wrap
from wdprobe.errors import InputError, TokenAlignmentError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.capture import presentation_spans
from wdprobe.methods.interventions import Row, resid_hook, resolve_layers, run_interventions
from wdprobe.methods.patching import (
    aligned_tokens,
    attribution_patching,
    cross_form_rows,
    exact_patching,
    normalised,
    rank_correlation,
    swap_alignment,
    swap_counterfactual,
)
from wdprobe.runs.rundir import RunDir, read_checked, read_csv, safe_name, write_checked
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import (
    finish_stage,
    model_for_run,
    progress_bar,
    save_in_parts,
    saved_ids,
    scored_entry,
    scored_model_name,
    stage_seconds,
    work_left,
)
from wdprobe.stages.pairs import load_pairs
from wdprobe.stages.readouts import Reading, Readout, read_interventions, readout

LOW_RANK_CORRELATION = 0.5  # below this, attribution heatmaps are not to be trusted without exact checks


# ---- cross-form patching ----------------------------------------------------------------------------

PATCH_COLUMNS = list(readout("letter").part_columns["patch"])


def patch_rows(lm, reading: Reading, idx: Sequence[int], layers: Sequence[int], conditions: Sequence[str],
               columns: Sequence[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Patch the word sources into every deed run of the reading's items ``idx``: one record per run x (clean |
    condition, layer) with the log-odds of the word's choice over the other option and the answer-format mass."""
    def rows_for(item: np.ndarray):
        return cross_form_rows(len(item), layers, reading.sources[item], conditions=conditions,
                               stance_dirs=None if reading.stance is None else reading.stance[item],
                               random_dirs=reading.random,
                               letter_dirs=None if reading.letter is None else reading.letter[item])

    return read_interventions(lm, reading, idx, rows_for, columns, batch_size=batch_size, progress=progress)


def run_cross_patch(run_dir: str | Path, *, format: str | Readout = "letter", n_items: int | None = 64,
                    layers: str | Sequence[int] | None = None, conditions: Sequence[str] | None = None, seed: int = 0,
                    folds: int = 5, chunk_items: int = 8, batch_size: int = 64, progress: bool = True,
                    restart: bool = False, lm=None, shard: str | None = None, deed_orders: str = "auto") -> dict[str, Any]:
    """Word -> deed patching layer by layer at the read-out's position, read through ``format`` (a read-out name or
    object); writes ``patching/<prefix>cross_form*``. Conditions (default: every one the read-out has): ``full``
    (the whole residual), ``stance``/``letter``/``random`` (only its component along that direction).

    Letters: at the final position; ``deed_orders="cyclic"`` patches each word run into the deed prompt in both option
    orders, so that what the patch carries splits into stance (moves the word answer's content in both orders) and
    letter (moves the word run's letter): ``patching/cross_form_letter_split*``; ``auto`` does so for runs scored
    letter-free. Cloze: the word's decision-point residual into the deed's decision point.
    ``restart`` discards an earlier run of this stage (otherwise it resumes, or refuses other settings).
    ``shard`` (``"i/n"``, letters): patch only that shard's items, into ``RUN/shards/patch_cross/i-of-n/``; the
    items, directions and folds are chosen over the whole run as unsharded, so ``wdprobe merge RUN``
    gives the unsharded results."""

    t_start = time.perf_counter()
    if batch_size < 1:  # refused before any model loads or result is touched
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    ro = readout(format)
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    conditions = ro.check_conditions(ro.conditions if conditions is None else conditions)
    stage = ro.stage("patch")
    part = Shard.parse(shard)
    if part and not ro.shardable:
        raise InputError(f"--shard: cross-form patching in the {ro.name} form is not sharded; run it whole")
    if restart:
        run.reset_stage(stage, [ro.outputs("patching", "cross_form")])
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    extra = ro.settings(run, orders=deed_orders)
    work.check_or_start(stage, {"n_items": n_items, "layers": layers, "conditions": list(conditions), "seed": seed,
                                "folds": folds, "hook": "resid_post", **extra,
                                **({"shard": str(part)} if part else {})})
    reading = ro.reading(run, lm, n_items=n_items, seed=seed, layers=layers, folds=folds, settings=extra)
    if len(reading) < 2:
        raise InputError(f"{run.path}: {len(reading)} items readable in the {ro.name} form; cross-form patching "
                         "needs two")
    if "stance" in conditions:
        try:
            ro.fit_stance(reading, folds=folds)
        except InputError as exc:  # a small sample: no cross-fitted direction to patch along
            conditions = [c for c in conditions if c != "stance"]
            reading.notes.append(f"stance left out: no cross-fitted direction from {len(reading)} items in {folds} "
                                 f"folds ({exc})")
    if reading.letter is None and "letter" in conditions:  # every word answer said one letter: no letter direction
        conditions = [c for c in conditions if c != "letter"]
        work.update_stage(stage, skipped_conditions={"letter": "every word answer says the same letter, so no letter "
                                                               "direction can be estimated"})
    ids = reading.ids
    done = saved_ids(work, stage)
    todo = work_left(range(len(reading)), done, key=lambda i: ids[i], shard=part)
    if part:
        done = {i for i in done if part.holds(i)}
    per_item = (len(reading.runs) // len(reading)) * (1 + len(conditions) * len(layers))
    bar = progress_bar((len(done) + len(todo)) * per_item, f"patch word->deed ({ro.name})", progress,
                       len(done) * per_item)
    columns = ro.part_columns["patch"]

    def patch(idx: Sequence[int]) -> list[dict[str, Any]]:
        return patch_rows(lm, reading, idx, layers, conditions, columns, batch_size=batch_size, progress=bar.update)

    save_in_parts(work, stage, todo, chunk_size=chunk_items, columns=list(columns), compute=patch)
    bar.close()
    if part:
        finish_stage(work, stage, n_items=len(done) + len(todo), **stage_seconds(work, stage, t_start))
        return {"shard": str(part), "n_items": len(done) + len(todo)}
    out = run.path / "patching"
    out.mkdir(exist_ok=True)
    head, figs = ro.patch_results(out, run.read_parts(stage), reading, seed=seed, model=scored_model_name(run))
    stem = f"{ro.prefix}cross_form"
    atomic_write_text(run.path / ro.result_file("patch", "headline"), json.dumps(head, indent=2) + "\n")
    pngs = []
    if figs:
        plots.write_html(figs, out / f"{stem}.html", heading=f"wdprobe cross-form patching: {scored_model_name(run)}")
        pngs = [str(p) for p in (plots.write_png(f, out / f"{stem}-{i}.png") for i, f in enumerate(figs)) if p]
    finish_stage(run, stage, headline=head, **({"png": pngs} if figs else {}), **stage_seconds(run, stage, t_start))
    return head


def _save_exact(run: RunDir, folder: str, item_id: str, res: dict[str, Any]) -> None:
    """One item's exact patching result, under a file name made safe from the item id (ids come from data)."""
    body = json.dumps({"clean": res["clean"], "counterfactual": res["counterfactual"],
                       "patched": np.asarray(res["patched"]).tolist()})
    write_checked(run.child(folder, safe_name(item_id) + ".json"), body.encode("utf-8"))  # with its .sha256 beside it


def _saved_exact(run_dir: Path, stage: str, form: str) -> dict[str, dict[str, Any]]:
    """Exact positional patching results already saved, by item id (this run's and its shards'; a restart
    deletes the run's own with the stage's other outputs)."""
    out = {}
    name = f"patching/positional-{form}-exact"
    folders = [run_dir / name] + sorted((run_dir / "shards" / stage).glob(f"*-of-*/{name}"))
    for folder in folders:
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            d = json.loads(read_checked(f))  # an edited or truncated result is refused, never read as a number
            out[unquote(f.stem)] = {"clean": d["clean"], "counterfactual": d["counterfactual"], "patched": np.array(d["patched"])}
    return out


def merge_positional(run_dir: str | Path, stage: str, lm=None) -> dict[str, Any]:
    """Positional patching from its shards: every saved exact item is reused, the rest of the stage rerun."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, stage)
    cfg = entries[0][1]["config"]
    run.reset_stage(stage, [f"patching/positional-{cfg['form']}*"])
    return run_positional_patch(run.path, form=cfg["form"], n_items=cfg["n_items"], n_exact=cfg["n_exact"],
                                layers=cfg["layers"], min_effect=cfg["min_effect"], screen=cfg["screen"], seed=cfg["seed"],
                                progress=False, lm=lm)


def merge_cross_patch(run_dir: str | Path, lm=None) -> dict[str, Any]:
    """Join ``RUN/shards/patch_cross/*`` into the run and write the stage's outputs as an unsharded run would."""

    run = RunDir(run_dir)
    stage = "patch_cross"
    entries = checked_shards(run.path, stage)
    cfg = {k: v for k, v in entries[0][1]["config"].items() if k != "shard"}
    run.reset_stage(stage, [readout("letter").outputs("patching", "cross_form")])
    for d, _ in entries:
        rows = RunDir(d).read_parts(stage)
        if rows:
            run.write_part(stage, rows, PATCH_COLUMNS, settings=cfg)
    return run_cross_patch(run.path, n_items=cfg["n_items"], layers=cfg["layers"], conditions=cfg["conditions"],
                           seed=cfg["seed"], folds=cfg["folds"], progress=False, lm=lm,
                           deed_orders=cfg.get("deed_orders", "shown"))


# ---- positional patching ----------------------------------------------------------------------------

def token_segments(tokenizer, prompt: str, pres, form: str) -> list[str]:
    """Role of each prompt token: instruction, scenario, 'A.'/'B.' labels, 'option A'/'option B' text,
    'Answer:' and the final token (so heatmaps of different items can be averaged by role)."""

    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    n = len(encode_prompts(tokenizer, [prompt], "cpu")["input_ids"][0])
    offsets = enc["offset_mapping"][-n:]
    spans = presentation_spans(pres, form, prompt)
    order = pres.order(form)
    letter_spans = {chr(65 + j): spans.options[c] for j, c in enumerate(order)}
    q0, q1 = spans.question
    first_opt = min(s for s, _ in spans.options)
    out = []
    for t, (s, e) in enumerate(offsets):
        if t == n - 1:
            seg = "final"
        elif e <= s:
            seg = "special"
        elif s < q0:
            seg = "instruction"
        elif s >= q1:
            seg = "Answer:"
        elif s < first_opt - 3:
            seg = "scenario"
        else:
            # a token belongs to an option when it overlaps the option's text (its leading space included)
            seg = next((f"option {L}" for L, (a, b) in letter_spans.items() if s < b and e > a), None)
            if seg is None:
                seg = next((f"label {L}" for L, (a, _) in letter_spans.items() if a - 4 <= s < a), "scenario")
        out.append(seg)
    return out


SEGMENT_ORDER = ["special", "instruction", "scenario", "label A", "option A", "label B", "option B", "Answer:", "final"]


def scored_swap_effect(run_dir: Path, form: str, pres: Sequence[Any]) -> np.ndarray | None:
    """How much each two-option item's letter log-odds (A over B) move when its options are swapped, read from the
    run's scored prompts: a letter-free run asked both orders already (the swapped prompt is the other cyclic
    order, built the same way). None when some item lacks either order (then the screen runs its own forwards)."""
    path = Path(run_dir) / "prompts.csv"
    if not path.is_file():
        return None
    lo: dict[tuple[str, str], float] = {}
    for r in readout("letter").scored_rows(read_csv(path)):
        if r["form"] == form and r["lp_A"] not in ("", None) and r["lp_B"] not in ("", None):
            lo[(r["id"], r["order"])] = float(r["lp_A"]) - float(r["lp_B"])
    out = []
    for p in pres:
        shown = "".join(map(str, p.order(form)))
        pair = (lo.get((p.item.id, shown)), lo.get((p.item.id, shown[::-1])))
        if None in pair:
            return None
        out.append(abs(pair[0] - pair[1]))
    return np.asarray(out)


@dataclass
class PositionalItems:
    """The items positional patching reads: aligned clean and option-swapped prompts of the chosen items (shortest
    first), their ids, tokens and token roles, and what the screen saw."""

    clean: list[str]
    counterfactual: list[str]
    ids: list[str]
    tokens: list[list[str]]
    segments: list[list[str]]
    screened: int
    aligned: int
    effect: np.ndarray
    token_ids: tuple[int, ...]  # the letters A and B, whose log-odds every reading is


def screen_positional_items(run: RunDir, lm, form: str, *, n_items: int, screen: int, min_effect: float, seed: int,
                            batch_size: int) -> PositionalItems:
    """Of a seeded sample of ``screen`` items whose option swap aligns token by token, the ``n_items`` whose answer
    log-odds move most when the options are swapped (at least ``min_effect`` nats), shortest first."""
    pairs = load_pairs(run.path, lm.tokenizer, n_items=None)
    use_chat = scored_entry(run)["config"]["chat_template"]
    clean_all, cf_all, pres_all = [], [], []
    for p, prompts in zip(pairs.presentations, pairs.word_prompts if form == "word" else pairs.deed_prompts):
        cf = wrap(normal_prompt(swap_counterfactual(p, form), form), lm.tokenizer, use_chat)
        try:
            swap_alignment(lm.tokenizer, p, form, prompts, cf)
        except TokenAlignmentError:
            continue
        clean_all.append(prompts)
        cf_all.append(cf)
        pres_all.append(p)
    if not clean_all:
        raise InputError(f"{run.path}: no {form} item has two options whose swap aligns token by token")
    block = [int(k) for k in np.random.default_rng(seed).permutation(len(clean_all))[:screen]]
    effect = scored_swap_effect(run.path, form, [pres_all[k] for k in block])
    if effect is None:  # the run did not score both orders of these items: run them
        lp = run_interventions(lm, [clean_all[k] for k in block] + [cf_all[k] for k in block],
                               [Row(j) for j in range(2 * len(block))], pairs.token_ids[:2], batch_size=batch_size)
        lo = lp[:, 0] - lp[:, 1]
        effect = np.abs(lo[: len(block)] - lo[len(block):])
    ranked = [block[j] for j in np.argsort(-effect) if effect[j] >= min_effect][:n_items]
    if not ranked:
        raise InputError(f"{run.path}: no aligned {form} item changes its answer log-odds by >= {min_effect} when its "
                         f"options are swapped ({len(block)} screened; largest change {effect.max():.2f}); "
                         "lower --min-effect")
    # exact patching costs (layers x tokens) forwards per item: do it on the shortest chosen items
    chosen = sorted(ranked, key=lambda k: len(lm.tokenizer(clean_all[k])["input_ids"]))
    clean = [clean_all[k] for k in chosen]
    cf = [cf_all[k] for k in chosen]
    return PositionalItems(clean, cf, [pres_all[k].item.id for k in chosen],
                           [aligned_tokens(lm.tokenizer, a, b) for a, b in zip(clean, cf)],
                           [token_segments(lm.tokenizer, a, pres_all[k], form) for a, k in zip(clean, chosen)],
                           len(block), len(clean_all), effect, tuple(pairs.token_ids[:2]))


def positional_frame(items: PositionalItems, results: dict[str, list[dict[str, Any]]], hooks: Sequence[str],
                     layers: Sequence[int]):
    """One row per method x item x layer x position: the patched metric and its normalised effect, with the token
    and its role."""
    import pandas as pd

    recs = []
    for method, per_item in results.items():
        for i, res in enumerate(per_item):
            norm = normalised(res)
            for h, hook in enumerate(hooks):
                for p, tok in enumerate(items.tokens[i]):
                    recs.append({"id": items.ids[i], "method": method, "hook": hook, "layer": layers[h], "position": p,
                                 "token": tok, "segment": items.segments[i][p], "patched": float(res["patched"][h, p]),
                                 "normalised": float(norm[h, p])})
    return pd.DataFrame(recs)


def run_positional_patch(run_dir: str | Path, *, form: str = "deed", n_items: int = 16, n_exact: int = 4,
                         layers: str | Sequence[int] | None = None, min_effect: float = 0.0, screen: int = 256,
                         seed: int = 0,
                         batch_size: int = 64, progress: bool = True, restart: bool = False, lm=None,
                         shard: str | None = None) -> dict[str, Any]:
    """Layer x position heatmaps on option-swapped counterfactuals.

    Of a seeded sample of ``screen`` aligned items, the ``n_items`` whose answer log-odds move most when
    the options are swapped (at least ``min_effect`` nats) get attribution patching; the ``n_exact``
    shortest of them also get exact patching, and the two are compared by rank correlation.
    Writes ``patching/positional-{form}*``. ``shard`` (``"i/n"``): exact patching (the costly part) of that
    shard's items only, saved under ``RUN/shards/patch_positional_<form>/``; the unsharded call (``wdprobe
    merge RUN``) reuses every saved item and computes only what is missing."""
    if form not in ("word", "deed"):
        raise InputError(f"form must be 'word' or 'deed', not {form!r}")
    t_start = time.perf_counter()
    if batch_size < 1:  # refused before any model loads or result is touched
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    for flag, value, least in (("--positional-items", n_items, 1), ("--exact-items", n_exact, 0), ("--screen", screen, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"{flag} {value!r}: a whole number of at least {least} expected")
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    hooks = [resid_hook(l, "resid_pre", lm.n_layers) for l in layers]
    stage = f"patch_positional_{form}"
    if restart:
        run.reset_stage(stage, [f"patching/positional-{form}*"])
    part = Shard.parse(shard)
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    work.check_or_start(stage, {"form": form, "n_items": n_items, "n_exact": n_exact, "layers": layers,
                                "min_effect": min_effect, "screen": screen, "seed": seed, "hook": "resid_pre",
                                **({"shard": str(part)} if part else {})})
    items = screen_positional_items(run, lm, form, n_items=n_items, screen=screen, min_effect=min_effect, seed=seed,
                                    batch_size=batch_size)
    token_ids = items.token_ids
    ids = items.ids
    n_ex = min(n_exact, len(ids))
    saved = _saved_exact(run.path, stage, form)
    todo = [i for i in range(n_ex) if ids[i] not in saved and (part is None or part.holds(ids[i]))]
    bar = progress_bar(sum(len(items.tokens[i]) * len(hooks) for i in todo), "exact positional patching", progress)
    t0 = time.perf_counter()
    for i in todo:  # one item at a time, saved as it finishes: an interrupted run keeps what is done
        res = exact_patching(lm, [items.clean[i]], [items.counterfactual[i]], hooks, token_ids, batch_size=batch_size,
                             progress=bar.update)[0]
        saved[ids[i]] = res
        _save_exact(work, f"patching/positional-{form}-exact", ids[i], res)
    t_exact = time.perf_counter() - t0
    bar.close()
    if part:
        finish_stage(work, stage, exact_items=[ids[i] for i in range(n_ex) if part.holds(ids[i])],
                     **stage_seconds(work, stage, t_start))
        return {"shard": str(part), "n_exact": sum(part.holds(ids[i]) for i in range(n_ex))}
    exact = [saved[ids[i]] for i in range(n_ex)]
    t0 = time.perf_counter()
    attr = attribution_patching(lm, items.clean, items.counterfactual, hooks, token_ids)
    t_attr = time.perf_counter() - t0
    frame = positional_frame(items, {"attribution": attr, "exact": exact}, hooks, layers)
    rho = [rank_correlation(attr[i]["patched"], exact[i]["patched"]) for i in range(n_ex)]
    pooled = rank_correlation(np.concatenate([normalised(attr[i]).ravel() for i in range(n_ex)]),
                              np.concatenate([normalised(exact[i]).ravel() for i in range(n_ex)])) if n_ex else float("nan")
    out = run.path / "patching"
    out.mkdir(exist_ok=True)
    stem = f"positional-{form}"
    atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False))
    seg_table = (frame.groupby(["method", "layer", "segment"])["normalised"].mean().reset_index())
    atomic_write_text(out / f"{stem}-segments.csv", seg_table.to_csv(index=False))
    head = {"form": form, "n_items": len(ids), "n_exact": n_ex, "screened": items.screened,
            "aligned_candidates": items.aligned,
            "screen_effect_quantiles": {q: round(float(np.quantile(items.effect, q)), 3) for q in (0.5, 0.9, 0.99, 1.0)},
            "rank_correlation_per_item": [round(r, 4) for r in rho],
            "rank_correlation_pooled": pooled, "seconds_attribution": round(t_attr, 2),
            "seconds_exact": round(t_exact, 2), "clean_minus_counterfactual": [round(r["clean"] - r["counterfactual"], 3)
                                                                          for r in attr],
            "low_rank_correlation": bool(n_ex and pooled < LOW_RANK_CORRELATION)}
    atomic_write_text(out / f"{stem}-headline.json", json.dumps(head, indent=2) + "\n")
    model = scored_model_name(run)
    figs = localise_plots.positional_figures(frame, seg_table, layers, SEGMENT_ORDER,
                                             f"{model}, {form} prompts, options swapped (A<->B)", n_show=min(n_ex, 2))
    plots.write_html(figs, out / f"{stem}.html", heading=f"wdprobe positional patching: {model}, {form} form")
    pngs = [plots.write_png(f, out / f"{stem}-{i}.png") for i, f in enumerate(figs)]
    finish_stage(run, stage, headline=head, png=[str(p) for p in pngs if p], **stage_seconds(run, stage, t_start))
    return head
