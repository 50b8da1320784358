"""Base vs instruction-tuned: do the internals of word-deed inconsistency change with instruction tuning?

    python experiments/base_vs_instruct.py --data WDCT.csv --device-map auto \\
        --base meta-llama/Meta-Llama-3-8B --instruct meta-llama/Meta-Llama-3-8B-Instruct --sample 400

Runs the same study (scoring, capture, probes, logit lens, cross-form patching by default) on the base
model, on the instruction-tuned model, and on the base model again with another option-shuffling seed.
The second base run is the noise floor: a base-vs-instruct difference smaller than the seed-to-seed
difference is not a difference. All runs go side by side on one `wdprobe compare` page.
Without ``--instruct`` (the embedded model has no instruct sibling here) only the base and its noise floor run.
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--instruct", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-seed", type=int, default=1, help="seed of the base model's second run (noise floor)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sample", type=int, default=None)
    ap.add_argument("--stages", default=DEFAULT_STAGES)
    ap.add_argument("--patch-items", type=int, default=64)
    ap.add_argument("--out-root", default="runs/base-vs-instruct")
    ap.add_argument("--report", default="reports/base_vs_instruct.html")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device-map", default=None)
    ap.add_argument("--quiet", action="store_true")
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
