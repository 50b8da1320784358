"""What reading the patch in both deed orders costs (issue 16): cross-form patching of the same items into the shown
deed order only, and into both orders (the letter split), side by side in one process.

Reads a finished letter-free run (scored with --orders cyclic and captured); nothing is written into it. The same
seeded items, layers and conditions are patched with the patching kernel both ways; the order of the two rotates
over ``--repeats`` rounds, and the median wall time per item is reported with the ratio of both orders to shown.

Usage: python benchmarks/bench_patch_orders.py --run RUN [--items 16] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from wdprobe.core.model import load_for_run
from wdprobe.methods.patching import cross_form_patching
from wdprobe.runs.rundir import RunDir
from wdprobe.stages.pairs import load_pairs, stance_directions


def patch(lm, pairs, dirs, both: bool) -> float:
    """Seconds to patch every selected item (every layer, four conditions) into one or both deed orders."""
    idx = list(range(len(pairs)))
    prompts, toward, away = list(pairs.deed_prompts), pairs.toward, pairs.away
    if both:
        prompts += pairs.swapped_deed_prompts
        toward, away = np.concatenate([toward, away]), np.concatenate([away, toward])
        idx = idx * 2
    t0 = time.perf_counter()
    cross_form_patching(lm, prompts, dirs.word_sources[idx], toward, away, pairs.token_ids, dirs.layers,
                        stance_dirs=dirs.stance[idx], random_dirs=dirs.random, letter_dirs=dirs.letter[idx])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished letter-free run directory (score + capture)")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = RunDir(args.run)
    lm = load_for_run(run.read_manifest())
    pairs = load_pairs(run.path, lm.tokenizer, n_items=args.items, seed=0)
    dirs = stance_directions(run.path, pairs, folds=5, seed=0)
    patch(lm, pairs.subset([0, 1]), stance_directions(run.path, pairs.subset([0, 1]), folds=5), False)  # warm-up
    times: dict[str, list[float]] = {"shown": [], "both": []}
    for r in range(args.repeats):
        for name in (("shown", "both") if r % 2 == 0 else ("both", "shown")):
            times[name].append(patch(lm, pairs, dirs, name == "both") / len(pairs))
    per = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: len(pairs) * (2 if k == "both" else 1) * (1 + 4 * len(dirs.layers)) for k in times}
    out = {"run": str(run.path), "items": len(pairs), "layers": len(dirs.layers), "repeats": args.repeats,
           "configs": {k: {"seconds_per_item": per[k], "forward_rows": rows[k], "all": times[k]} for k in times},
           "ratio_both_to_shown": per["both"] / per["shown"]}
    for k in times:
        print(f"{k:6s} {per[k]:.3f} s/item  {rows[k]} forward rows")
    print(f"both / shown: x{out['ratio_both_to_shown']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
