#!/usr/bin/env python
"""Word-only vs deed-only alignment (and the two augmentations) on one model: do deeds follow words?

    python experiments/alignment.py --data WDCT.csv                         # the CPU study (~36 min)
    python experiments/alignment.py --data WDCT.csv --runs-to-do word deed  # only the two core runs
    python experiments/alignment.py --report-only                         # redraw from finished runs

Trains six copies of the model (LoRA, SFT then DPO with beta 0.1) on flipped answers, each on the same
seeded train/held-out split: with the paper's protocol (trained prompts as shown), word items only, deed
items only, both forms (dual augmentation) and word items plus rule-based paraphrases (paraphrase
augmentation); as a letter control, word only and deed only with every trained prompt also shown with
its options swapped. Writes the report under ``reports/<model>/alignment/`` (a ``reading.md`` there is
kept and shown). Each run is resumable: rerun the same command after an interruption.

Time on 2 CPU cores: 5-8 minutes a run (training and five evaluations of 192 prompts), about 45 minutes for
all six with the report; a GPU runs the same script in a few minutes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wdprobe.studies.align.finetune import TrainSettings
from wdprobe.studies.align.stages import AlignConfig, run_align

# The CPU study: 96 two-option items (48 trained, 48 held out), 3 SFT epochs + 1 DPO epoch (beta 0.1).
# Two protocols: the paper's (each trained prompt as shown, options in their seeded order) for all four
# modes, and a letter control (each trained prompt in both option orders, so only the stance predicts the
# target) for word and deed. About 36 min for the six runs on 2 CPU cores (docs/benchmarks.md).
CPU_STUDY = AlignConfig(n_items=96, held_out=0.5, sft_epochs=3, dpo_epochs=1, method="sft+dpo", orders="shown", seed=0,
                        paraphrases=1)
CPU_TRAINING = TrainSettings(tuning="lora", rank=8, lora_alpha=16, lr=1e-3, batch_size=4, beta=0.1, seed=0)
RUNS = {"word": ("word", "shown"), "deed": ("deed", "shown"), "both": ("both", "shown"),
        "paraphrase": ("paraphrase", "shown"), "word-both-orders": ("word", "both"), "deed-both-orders": ("deed", "both")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="embedded default, local model directory or HF id")
    ap.add_argument("--data", default=None, help="WDCT.csv (default: $WDPROBE_WDCT or the pinned download)")
    ap.add_argument("--runs-to-do", nargs="+", default=list(RUNS), choices=list(RUNS), dest="todo",
                    help="which of the alignment runs to train and evaluate (default: all)")
    ap.add_argument("--runs", default=None, help="parent of the run directories (default runs/<model>-align)")
    ap.add_argument("--report", default=None, help="report folder (default reports/<model>/alignment)")
    ap.add_argument("--report-only", action="store_true", help="redraw the report from finished runs; train nothing")
    args = ap.parse_args(argv)
    name = Path(args.model).name
    runs = Path(args.runs or f"runs/{name}-align")
    lm = None
    if not args.report_only:
        from wdprobe.core.model import load_model

        lm = load_model(args.model)
        for run_name in args.todo:
            form, orders = RUNS[run_name]
            cfg = AlignConfig(**{**CPU_STUDY.to_json(), "form": form, "orders": orders, "domains": None})
            print(f"== {run_name}: training on {form}, options {orders} ==", flush=True)
            run_align(runs / run_name, model=args.model, data=args.data, config=cfg, train=CPU_TRAINING, lm=lm)
    done = [runs / f for f in args.todo if (runs / f / "summary.json").is_file()]
    if not done:
        print(f"no finished runs under {runs}", file=sys.stderr)
        return 1
    from wdprobe.studies.align.report import write_alignment_report

    out = write_alignment_report(done, Path(args.report or f"reports/{name}/alignment"))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
