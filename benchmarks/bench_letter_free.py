"""The letter-free study against the paper's protocol of the previous release, on the same machine (issue 18).

Letter-free measurement asks every question in both option orders and in the cloze form: three times the prompts
of the paper's one-order letter protocol. This runs, side by side and alternating which goes first:

* ``previous shown``: the release before the speed work (``--baseline 4315a24``, unpacked from git and run with
  ``PYTHONPATH``), ``--orders shown --format letter``;
* ``letter-free``: the current tree, ``--orders cyclic --format both`` (the default);

each the whole study (every stage, report without PNGs) on the same seeded sample with the same explicit stage
sizes, so both do proportionally what the full-WDCT study does. A scaled-down version: the full pair would take
hours on 2 cores. Per-stage seconds come from each run's manifest.

Usage: python benchmarks/bench_letter_free.py --data PATH/TO/WDCT.csv [--sample 100] [--repeats 1] [--json OUT]
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

from bench_layout import unpack

STAGE_SIZES = ('png = false\n[patch_cross]\nitems = 12\n[steer]\nitems = 12\n'
               '[patch_positional]\nitems = 6\nexact_items = 1\n[probes]\nkinds = ["diffmean"]\n')


def study(pythonpath: Path | None, out: Path, data: str, sample: int, orders: str, fmt: str) -> tuple[float, dict]:
    cfg = out.parent / f"{out.name}.toml"
    cfg.write_text(f'orders = "{orders}"\nformat = "{fmt}"\n' + STAGE_SIZES)
    env = dict(os.environ, WDPROBE_PNG="0")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wdprobe.cli", "run", "--config", str(cfg), "--data", data, "--sample",
                    str(sample), "--out", str(out), "--report", str(out / "report"), "--quiet"], check=True,
                   capture_output=True, text=True, env=env, cwd=out.parent)
    seconds = time.perf_counter() - t0
    stages = json.loads((out / "manifest.json").read_text()).get("stages", {})
    return seconds, {k: v.get("seconds") for k, v in stages.items() if isinstance(v, dict) and "seconds" in v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--baseline", default="4315a24")
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"previous shown": [], "letter-free": []}
    stages: dict[str, list[dict]] = {k: [] for k in times}
    with tempfile.TemporaryDirectory() as tmp:
        old = unpack(args.baseline, Path(tmp))
        for r in range(args.repeats):
            for name in (("previous shown", "letter-free") if r % 2 == 0 else ("letter-free", "previous shown")):
                out = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                if name == "previous shown":
                    t, per = study(old, out, args.data, args.sample, "shown", "letter")
                else:
                    t, per = study(None, out, args.data, args.sample, "cyclic", "both")
                times[name].append(t)
                stages[name].append(per)
                print(f"round {r}: {name}: {t:.1f} s {per}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {"sample": args.sample, "baseline": args.baseline, "seconds": times, "median": med, "stages": stages,
               "ratio letter-free / previous shown": med["letter-free"] / med["previous shown"]}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
