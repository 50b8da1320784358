#!/usr/bin/env python
"""The card of curves on edited organisms: plant a deed-only override in block L of the default model (every block,
three seeds at three blocks, null edits, a strength sweep), study each organism blind with today's instruments, and
score where each instrument puts the divergence against where it was planted.

    python experiments/edited_card.py --data WDCT.csv                        # the committed card (~70 min, 2 cores)
    python experiments/edited_card.py --data WDCT.csv --layers 4 12 --seeds 0 --out /tmp/c   # a quick look
    python experiments/edited_card.py --model SINCERE_DIR --against-stance --out reports/organisms/edited/balanced
    python experiments/edited_card.py --restudy-lens --out reports/organisms/edited/card   # add the trained lens

``--against-stance`` plants into a sincere organism (``wdprobe organism build --kind sincere-balanced``): each item's
planted option is its *incorrect* one (the organism's stance is the correct option, at either position), the items are
the organism's own (``items.jsonl``, with their cue lines), calibration draws from its training items and every
organism is measured on its held-out items, so the plant writes against a stance no token of the prompt gives away.
``--head-layers`` adds organisms whose plant is written through one attention head's output instead of an MLP unit.

Rules: ``reports/organisms/edited/card-rules.md`` (committed before the run) and
``wdprobe.studies.organisms.layer_card``. Items: WDCT's two-option items with a correct option in the seeded order of
``experiments/edited_organisms.py``: the first ``--pool`` calibrate (``--calibrate`` per seed), the next
``--held-out`` are measured (never calibrated on). Each organism is built into ``--work``, measured against the
parent on the held-out items (its studied and control items), and, when carded, studied by ``wdprobe run`` (cloze;
no positional patching, no report; steering alphas 4 and 16) on at most ``--per-group`` studied and as many
control items. The study gets a model directory and items, never the planted block; the card reads the layer each
instrument recovers from the study's saved tables, which are kept under ``--out``/studies. Rerunning resumes:
organisms with a saved result are not redone.

Each organism is scored with the parent's blocks below its edit replayed from one recorded reading of the parent
(``wdprobe.studies.organisms.replay``: bit-identical scores, checked against the full forward on the first organism
of each invocation, ``run.json``'s ``replay_check``).

``--restudy-lens`` adds the trained lens to a finished card (rules: the addendum of ``card-rules.md``): every studied
organism is rebuilt from its record (``wdprobe.studies.organisms.card_rebuild``), its study rerun on the same items
with the stages ``score``, ``capture`` and ``lens`` only, the rerun's logit-lens summary checked against the kept one
(counts equal, readings within 1e-3; else nothing is read), the trained lens's summary kept, the record's recovered
layers updated and the card rewritten.

Time: on 2 CPU cores about 4 minutes per seed to read the parent, then 30-70 s per organism that fails its gate
(less the higher its block) and about 2 minutes per organism studied; ``--restudy-lens`` about 1 minute per studied
organism after the parent's readings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import convert_default_model, load_model
from wdprobe.data.items import item_record, read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.studies.organisms.card_rebuild import CardOrganisms, NotTheStoredOrganism, same_summary
from wdprobe.studies.organisms.data import planted_order, sincere_organism_items
from wdprobe.studies.organisms.edit import (
    DIRECTIONS_FILE,
    build_edited_organism,
    edit_from_reading,
    parent_choices,
    read_parent,
)
from wdprobe.studies.organisms.edit_training import MAP_FITS, train_items_edit
from wdprobe.studies.organisms.layer_card import (
    INSTRUMENTS,
    keyed_split,
    recover_layers,
    score_card,
    studied_items,
    write_card_page,
)
from wdprobe.studies.organisms.replay import recorded_prefixes, replayed_prefix

TARGET = 1
STUDY_STAGES = ["score", "capture", "probes", "lens", "patch_cross", "steer"]
LENS_RESTUDY_STAGES = ["score", "capture", "lens"]
TUNED_SUMMARY = "lens/cloze-tuned-summary.json"
KEPT = ["lens/cloze-summary.json", TUNED_SUMMARY, "probes/cloze-last.csv", "patching/cloze_cross_form_summary.csv",
        "steering/cloze_steering_summary.csv", "steering/cloze_steering_headline.json",
        "patching/cloze_cross_form_headline.json", "probes/cloze-summary.json"]


def plan(seeds: list[int], layers: list[int], replicate_layers: list[int], null_layers: list[int],
         strength_layer: int, strengths: list[float], head_layers: list[int] = (), component: str = "mlp") -> list[dict]:
    """Every organism of the card, in the order it is built (seed by seed: one reading of the parent each).
    ``component``: what the override, null and strength organisms rewrite (``mlp`` or ``mlp-items``)."""
    out = []
    for seed in seeds:
        first = seed == seeds[0]
        for L in (layers if first else replicate_layers):
            out.append({"family": "override", "kind": "override", "layer": L, "seed": seed, "strength": 20.0})
        if first:
            for L in null_layers:
                out.append({"family": "null-gate", "kind": "null-gate", "layer": L, "seed": seed, "strength": 20.0})
                out.append({"family": "null-direction", "kind": "null-direction", "layer": L, "seed": seed,
                            "strength": 20.0})
            for s in strengths:
                out.append({"family": f"strength-{s:g}", "kind": "override", "layer": strength_layer, "seed": seed,
                            "strength": s})
            for L in head_layers:
                out.append({"family": "head-override", "kind": "override", "layer": L, "seed": seed, "strength": 20.0,
                            "component": "attn-head"})
    if component != "mlp":
        out = [o if "component" in o else {**o, "component": component} for o in out]
    return out


def name_of(o: dict) -> str:
    return f"{o['family']}-L{o['layer']}-s{o['seed']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--model", default=None, help="parent model directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="blocks planted with seed 0 (default: 1..n-2)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="calibration seeds (the first plants every block)")
    ap.add_argument("--replicate-layers", type=int, nargs="*", default=[4, 8, 12], help="blocks planted with the other seeds")
    ap.add_argument("--null-layers", type=int, nargs="*", default=[4, 8, 12], help="blocks of the null edits")
    ap.add_argument("--strength-layer", type=int, default=12, help="block of the strength sweep")
    ap.add_argument("--strengths", type=float, nargs="*", default=[0.25, 1.0, 3.0], help="strengths besides 20")
    ap.add_argument("--head-layers", type=int, nargs="*", default=[], help="blocks of the attention-head overrides")
    ap.add_argument("--component", default="mlp", choices=["mlp", "mlp-items"],
                    help="what the overrides rewrite: one MLP unit (one plant direction; studied on held-out items it "
                         "happens to move) or one unit per calibration item (each its own plant; studied on the "
                         "calibration items it holds on, gate: card-rules.md's fifth addendum)")
    ap.add_argument("--plant-score", default="mean", choices=["mean", "both"],
                    help="mlp-items: each item's plant raises its per-token mean margin (the fourth run's) or both "
                         "scorings' margins alike (seventh addendum)")
    ap.add_argument("--map-fit", default="ridge", choices=list(MAP_FITS),
                    help="mlp-items overrides: the units' map fitted by ridge (the fourth run's) or then trained on the "
                         "keyed deeds' two margins through the blocks above (ninth addendum)")
    ap.add_argument("--gate-pool", action="store_true",
                    help="fit the deed gate to stay shut on the word prompts of every pool item not calibrated on "
                         "too (never on the measured held-out items)")
    ap.add_argument("--units-by", default="mean", choices=["mean", "peak", "words"],
                    help="MLP edits replace the units quietest on average (mean) or at their peak over every "
                         "calibration and gate-item word position (peak; eighth addendum), or of least first-order "
                         "effect on the calibration and gate items' word margins (words; tenth addendum)")
    ap.add_argument("--gate-only", action="store_true",
                    help="measure every organism's behaviour gate and study none (a pilot of an edit's variants)")
    ap.add_argument("--pool", type=int, default=200, help="items the calibration sets are drawn from")
    ap.add_argument("--calibrate", type=int, default=40, help="calibration items per seed")
    ap.add_argument("--held-out", type=int, default=240, help="items every organism is measured on")
    ap.add_argument("--per-group", type=int, default=30, help="most studied (and most control) items per study")
    ap.add_argument("--out", default="reports/organisms/edited/card", help="results, kept study tables, the card")
    ap.add_argument("--work", default="/tmp/wdprobe-edited-card", help="edited weights and study runs (deleted)")
    ap.add_argument("--card-only", action="store_true",
                    help="build nothing: write the card from the organisms already measured (the rest listed as not run)")
    ap.add_argument("--restudy-lens", action="store_true",
                    help="rebuild every studied organism of the card in --out and add the trained lens to its study")
    ap.add_argument("--against-stance", action="store_true",
                    help="--model is a sincere organism: plant each item's incorrect option on its own held-out items")
    args = ap.parse_args(argv)

    if args.against_stance:
        pool, held = sincere_organism_items(args.model, args.pool, args.held_out)
        target_of = lambda it: 1 - it.correct  # noqa: E731  (against the stance: the incorrect option)
    else:
        items = planted_order(read_items(resolve_wdct_path(args.data)))
        pool, held = items[:args.pool], items[args.pool:args.pool + args.held_out]
        target_of = lambda it: TARGET  # noqa: E731
    targets = [target_of(it) for it in held]
    by_id = {i.id: i for i in held}
    ids = [i.id for i in held]
    parent_dir = Path(args.model) if args.model else convert_default_model()
    lm = load_model(str(parent_dir))
    t0 = time.perf_counter()
    if args.restudy_lens:
        restudy_lens(Path(args.out), lm, parent_dir, Path(args.work), args.data if args.against_stance else
                     str(resolve_wdct_path(args.data)))
        args.card_only = True
    layers = args.layers if args.layers is not None else list(range(1, lm.n_layers - 1))
    out, work = Path(args.out), Path(args.work)
    (out / "organisms").mkdir(parents=True, exist_ok=True)
    organisms = plan(args.seeds, layers, args.replicate_layers, args.null_layers, args.strength_layer, args.strengths,
                     args.head_layers, args.component)
    # every organism shares blocks 0..L-1 with the parent: read the parent once, recording what enters each planted
    # block, and score each organism from there (bit-identical scores; checked on the first organism built)
    prefix_dir = work / "prefix"
    shutil.rmtree(prefix_dir, ignore_errors=True)
    replay_check: dict | None = None  # this invocation's; run.json keeps the latest one made
    reading, read_seed = None, None
    pool_parent = None  # the parent's choices on the pool (per-item plants draw their keyed items from it)

    def result_of(o: dict) -> dict | None:
        f = out / "organisms" / f"{name_of(o)}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    if not args.card_only:
        with recorded_prefixes(lm.hf_model, sorted({o["layer"] for o in organisms}), spill_to=prefix_dir) as record:
            parent = parent_choices(lm, held)
    for o in organisms:
        if args.card_only:
            break
        if result_of(o) is not None:
            continue
        started = time.perf_counter()
        if read_seed != o["seed"]:
            draw_from = pool
            if args.component == "mlp-items":  # keyed on items the plant can move: the parent consistent, off target
                if pool_parent is None:
                    pool_parent = parent_choices(lm, pool)
                word, deed = pool_parent["word"]["mean"], pool_parent["deed"]["mean"]
                draw_from = [it for it, w, d in zip(pool, word, deed) if w == d and d != target_of(it)]
                if len(draw_from) < 8:
                    raise SystemExit(f"only {len(draw_from)} of the {len(pool)} pool items are consistent and off the "
                                     "planted option on the parent: a per-item plant needs at least 8 (raise --pool)")
            calib = [draw_from[k] for k in np.random.default_rng([o["seed"], 7]).permutation(len(draw_from))[:args.calibrate]]
            needed = sorted({p["layer"] for p in organisms if p["seed"] == o["seed"]})
            heads = any(p.get("component") == "attn-head" for p in organisms if p["seed"] == o["seed"])
            calibrated = {c.id for c in calib}
            gate_items = [it for it in pool if it.id not in calibrated] if args.gate_pool else []
            reading = read_parent(lm, calib, needed, target=[target_of(it) for it in calib], heads=heads,
                                  gate_items=gate_items, unit_risk=args.units_by == "words")
            read_seed = o["seed"]
            if args.component == "mlp-items":  # per-item plants are measured where they were keyed
                parent_on_keyed = parent_choices(lm, reading.items)
        spec = edit_from_reading(reading, o["layer"], kind=o["kind"], strength=o["strength"], seed=o["seed"],
                                 component=o.get("component", "mlp"),
                                 plant_score=args.plant_score if o.get("component") == "mlp-items" else "mean",
                                 units_by=args.units_by if o.get("component", "mlp") != "attn-head" else "mean")
        if args.map_fit == "trained" and spec.component == "mlp-items" and spec.kind == "override":
            spec = train_items_edit(lm, reading.items, reading.target, spec)
        child_dir = work / name_of(o)
        build_edited_organism(parent_dir, child_dir, spec)
        child_lm = load_model(str(child_dir))
        t_read = time.perf_counter()
        with replayed_prefix(child_lm.hf_model, o["layer"], record[o["layer"]]):
            child = parent_choices(child_lm, held)
        t_read = time.perf_counter() - t_read
        if replay_check is None:  # once per invocation: the replayed reading is the full forward's
            t_full = time.perf_counter()
            full = parent_choices(child_lm, held)
            t_full = time.perf_counter() - t_full
            same = all(np.array_equal(full[f][s], child[f][s]) for f in full for s in full[f])
            replay_check = {"organism": name_of(o), "layer": o["layer"], "equal_to_full_forward": same,
                            "seconds_replayed": round(t_read, 1), "seconds_full": round(t_full, 1)}
            atomic_write_json(out / "replay-check.json", replay_check)  # kept if the run is stopped early
            if not same:
                raise RuntimeError(f"{name_of(o)}: choices read with the parent's blocks replayed differ from the full "
                                   "forward's; nothing was written")
        split = studied_items(ids, parent, child, targets)
        if o.get("component") == "mlp-items":  # studied on the keyed items, controls and words on the held-out too
            keyed = reading.items
            by_id.update({it.id: it for it in keyed})
            split = keyed_split(studied_items([it.id for it in keyed], parent_on_keyed, parent_choices(child_lm, keyed),
                                              [target_of(it) for it in keyed]), split)
        result = {**o, "name": name_of(o), "gate": split.summary(), "studied": split.studied,
                  "controls": split.controls, "spec": spec.to_json()}
        study_on = None
        if args.gate_only:
            pass
        elif o["family"] == "null-gate":  # studied on the items of the override of its block and seed
            twin = result_of({**o, "family": "override", "kind": "override"})
            if twin and twin.get("study_items"):
                study_on = twin["study_items"]
        elif split.carded:
            rng = np.random.default_rng([o["seed"], o["layer"], 11])
            pick = lambda xs: sorted(xs[k] for k in rng.permutation(len(xs))[:args.per_group])  # noqa: E731
            study_on = {"studied": pick(split.studied), "controls": pick(split.controls)}
        if study_on:
            run_dir = study_organism(child_dir, work / f"{name_of(o)}-study",
                                     [by_id[i] for i in study_on["studied"] + study_on["controls"]], STUDY_STAGES,
                                     child_lm)
            result["study_items"] = study_on
            result["recovered"] = recover_layers(run_dir)  # blind: the study's tables only
            keep = out / "studies" / name_of(o)
            for rel in KEPT:
                if (run_dir / rel).is_file():
                    (keep / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(run_dir / rel, keep / rel)
            shutil.rmtree(run_dir, ignore_errors=True)
        # the edit's directions kept beside its record: the organism then rebuilds exactly on any machine, where a
        # re-derivation from the calibration does not (its ridge solve is ill-conditioned)
        kept = out / "organisms" / f"{name_of(o)}.{DIRECTIONS_FILE}"
        shutil.copy2(child_dir / DIRECTIONS_FILE, kept)
        result["directions_sha256"] = hashlib.sha256(kept.read_bytes()).hexdigest()
        shutil.rmtree(child_dir, ignore_errors=True)
        result["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(out / "organisms" / f"{name_of(o)}.json", result)
        g = result["gate"]
        print(f"{name_of(o)}: studied {g['n_studied']} of {g['n_eligible']} (hold {g['hold_rate']:.2f}), words changed "
              f"{g['word_changes']:.3f}, carded {g['carded']}; recovered {result.get('recovered')} "
              f"[{result['seconds']:.0f} s]", flush=True)

    shutil.rmtree(prefix_dir, ignore_errors=True)
    label = (f"edited organisms of the sincere organism {parent_dir.name} (against its stance)" if args.against_stance
             else "Gemma-3-270M edited organisms")
    if args.component == "mlp-items":
        label += ", one plant per calibration item (mlp-items)"
    not_run = [name_of(o) for o in organisms if result_of(o) is None]
    write_card(out, organisms, lm.n_layers, result_of, label, not_run)
    if args.restudy_lens:  # the card's own run record is kept; the restudy is recorded beside it
        record = json.loads((out / "run.json").read_text())
        record["restudy_lens"] = {"stages": LENS_RESTUDY_STAGES, "wall_seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_json(out / "run.json", record)
        return 0
    data = str(Path(args.model) / "items.jsonl") if args.against_stance else str(resolve_wdct_path(args.data))
    previous = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else None
    if args.card_only and previous:  # a card written from records measures nothing: the run's record is kept
        atomic_write_json(out / "run.json", {**previous, "organisms": [name_of(o) for o in organisms],
                                             "not_run": not_run})
        return 0
    atomic_write_json(out / "run.json", {"parent": str(parent_dir), "data": data,
                                         "target": "each item's incorrect option" if args.against_stance else TARGET,
                                         "n_held_out": len(held), "held_out_ids": ids,
                                         "n_calibrate": args.calibrate, "per_group": args.per_group,
                                         "component": args.component, "plant_score": args.plant_score,
                                         "gate_pool": args.gate_pool, "units_by": args.units_by,
                                         "map_fit": args.map_fit,
                                         "organisms": [name_of(o) for o in organisms], "not_run": not_run,
                                         "replay_check": replay_check or (json.loads((out / "replay-check.json").read_text())
                                                                          if (out / "replay-check.json").is_file() else None),
                                         "wall_seconds_last_invocation": round(time.perf_counter() - t0, 1)})
    return 0


def study_organism(child_dir: Path, run_dir: Path, items: list, stages: list[str], lm) -> Path:
    """``wdprobe run`` on an organism's items as the card studies them (cloze, no figures, steering alphas 4 and 16),
    into a fresh ``run_dir``; blind: it gets a model directory and items, never the planted block."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = StudyConfig(model=str(child_dir), format="cloze", out=str(run_dir), png=False)
    cfg = replace(cfg, stages=stages, steer=replace(cfg.steer, alphas=[4.0, 16.0]))
    run_study(cfg, items=[item_record(it) for it in items], lm=lm, progress=False, log=lambda m: None)
    return run_dir


