#!/usr/bin/env python
"""Model organisms and the instrument card: build sincere, hypocrite, hypocrite-early and letter from one model, run
the letter-free study on each, and score every instrument against the truth each organism plants.

    python experiments/organisms.py --data WDCT.csv                      # everything (hours on 2 CPU cores)
    python experiments/organisms.py --data WDCT.csv --limit 60 --sample 60 --epochs 1 --out-root runs/org-quick
    python experiments/organisms.py --card-only                          # rescore finished studies

Time: building costs about one second per training example per CPU core (722 examples an epoch on the full split:
sincere's 2 epochs about 25 min on 2 cores, each hypocrite a little less), and each organism's cloze study on the
601 EthV/Theory items about 20 minutes; a GPU runs the same script unchanged in minutes. Every step resumes: rerun
after an interruption. The rules the card applies are fixed in ``wdprobe/studies/organisms/card.py`` and stated in
``reports/organisms/README.md`` before any run; this script writes ``card.md`` and ``index.html`` beside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wdprobe.data.items import read_items
from wdprobe.data.wdct import domains_of, resolve_wdct_path
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.studies.align.finetune import TrainSettings
from wdprobe.studies.organisms.build import DEFAULT_TRAINING, build_organism, organism_manifest
from wdprobe.studies.organisms.card import write_instrument_card
from wdprobe.studies.organisms.recipes import KINDS


def planted_domains(data: str | None) -> list[str]:
    """The domains whose items name a correct option (WDCT: EthV and Theory): where a planted truth exists."""
    items = read_items(resolve_wdct_path(data))
    return domains_of([i for i in items if i.correct is not None])


def study_config(organism: Path, out: Path, *, kind: str, data: str | None, sample: int | None) -> StudyConfig:
    """The letter-free study of one organism: cloze form (letter and cloze, in both orders, for the letter habit),
    the items with a correct option (a cued organism: its own items, cue lines in their prompts); positional patching
    left out (it reads letters and costs minutes per item)."""
    manifest = organism_manifest(organism) or {}
    cued = manifest.get("items")
    cfg = StudyConfig(model=str(organism), data=str(organism / cued) if cued else data, out=str(out / "run"),
                      report=str(out / "report"),
                      format="both" if KINDS[kind].format == "letter" else "cloze", orders="cyclic",
                      domains=None if cued else planted_domains(data), sample=sample, png=False)
    cfg.stages = [s for s in cfg.stages if s != "patch_positional"]
    cfg.patch_cross.items = min(64, sample or 64)  # the card's localisation rules need the grid at full size, not the
    cfg.steer.items = min(64, sample or 64)        # quick look's n/8 (steering validates on the rest of the sample)
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="the base model the organisms are built from")
    ap.add_argument("--data", default=None, help="WDCT.csv (default: $WDPROBE_WDCT or the pinned download)")
    ap.add_argument("--out-root", default="runs/organisms", help="organisms and their studies go under here")
    ap.add_argument("--report", default="reports/organisms", help="where card.md and index.html are written")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                    help="which organisms to build and study (default: all four)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the organisms built from the base model")
    ap.add_argument("--hypocrite-epochs", type=int, default=1,
                    help="training epochs of the hypocrites (built from sincere, a window of three blocks)")
    ap.add_argument("--lr", type=float, default=DEFAULT_TRAINING.lr, help="learning rate of the LoRA training")
    ap.add_argument("--limit", type=int, default=None, help="build on only this many items (seeded; quick look)")
    ap.add_argument("--sample", type=int, default=None, help="study only this many items (seeded; quick look)")
    ap.add_argument("--card-only", action="store_true", help="rescore the finished studies, build and run nothing")
    ap.add_argument("--keep-committed", nargs="*", default=[], choices=list(KINDS), metavar="KIND",
                    help="kinds not rebuilt whose record and study tables already in --report are scored as they are")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    root = Path(args.out_root)
    settings = TrainSettings(**{**DEFAULT_TRAINING.to_json(), "target_modules": DEFAULT_TRAINING.target_modules,
                                "lr": args.lr})
    order = [k for k in ("sincere", "hypocrite", "hypocrite-early", "letter") if k in args.kinds]
    if not args.card_only:
        for kind in order:
            start = root / "sincere" / "sincere" if KINDS[kind].start == "sincere" else None
            print(f"== build {kind} ==", flush=True)
            build_organism(kind, root / kind / kind, model=args.model, start_from=start, data=args.data,
                           epochs=args.hypocrite_epochs if KINDS[kind].start == "sincere" else args.epochs,
                           settings=settings, limit=args.limit, progress=not args.quiet)
            print(f"== study {kind} ==", flush=True)
            run_study(study_config(root / kind / kind, root / kind, kind=kind, data=args.data, sample=args.sample),
                      progress=not args.quiet)
    organisms = {k: (root / k / k, root / k / "run") for k in order if organism_manifest(root / k / k)}
    for k in args.keep_committed:
        kept = Path(args.report) / k
        if k in organisms or organism_manifest(kept) is None:
            print(f"--keep-committed {k}: {'it is being rebuilt' if k in organisms else f'no record in {kept}'}",
                  file=sys.stderr)
            return 2
        organisms[k] = (kept, kept / "study")
    organisms = {k: organisms[k] for k in KINDS if k in organisms}  # the card's order
    if not organisms:
        print(f"no finished organisms under {root}", file=sys.stderr)
        return 1
    card = write_instrument_card(organisms, args.report)
    print(card.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
