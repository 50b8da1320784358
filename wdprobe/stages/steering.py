"""The steering stage on a run directory: add alpha x the word-stance direction in deed runs over a
(layer, alpha) grid, pick the best setting, validate it on held-out items against a random direction.

Finished chunks of items are saved in ``steer.parts`` (an interrupted run resumes); the outputs are tidy
CSVs, a headline JSON and figures under ``steering/``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.interventions import resolve_layers
from wdprobe.methods.steering import best_setting, steer, summarise_steering
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import (
    model_for_run,
    progress_bar,
    save_in_parts,
    scored_model_name,
    stage_seconds,
)
from wdprobe.scoring.stats import paired_difference_test
from wdprobe.stages.pairs import (
    content_directions,
    deed_runs,
    load_pairs,
    stance_directions,
    target_space,
)


def merge_steering(run_dir: str | Path, lm=None) -> dict[str, Any]:
    """Join ``RUN/shards/steer/*`` into the run, then pick and validate the best setting as unsharded."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, "steer")
    first = entries[0][1]
    cfg = {k: v for k, v in first["config"].items() if k != "shard"}
    run.reset_stage("steer", ["steering"])
    run.reset_stage("steer_validate")
    for d, _ in entries:
        rows = RunDir(d).read_parts("steer")
        if rows:
            run.write_part("steer", rows, STEER_COLUMNS, settings=cfg)
    return run_steering(run.path, n_items=cfg["n_items"], layers=cfg["layers"], alphas=cfg["alphas"], seed=cfg["seed"],
                        folds=cfg["folds"], min_mass_ratio=first.get("min_mass_ratio", 0.5),
                        validate=first.get("validate", True), progress=False, lm=lm, space=cfg.get("space", "shown"))


# ---- steering --------------------------------------------------------------------------------------

def steering_vectors(pairs, dirs) -> tuple[np.ndarray, np.ndarray]:
    """Unit-alpha steering vectors ``[n_items, n_layers, d]``: the stance direction scaled by its mean-difference
    length and signed toward each item's word answer, and a random direction with the same norm and sign."""
    sign = np.where(pairs.items["y_word"].to_numpy() == 1, 1.0, -1.0)[:, None, None]
    unit = dirs.gap[:, :, None]
    return dirs.stance * unit * sign, np.broadcast_to(dirs.random[None], dirs.stance.shape) * unit * sign


STEER_COLUMNS = ["id", "deed_order", "condition", "layer", "alpha", "toward_word", "letter_mass"]
DEFAULT_ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def directions_in(space: str, run_dir: Path, pairs, layers, *, folds: int, seed: int):
    """The word-stance directions of the space: letter-balanced shown-answer directions, or content directions."""
    if space == "content":
        return content_directions(run_dir, pairs, layers, folds=folds, seed=seed)
    return stance_directions(run_dir, pairs, layers, folds=folds, seed=seed)


def steer_rows(lm, pairs, runs, stance_vecs, random_vecs, idx: Sequence[int], layers, alphas, *, batch_size: int,
               progress) -> list[dict[str, Any]]:
    """Steer the deed runs of pair items ``idx`` (every order the space reads); one record per run x setting."""
    rows = [k for k in range(len(runs)) if runs.item[k] in set(idx)]
    items = runs.item[rows]
    f = steer(lm, [runs.prompts[k] for k in rows], stance_vecs[items], random_vecs[items], runs.toward[rows],
              runs.away[rows], pairs.token_ids, layers, alphas, batch_size=batch_size, progress=progress)
    f["id"] = [pairs.items["id"][items[k]] for k in f["item"]]
    f["deed_order"] = [runs.order[rows[k]] for k in f["item"]]
    return f[STEER_COLUMNS].to_dict("records")


def read_steering(rows: Sequence[dict[str, Any]], pairs):
    """Saved steering records as one reading per item x setting: in content space the mean over the item's deed
    orders of the log-odds toward its word content choice (the order-averaged reading), else the shown run's."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if "deed_order" not in frame:
        frame["deed_order"] = "shown"
    frame["layer"] = frame["layer"].astype(int)
    for c in ("alpha", "toward_word", "letter_mass"):
        frame[c] = frame[c].astype(float)
    frame = (frame.groupby(["id", "condition", "layer", "alpha"], as_index=False, sort=False)
             .agg(toward_word=("toward_word", "mean"), letter_mass=("letter_mass", "mean"),
                  n_orders=("deed_order", "nunique")))
    frame["item"] = frame["id"].map({iid: k for k, iid in enumerate(pairs.items["id"])})
    return frame


def run_steering(run_dir: str | Path, *, n_items: int | None = 64, layers: str | Sequence[int] | None = None,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, seed: int = 0, folds: int = 5, min_mass_ratio: float = 0.5,
                 chunk_items: int = 8, batch_size: int = 64, progress: bool = True, restart: bool = False,
                 validate: bool = True, lm=None, shard: str | None = None, space: str = "auto") -> dict[str, Any]:
    """Steer deed runs toward the word answer at each (layer, alpha); writes ``steering/``.

    The best setting is picked on the grid's items, so its CS is optimistic (the best of many noisy cells);
    with ``validate`` it is rerun, with its random control, on every two-option item *not* in the grid.
    ``space="content"`` (``auto`` for letter-free runs): the direction is the word *content* direction (word
    residuals averaged over every option order, difference of means by the word content choice), each item is
    steered in both deed orders and read in content space, and CS is content CS.
    ``shard`` (``"i/n"``): the grid on that shard's items only, into ``RUN/shards/steer/i-of-n/``;
    ``wdprobe merge RUN`` joins the shards, picks the best setting and validates it as unsharded."""

    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    alphas = [float(a) for a in alphas]
    space = target_space(run.path, space)
    stage = "steer"
    if restart:
        run.reset_stage(stage, ["steering"])
        run.reset_stage("steer_validate")
    part = Shard.parse(shard)
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    work.check_or_start(stage, {"n_items": n_items, "layers": layers, "alphas": alphas, "seed": seed, "folds": folds,
                                "hook": "resid_post", "position": "last", "space": space,
                                **({"shard": str(part)} if part else {})})
    pairs = load_pairs(run.path, lm.tokenizer, n_items=n_items, seed=seed, space=space)
    dirs = directions_in(space, run.path, pairs, layers, folds=folds, seed=seed)
    stance_vecs, random_vecs = steering_vectors(pairs, dirs)
    runs = deed_runs(pairs, space)
    done = {r["id"] for r in work.read_parts(stage)}
    todo = [i for i in range(len(pairs)) if pairs.items["id"][i] not in done
            and (part is None or part.holds(pairs.items["id"][i]))]
    per_item = (len(runs) // len(pairs)) * (1 + 2 * len(layers) * len(alphas))
    bar = progress_bar((len(done) + len(todo)) * per_item, "steer deeds", progress, len(done) * per_item)

    def grid(idx: Sequence[int]) -> list[dict[str, Any]]:
        return steer_rows(lm, pairs, runs, stance_vecs, random_vecs, list(idx), layers, alphas, batch_size=batch_size,
                          progress=bar.update)

    save_in_parts(work, stage, todo, chunk_size=chunk_items, columns=STEER_COLUMNS, compute=grid)
    bar.close()
    if part:
        work.mark_done(stage, n_items=len(done) + len(todo), min_mass_ratio=min_mass_ratio,
                          validate=validate, **stage_seconds(work, stage, t_start))
        return {"shard": str(part), "n_items": len(done) + len(todo)}
    frame = read_steering(run.read_parts(stage), pairs)
    metrics = json.loads((run.path / "metrics.json").read_text())
    population = (metrics["readings"]["content"]["cs"]["micro"]["value"] if space == "content" else metrics["cs_micro"])
    table = summarise_steering(frame, pairs.items, population_consistency=population)
    best = best_setting(table, min_mass_ratio=min_mass_ratio, key="cs_population")
    validation, skipped = None, None
    if validate and best is not None:
        validation = validate_steering(run, lm, pairs, int(best["layer"]), float(best["alpha"]), folds=folds, seed=seed,
                                       batch_size=batch_size, progress=progress, space=space)
        if "skipped" in validation:
            skipped, validation = validation["skipped"], None
    out = run.path / "steering"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "steering.csv", frame.to_csv(index=False))
    atomic_write_text(out / "steering_summary.csv", table.to_csv(index=False))
    head = {"space": space, "n_items": len(pairs), "n_inconsistent": int((pairs.items.consistent == 0).sum()),
            "clean_cs_items": table.attrs["clean_cs"], "clean_letter_mass": table.attrs["clean_letter_mass"],
            "cs_population_clean": population,
            "mean_difference_norm": dict(zip(map(int, layers), map(float, dirs.gap.mean(0)))),
            "deed_residual_norm": dict(zip(map(int, layers), map(float, dirs.deed_norm))),
            "best": best, "validation": validation, "validation_skipped": skipped}
    atomic_write_text(out / "steering_headline.json", json.dumps(head, indent=2) + "\n")
    model = scored_model_name(run)
    where = (f"{model}, {len(pairs)} two-option items; alpha in units of the word-answer mean difference at the layer"
             + ("; content space: word content direction, both deed orders, content CS" if space == "content" else ""))
    figs = localise_plots.steering_figures(table, where, min_mass_ratio)
    plots.write_html(figs, out / "steering.html", heading=f"wdprobe steering: {model}")
    pngs = [plots.write_png(f, out / f"steering-{i}.png") for i, f in enumerate(figs)]
    run.mark_done(stage, headline=head, png=[str(p) for p in pngs if p], **stage_seconds(run, stage, t_start))
    return head


def steering_tests(frame, items, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """On held-out items at the one chosen setting (no selection left to correct for): paired sign-flip tests of
    steered consistency against clean (``beats_clean``) and against the random direction (``beats_random``)."""
    f = frame[frame.condition.isin(["stance", "random"])]
    after = {c: g.set_index("item")["toward_word"].gt(0).astype(float) for c, g in f.groupby("condition")}
    clean = items["consistent"].astype(float)
    stance = after["stance"]
    return {"beats_clean": paired_difference_test(stance - clean.reindex(stance.index).to_numpy(), seed=seed).to_json(),
            "beats_random": paired_difference_test((stance - after["random"].reindex(stance.index)).to_numpy(),
                                                   seed=seed).to_json()}


def validate_steering(run: RunDir, lm, grid_pairs, layer: int, alpha: float, *, folds: int = 5, seed: int = 0,
                      batch_size: int = 64, progress: bool = True, space: str = "shown") -> dict[str, Any]:
    """The chosen (layer, alpha) and a fresh random direction of equal norm on the items the grid never saw; a
    validation that cannot run returns ``{"skipped": why, "n_items": 0}`` (the headline says why)."""

    stage = "steer_validate"
    run.check_or_start(stage, {"layer": layer, "alpha": alpha, "grid_items": sorted(grid_pairs.items["id"]),
                               "space": space})
    everything = load_pairs(run.path, lm.tokenizer, n_items=None, space=space)
    seen = set(grid_pairs.items["id"])
    held = everything.subset([i for i, iid in enumerate(everything.items["id"]) if iid not in seen])
    if not len(held):
        return {"skipped": "every readable item was in the grid", "n_items": 0}
    dirs = directions_in(space, run.path, held, [layer], folds=folds, seed=seed + 1)
    stance_vecs, random_vecs = steering_vectors(held, dirs)
    runs = deed_runs(held, space)
    done = {r["id"] for r in run.read_parts(stage)}
    todo = [i for i in range(len(held)) if held.items["id"][i] not in done]
    per_item = 3 * len(runs) // len(held)
    bar = progress_bar(per_item * len(held), "validate steering", progress, per_item * (len(held) - len(todo)))

    def held_out(idx: Sequence[int]) -> list[dict[str, Any]]:
        return steer_rows(lm, held, runs, stance_vecs, random_vecs, list(idx), [layer], [alpha], batch_size=batch_size,
                          progress=bar.update)

    save_in_parts(run, stage, todo, chunk_size=64, columns=STEER_COLUMNS, compute=held_out)
    bar.close()
    frame = read_steering(run.read_parts(stage), held)
    t = summarise_steering(frame, held.items)
    row = {c: t[t.condition == c].iloc[0] for c in ("stance", "random")}
    out = {"space": space, "n_items": len(held), "layer": layer, "alpha": alpha, "cs_clean": t.attrs["clean_cs"]}
    for c, r in row.items():
        out[c] = {k: float(r[k]) for k in ("cs", "flip_rate", "break_rate", "mass_ratio")}
    out["tests"] = steering_tests(frame, held.items, seed=seed)
    run.mark_done(stage, result=out)
    return out
