"""Word-only vs deed-only alignment (and the two augmentations) on one model: do deeds follow words?

    python experiments/alignment.py --data WDCT.csv                       # the CPU study (~40 min)
    python experiments/alignment.py --data WDCT.csv --forms word deed     # only the two core runs
    python experiments/alignment.py --report-only                         # redraw from finished runs

Trains four copies of the model (LoRA, SFT then DPO with beta 0.1) on flipped answers: word items only,
deed items only, both forms (dual augmentation), word items plus rule-based paraphrases (paraphrase
augmentation), each on the same seeded train/held-out split, and writes the report under
``reports/<model>/alignment/``. Each run is resumable: rerun the same command after an interruption.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wdprobe.align import AlignConfig, run_align
from wdprobe.finetune import TrainSettings

# The CPU study: 128 two-option items (64 trained, 64 held out), 3 SFT epochs + 1 DPO epoch, each trained
# item in both option orders; measured ~10 min per single-form run on 2 CPU cores (docs/benchmarks.md).
CPU_STUDY = AlignConfig(n_items=128, held_out=0.5, sft_epochs=3, dpo_epochs=1, method="sft+dpo", orders="both", seed=0,
                        paraphrases=1)
CPU_TRAINING = TrainSettings(tuning="lora", rank=8, lora_alpha=16, lr=1e-3, batch_size=8, beta=0.1, seed=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default=None, help="WDCT.csv (default: $WDPROBE_WDCT or the pinned download)")
    ap.add_argument("--forms", nargs="+", default=["word", "deed", "both", "paraphrase"])
    ap.add_argument("--runs", default=None, help="parent of the run directories (default runs/<model>-align)")
    ap.add_argument("--report", default=None, help="report folder (default reports/<model>/alignment)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    name = Path(args.model).name
    runs = Path(args.runs or f"runs/{name}-align")
    lm = None
    if not args.report_only:
        from wdprobe.models import load_model

        lm = load_model(args.model)
        for form in args.forms:
            cfg = AlignConfig(**{**CPU_STUDY.to_json(), "form": form, "domains": None})
            print(f"== training on {form} ==", flush=True)
            run_align(runs / form, model=args.model, data=args.data, config=cfg, train=CPU_TRAINING, lm=lm)
    done = [runs / f for f in args.forms if (runs / f / "summary.json").is_file()]
    if not done:
        print(f"no finished runs under {runs}", file=sys.stderr)
        return 1
    from wdprobe.align_report import write_alignment_report

    out = write_alignment_report(done, Path(args.report or f"reports/{name}/alignment"))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
