#!/usr/bin/env python
"""Reproduce the WDCT paper's CS/PCS table (Xu et al., ICLR 2025, normal setting) for a list of models.

    python experiments/paper_table.py --data WDCT.csv                       # the embedded Gemma-3-270M
    python experiments/paper_table.py --data WDCT.csv --device-map auto \\
        --models mistralai/Mistral-7B-v0.1 meta-llama/Meta-Llama-3-8B-Instruct   # on a GPU, with weights

Each model is scored into its own run directory (resumable: rerunning skips finished models) and the
table is written as markdown with the paper's numbers beside this run's. Answers come from next-token
letter probabilities, not generated text with regex extraction, so no item is dropped.

Time: scoring the full WDCT in the paper's one order takes about 5 minutes a model of this size on 2 CPU cores
(--sample 100: under a minute after the model loads); a 7-8B model needs a GPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wdprobe.data.wdct import DOMAINS
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.reports.scores import PAPER_TABLE
from wdprobe.stages.score import load_score

# Hugging Face ids of the paper's open models (the paper does not pin Mistral's instruct version).
PAPER_NAMES = {
    "mistralai/Mistral-7B-v0.1": "Mistral-7B", "mistralai/Mistral-7B-Instruct-v0.1": "Mistral-7B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.2": "Mistral-7B-Instruct", "meta-llama/Llama-2-7b-hf": "Llama-2-7B",
    "meta-llama/Llama-2-7b-chat-hf": "Llama-2-7B-Chat", "meta-llama/Meta-Llama-3-8B": "Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-70B": "Llama-3-70B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "Llama-3-70B-Instruct",
}


def table_markdown(rows: list[dict]) -> str:
    """One row per model: this run's macro CS/PCS (the paper's averaging), micro CS, per-domain CS, paper's."""
    head = ["model", "items", "CS macro", "PCS macro", "CS micro"] + [f"CS {d}" for d in DOMAINS] + ["paper CS", "paper PCS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = PAPER_TABLE.get(PAPER_NAMES.get(r["model"], ""), (None, None))
        cells = [r["model"], str(r["n_items"]), f"{r['cs_macro']:.3f}", f"{r['pcs_macro']:.3f}", f"{r['cs_micro']:.3f}"]
        cells += [f"{r['per_domain'][d]['cs']:.3f}" if d in r["per_domain"] else "—" for d in DOMAINS]
        cells += ["—" if v is None else f"{v:.2f}" for v in paper]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma-3-270m"], help="models to score (embedded default, local directories or HF ids)")
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N items")
    ap.add_argument("--sample", type=int, default=None, help="seeded sample of N items (keeps every domain)")
    ap.add_argument("--out-root", default="runs/paper-table", help="parent of the run directories (one per model)")
    ap.add_argument("--report", default="reports/paper_table.md", help="the markdown table")
    ap.add_argument("--dtype", default="float32", help="model weights' dtype")
    ap.add_argument("--device-map", default=None, help="'auto' spreads a large model over the visible GPUs")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    rows = []
    for model in args.models:
        cfg = StudyConfig(model=model, data=args.data, limit=args.limit, sample=args.sample, dtype=args.dtype,
                          device_map=args.device_map, stages=["score"])
        cfg.out = str(Path(args.out_root) / cfg.slug)
        run_study(cfg, progress=not args.quiet)
        rows.append({"model": model, **load_score(cfg.out_dir).metrics})
    text = ("# WDCT consistency beside the paper's table\n\n"
            f"Command: `python experiments/paper_table.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
            + table_markdown(rows) +
            "\nCS macro / PCS macro average over the four domains, as the paper's table does; random choice gives "
            "CS 0.5 on two-option items.\n")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
