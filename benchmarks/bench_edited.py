"""Edited organisms (issue 31): how long one costs on the default model, against the issue's target (<= 10 s on 2
CPU cores for one organism) and against a family's one-off reading of the parent.

Times, in one process with the model loaded once (not timed):

* ``read_parent``: the family's reading of the parent (word and deed activations of every block asked, and the plant
  directions: one backward pass per calibration item and option, whatever the number of blocks);
* per block and edit component (``--components``: the one-unit edit and the per-item ``mlp-items``, keyed
  ``<block>-mlp-items``): ``edit`` (the specification from the reading), ``build`` (the weights written to a model directory,
  every tensor but three copied) and ``load`` (the organism loaded blind by ``load_model``);
* per block, side by side: the organism's cloze choices on ``--held-out`` items (both forms; what a card's gate reads)
  by the full forward and with the parent's blocks 0..L-1 replayed (``wdprobe.studies.organisms.replay``), the ratio,
  and whether the two readings are equal (they must be, to the bit).

Usage: python benchmarks/bench_edited.py --data PATH/TO/WDCT.csv [--layers 4 12] [--items 40] [--held-out 60] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--layers", type=int, nargs="*", default=[4, 12])
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--held-out", type=int, default=60, help="items the choices are read on (after the calibration ones)")
    ap.add_argument("--components", nargs="*", default=["mlp", "mlp-items"],
                    help="edits timed side by side per block (mlp-items: one unit per calibration item)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("results_edited.json")))
    args = ap.parse_args()

    from wdprobe.core.model import default_model_dir, load_model
    from wdprobe.data.items import read_items
    from wdprobe.studies.organisms.edit import build_edited_organism, edit_from_reading, parent_choices, read_parent
    from wdprobe.studies.organisms.replay import recorded_prefixes, replayed_prefix

    pool = sorted((i for i in read_items(args.data) if i.n_options == 2 and i.correct is not None), key=lambda i: i.id)
    order = np.random.default_rng(0).permutation(len(pool))
    items = [pool[k] for k in order[:args.items]]
    held = [pool[k] for k in order[args.items:args.items + args.held_out]]
    lm = load_model("gemma-3-270m")
    t = time.perf_counter()
    reading = read_parent(lm, items, args.layers)
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
                    "items": len(items), "layers": args.layers,
                    "read_parent_seconds": round(time.perf_counter() - t, 2), "per_organism": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-edited-"))
    t = time.perf_counter()
    with recorded_prefixes(lm.hf_model, args.layers, spill_to=work / "prefix") as record:
        parent_choices(lm, held)
    result["parent_choices_recorded_seconds"] = round(time.perf_counter() - t, 2)
    try:
        for layer, component in [(L, c) for L in args.layers for c in args.components]:
            t = time.perf_counter()
            spec = edit_from_reading(reading, layer, component=component)
            t_edit = time.perf_counter() - t
            t = time.perf_counter()
            build_edited_organism(default_model_dir(), work / f"L{layer}", spec)
            t_build = time.perf_counter() - t
            t = time.perf_counter()
            child = load_model(str(work / f"L{layer}"))
            t_load = time.perf_counter() - t
            t = time.perf_counter()
            full = parent_choices(child, held)
            t_full = time.perf_counter() - t
            t = time.perf_counter()
            with replayed_prefix(child.hf_model, layer, record[layer]):
                fast = parent_choices(child, held)
            t_fast = time.perf_counter() - t
            equal = all(np.array_equal(full[f][s], fast[f][s]) for f in full for s in full[f])
            result["per_organism"][str(layer) if component == "mlp" else f"{layer}-{component}"] = {"edit": round(t_edit, 2), "build": round(t_build, 2),
                                                  "load": round(t_load, 2),
                                                  "total": round(t_edit + t_build + t_load, 2),
                                                  "choices_full": round(t_full, 2), "choices_replayed": round(t_fast, 2),
                                                  "replay_speedup": round(t_full / t_fast, 2), "replay_equal": equal}
            shutil.rmtree(work / f"L{layer}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
