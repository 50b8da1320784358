"""Instruments x read-outs (issue 30) against the twin modules they replaced, side by side on one scored run.

Cross-form patching and steering became one module each for every answer format (letters and cloze), read through
a ``Readout``; intervention kinds became a registry. This times, on the same machine and the same run directory,
alternating which tree goes first:

* ``twins``: the release before the change (``--baseline c0727a2``, unpacked from git and run with ``PYTHONPATH``):
  ``run_cross_patch`` / ``run_steering`` for letters, ``run_cloze_patch`` / ``run_cloze_steering`` for the cloze form;
* ``read-outs``: the current tree, ``run_cross_patch(format=...)`` / ``run_steering(format=...)``;

each instrument on a copy of one letter-free run (scored and captured once, by the baseline), the model loaded once
per process and not timed. Every result file (CSV tables, JSON headlines) of the two trees is compared byte for byte.

Usage: python benchmarks/bench_readouts.py --data PATH/TO/WDCT.csv [--sample 64] [--repeats 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_layout import unpack

SETTINGS = {"n_items": 16, "layers": "0,4,8,12,16", "seed": 0}
STEER = {"alphas": [1.0, 4.0, 16.0]}

WORKER = r"""
import json, sys, time
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import model_for_run
from wdprobe.stages.patching import run_cross_patch
from wdprobe.stages.steering import run_steering

run, settings, steer = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
lm = model_for_run(RunDir(run), None)
try:  # the twin modules of the release before the read-outs
    from wdprobe.stages.cloze_patching import run_cloze_patch
    from wdprobe.stages.cloze_steering import run_cloze_steering
    calls = {"patch letter": lambda: run_cross_patch(run, lm=lm, progress=False, **settings),
             "patch cloze": lambda: run_cloze_patch(run, lm=lm, progress=False, **settings),
             "steer letter": lambda: run_steering(run, lm=lm, progress=False, **settings, **steer),
             "steer cloze": lambda: run_cloze_steering(run, lm=lm, progress=False, **settings, **steer)}
except ImportError:
    calls = {f"{what} {fmt}": (lambda what=what, fmt=fmt: (run_cross_patch if what == "patch" else run_steering)(
                 run, format=fmt, lm=lm, progress=False, **settings, **(steer if what == "steer" else {})))
             for what in ("patch", "steer") for fmt in ("letter", "cloze")}
seconds = {}
for name, call in calls.items():
    t0 = time.perf_counter()
    call()
    seconds[name] = time.perf_counter() - t0
print(json.dumps(seconds))
"""


def instruments(pythonpath: Path | None, run: Path) -> dict[str, float]:
    env = dict(os.environ, WDPROBE_PNG="0")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    res = subprocess.run([sys.executable, "-c", WORKER, str(run), json.dumps(SETTINGS), json.dumps(STEER)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def result_digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("patching", "steering") for p in sorted((run / folder).glob("*"))
            if p.suffix in (".csv", ".json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--baseline", default="c0727a2")
    ap.add_argument("--sample", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = unpack(args.baseline, tmp)
        base = tmp / "scored"
        env = dict(os.environ, WDPROBE_PNG="0", PYTHONPATH=str(old))
        subprocess.run([sys.executable, "-m", "wdprobe.cli", "run", "--data", args.data, "--sample", str(args.sample),
                        "--out", str(base), "--stages", "score,capture", "--quiet"], check=True, capture_output=True,
                       text=True, env=env, cwd=tmp)
        times: dict[str, list[dict[str, float]]] = {"twins": [], "read-outs": []}
        digests: dict[str, dict[str, str]] = {}
        for r in range(args.repeats):
            order = [("twins", old), ("read-outs", None)]
            for name, path in (order if r % 2 == 0 else order[::-1]):
                run = tmp / f"{name}-{r}"
                shutil.copytree(base, run)
                times[name].append(instruments(path, run))
                digests[name] = result_digests(run)
    names = list(times["twins"][0])
    rows = {n: {tree: round(min(t[n] for t in times[tree]), 2) for tree in times} for n in names}
    for n in names:
        rows[n]["ratio"] = round(rows[n]["read-outs"] / rows[n]["twins"], 3)
    total = {tree: round(sum(rows[n][tree] for n in names), 2) for tree in times}
    same = sorted(k for k in digests["twins"] if digests["read-outs"].get(k) == digests["twins"][k])
    differ = sorted(k for k in set(digests["twins"]) | set(digests["read-outs"])
                    if digests["read-outs"].get(k) != digests["twins"].get(k))
    out = {"baseline": args.baseline, "sample": args.sample, "repeats": args.repeats, "settings": {**SETTINGS, **STEER},
           "seconds_min": rows, "total": {**total, "ratio": round(total["read-outs"] / total["twins"], 3)},
           "identical_result_files": len(same), "differing_result_files": differ, "cpus": os.cpu_count()}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
