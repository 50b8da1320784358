"""Steering in the cloze form: add alpha x the word run's cloze stance direction to the deed run at its decision
point, over a (layer, alpha) grid, pick the best setting and validate it on items the grid never saw.

A cloze prompt has no letters, so the direction is read where the word's two options part
(:func:`wdprobe.core.option_scoring.decision_point`): the cross-fitted difference of means of the word
decision-point residuals by the word's cloze choice (pointing from the first canonical option to the second),
scaled by that mean difference's length and signed toward each item's word choice; the control is a random unit
direction with the same norm and sign. It is added at the deed's decision point (the deed prompt plus the tokens
both deed options share). The metric is the deed's next-token log-odds, at that step, of the option the word chose
over the other; a steered item counts as consistent when they point to the word's choice. ``option_mass`` (the
probability of the two options' decision tokens) plays the letter mass's part: a setting that drives it below
``min_mass_ratio`` of clean breaks the answer format and is not picked.

Outputs ``steering/cloze_*``; finished chunks live in ``steer_cloze.parts`` and ``steer_cloze_validate.parts``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.option_scoring import last_residuals
from wdprobe.errors import InputError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.interventions import resolve_layers, run_interventions
from wdprobe.methods.probes import crossfit_directions
from wdprobe.methods.steering import best_setting, steering_rows, summarise_steering
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import model_for_run, progress_bar, save_in_parts, scored_model_name, stage_seconds
from wdprobe.stages.cloze_patching import cloze_pairs
from wdprobe.stages.steering import DEFAULT_ALPHAS, steering_tests

STAGE = "steer_cloze"
VALIDATE_STAGE = "steer_cloze_validate"
COLUMNS = ["id", "condition", "layer", "alpha", "toward_word", "option_mass"]


def cloze_steering_vectors(items: Sequence[dict[str, Any]], sources: np.ndarray, *, folds: int = 5,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-alpha steering vectors ``[n_items, n_layers, d]`` from the word decision-point residuals ``sources``
    (``[n_items, n_layers, d]``): each item's cross-fitted cloze stance direction (fitted without it, folds
    stratified by the word's choice, which a model can make lopsidedly) times that
    fold's mean-difference length, signed toward the item's word choice; and a seeded random unit direction per
    layer with the same norm and sign."""
    y = np.array([int(it["y_word"]) for it in items], dtype=int)
    if sources.shape[0] != len(y):
        raise InputError(f"{sources.shape[0]} word residuals for {len(y)} items")
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise InputError(f"the word's cloze choice is the first option in {counts[0]} and the second in {counts[1]} of "
                         f"{len(y)} items: too few of one choice for {folds} cross-fitted folds (sample more items or "
                         "use fewer folds)")
    dirs, fold_of, gaps = crossfit_directions(sources, y, folds=folds, stratify=True)
    sign = np.where(y == 1, 1.0, -1.0)[:, None, None]
    scale = gaps[fold_of][:, :, None]
    rng = np.random.default_rng(seed + 7919)
    rand = rng.standard_normal(sources.shape[1:])
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    return dirs[fold_of] * scale * sign, rand[None] * scale * sign


