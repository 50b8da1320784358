"""The localisation stages on a run directory: cross-form patching, positional patching, steering.

Each stage reads the scored run (prompts, letters) and its capture (stance directions, word residuals),
writes finished chunks of items atomically into ``{stage}.parts`` (so an interrupted run resumes), then
tidy CSVs, a headline JSON and plotly figures under ``patching/`` or ``steering/``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cache import atomic_write_text
from .runs import RunDir

LOW_RANK_CORRELATION = 0.5  # below this, attribution heatmaps are not to be trusted without exact checks


def _seconds(run: RunDir, stage: str, t0: float) -> dict[str, float]:
    """This call's wall time and the stage's total over resumed calls, for the manifest."""
    spent = time.perf_counter() - t0
    before = run.read_manifest().get("stages", {}).get(stage, {}).get("seconds_total", 0.0)
    return {"seconds": round(spent, 1), "seconds_total": round(before + spent, 1)}


def _model(run: RunDir, lm):
    if lm is not None:
        return lm
    from .models import load_for_run

    return load_for_run(run.read_manifest())


def _bar(total: int, desc: str, progress: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row", disable=not progress)


def _model_name(run: RunDir) -> str:
    return run.read_manifest()["stages"]["score"]["config"]["model"]


def _resolve_layers(layers, lm) -> list[int]:
    from .interventions import parse_layers

    return parse_layers(layers, lm.bridge.cfg.n_layers)


# ---- cross-form patching ----------------------------------------------------------------------------

PATCH_COLUMNS = ["id", "condition", "layer", "toward_word", "letter_mass"]


def run_cross_patch(run_dir: str | Path, *, n_items: int | None = 64, layers: str | Sequence[int] | None = None,
                    conditions: Sequence[str] = ("full", "stance", "letter", "random"), seed: int = 0, folds: int = 5,
                    chunk_items: int = 8, batch_size: int = 64, progress: bool = True, restart: bool = False,
                    lm=None, shard: str | None = None) -> dict[str, Any]:
    """Word -> deed patching at the final position, layer by layer; writes ``patching/cross_form*``.
    ``restart`` discards an earlier run of this stage (otherwise it resumes, or refuses other settings).
    ``shard`` (``"i/n"``): patch only that shard's items, into ``RUN/shards/patch_cross/i-of-n/``; the
    items, directions and folds are chosen over the whole run as unsharded, so ``wdprobe merge RUN``
    gives the unsharded results."""
    from .shards import Shard, shard_dir

    from . import localise_plots, plots
    from .pairs import load_pairs, stance_directions
    from .patching import CROSS_CONDITIONS, InterventionError, cross_form_patching, summarise_cross_form

    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = _model(run, lm)
    layers = _resolve_layers(layers, lm)
    bad = [c for c in conditions if c not in CROSS_CONDITIONS]
    if bad:
        raise InterventionError(f"unknown patching condition(s) {bad}: choose from {list(CROSS_CONDITIONS)}")
    stage = "patch_cross"
    if restart:
        run.reset_stage(stage, ["patching/cross_form*"])
    part = Shard.parse(shard)
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    work.check_or_start(stage, {"n_items": n_items, "layers": layers, "conditions": list(conditions), "seed": seed,
                                "folds": folds, "hook": "resid_post", "position": "last",
                                **({"shard": str(part)} if part else {})})
    pairs = load_pairs(run.path, lm.tokenizer, n_items=n_items, seed=seed)
    dirs = stance_directions(run.path, pairs, layers, folds=folds, seed=seed)
    done = {r["id"] for r in work.read_parts(stage)}
    todo = [i for i in range(len(pairs)) if pairs.items["id"][i] not in done
            and (part is None or part.holds(pairs.items["id"][i]))]
    if part:
        done = {i for i in done if part.holds(i)}
    per_item = 1 + len(conditions) * len(layers)
    bar = _bar((len(done) + len(todo)) * per_item, "patch word->deed", progress, len(done) * per_item)
    for s in range(0, len(todo), chunk_items):
        idx = todo[s: s + chunk_items]
        f = cross_form_patching(lm, [pairs.deed_prompts[i] for i in idx], dirs.word_sources[idx], pairs.toward[idx],
                                pairs.away[idx], pairs.token_ids, layers, conditions=conditions,
                                stance_dirs=dirs.stance[idx], random_dirs=dirs.random, letter_dirs=dirs.letter[idx],
                                batch_size=batch_size,
                                progress=bar.update)
        f["id"] = [pairs.items["id"][idx[k]] for k in f["item"]]
        work.write_part(stage, f[PATCH_COLUMNS].to_dict("records"), PATCH_COLUMNS)
    bar.close()
    if part:
        work.update_stage(stage, complete=True, n_items=len(done) + len(todo), **_seconds(work, stage, t_start))
        return {"shard": str(part), "n_items": len(done) + len(todo)}
    import pandas as pd

    frame = pd.DataFrame(run.read_parts(stage))
    frame["layer"] = frame["layer"].astype(int)
    for c in ("toward_word", "letter_mass"):
        frame[c] = frame[c].astype(float)
    pos = {iid: k for k, iid in enumerate(pairs.items["id"])}
    frame["item"] = frame["id"].map(pos)
    summary = summarise_cross_form(frame, pairs.items)
    summary.attrs["cs_clean"] = float(pairs.items["consistent"].mean())
    out = run.path / "patching"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "cross_form.csv", frame.merge(pairs.items[["id", "domain", "consistent", "same_letter"]],
                                                          on="id").to_csv(index=False))
    atomic_write_text(out / "cross_form_summary.csv", summary.to_csv(index=False))
    head = cross_form_headline(summary, pairs.items)
    atomic_write_text(out / "cross_form_headline.json", json.dumps(head, indent=2) + "\n")
    model = _model_name(run)
    figs = localise_plots.cross_form_figures(summary, f"{model}, {len(pairs)} two-option items "
                                             f"({int((pairs.items.consistent == 0).sum())} inconsistent)")
    plots.write_html(figs, out / "cross_form.html", heading=f"wdprobe cross-form patching: {model}")
    pngs = [plots.write_png(f, out / f"cross_form-{i}.png") for i, f in enumerate(figs)]
    run.update_stage(stage, complete=True, headline=head, png=[str(p) for p in pngs if p], **_seconds(run, stage, t_start))
    return head


def _save_exact(folder: Path, item_id: str, res: dict[str, Any]) -> None:
    atomic_write_text(folder / f"{item_id}.json", json.dumps({"clean": res["clean"], "counterfactual": res["counterfactual"],
                                                              "patched": np.asarray(res["patched"]).tolist()}))


def _saved_exact(run_dir: Path, stage: str, form: str) -> dict[str, dict[str, Any]]:
    """Exact positional patching results already saved, by item id (this run's and its shards'; a restart
    deletes the run's own with the stage's other outputs)."""
    out = {}
    name = f"patching/positional-{form}-exact"
    folders = [run_dir / name] + sorted((run_dir / "shards" / stage).glob(f"*-of-*/{name}"))
    for folder in folders:
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            d = json.loads(f.read_text())
            out[f.stem] = {"clean": d["clean"], "counterfactual": d["counterfactual"], "patched": np.array(d["patched"])}
    return out


def merge_positional(run_dir: str | Path, stage: str, lm=None) -> dict[str, Any]:
    """Positional patching from its shards: every saved exact item is reused, the rest of the stage rerun."""
    from .merge import checked_shards

    run = RunDir(run_dir)
    entries = checked_shards(run.path, stage)
    cfg = entries[0][1]["config"]
    run.reset_stage(stage, [f"patching/positional-{cfg['form']}*"])
    return run_positional_patch(run.path, form=cfg["form"], n_items=cfg["n_items"], n_exact=cfg["n_exact"],
                                layers=cfg["layers"], min_effect=cfg["min_effect"], screen=cfg["screen"], seed=cfg["seed"],
                                progress=False, lm=lm)


def merge_cross_patch(run_dir: str | Path, lm=None) -> dict[str, Any]:
    """Join ``RUN/shards/patch_cross/*`` into the run and write the stage's outputs as an unsharded run would."""
    from .merge import checked_shards

    run = RunDir(run_dir)
    stage = "patch_cross"
    entries = checked_shards(run.path, stage)
    cfg = {k: v for k, v in entries[0][1]["config"].items() if k != "shard"}
    run.reset_stage(stage, ["patching/cross_form*"])
    for d, _ in entries:
        rows = RunDir(d).read_parts(stage)
        if rows:
            run.write_part(stage, rows, PATCH_COLUMNS)
    return run_cross_patch(run.path, n_items=cfg["n_items"], layers=cfg["layers"], conditions=cfg["conditions"],
                           seed=cfg["seed"], folds=cfg["folds"], progress=False, lm=lm)


def merge_steering(run_dir: str | Path, lm=None) -> dict[str, Any]:
    """Join ``RUN/shards/steer/*`` into the run, then pick and validate the best setting as unsharded."""
    from .merge import checked_shards

    run = RunDir(run_dir)
    entries = checked_shards(run.path, "steer")
    first = entries[0][1]
    cfg = {k: v for k, v in first["config"].items() if k != "shard"}
    run.reset_stage("steer", ["steering"])
    run.reset_stage("steer_validate")
    for d, _ in entries:
        rows = RunDir(d).read_parts("steer")
        if rows:
            run.write_part("steer", rows, STEER_COLUMNS)
    return run_steering(run.path, n_items=cfg["n_items"], layers=cfg["layers"], alphas=cfg["alphas"], seed=cfg["seed"],
                        folds=cfg["folds"], min_mass_ratio=first.get("min_mass_ratio", 0.5),
                        validate=first.get("validate", True), progress=False, lm=lm)


def cross_form_headline(summary, items) -> dict[str, Any]:
    """Per condition, the layer with the most inconsistent items flipped, and that layer's numbers."""
    out: dict[str, Any] = {"n_items": int(len(items)), "n_inconsistent": int((items.consistent == 0).sum()),
                           "cs_clean": float(items["consistent"].mean()),
                           "same_letter_rate_inconsistent": float(items[items.consistent == 0]["same_letter"].mean())}
    for cond, g in summary.groupby("condition"):
        best = g.loc[g["flip_rate"].idxmax()]
        out[cond] = {k: (float(best[k]) if k != "layer" else int(best[k])) for k in
                     ("layer", "flip_rate", "normalised_effect", "break_rate", "flip_rate_same_letter",
                      "flip_rate_other_letter", "cs_after", "letter_mass")}
        top = g.loc[g["cs_after"].idxmax()]
        out[cond]["best_cs_after"] = {"layer": int(top["layer"]), "cs_after": float(top["cs_after"])}
        out[cond]["flip_rate_by_layer"] = {int(r.layer): round(float(r.flip_rate), 4) for r in g.itertuples()}
    return out


# ---- positional patching ----------------------------------------------------------------------------

def token_segments(tokenizer, prompt: str, pres, form: str) -> list[str]:
    """Role of each prompt token: instruction, scenario, 'A.'/'B.' labels, 'option A'/'option B' text,
    'Answer:' and the final token (so heatmaps of different items can be averaged by role)."""
    from .capture import presentation_spans
    from .scoring import _encode

    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    n = len(_encode(tokenizer, [prompt], "cpu")["input_ids"][0])
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
    import pandas as pd

    from .shards import Shard, shard_dir

    from . import localise_plots, plots
    from .interventions import Row, resid_hook, run_interventions
    from .pairs import load_pairs
    from .patching import AlignmentError, aligned_tokens, attribution_patching, exact_patching, normalised, \
        rank_correlation, swap_alignment, swap_counterfactual
    from .prompts import normal_prompt, wrap

    if form not in ("word", "deed"):
        raise ValueError(f"form must be 'word' or 'deed', not {form!r}")
    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = _model(run, lm)
    layers = _resolve_layers(layers, lm)
    hooks = [resid_hook(l, "resid_pre", lm.bridge.cfg.n_layers) for l in layers]
    stage = f"patch_positional_{form}"
    if restart:
        run.reset_stage(stage, [f"patching/positional-{form}*"])
    part = Shard.parse(shard)
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    work.check_or_start(stage, {"form": form, "n_items": n_items, "n_exact": n_exact, "layers": layers,
                                "min_effect": min_effect, "screen": screen, "seed": seed, "hook": "resid_pre",
                                **({"shard": str(part)} if part else {})})
    pairs = load_pairs(run.path, lm.tokenizer, n_items=None)
    use_chat = run.read_manifest()["stages"]["score"]["config"]["chat_template"]
    clean_all, cf_all, pres_all = [], [], []
    for p, prompts in zip(pairs.presentations, pairs.word_prompts if form == "word" else pairs.deed_prompts):
        cf = wrap(normal_prompt(swap_counterfactual(p, form), form), lm.tokenizer, use_chat)
        try:
            swap_alignment(lm.tokenizer, p, form, prompts, cf)
        except AlignmentError:
            continue
        clean_all.append(prompts)
        cf_all.append(cf)
        pres_all.append(p)
    if not clean_all:
        raise ValueError(f"{run.path}: no {form} item has two options whose swap aligns token by token")
    order = np.random.default_rng(seed).permutation(len(clean_all))[:screen]
    # screen a seeded sample for items whose answer depends on the options' content; keep the strongest
    token_ids = pairs.token_ids[:2]
    block = [int(k) for k in order]
    lp = run_interventions(lm, [clean_all[k] for k in block] + [cf_all[k] for k in block],
                           [Row(j) for j in range(2 * len(block))], token_ids, batch_size=batch_size)
    lo = lp[:, 0] - lp[:, 1]
    effect = np.abs(lo[: len(block)] - lo[len(block):])
    ranked = [block[j] for j in np.argsort(-effect) if effect[j] >= min_effect][:n_items]
    screened = len(block)
    if not ranked:
        raise ValueError(f"{run.path}: no aligned {form} item changes its answer log-odds by >= {min_effect} when its "
                         f"options are swapped ({screened} screened; largest change {effect.max():.2f}); "
                         "lower --min-effect")
    # exact patching costs (layers x tokens) forwards per item: do it on the shortest chosen items
    chosen = sorted(ranked, key=lambda k: len(lm.tokenizer(clean_all[k])["input_ids"]))
    clean = [clean_all[k] for k in chosen]
    cf = [cf_all[k] for k in chosen]
    ids = [pres_all[k].item.id for k in chosen]
    tokens = [aligned_tokens(lm.tokenizer, a, b) for a, b in zip(clean, cf)]
    segs = [token_segments(lm.tokenizer, a, pres_all[k], form) for a, k in zip(clean, chosen)]
    n_ex = min(n_exact, len(chosen))
    saved = _saved_exact(run.path, stage, form)
    todo = [i for i in range(n_ex) if ids[i] not in saved and (part is None or part.holds(ids[i]))]
    total = sum(len(tokens[i]) * len(hooks) for i in todo)
    bar = _bar(total, "exact positional patching", progress)
    t0 = time.perf_counter()
    for i in todo:  # one item at a time, saved as it finishes: an interrupted run keeps what is done
        res = exact_patching(lm, [clean[i]], [cf[i]], hooks, token_ids, batch_size=batch_size, progress=bar.update)[0]
        saved[ids[i]] = res
        _save_exact(work.path / "patching" / f"positional-{form}-exact", ids[i], res)
    t_exact = time.perf_counter() - t0
    bar.close()
    if part:
        work.update_stage(stage, complete=True, exact_items=[ids[i] for i in range(n_ex) if part.holds(ids[i])],
                          **_seconds(work, stage, t_start))
        return {"shard": str(part), "n_exact": sum(part.holds(ids[i]) for i in range(n_ex))}
    exact = [saved[ids[i]] for i in range(n_ex)]
    t0 = time.perf_counter()
    attr = attribution_patching(lm, clean, cf, hooks, token_ids)
    t_attr = time.perf_counter() - t0
    recs = []
    for method, results in (("attribution", attr), ("exact", exact)):
        for i, res in enumerate(results):
            norm = normalised(res)
            for h, hook in enumerate(hooks):
                for p, tok in enumerate(tokens[i]):
                    recs.append({"id": ids[i], "method": method, "hook": hook, "layer": layers[h], "position": p,
                                 "token": tok, "segment": segs[i][p], "patched": float(res["patched"][h, p]),
                                 "normalised": float(norm[h, p])})
    frame = pd.DataFrame(recs)
    rho = [rank_correlation(attr[i]["patched"], exact[i]["patched"]) for i in range(n_ex)]
    pooled = rank_correlation(np.concatenate([normalised(attr[i]).ravel() for i in range(n_ex)]),
                              np.concatenate([normalised(exact[i]).ravel() for i in range(n_ex)])) if n_ex else float("nan")
    out = run.path / "patching"
    out.mkdir(exist_ok=True)
    stem = f"positional-{form}"
    atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False))
    seg_table = (frame.groupby(["method", "layer", "segment"])["normalised"].mean().reset_index())
    atomic_write_text(out / f"{stem}-segments.csv", seg_table.to_csv(index=False))
    head = {"form": form, "n_items": len(chosen), "n_exact": n_ex, "screened": screened,
            "aligned_candidates": len(clean_all), "screen_effect_quantiles": {q: round(float(np.quantile(effect, q)), 3)
                                                                              for q in (0.5, 0.9, 0.99, 1.0)},
            "rank_correlation_per_item": [round(r, 4) for r in rho],
            "rank_correlation_pooled": pooled, "seconds_attribution": round(t_attr, 2),
            "seconds_exact": round(t_exact, 2), "clean_minus_counterfactual": [round(r["clean"] - r["counterfactual"], 3)
                                                                          for r in attr],
            "low_rank_correlation": bool(n_ex and pooled < LOW_RANK_CORRELATION)}
    atomic_write_text(out / f"{stem}-headline.json", json.dumps(head, indent=2) + "\n")
    model = _model_name(run)
    figs = localise_plots.positional_figures(frame, seg_table, layers, SEGMENT_ORDER,
                                    f"{model}, {form} prompts, options swapped (A<->B)", n_show=min(n_ex, 2))
    plots.write_html(figs, out / f"{stem}.html", heading=f"wdprobe positional patching: {model}, {form} form")
    pngs = [plots.write_png(f, out / f"{stem}-{i}.png") for i, f in enumerate(figs)]
    run.update_stage(stage, complete=True, headline=head, png=[str(p) for p in pngs if p], **_seconds(run, stage, t_start))
    return head


# ---- steering --------------------------------------------------------------------------------------

def steering_vectors(pairs, dirs) -> tuple[np.ndarray, np.ndarray]:
    """Unit-alpha steering vectors ``[n_items, n_layers, d]``: the stance direction scaled by its mean-difference
    length and signed toward each item's word answer, and a random direction with the same norm and sign."""
    sign = np.where(pairs.items["y_word"].to_numpy() == 1, 1.0, -1.0)[:, None, None]
    unit = dirs.gap[:, :, None]
    return dirs.stance * unit * sign, np.broadcast_to(dirs.random[None], dirs.stance.shape) * unit * sign


STEER_COLUMNS = ["id", "condition", "layer", "alpha", "toward_word", "letter_mass"]
DEFAULT_ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def run_steering(run_dir: str | Path, *, n_items: int | None = 64, layers: str | Sequence[int] | None = None,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, seed: int = 0, folds: int = 5, min_mass_ratio: float = 0.5,
                 chunk_items: int = 8, batch_size: int = 64, progress: bool = True, restart: bool = False,
                 validate: bool = True, lm=None, shard: str | None = None) -> dict[str, Any]:
    """Steer deed runs toward the word answer at each (layer, alpha); writes ``steering/``.

    The best setting is picked on the grid's items, so its CS is optimistic (the best of many noisy cells);
    with ``validate`` it is rerun, with its random control, on every two-option item *not* in the grid.
    ``shard`` (``"i/n"``): the grid on that shard's items only, into ``RUN/shards/steer/i-of-n/``;
    ``wdprobe merge RUN`` joins the shards, picks the best setting and validates it as unsharded."""
    import pandas as pd

    from .shards import Shard, shard_dir

    from . import localise_plots, plots
    from .pairs import load_pairs, stance_directions
    from .steering import best_setting, steer, summarise_steering

    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = _model(run, lm)
    layers = _resolve_layers(layers, lm)
    alphas = [float(a) for a in alphas]
    stage = "steer"
    if restart:
        run.reset_stage(stage, ["steering"])
        run.reset_stage("steer_validate")
    part = Shard.parse(shard)
    work = RunDir(shard_dir(run.path, stage, part)) if part else run
    work.check_or_start(stage, {"n_items": n_items, "layers": layers, "alphas": alphas, "seed": seed, "folds": folds,
                                "hook": "resid_post", "position": "last", **({"shard": str(part)} if part else {})})
    pairs = load_pairs(run.path, lm.tokenizer, n_items=n_items, seed=seed)
    dirs = stance_directions(run.path, pairs, layers, folds=folds, seed=seed)
    stance_vecs, random_vecs = steering_vectors(pairs, dirs)
    done = {r["id"] for r in work.read_parts(stage)}
    todo = [i for i in range(len(pairs)) if pairs.items["id"][i] not in done
            and (part is None or part.holds(pairs.items["id"][i]))]
    per_item = 1 + 2 * len(layers) * len(alphas)
    bar = _bar((len(done) + len(todo)) * per_item, "steer deeds", progress, len(done) * per_item)
    for s in range(0, len(todo), chunk_items):
        idx = todo[s: s + chunk_items]
        f = steer(lm, [pairs.deed_prompts[i] for i in idx], stance_vecs[idx], random_vecs[idx], pairs.toward[idx],
                  pairs.away[idx], pairs.token_ids, layers, alphas, batch_size=batch_size, progress=bar.update)
        f["id"] = [pairs.items["id"][idx[k]] for k in f["item"]]
        work.write_part(stage, f[STEER_COLUMNS].to_dict("records"), STEER_COLUMNS)
    bar.close()
    if part:
        work.update_stage(stage, complete=True, n_items=len(done) + len(todo), min_mass_ratio=min_mass_ratio,
                          validate=validate, **_seconds(work, stage, t_start))
        return {"shard": str(part), "n_items": len(done) + len(todo)}
    frame = pd.DataFrame(run.read_parts(stage))
    frame["layer"] = frame["layer"].astype(int)
    for c in ("alpha", "toward_word", "letter_mass"):
        frame[c] = frame[c].astype(float)
    frame["item"] = frame["id"].map({iid: k for k, iid in enumerate(pairs.items["id"])})
    metrics = json.loads((run.path / "metrics.json").read_text())
    table = summarise_steering(frame, pairs.items, population_consistency=metrics["cs_micro"])
    best = best_setting(table, min_mass_ratio=min_mass_ratio, key="cs_population")
    validation = None
    if validate and best is not None:
        validation = validate_steering(run, lm, pairs, int(best["layer"]), float(best["alpha"]), folds=folds, seed=seed,
                                       batch_size=batch_size, progress=progress)
    out = run.path / "steering"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "steering.csv", frame.to_csv(index=False))
    atomic_write_text(out / "steering_summary.csv", table.to_csv(index=False))
    head = {"n_items": len(pairs), "n_inconsistent": int((pairs.items.consistent == 0).sum()),
            "clean_cs_items": table.attrs["clean_cs"], "clean_letter_mass": table.attrs["clean_letter_mass"],
            "cs_population_clean": metrics["cs_micro"],
            "mean_difference_norm": dict(zip(map(int, layers), map(float, dirs.gap.mean(0)))), "deed_residual_norm": dict(zip(map(int, layers),
                                                                                        map(float, dirs.deed_norm))),
            "best": best, "validation": validation}
    atomic_write_text(out / "steering_headline.json", json.dumps(head, indent=2) + "\n")
    model = _model_name(run)
    figs = localise_plots.steering_figures(table, f"{model}, {len(pairs)} two-option items; alpha in units of the word-answer "
                                         f"mean difference at the layer", min_mass_ratio)
    plots.write_html(figs, out / "steering.html", heading=f"wdprobe steering: {model}")
    pngs = [plots.write_png(f, out / f"steering-{i}.png") for i, f in enumerate(figs)]
    run.update_stage(stage, complete=True, headline=head, png=[str(p) for p in pngs if p], **_seconds(run, stage, t_start))
    return head


def validate_steering(run: RunDir, lm, grid_pairs, layer: int, alpha: float, *, folds: int = 5, seed: int = 0,
                      batch_size: int = 64, progress: bool = True) -> dict[str, Any] | None:
    """The chosen (layer, alpha) and a fresh random direction of equal norm on the items the grid never saw."""
    from .pairs import load_pairs, stance_directions
    from .steering import steer, summarise_steering

    stage = "steer_validate"
    run.check_or_start(stage, {"layer": layer, "alpha": alpha, "grid_items": sorted(grid_pairs.items["id"])})
    everything = load_pairs(run.path, lm.tokenizer, n_items=None)
    seen = set(grid_pairs.items["id"])
    held = everything.subset([i for i, iid in enumerate(everything.items["id"]) if iid not in seen])
    if not len(held):
        return None
    dirs = stance_directions(run.path, held, [layer], folds=folds, seed=seed + 1)
    stance_vecs, random_vecs = steering_vectors(held, dirs)
    done = {r["id"] for r in run.read_parts(stage)}
    todo = [i for i in range(len(held)) if held.items["id"][i] not in done]
    bar = _bar(3 * len(held), "validate steering", progress, 3 * (len(held) - len(todo)))
    for s in range(0, len(todo), 64):
        idx = todo[s: s + 64]
        f = steer(lm, [held.deed_prompts[i] for i in idx], stance_vecs[idx], random_vecs[idx], held.toward[idx],
                  held.away[idx], held.token_ids, [layer], [alpha], batch_size=batch_size, progress=bar.update)
        f["id"] = [held.items["id"][idx[k]] for k in f["item"]]
        run.write_part(stage, f[STEER_COLUMNS].to_dict("records"), STEER_COLUMNS)
    bar.close()
    import pandas as pd

    frame = pd.DataFrame(run.read_parts(stage))
    for c in ("alpha", "toward_word", "letter_mass"):
        frame[c] = frame[c].astype(float)
    frame["layer"] = frame["layer"].astype(int)
    frame["item"] = frame["id"].map({iid: k for k, iid in enumerate(held.items["id"])})
    t = summarise_steering(frame, held.items)
    row = {c: t[t.condition == c].iloc[0] for c in ("stance", "random")}
    out = {"n_items": len(held), "layer": layer, "alpha": alpha, "cs_clean": t.attrs["clean_cs"]}
    for c, r in row.items():
        out[c] = {k: float(r[k]) for k in ("cs", "flip_rate", "break_rate", "mass_ratio")}
    run.update_stage(stage, complete=True, result=out)
    return out


# ---- one page for a reader -------------------------------------------------------------------------

def localisation_figures(run_dir: str | Path) -> list[tuple[str, str, Any]]:
    """Every lens / patching / steering figure of a run, redrawn from its saved tables, as
    ``(section, name, figure)``; stages not run yet are left out."""
    import pandas as pd

    from . import localise_plots
    from .lens import trajectory_from_frame

    run = RunDir(run_dir)
    model = _model_name(run)
    figs: list[tuple[str, str, Any]] = []
    lens_csv = run.path / "lens" / "trajectory.csv"
    if lens_csv.is_file():
        traj = trajectory_from_frame(pd.read_csv(lens_csv))
        figs += [("lens", n, f) for n, f in zip(["lens-curves", "lens-divergence"], localise_plots.lens_figures(traj, model))]
    pdir = run.path / "patching"
    if (pdir / "cross_form_summary.csv").is_file():
        summary = pd.read_csv(pdir / "cross_form_summary.csv")
        head = json.loads((pdir / "cross_form_headline.json").read_text())
        if "cs_clean" in head:
            summary.attrs["cs_clean"] = head["cs_clean"]
        cf = localise_plots.cross_form_figures(summary, f"{model}, {head['n_items']} two-option items "
                                                        f"({head['n_inconsistent']} inconsistent)")
        figs += [("patching", n, f) for n, f in zip(["cross-form", "cross-form-by-letter"], cf)]
    for form in ("deed", "word"):
        if (pdir / f"positional-{form}.csv").is_file():
            frame = pd.read_csv(pdir / f"positional-{form}.csv")
            seg = pd.read_csv(pdir / f"positional-{form}-segments.csv")
            layers = sorted(frame["layer"].unique())
            n_ex = frame[frame.method == "exact"]["id"].nunique()
            pf = localise_plots.positional_figures(frame, seg, layers, SEGMENT_ORDER,
                                                   f"{model}, {form} prompts, options swapped (A<->B)", n_show=min(n_ex, 2))
            figs += [("positional", f"positional-{form}-{i}", f) for i, f in enumerate(pf)]
    sdir = run.path / "steering"
    if (sdir / "steering_summary.csv").is_file():
        table = pd.read_csv(sdir / "steering_summary.csv")
        head = json.loads((sdir / "steering_headline.json").read_text())
        table.attrs["clean_cs"] = head["clean_cs_items"]
        ratio = (head.get("best") or {}).get("min_mass_ratio", 0.5)
        sf = localise_plots.steering_figures(table, f"{model}, {head['n_items']} two-option items; alpha in units "
                                                    "of the word-answer mean difference at the layer", ratio)
        figs += [("steering", n, f) for n, f in zip(["steering-surface", "steering-curves"], sf)]
    return figs


LOCALISATION_TABLES = ["lens/summary.json", "patching/cross_form_summary.csv", "patching/cross_form_headline.json",
                       "patching/positional-deed-segments.csv", "patching/positional-deed-headline.json",
                       "patching/positional-word-segments.csv", "patching/positional-word-headline.json",
                       "steering/steering_summary.csv", "steering/steering_headline.json"]


def copy_localisation_tables(run_dir: str | Path, dest: str | Path) -> None:
    """The small summary tables behind the figures, beside a report (the big per-row tables stay in the run)."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in LOCALISATION_TABLES:
        src = Path(run_dir) / rel
        if src.is_file():
            name = "lens-summary.json" if rel == "lens/summary.json" else src.name
            shutil.copy(src, dest / name)


def write_localisation_report(run_dir: str | Path, out_dir: str | Path, *, png: bool = True) -> Path:
    """Redraw every lens / patching / steering figure of a run from its saved tables into one offline HTML
    page (``localisation.html``, plotly inlined once), with PNGs and the summary tables beside it."""
    from . import plots

    out = Path(out_dir)
    figs = localisation_figures(run_dir)
    if not figs:
        raise FileNotFoundError(f"{run_dir} has no lens, patching or steering results yet")
    copy_localisation_tables(run_dir, out / "localisation")
    model = _model_name(RunDir(run_dir))
    page = plots.write_html([f for _, _, f in figs], out / "localisation.html",
                            heading=f"wdprobe: where {model}'s deeds leave its words — lens, patching, steering")
    if png:
        for _, n, f in figs:
            plots.write_png(f, out / "localisation" / f"{n}.png")
    return page
