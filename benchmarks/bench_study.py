"""`wdprobe run` vs the same stages as separate commands, side by side in one run (issue 6).

A researcher can run the study as one `wdprobe run` (one process: the model is loaded once, finished
stages are skipped) or stage by stage (`wdprobe score`, `capture`, `probe`, `lens`, `patch`, `steer`,
`report`: one process and one model load each). Both are timed here on the same items and settings,
alternating order over --repeats rounds, each in a fresh run directory; then a rerun of the finished
study (everything skipped, report redrawn). Results must be identical: the script checks CS and the
cross-form patching table of both runs.

Usage: python benchmarks/bench_study.py --data PATH/TO/WDCT.csv [--sample 48] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

WDPROBE = [sys.executable, "-m", "wdprobe.cli"]


def sh(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(WDPROBE + args, check=True, capture_output=True, text=True, env=dict(os.environ, WDPROBE_PNG="0"))
    return time.perf_counter() - t0


def one_command(tmp: Path, data: str, sample: int, items: int) -> tuple[float, Path]:
    cfg = tmp / "study.toml"
    cfg.write_text(f'png = false\nstages = ["score", "capture", "probes", "lens", "patch_cross", "steer", "report"]\n'
                   f'[capture]\npositions = ["last"]\n[probes]\npositions = ["last"]\nkinds = ["diffmean"]\n'
                   f'[patch_cross]\nitems = {items}\n[steer]\nitems = {items}\nalphas = [4.0, 16.0]\n')
    run = tmp / "one"
    t = sh(["run", "--config", str(cfg), "--data", data, "--sample", str(sample), "--out", str(run),
            "--report", str(tmp / "one-report"), "--quiet"])
    return t, run


def stage_by_stage(tmp: Path, data: str, sample: int, items: int) -> tuple[float, Path]:
    run = str(tmp / "staged")
    steps = [["score", "--data", data, "--sample", str(sample), "--out", run, "--quiet"],
             ["capture", "--run", run, "--positions", "last", "--quiet"],
             ["probe", "--run", run, "--kinds", "diffmean", "--quiet"],
             ["lens", "--run", run, "--quiet"],
             ["patch", "--run", run, "--kind", "cross", "--items", str(items), "--quiet"],
             ["steer", "--run", run, "--items", str(items), "--alphas", "4,16", "--quiet"],
             ["report", run, "--out", str(tmp / "staged-report"), "--localisation"]]
    return sum(sh(s) for s in steps), Path(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--sample", type=int, default=48)
    ap.add_argument("--items", type=int, default=16, help="items for cross-form patching and the steering grid")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"one_command": [], "stage_by_stage": [], "rerun_finished": []}
    with tempfile.TemporaryDirectory() as tmp_root:
        for r in range(args.repeats):
            tmp = Path(tmp_root) / f"round{r}"
            tmp.mkdir()
            order = [one_command, stage_by_stage] if r % 2 == 0 else [stage_by_stage, one_command]
            runs = {}
            for fn in order:
                t, run = fn(tmp, args.data, args.sample, args.items)
                times[fn.__name__].append(t)
                runs[fn.__name__] = run
            t, _ = one_command(tmp, args.data, args.sample, args.items)  # same directory: every stage is skipped
            times["rerun_finished"].append(t)
            a, b = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("one_command", "stage_by_stage"))
            pa, pb = (pd.read_csv(runs[k] / "patching" / "cross_form_summary.csv") for k in ("one_command", "stage_by_stage"))
            assert a["cs_micro"] == b["cs_micro"] and (pa.flip_rate - pb.flip_rate).abs().max() < 1e-9, "runs differ"
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"sample": args.sample, "items": args.items, "repeats": args.repeats, "seconds": times, "median": med,
           "speedup_one_command": med["stage_by_stage"] / med["one_command"],
           "saved_seconds": med["stage_by_stage"] - med["one_command"], "identical_results": True}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