def steer_cloze_rows(lm, items: Sequence[dict[str, Any]], stance_vecs: np.ndarray, random_vecs: np.ndarray,
                     layers: Sequence[int], alphas: Sequence[float], *, batch_size: int = 64,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One record per item x (clean | condition, layer, alpha): the deed's decision-step log-odds of the word's
    choice and the probability of the two decision tokens, with the vectors added at the deed's decision point."""
    rows, keys = steering_rows(len(items), layers, alphas, stance_vecs, random_vecs)
    union = sorted({t for it in items for t in it["deed_tokens"]})
    column = {t: k for k, t in enumerate(union)}
    lp = run_interventions(lm, [it["deed_text"] for it in items], rows, union, batch_size=batch_size, progress=progress)
    out = []
    for r, key in enumerate(keys):
        it = items[key["item"]]
        toward = column[it["deed_tokens"][it["y_word"]]]
        away = column[it["deed_tokens"][1 - it["y_word"]]]
        out.append({"id": it["id"], "condition": key["condition"], "layer": key["layer"], "alpha": key["alpha"],
                    "toward_word": float(lp[r, toward] - lp[r, away]),
                    "option_mass": float(np.exp(lp[r, toward]) + np.exp(lp[r, away]))})
    return out


def read_cloze_steering(rows: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]]):
    """Saved records as a typed frame with each item's position in ``items``, and the items' decision-step
    consistency (clean log-odds toward the word's choice > 0) as the table the summaries join on."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype(int)
    for c in ("alpha", "toward_word", "option_mass"):
        frame[c] = frame[c].astype(float)
    frame["item"] = frame["id"].map({it["id"]: k for k, it in enumerate(items)})
    clean = frame[frame.condition == "clean"].set_index("item")["toward_word"]
    table = pd.DataFrame({"id": [it["id"] for it in items], "domain": [it["domain"] for it in items],
                          "consistent": (clean.reindex(range(len(items))) > 0).astype(int).to_numpy()})
    return frame, table


def run_cloze_steering(run_dir: str | Path, *, n_items: int | None = 64, layers: str | Sequence[int] | None = None,
                       alphas: Sequence[float] = DEFAULT_ALPHAS, seed: int = 0, folds: int = 5,
                       min_mass_ratio: float = 0.5, chunk_items: int = 8, batch_size: int = 64, progress: bool = True,
                       restart: bool = False, validate: bool = True, lm=None) -> dict[str, Any]:
    """Steer deed runs toward the word's cloze choice at each (layer, alpha) at their decision points; writes
    ``steering/cloze_*``. The grid's best cell is optimistic (the best of many noisy cells); with ``validate`` it
    is rerun, with a fresh random control, on every readable two-option item not in the grid, and tested there."""
    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    alphas = [float(a) for a in alphas]
    if restart:
        run.reset_stage(STAGE, ["steering/cloze_*"])
        run.reset_stage(VALIDATE_STAGE)
    run.check_or_start(STAGE, {"n_items": n_items, "layers": layers, "alphas": alphas, "seed": seed, "folds": folds,
                               "hook": "resid_post", "position": "decision point", "min_mass_ratio": min_mass_ratio})
    items, left_out = cloze_pairs(run.path, lm, n_items=n_items, seed=seed)
    out = run.path / "steering"
    out.mkdir(exist_ok=True)
    sources = last_residuals(lm, [it["word_sequence"] for it in items], layers, batch_size=16)
    try:
        stance_vecs, random_vecs = cloze_steering_vectors(items, sources, folds=folds, seed=seed)
    except InputError as exc:  # a small or lopsided sample: no cross-fitted direction to steer along; say so
        head: dict[str, Any] = {"n_items": len(items), "n_left_out": len(left_out), "best": None, "validation": None,
                                "skipped": f"no cross-fitted cloze stance direction: {exc}"}
        atomic_write_text(out / "cloze_steering_headline.json", json.dumps(head, indent=2) + "\n")
        run.mark_done(STAGE, headline=head, **stage_seconds(run, STAGE, t_start))
        return head
    done = {r["id"] for r in run.read_parts(STAGE)}
    todo = [i for i, it in enumerate(items) if it["id"] not in done]
    per_item = 1 + 2 * len(layers) * len(alphas)
    bar = progress_bar(len(items) * per_item, "steer deeds (cloze)", progress, (len(items) - len(todo)) * per_item)

    def grid(idx: Sequence[int]) -> list[dict[str, Any]]:
        idx = list(idx)
        return steer_cloze_rows(lm, [items[i] for i in idx], stance_vecs[idx], random_vecs[idx], layers, alphas,
                                batch_size=batch_size, progress=bar.update)

    save_in_parts(run, STAGE, todo, chunk_size=chunk_items, columns=COLUMNS, compute=grid)
    bar.close()
    frame, table = read_cloze_steering(run.read_parts(STAGE), items)
    summary = summarise_steering(frame, table, mass="option_mass")
    best = best_setting(summary, min_mass_ratio=min_mass_ratio, key="cs_balanced")
    validation, skipped = None, None
    if validate and best is not None:
        validation = validate_cloze_steering(run, lm, items, int(best["layer"]), float(best["alpha"]), folds=folds,
                                             seed=seed, batch_size=batch_size, progress=progress)
        if "skipped" in validation:
            skipped, validation = validation["skipped"], None
    atomic_write_text(out / "cloze_steering.csv", frame.merge(table[["id", "consistent"]], on="id").to_csv(index=False))
    atomic_write_text(out / "cloze_steering_summary.csv", summary.to_csv(index=False))
    head = {"n_items": len(items), "n_left_out": len(left_out), "n_inconsistent": int((table.consistent == 0).sum()),
            "clean_cs_items": summary.attrs["clean_cs"], "clean_option_mass": summary.attrs["clean_option_mass"],
            "selected_by": (best or {}).get("selected_by", "cs_balanced"), "best": best, "validation": validation,
            "validation_skipped": skipped}
    atomic_write_text(out / "cloze_steering_headline.json", json.dumps(head, indent=2) + "\n")
    model = scored_model_name(run)
    where = (f"{model}, cloze form, {len(items)} two-option items read at the options' decision point; alpha in units "
             "of the word-choice mean difference at the layer; cells ranked by "
             + ("balanced CS (flip + keep) / 2" if head["selected_by"] == "cs_balanced" else "CS"))
    figs = localise_plots.steering_figures(summary, where, min_mass_ratio, mass_label="option-token mass",
                                           position="decision point", metric=head["selected_by"])
    plots.write_html(figs, out / "cloze_steering.html", heading=f"wdprobe steering in the cloze form: {model}")
    pngs = [plots.write_png(f, out / f"cloze_steering-{i}.png") for i, f in enumerate(figs)]
    run.mark_done(STAGE, headline=head, png=[str(p) for p in pngs if p], **stage_seconds(run, STAGE, t_start))
    return head


def validate_cloze_steering(run: RunDir, lm, grid_items: Sequence[dict[str, Any]], layer: int, alpha: float, *,
                            folds: int = 5, seed: int = 0, batch_size: int = 64, progress: bool = True
                            ) -> dict[str, Any]:
    """The chosen (layer, alpha), with directions cross-fitted on the held-out items themselves and a fresh random
    direction of equal norm, on the readable two-option items the grid never saw; paired tests at that one setting.
    A validation that cannot run returns ``{"skipped": why, "n_items": ...}`` (the headline says why)."""
    run.check_or_start(VALIDATE_STAGE, {"layer": layer, "alpha": alpha,
                                        "grid_items": sorted(it["id"] for it in grid_items)})
    everything, _ = cloze_pairs(run.path, lm, n_items=None)
    seen = {it["id"] for it in grid_items}
    held = [it for it in everything if it["id"] not in seen]
    sources = last_residuals(lm, [it["word_sequence"] for it in held], [layer], batch_size=16)
    try:
        stance_vecs, random_vecs = cloze_steering_vectors(held, sources, folds=folds, seed=seed + 1)
    except InputError as exc:  # too few held-out items of one choice to cross-fit: nothing to validate on
        return {"skipped": f"{len(held)} items outside the grid; {exc}", "n_items": len(held)}
    done = {r["id"] for r in run.read_parts(VALIDATE_STAGE)}
    todo = [i for i, it in enumerate(held) if it["id"] not in done]
    bar = progress_bar(3 * len(held), "validate steering (cloze)", progress, 3 * (len(held) - len(todo)))

    def held_out(idx: Sequence[int]) -> list[dict[str, Any]]:
        idx = list(idx)
        return steer_cloze_rows(lm, [held[i] for i in idx], stance_vecs[idx], random_vecs[idx], [layer], [alpha],
                                batch_size=batch_size, progress=bar.update)

    save_in_parts(run, VALIDATE_STAGE, todo, chunk_size=64, columns=COLUMNS, compute=held_out)
    bar.close()
    frame, table = read_cloze_steering(run.read_parts(VALIDATE_STAGE), held)
    t = summarise_steering(frame, table, mass="option_mass")
    result: dict[str, Any] = {"n_items": len(held), "layer": layer, "alpha": alpha, "cs_clean": t.attrs["clean_cs"]}
    for c in ("stance", "random"):
        r = t[t.condition == c].iloc[0]
        result[c] = {k: float(r[k]) for k in ("cs", "flip_rate", "break_rate", "mass_ratio")}
    result["tests"] = steering_tests(frame, table, seed=seed)
    run.mark_done(VALIDATE_STAGE, result=result)
    return result
