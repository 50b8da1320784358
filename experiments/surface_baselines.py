#!/usr/bin/env python
"""Surface baselines of the organisms' designs on WDCT: can the planted stance be read off the prompt's text?

    python experiments/surface_baselines.py --data WDCT.csv          # the committed table (seconds)

For the cued design (the cue line sets the stance) and the balanced design (options swapped on a seeded half, cue
lines drawn apart from the stance), every EthV/Theory item's cloze prompt in each form: a classifier on the cue line
alone and one on the prompt's bag of words, cross-validated (``wdprobe.studies.organisms.surface``), and the same bag
of words with the options' words tagged by canonical slot (what a prompt listing the options could give away: a
stance in the content is expected to be readable there). Written to ``--out``.

Time: under a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from wdprobe.data.items import read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.studies.organisms.data import balanced_split, planted_split
from wdprobe.studies.organisms.surface import SURFACE_MAX, split_surface_baselines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--seed", type=int, default=0, help="the split's seed")
    ap.add_argument("--out", default="reports/organisms/surface.csv", help="the table")
    args = ap.parse_args(argv)
    items = read_items(resolve_wdct_path(args.data))
    splits = {"cued": planted_split(items, seed=args.seed, cued=True), "balanced": balanced_split(items, seed=args.seed)}
    rows = []
    for design, split in splits.items():
        for form in ("word", "deed"):
            for options in (False, True):
                out = split_surface_baselines(split, form, options=options, seed=args.seed)
                for name in ("cue_alone", "bag_of_words"):
                    r = out[name]
                    rows.append({"design": design, "form": form, "text": "prompt + options by slot" if options else "prompt",
                                 "baseline": name, "balanced_accuracy": r["balanced_accuracy"], "low": r["low"],
                                 "high": r["high"], "n": r["n"], "at_most": SURFACE_MAX})
                    print(f"{design} {form} {'+options' if options else ''} {name}: {r['balanced_accuracy']:.2f} "
                          f"[{r['low']:.2f}, {r['high']:.2f}]", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