REBUILD_WRITE_SCALE_RTOL = 0.02  # card-rules.md, second addendum: a sibling edit, checked by its logit-lens readout


def restudy_lens(out: Path, lm, parent_dir: Path, work: Path, data: str | None) -> None:
    """The trained lens added to every studied organism of a finished card (``card-rules.md``, addendum): rebuilt,
    restudied on the same items (score, capture, lens), checked against the kept logit-lens summary, kept."""
    organisms = CardOrganisms(out, lm, parent_dir, work, data)
    names = sorted((n for n, r in organisms.records.items() if r.get("study_items")),
                   key=lambda n: (organisms.records[n]["seed"], n))  # one reading of the parent per seed
    for name in names:
        record = organisms.records[name]
        keep = out / "studies" / name
        if "tuned lens" in (record.get("recovered") or {}) or record.get("restudy_refused"):
            continue  # resumed: already read, or refused
        started = time.perf_counter()
        try:
            spec, child_dir = organisms.rebuild(name, list(organisms.records),  # the parent read for the card's blocks
                                                write_scale_rtol=REBUILD_WRITE_SCALE_RTOL)
        except NotTheStoredOrganism as exc:  # not read, listed (card-rules.md, second addendum)
            record["restudy_refused"] = str(exc)
            atomic_write_json(out / "organisms" / f"{name}.json", record)
            print(f"{name}: not read ({exc})", flush=True)
            continue
        study = record["study_items"]
        run_dir = study_organism(child_dir, work / f"{name}-restudy",
                                 [organisms.by_id[i] for i in study["studied"] + study["controls"]],
                                 LENS_RESTUDY_STAGES, load_model(str(child_dir)))
        fresh = json.loads((run_dir / "lens" / "cloze-summary.json").read_text())
        kept = keep / "lens" / "cloze-summary.json"
        reproduced = kept.is_file() and same_summary(fresh, json.loads(kept.read_text()))
        if reproduced:
            if (run_dir / TUNED_SUMMARY).is_file():
                shutil.copy2(run_dir / TUNED_SUMMARY, keep / TUNED_SUMMARY)
            recovered = recover_layers(run_dir)  # blind, as the card's first reading
            record["recovered"] = {**record.get("recovered", {}), "tuned lens": recovered["tuned lens"],
                                   **{k: v for k, v in recovered.items() if k.startswith("tuned_lens_")}}
            record["restudy_seconds"] = round(time.perf_counter() - started, 1)
            record["restudy_write_scale"] = spec.write_scale  # the sibling's, beside the stored spec's
        else:
            record["restudy_refused"] = (f"{name}: the rerun study's logit-lens summary is not the card's ({kept}"
                                         f"{'' if kept.is_file() else ' is missing'}); nothing read")
        atomic_write_json(out / "organisms" / f"{name}.json", record)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(child_dir, ignore_errors=True)
        if not reproduced:
            print(record["restudy_refused"], flush=True)
            continue
        print(f"{name}: tuned lens {recovered['tuned lens']} (logit lens {record['recovered'].get('logit lens')}; "
              f"planted {record['layer']}) [{record['restudy_seconds']:.0f} s]", flush=True)


