"""A 4-shard sweep on the default model, local executor vs a local Ray instance, side by side (issue 7).

The same sweep (one model, one setting, N sampled items, 4 shards) runs twice into fresh directories:
  local : the tasks one after another in this process (the model loaded once, shared)
  ray   : the tasks as Ray tasks on a local instance (ray.init(num_cpus=2)); each worker process loads the
          model once and keeps it for its later tasks
Also measured: Ray's bare overhead per task (a no-op remote function, 200 calls) and the instance start.
The merged results must be identical.

Usage: python benchmarks/bench_sweep.py --data WDCT.csv [--sample 64] [--shards 4]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def _sweep_file(d: Path, data: str, sample: int, shards: int, name: str) -> Path:
    p = d / f"{name}.toml"
    p.write_text(f'[sweep]\nout = "{d / name}"\nmodels = ["gemma-3-270m"]\ndata = "{data}"\nshards = {shards}\n'
                 f'num_cpus = 1\n\n[fixed]\nsample = {sample}\nseed = 0\n')
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--sample", type=int, default=64)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results_sweep.json")
    args = ap.parse_args()

    import ray

    from wdprobe.pipeline.sweep import run_sweep
    from wdprobe.runs.rundir import read_csv

    d = Path(tempfile.mkdtemp(prefix="wdprobe-bench-sweep-"))
    res: dict = {"sample": args.sample, "shards": args.shards}
    t0 = time.perf_counter()
    local = run_sweep(_sweep_file(d, args.data, args.sample, args.shards, "local"), executor="local", progress=False)
    res["local"] = {"wall_s": round(time.perf_counter() - t0, 2), "tasks": local.tasks}

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    res["ray_start_s"] = round(time.perf_counter() - t0, 2)

    @ray.remote(num_cpus=1)
    def noop(x):
        return x

    ray.get(noop.remote(0))  # warm the workers
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(200)])
    res["ray_noop_task_ms"] = round(1000 * (time.perf_counter() - t0) / 200, 2)
    t0 = time.perf_counter()
    remote = run_sweep(_sweep_file(d, args.data, args.sample, args.shards, "ray"), executor="ray", progress=False)
    res["ray"] = {"wall_s": round(time.perf_counter() - t0, 2), "tasks": remote.tasks}
    ray.shutdown()

    a = read_csv(local.out / local.runs[0]["run"] / "items.csv")
    b = read_csv(remote.out / remote.runs[0]["run"] / "items.csv")
    res["identical_choices"] = [(r["word_choice"], r["deed_choice"]) for r in a] == \
                               [(r["word_choice"], r["deed_choice"]) for r in b]
    res["max_abs_diff_pcs"] = max(abs(float(x["pcs"]) - float(y["pcs"])) for x, y in zip(a, b))
    for k in ("local", "ray"):
        t = res[k]["tasks"]
        res[k]["load_s_total"] = round(sum(x["load_seconds"] for x in t), 2)
        res[k]["task_s_mean"] = round(sum(x["seconds"] for x in t) / len(t), 2)
    res["ray_over_local"] = round(res["ray"]["wall_s"] / res["local"]["wall_s"], 2)
    res["overhead_per_task_s"] = round((res["ray"]["wall_s"] - res["local"]["wall_s"]) / args.shards, 2)
    shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
