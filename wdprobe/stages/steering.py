"""The steering instrument on a run directory, for every read-out: add alpha x the word-stance direction in deed
runs over a (layer, alpha) grid, pick the best setting, validate it on held-out items against a random direction.

One module for every answer format: what is read (letters in the shown order or in content space, or the options'
decision point in the cloze form) comes from a :class:`~wdprobe.stages.readouts.Readout`. The vector added to item
i at layer l is ``alpha * gap_l * s_i * u_l`` (:func:`steering_vectors`); each control
(:data:`~wdprobe.methods.steering.STEERING_CONTROLS`: an isotropic random direction, and one that keeps the answer
format, the difference of two other same-answer items' residuals) adds a direction of the same norm and sign. A setting that drives the answer-format mass (letters, or the options' decision
tokens) below ``min_mass_ratio`` of clean breaks the answer format and is not picked.

Finished chunks of items are saved in the read-out's parts (``steer.parts`` / ``steer_cloze.parts``; an interrupted
run resumes); the outputs are tidy CSVs, a headline JSON and figures under ``steering/`` (``steering*`` for
letters, ``cloze_steering*`` for the cloze form).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.interventions import Row, resolve_layers
from wdprobe.methods.steering import (
    DEFAULT_CONTROLS,
    MIN_MASS_RATIO,
    best_setting,
    checked_controls,
    control_directions,
    control_key,
    steering_rows,
    summarise_steering,
)
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import (
    finish_stage,
    model_for_run,
    progress_bar,
    save_in_parts,
    scored_model_name,
    stage_seconds,
)
from wdprobe.scoring.stats import paired_difference_test
from wdprobe.stages.readouts import Reading, Readout, read_interventions, readout

DEFAULT_ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)
STEER_COLUMNS = list(readout("letter").part_columns["steer"])


def steering_vectors(reading: Reading, controls: Sequence[str] = DEFAULT_CONTROLS,
                     seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Unit-alpha steering vectors ``[n_items, n_layers, d]``: each item's cross-fitted stance direction scaled by its
    fold's mean-difference length and signed toward the item's word choice, and each control's direction with the
    same norm and sign, by control name."""
    y = reading.items["y_word"].to_numpy()
    sign = np.where(y == 1, 1.0, -1.0)[:, None, None]
    scale = reading.gap[:, :, None]
    units = control_directions(controls, reading.sources, y, reading.random, seed)
    return reading.stance * scale * sign, {name: u * scale * sign for name, u in units.items()}


