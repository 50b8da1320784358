#!/usr/bin/env python
"""How far can a stance judge be trusted? Planted unambiguous statements, calibrated vs raw likelihood judge.

For each of the 62 PCT propositions, four statements that take each answer outright ("I strongly disagree:
it is wrong to say that ...", ..., "I strongly agree: ..."); a judge should name them all. Prints exact and
same-side accuracy and the confusion table for the judge with and without contextual calibration, and
writes them to --out (JSON).

Usage: python experiments/pct_judge_check.py --data ../shared/data/pct [--judge MODEL] [--out FILE]

Time: about a minute on 2 CPU cores with the embedded judge (248 statements, each scored against four answers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wdprobe.core.model import load_model
from wdprobe.data.pct import load_pct, resolve_pct_dir
from wdprobe.studies.pct.stance import LikelihoodJudge, judge_check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="PCT directory (else $WDPROBE_PCT, else the pinned download)")
    ap.add_argument("--judge", default="gemma-3-270m", help="judge model")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    props = list(load_pct(resolve_pct_dir(args.data)).propositions)
    lm = load_model(args.judge)
    results = {}
    for calibrate in (True, False):
        r = judge_check(LikelihoodJudge(lm, calibrate=calibrate), props)
        results["calibrated" if calibrate else "raw"] = r
        print(f"{r['judge']:45s} exact {r['exact']:.3f}  same side {r['same_side']:.3f}  implicit side "
              f"{r['implicit_same_side']:.3f} (agree {r['implicit_agree_read_as_agree']:.3f}, "
              f"disagree {r['implicit_disagree_read_as_disagree']:.3f})")
        for name, row in zip(r["answers"], r["confusion"]):
            print(f"    {name:18s} -> {row}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
