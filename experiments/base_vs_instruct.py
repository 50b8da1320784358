#!/usr/bin/env python
"""Base vs instruction-tuned: do the internals of word-deed inconsistency change with instruction tuning?

    python experiments/base_vs_instruct.py --data WDCT.csv --device-map auto \\
        --base meta-llama/Meta-Llama-3-8B --instruct meta-llama/Meta-Llama-3-8B-Instruct --sample 400

Runs the same study (scoring, capture, probes, logit lens, cross-form patching by default) on the base
model, on the instruction-tuned model, and on the base model again with another option-shuffling seed.
The second base run is the noise floor: a base-vs-instruct difference smaller than the seed-to-seed
difference is not a difference. All runs go side by side on one `wdprobe compare` page.
Without ``--instruct`` (the embedded model has no instruct sibling here) only the base and its noise floor run.

Time: each model's study costs what `wdprobe run` with these stages costs (on 2 CPU cores about 1.5 s an item
for scoring and capture in every order, plus a few seconds a patched item), so --sample 400 on the embedded model
about 25 minutes for the two base runs; a 7-8B model needs a GPU (minutes there).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.reports.compare import compare_runs

DEFAULT_STAGES = "score,capture,probes,lens,patch_cross"


def study(model: str, seed: int, label: str, args: argparse.Namespace) -> Path:
    cfg = StudyConfig(model=model, data=args.data, seed=seed, limit=args.limit, sample=args.sample,
                      dtype=args.dtype, device_map=args.device_map, stages=args.stages.split(","))
    cfg.out = str(Path(args.out_root) / label)
    cfg.capture.positions = ["last"]
    cfg.probes.positions = ["last"]
    cfg.probes.kinds = ["diffmean"]
    cfg.patch_cross.items = args.patch_items
    run_study(cfg, progress=not args.quiet)
    return cfg.out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="gemma-3-270m", help="base model (embedded default, local directory or HF id)")
    ap.add_argument("--instruct", default=None, help="its instruction-tuned sibling (left out: only base and noise floor run)")
    ap.add_argument("--data", default=None, help="WDCT.csv or your own items file (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--seed", type=int, default=0, help="option-shuffling seed of the base and instruct runs")
    ap.add_argument("--noise-seed", type=int, default=1, help="seed of the base model's second run (noise floor)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N items")
    ap.add_argument("--sample", type=int, default=None, help="seeded sample of N items")
    ap.add_argument("--stages", default=DEFAULT_STAGES, help="comma-separated study stages to run on each model")
    ap.add_argument("--patch-items", type=int, default=64, help="items for cross-form patching")
    ap.add_argument("--out-root", default="runs/base-vs-instruct", help="parent of the run directories")
    ap.add_argument("--report", default="reports/base_vs_instruct.html", help="the comparison page")
    ap.add_argument("--dtype", default="float32", help="model weights' dtype (bfloat16 halves a large model's memory)")
    ap.add_argument("--device-map", default=None, help="'auto' spreads a large model over the visible GPUs")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    runs, labels = [study(args.base, args.seed, "base", args)], [f"base (seed {args.seed})"]
    if args.instruct:
        runs.append(study(args.instruct, args.seed, "instruct", args))
        labels.append(f"instruct (seed {args.seed})")
    runs.append(study(args.base, args.noise_seed, f"base-seed{args.noise_seed}", args))
    labels.append(f"base (seed {args.noise_seed}, noise floor)")
    page = compare_runs(runs, args.report, labels=labels)
    print(f"comparison page: {page} (table: {page.with_suffix('.csv')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