def steer_rows(lm, reading: Reading, stance_vecs: np.ndarray, controls: Mapping[str, np.ndarray], idx: Sequence[int],
               layers: Sequence[int], alphas: Sequence[float], columns: Sequence[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Steer every deed run of the reading's items ``idx``: one record per run x (clean | condition, layer, alpha) with
    the log-odds of the word's choice over the other option and the answer-format mass, in ``columns``."""
    def rows_for(item: np.ndarray):
        return steering_rows(len(item), layers, alphas, stance_vecs[item], {c: v[item] for c, v in controls.items()})

    return read_interventions(lm, reading, idx, rows_for, columns, batch_size=batch_size, progress=progress)


def read_steering(rows: Sequence[Mapping[str, Any]], reading: Reading, mass: str = "letter_mass"):
    """Saved steering records as one reading per item x setting (the mean over an item's deed orders of its log-odds
    toward the word's choice: the order-averaged content reading where both orders ran), with each item's position
    in the reading."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype(int)
    for c in ("alpha", "toward_word", mass):
        frame[c] = frame[c].astype(float)
    if "deed_order" in frame:
        frame = (frame.groupby(["id", "condition", "layer", "alpha"], as_index=False, sort=False)
                 .agg(toward_word=("toward_word", "mean"), **{mass: (mass, "mean")},
                      n_orders=("deed_order", "nunique")))
    frame["item"] = frame["id"].map({iid: k for k, iid in enumerate(reading.ids)})
    return frame


def merge_steering(run_dir: str | Path, lm=None) -> dict[str, Any]:
    """Join ``RUN/shards/steer/*`` into the run, then pick and validate the best setting as unsharded."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, "steer")
    first = entries[0][1]
    cfg = {k: v for k, v in first["config"].items() if k != "shard"}
    letters = readout("letter")
    run.reset_stage("steer", [letters.outputs("steering", "steering")])
    run.reset_stage("steer_validate")
    for d, _ in entries:
        rows = RunDir(d).read_parts("steer")
        if rows:
            run.write_part("steer", rows, STEER_COLUMNS, settings=cfg)
    return run_steering(run.path, n_items=cfg["n_items"], layers=cfg["layers"], alphas=cfg["alphas"], seed=cfg["seed"],
                        folds=cfg["folds"], min_mass_ratio=first.get("min_mass_ratio", MIN_MASS_RATIO),
                        validate=first.get("validate", True), progress=False, lm=lm, space=cfg.get("space", "shown"),
                        controls=cfg.get("controls", ("random",)))


def run_steering(run_dir: str | Path, *, format: str | Readout = "letter", n_items: int | None = 64,
                 layers: str | Sequence[int] | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS, seed: int = 0,
                 folds: int = 5, min_mass_ratio: float = MIN_MASS_RATIO, chunk_items: int = 8, batch_size: int = 64,
                 progress: bool = True, restart: bool = False, validate: bool = True, lm=None, shard: str | None = None,
                 space: str = "auto", controls: Sequence[str] = DEFAULT_CONTROLS,
                 prompting: bool = True) -> dict[str, Any]:
    """Steer deed runs toward the word's choice at each (layer, alpha), read through ``format`` (a read-out name or
    object); writes ``steering/<prefix>steering*``.

    The best setting is picked on the grid's items, so its CS is optimistic (the best of many noisy cells);
    with ``validate`` it is rerun, with a fresh random control, on every readable two-option item *not* in the grid.
    Letters: ``space="content"`` (``auto`` for letter-free runs) steers along the word *content* direction (word
    residuals averaged over every option order), runs both deed orders and reads content CS; cells are ranked by the
    CS the whole run would have. Cloze: the direction is the word's cloze stance direction at its decision point;
    cells are ranked by balanced CS. ``shard`` (``"i/n"``, letters): the grid on that shard's items only, into
    ``RUN/shards/steer/i-of-n/``; ``wdprobe merge RUN`` joins the shards, picks the best setting and validates it.
    ``controls``: the control directions run beside the stance at every cell (names in
    :data:`~wdprobe.methods.steering.STEERING_CONTROLS`); the validation tests the stance against each. ``prompting``:
    the validation also runs the prompting baseline (each deed prompt preceded by the model's own word answer and an
    instruction to act on it; condition ``prompted``) and tests steering against it."""

    t_start = time.perf_counter()
    if batch_size < 1:  # refused before any model loads or result is touched
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    ro = readout(format)
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    alphas = [float(a) for a in alphas]
    stage = ro.stage("steer")
    part = Shard.parse(shard)
    if part and not ro.shardable:
        raise InputError(f"--shard: steering in the {ro.name} form is not sharded; run it whole")
    if restart:
        run.reset_stage(stage, [ro.outputs("steering", "steering")])
        run.reset_stage(ro.stage("steer_validate"))
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    extra = ro.settings(run, space=space if ro.name == "letter" else None)
    controls = checked_controls(controls)
    settings = {"n_items": n_items, "layers": layers, "alphas": alphas, "seed": seed, "folds": folds,
                "hook": "resid_post", **extra, **({} if controls == ["random"] else {"controls": controls})}
    settings.update({k: {"min_mass_ratio": min_mass_ratio}[k] for k in ro.steer_settings})
    work.check_or_start(stage, {**settings, **({"shard": str(part)} if part else {})})
    reading = ro.reading(run, lm, n_items=n_items, seed=seed, layers=layers, folds=folds, settings=extra)
    out = run.path / "steering"
    out.mkdir(exist_ok=True)
    stem = f"{ro.prefix}steering"
    try:
        ro.fit_stance(reading, folds=folds, stratify=True)
    except InputError as exc:  # a small or lopsided sample: no cross-fitted direction to steer along; say so
        head: dict[str, Any] = {"n_items": len(reading), "n_left_out": len(reading.left_out), "best": None,
                                "validation": None, "skipped": f"no cross-fitted {ro.name} stance direction: {exc}"}
        atomic_write_text(run.path / ro.result_file("steer", "headline"), json.dumps(head, indent=2) + "\n")
        finish_stage(run, stage, headline=head, **stage_seconds(run, stage, t_start))
        return head
    stance_vecs, control_vecs = steering_vectors(reading, controls, seed)
    columns = ro.part_columns["steer"]
    done = {r["id"] for r in work.read_parts(stage)}
    todo = [i for i, iid in enumerate(reading.ids) if iid not in done and (part is None or part.holds(iid))]
    per_item = (len(reading.runs) // max(len(reading), 1)) * (1 + (1 + len(controls)) * len(layers) * len(alphas))
    bar = progress_bar((len(done) + len(todo)) * per_item, f"steer deeds ({ro.name})", progress, len(done) * per_item)

    def grid(idx: Sequence[int]) -> list[dict[str, Any]]:
        return steer_rows(lm, reading, stance_vecs, control_vecs, list(idx), layers, alphas, columns,
                          batch_size=batch_size, progress=bar.update)

    save_in_parts(work, stage, todo, chunk_size=chunk_items, columns=list(columns), compute=grid)
    bar.close()
    if part:
        finish_stage(work, stage, n_items=len(done) + len(todo), min_mass_ratio=min_mass_ratio,
                       validate=validate, **stage_seconds(work, stage, t_start))
        return {"shard": str(part), "n_items": len(done) + len(todo)}
    frame = read_steering(run.read_parts(stage), reading, ro.mass)
    items = ro.consistency(frame, reading)
    population = ro.population_cs(run, extra)
    table = summarise_steering(frame, items, population_consistency=population, mass=ro.mass)
    best = best_setting(table, min_mass_ratio=min_mass_ratio, key="cs_population" if population is not None
                        else ro.selects_by)
    validation, skipped = None, None
    if validate and best is not None:
        validation = validate_steering(run, lm, ro, reading, int(best["layer"]), float(best["alpha"]), extra,
                                       folds=folds, seed=seed, batch_size=batch_size, progress=progress,
                                       controls=controls, prompting=prompting)
        if "skipped" in validation:
            skipped, validation = validation["skipped"], None
    atomic_write_text(run.path / ro.result_file("steer", "table"), ro.steering_table(frame, items).to_csv(index=False))
    atomic_write_text(run.path / ro.result_file("steer", "summary"), table.to_csv(index=False))
    head = ro.steering_headline(reading, items, table, extra, layers=layers, population=population, best=best,
                                validation=validation, skipped=skipped)
    atomic_write_text(run.path / ro.result_file("steer", "headline"), json.dumps(head, indent=2) + "\n")
    model = scored_model_name(run)
    figs = localise_plots.steering_figures(table, ro.steering_where(model, reading, extra, head), min_mass_ratio,
                                           **ro.steering_figure_options(head))
    plots.write_html(figs, out / f"{stem}.html", heading=ro.steering_heading(model))
    pngs = [plots.write_png(f, out / f"{stem}-{i}.png") for i, f in enumerate(figs)]
    finish_stage(run, stage, headline=head, png=[str(p) for p in pngs if p], **stage_seconds(run, stage, t_start))
    return head


def prompted_rows(item: np.ndarray) -> tuple[list[Row], list[dict[str, Any]]]:
    """The prompting baseline's rows: each deed run once, as it is (its prompt carries the reminder)."""
    return ([Row(j) for j in range(len(item))],
            [{"item": j, "condition": "prompted", "layer": -1, "alpha": 0.0} for j in range(len(item))])


def steering_tests(frame, items, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """On held-out items at the one chosen setting (no selection left to correct for): paired sign-flip tests of
    steered consistency against clean (``beats_clean``), against each control direction (``beats_random``,
    ``beats_pair_random``) and against the prompting baseline where it ran (``beats_prompted``), and the prompting
    baseline against clean (``prompted_beats_clean``)."""
    f = frame[frame.condition != "clean"]
    after = {c: g.set_index("item")["toward_word"].gt(0).astype(float) for c, g in f.groupby("condition")}
    clean = items["consistent"].astype(float)
    stance = after.pop("stance")
    out = {"beats_clean": paired_difference_test(stance - clean.reindex(stance.index).to_numpy(), seed=seed).to_json()}
    for name, ctrl in after.items():
        out[control_key(name)] = paired_difference_test((stance - ctrl.reindex(stance.index)).to_numpy(),
                                                        seed=seed).to_json()
    if "prompted" in after:
        told = after["prompted"]
        out["prompted_beats_clean"] = paired_difference_test((told - clean.reindex(told.index)).to_numpy(),
                                                             seed=seed).to_json()
    return out


def validate_steering(run: RunDir, lm, ro: Readout, grid: Reading, layer: int, alpha: float,
                      settings: Mapping[str, Any], *, folds: int = 5, seed: int = 0, batch_size: int = 64,
                      progress: bool = True, controls: Sequence[str] = ("random",),
                      prompting: bool = False) -> dict[str, Any]:
    """The chosen (layer, alpha), with directions cross-fitted on the held-out items themselves and a fresh random
    direction of equal norm, on the readable two-option items the grid never saw; paired tests at that one setting.
    A validation that cannot run returns ``{"skipped": why, "n_items": ...}`` (the headline says why)."""

    stage = ro.stage("steer_validate")
    space = {k: settings[k] for k in ("space",) if k in settings}
    controls = list(controls)
    run.check_or_start(stage, {"layer": layer, "alpha": alpha, "grid_items": sorted(grid.ids), **space,
                               **({} if controls == ["random"] else {"controls": controls}),
                               **({"prompting": True} if prompting else {})})
    try:
        held = ro.reading(run, lm, n_items=None, seed=seed + 1, layers=[layer], folds=folds, settings=settings,
                          exclude=grid.ids)
        ro.fit_stance(held, folds=folds, stratify=True)
    except InputError as exc:  # no held-out item, or too few of one choice to cross-fit: nothing to validate on
        n = len(held) if "held" in locals() else 0
        return {"skipped": f"{n} items outside the grid; {exc}", "n_items": n}
    stance_vecs, control_vecs = steering_vectors(held, controls, seed + 1)
    columns = ro.part_columns["steer"]
    done = {r["id"] for r in run.read_parts(stage)}
    todo = [i for i, iid in enumerate(held.ids) if iid not in done]
    per_item = (2 + len(controls) + int(prompting)) * len(held.runs) // len(held)
    prompted = replace(held, runs=replace(held.runs, prompts=ro.prompted_prompts(run, lm, held))) if prompting else None
    bar = progress_bar(per_item * len(held), f"validate steering ({ro.name})", progress, per_item * (len(held) - len(todo)))

    def held_out(idx: Sequence[int]) -> list[dict[str, Any]]:
        rows = steer_rows(lm, held, stance_vecs, control_vecs, list(idx), [layer], [alpha], columns,
                          batch_size=batch_size, progress=bar.update)
        if prompted is not None:
            rows += read_interventions(lm, prompted, list(idx), prompted_rows, columns, batch_size=batch_size,
                                       progress=bar.update)
        return rows

    save_in_parts(run, stage, todo, chunk_size=64, columns=list(columns), compute=held_out)
    bar.close()
    frame = read_steering(run.read_parts(stage), held, ro.mass)
    items = ro.consistency(frame, held)
    t = summarise_steering(frame, items, mass=ro.mass)
    result: dict[str, Any] = {**space, "n_items": len(held), "layer": layer, "alpha": alpha,
                              "cs_clean": t.attrs["clean_cs"]}
    for c in ("stance", *controls, *(["prompted"] if prompting else [])):
        r = t[t.condition == c].iloc[0]
        result[c] = {k: float(r[k]) for k in ("cs", "flip_rate", "break_rate", "mass_ratio", "mass_ratio_median")}
    result["controls"] = controls
    result["tests"] = steering_tests(frame, items, seed=seed)
    finish_stage(run, stage, result=result)
    return result