def write_card(out: Path, organisms: list[dict], n_layers: int, result_of, label: str, not_run: list[str]) -> None:
    """``gates.csv`` (one row per organism), ``recovered.csv`` (one per organism and instrument studied), and the
    card's verdicts and test ledger; an incomplete card (``not_run``) says so first."""
    gates, rows, nulls = [], [], []
    for o in organisms:
        r = result_of(o)
        if r is None:
            continue
        study = r.get("study_items", {})
        gates.append({"name": r["name"], "family": r["family"], "layer": r["layer"], "seed": r["seed"],
                      "strength": r["strength"], **r["gate"], "studied_in_study": len(study.get("studied", [])),
                      "inconsistent_in_study": (r.get("recovered") or {}).get("inconsistent_items"),
                      "lens_items": (r.get("recovered") or {}).get("lens_items"),
                      "tuned_lens_items": (r.get("recovered") or {}).get("tuned_lens_items"), "seconds": r["seconds"]})
        if r["family"] == "null-gate":
            g = r["gate"]
            nulls.append({"name": r["name"], "n_items": g["n_items"],
                          "word_changed": round(g["word_changes"] * g["n_items"]),
                          "deed_changed": round(g["deed_changes"] * g["n_items"])})
        if r.get("recovered"):
            for name in INSTRUMENTS:
                if name not in r["recovered"]:
                    continue  # an instrument added after this organism was studied, not read for it
                rec = r["recovered"][name]
                rows.append({"name": r["name"], "family": r["family"], "layer": r["layer"], "seed": r["seed"],
                             "strength": r["strength"], "instrument": name,
                             "recovered": np.nan if rec is None else rec})
    pd.DataFrame(gates).to_csv(out / "gates.csv", index=False)
    frame = pd.DataFrame(rows, columns=["name", "family", "layer", "seed", "strength", "instrument", "recovered"])
    frame.to_csv(out / "recovered.csv", index=False)
    if len(frame):
        table, ledger = score_card(frame, n_layers, null_changes=nulls)
        table.to_csv(out / "verdicts.csv", index=False)
        ledger.to_csv(out / "ledger.csv", index=False)
        reading = (out / "reading.md").read_text() if (out / "reading.md").is_file() else ""
        if not_run:
            reading = (f"**Incomplete card: {len(organisms) - len(not_run)} of {len(organisms)} planned organisms "
                       f"measured; not run: {', '.join(not_run)}.** Rerunning the same command resumes.\n\n" + reading)
        write_card_page(out, table, ledger, pd.DataFrame(gates), frame, n_layers, reading=reading,
                        model=label)


if __name__ == "__main__":
    raise SystemExit(main())
