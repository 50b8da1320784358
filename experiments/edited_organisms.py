#!/usr/bin/env python
"""Edited organisms swept over layers: build a deed-only override into every block of the default model (and null
edits and a strength sweep), and measure each against the behaviour gate fixed before the run
(``wdprobe.studies.organisms.edit``: at least 0.9 of held-out deeds on the planted option, words changed on at most
0.02 of items, by the per-token mean; the sum is reported beside it).

    python experiments/edited_organisms.py --data WDCT.csv                     # the committed sweep (~15 min, 2 cores)
    python experiments/edited_organisms.py --data WDCT.csv --layers 4 12 --held-out 20 --out /tmp/e   # a quick look

Items: WDCT's two-option items with a correct option (EthV, Theory), in a seeded order; the first ``--pool`` are the
calibration pool (``--calibrate`` of them, chosen by each seed, calibrate the edits), the next ``--held-out`` are the
items every organism is measured on (never calibrated on). The plant pushes deeds toward canonical option 1 (the
option WDCT does not mark correct): in the cloze form no option is listed, so the plant is on the option's content.
Edited weights go to ``--work`` (one model directory at a time, deleted after measuring); the table and the edit
specifications go to ``--out``.

Time: on 2 CPU cores about 4 minutes for the family's reading of the parent, then about 25 s per organism (a second
to build, the rest measuring 60 held-out items): 985 s for the committed 26 organisms.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import numpy as np

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import convert_default_model, load_model
from wdprobe.data.items import read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import (
    GATE_DEED,
    GATE_WORD,
    behaviour_gate,
    build_edited_organism,
    edit_from_reading,
    parent_choices,
    read_parent,
)

TARGET = 1
COLUMNS = ["family", "layer", "seed", "kind", "strength", "passed", "deed_follows_mean", "moved_mean",
           "word_changes_mean", "deed_follows_sum", "moved_sum", "word_changes_sum", "parent_deed_on_target_mean",
           "gate_open_deed", "gate_open_word", "max_plant_write", "residual_norm", "build_seconds", "n_held_out"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--model", default=None, help="parent model directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="blocks to plant in (default: 1..n-2)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="calibration samples (one family per seed)")
    ap.add_argument("--null-layers", type=int, nargs="*", default=[4, 8, 12], help="blocks of the null edits")
    ap.add_argument("--strength-layer", type=int, default=12, help="block of the strength sweep")
    ap.add_argument("--strengths", type=float, nargs="*", default=[0.25, 1.0, 3.0, 20.0], help="write strengths swept")
    ap.add_argument("--pool", type=int, default=200, help="items the calibration sets are drawn from")
    ap.add_argument("--calibrate", type=int, default=40, help="calibration items per seed")
    ap.add_argument("--held-out", type=int, default=60, help="items every organism is measured on")
    ap.add_argument("--out", default="reports/organisms/edited", help="table and specifications")
    ap.add_argument("--work", default="/tmp/wdprobe-edited", help="where edited weights are written and deleted")
    args = ap.parse_args(argv)

    items = planted_order(read_items(resolve_wdct_path(args.data)))
    pool, held = items[:args.pool], items[args.pool:args.pool + args.held_out]
    parent_dir = Path(args.model) if args.model else convert_default_model()
    lm = load_model(str(parent_dir))
    layers = args.layers if args.layers is not None else list(range(1, lm.n_layers - 1))
    out, work = Path(args.out), Path(args.work)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parent = parent_choices(lm, held)
    rows: list[dict] = []

    def measure(family: str, spec, seed: int) -> None:
        started = time.perf_counter()
        child_dir = work / f"{family}-L{spec.layer}-s{seed}"
        info = build_edited_organism(parent_dir, child_dir, spec)
        gate = behaviour_gate(lm, load_model(str(child_dir)), held, TARGET, parent_read=parent)
        shutil.rmtree(child_dir, ignore_errors=True)
        c = spec.calibration
        row = {"family": family, "layer": spec.layer, "seed": seed, "kind": spec.kind, "strength": spec.strength,
               "passed": int(gate["passed"]), "n_held_out": gate["n_items"],
               **{f"{k}_{s}": round(gate[s][k], 4) for s in ("mean", "sum") for k in ("deed_follows", "moved", "word_changes")},
               "parent_deed_on_target_mean": round(gate["mean"]["parent_deed_on_target"], 4),
               "gate_open_deed": c["gate_open_deed"], "gate_open_word": c["gate_open_word"],
               "max_plant_write": c["max_plant_write"], "residual_norm": c["residual_norm_deed_decision"],
               "build_seconds": info["seconds"]}
        rows.append(row)
        atomic_write_json(out / "specs" / f"{family}-L{spec.layer}-s{seed}.json", {**spec.to_json(), "gate": gate})
        print(f"{family} L{spec.layer} s{seed}: deeds on target {row['deed_follows_mean']:.2f} (parent "
              f"{row['parent_deed_on_target_mean']:.2f}), words changed {row['word_changes_mean']:.2f} "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)
        write_table(out, rows)

    needed = sorted(set(layers) | set(args.null_layers) | {args.strength_layer})
    for seed in args.seeds:
        calib = [pool[k] for k in np.random.default_rng([seed, 7]).permutation(len(pool))[:args.calibrate]]
        reading = read_parent(lm, calib, needed, target=TARGET)
        for layer in layers:
            measure("override", edit_from_reading(reading, layer, seed=seed), seed)
        if seed == args.seeds[0]:
            for kind in ("null-direction", "null-gate"):
                for layer in args.null_layers:
                    measure(kind, edit_from_reading(reading, layer, kind=kind, seed=seed), seed)
            for strength in args.strengths:
                measure(f"strength-{strength:g}", edit_from_reading(reading, args.strength_layer, strength=strength,
                                                                    seed=seed), seed)
    atomic_write_json(out / "run.json", {"parent": str(parent_dir), "data": str(resolve_wdct_path(args.data)),
                                         "layers": layers, "seeds": args.seeds, "target_option": TARGET,
                                         "gate": {"deed_follows_at_least": GATE_DEED, "word_changes_at_most": GATE_WORD},
                                         "n_calibrate": args.calibrate, "n_held_out": len(held),
                                         "held_out_ids": [i.id for i in held],
                                         "wall_seconds": round(time.perf_counter() - t0, 1)})
    return 0


def write_table(out: Path, rows: list[dict]) -> None:
    tmp = out / "gate.csv.partial"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "gate.csv")


if __name__ == "__main__":
    raise SystemExit(main())
