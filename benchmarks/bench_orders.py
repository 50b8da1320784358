"""What letter-free measurement costs per item (issue 16): scoring in the paper's one order against every cyclic
order, by letter, by cloze and both, side by side in one process on the same items.

Each configuration scores the same seeded sample into a fresh run directory with one loaded model; the order of
configurations rotates over ``--repeats`` rounds, and the median per-item wall time is reported with its ratio to
``shown`` / ``letter`` (today's paper protocol). Prompts per item are counted from each run's ``prompts.csv``.

Usage: python benchmarks/bench_orders.py --data PATH/TO/WDCT.csv [--sample 48] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from wdprobe.core.model import load_model
from wdprobe.stages.score import score_wdct

CONFIGS = [("shown", "letter"), ("cyclic", "letter"), ("shown", "cloze"), ("cyclic", "both")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="WDCT.csv")
    ap.add_argument("--sample", type=int, default=48, help="items scored by each configuration")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (the order of configurations rotates)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    lm = load_model("gemma-3-270m")
    times: dict[str, list[float]] = {f"{o}/{f}": [] for o, f in CONFIGS}
    prompts: dict[str, int] = {}
    score_wdct(tempfile.mkdtemp(), data=args.data, sample=4, lm=lm, progress=False)  # warm-up
    for r in range(args.repeats):
        for o, f in CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = score_wdct(Path(d) / "run", data=args.data, sample=args.sample, lm=lm, progress=False, orders=o,
                                 format=f)
                times[f"{o}/{f}"].append((time.perf_counter() - t0) / args.sample)
                prompts[f"{o}/{f}"] = len(res.prompt_rows)
    base = statistics.median(times["shown/letter"])
    out = {"sample": args.sample, "repeats": args.repeats, "configs": {
        k: {"seconds_per_item": statistics.median(v), "ratio_to_shown_letter": statistics.median(v) / base,
            "prompt_rows_per_item": prompts[k] / args.sample, "all": v} for k, v in times.items()}}
    for k, v in out["configs"].items():
        print(f"{k:14s} {v['seconds_per_item']:.3f} s/item  x{v['ratio_to_shown_letter']:.2f}  "
              f"{v['prompt_rows_per_item']:.2f} prompt rows/item")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
