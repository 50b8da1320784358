#!/usr/bin/env python
"""Does the deed use the stance the word states? Interchange interventions on a learned 1-d stance subspace at the
decision point, learned on word pairs and on deed pairs, each form read in its own token space
(``wdprobe.studies.crossform.interchange``; rules fixed before the run in ``reports/cross-form-interchange/rules.md``).

    python experiments/cross_form_interchange.py --data ../shared/data/wdct/WDCT.csv
    python experiments/cross_form_interchange.py --data WDCT.csv --model organisms/sincere-balanced --out /tmp/x

Writes ``--out``: settings.json, stances.csv, layers/block-L.csv (every held-out pair's outcome), summary.csv,
README.md (verdicts first, worded from the corrected tests), index.html and iia.png. Rerunning resumes finished blocks.

Time: on 2 CPU cores about 6-8 minutes per block for 120 items (the default), most of it the subspaces' training.
"""
from __future__ import annotations

import argparse

from wdprobe.core.model import load_model
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.studies.crossform.interchange import InterchangeSettings, study_items
from wdprobe.studies.crossform.report import cross_form_study


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (default: the cached download)")
    ap.add_argument("--model", default=None, help="model id or directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--out", default="reports/cross-form-interchange", help="results directory")
    ap.add_argument("--items", type=int, default=120, help="how many EthV/Theory items (seeded order)")
    ap.add_argument("--layers", default="1,4,7,10,13,16", help="blocks whose residual is intervened on, comma-separated")
    ap.add_argument("--kind", default="direction", help="subspace kind: direction, rotation or boundless")
    ap.add_argument("--k", type=int, default=1, help="subspace dimension (rotation) or starting boundary (boundless)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per subspace")
    ap.add_argument("--sources-per-item", type=int, default=1, help="source items per base item")
    ap.add_argument("--seed", type=int, default=0, help="split, pairs and training seed")
    args = ap.parse_args(argv)
    settings = InterchangeSettings.from_flags(args.layers, kind=args.kind, k=args.k, epochs=args.epochs,
                                   sources_per_item=args.sources_per_item, seed=args.seed)
    lm = load_model(args.model)
    items = study_items(resolve_wdct_path(args.data), args.items)
    readme = cross_form_study(lm, items, settings, args.out, progress=lambda m: print(m, flush=True))
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
