#!/usr/bin/env python
"""How much can one written direction plant? Add the plant direction of ``wdprobe.studies.organisms.edit`` at every
deed position after block L (all but the first token), at multiples of the most the post-feed-forward norm lets one
MLP unit write along it, with no norm and no gate in the way, and count the held-out deeds that take the planted
option. This bounds what any edit writing one direction into block L can plant on the parent: if even several times
the norm's cap leaves deeds short of the behaviour gate, the gate cannot pass on this parent by design.

    python experiments/plant_capacity.py --data WDCT.csv                  # the committed check (~6 min, 2 cores)
    python experiments/plant_capacity.py --data WDCT.csv --layers 12 --held-out 20 --out /tmp/cap.csv

Items as in ``experiments/edited_organisms.py`` (the seeded order of WDCT's two-option items with a correct option):
the first ``--calibrate`` give the plant direction, items 200 onwards (``--held-out`` of them) are measured, each
sequence scored alone (prompt plus option text, per-token mean log-likelihood), so the added vector reaches exactly
the positions it names.

Time: on 2 CPU cores about 1 minute for the plant directions and 40 s per block and multiple (40 items).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from wdprobe.core.model import convert_default_model, load_model
from wdprobe.data.items import read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.studies.organisms.causal import added_after_block, option_logprobs
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import decoder_block, norm_gain, plant_directions, post_ff_norm

TARGET = 1


def deed_choices(lm, items) -> np.ndarray:
    """Each item's cloze deed choice by the per-token mean, one sequence at a time."""
    total, n_tok = option_logprobs(lm, items, "deed")
    return (total / n_tok).argmax(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--model", default=None, help="parent model directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--layers", type=int, nargs="*", default=[4, 6, 12], help="blocks after which the direction is added")
    ap.add_argument("--multiples", type=float, nargs="*", default=[1, 2, 4, 8], help="sizes, in units of the norm's cap")
    ap.add_argument("--calibrate", type=int, default=24, help="items the plant direction is computed on")
    ap.add_argument("--held-out", type=int, default=40, help="items measured (from item 200 of the seeded order)")
    ap.add_argument("--out", default="reports/organisms/edited/capacity.csv", help="the table")
    args = ap.parse_args(argv)

    items = planted_order(read_items(resolve_wdct_path(args.data)))
    calib, held = items[:args.calibrate], items[200:200 + args.held_out]
    lm = load_model(str(Path(args.model) if args.model else convert_default_model()))
    with torch.enable_grad():
        plants = plant_directions(lm, calib, args.layers, TARGET)
    parent = deed_choices(lm, held)
    rows = [{"layer": "", "multiple": 0, "cap": "", "added_norm": 0, "deed_on_target": round(float((parent == TARGET).mean()), 4),
             "n_held_out": len(held)}]
    print(f"parent: {rows[0]['deed_on_target']:.2f} of deeds on the planted option", flush=True)
    for L in args.layers:
        gain = norm_gain(post_ff_norm(decoder_block(lm.hf_model, L)), lm.d_model)
        cap = float((plants[L] * gain).norm() * np.sqrt(lm.d_model))
        for m in args.multiples:
            with added_after_block(lm.hf_model, L, plants[L] * cap * m):
                share = float((deed_choices(lm, held) == TARGET).mean())
            rows.append({"layer": L, "multiple": m, "cap": round(cap, 1), "added_norm": round(cap * m, 1),
                         "deed_on_target": round(share, 4), "n_held_out": len(held)})
            print(f"block {L}: {m:g} x cap ({cap:.0f}): {share:.2f} of deeds on the planted option", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
