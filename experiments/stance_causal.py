#!/usr/bin/env python
"""Is the sincere-balanced organism's stance causal in both forms? Read its stance direction on training items, then
on held-out items shift the residual after block L against it (toward each item's incorrect option) and count the
word and deed choices that move, with the options' probability kept; a random direction of the same size is the
control.

    python experiments/stance_causal.py --organism DIR                     # the committed check (~15 min, 2 cores)
    python experiments/stance_causal.py --organism DIR --layers 6 --held-out 20 --out /tmp/causal.csv

``DIR`` is a finished ``wdprobe organism build --kind sincere-balanced`` directory (its ``items.jsonl`` holds the
items as trained and studied: options swapped on a seeded half, cue lines apart from the stance; ``split.csv`` says
which were trained on). The stance direction at block L is the gradient, at the block's output, of the correct
option's per-token mean log-likelihood over the other's, summed over word and deed prompts of ``--calibrate``
training items (``wdprobe.studies.organisms.edit.plant_directions``); the shift is its negative, ``--multiples`` of
the median residual norm at the decision point (``wdprobe.studies.organisms.causal``). Written to ``--out``: one row
per direction, block, multiple and form, the per-token mean and the sum side by side; beside it (``.json``) the
verdict per form by the rule of ``reports/organisms/edited/balanced-rules.md``.

Time: on 2 CPU cores about 1 minute for the directions, then about 25 s per block, direction and multiple (80 items).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.errors import InputError
from wdprobe.studies.organisms.causal import causal_verdict, stance_shifts
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import plant_directions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", required=True, help="a sincere-balanced organism directory")
    ap.add_argument("--layers", type=int, nargs="*", default=[4, 8, 12], help="blocks after which the shift is added")
    ap.add_argument("--multiples", type=float, nargs="*", default=[0.125, 0.25, 0.5],
                    help="shift sizes, in units of the median residual norm at the decision point")
    ap.add_argument("--calibrate", type=int, default=40, help="training items the stance direction is read on")
    ap.add_argument("--held-out", type=int, default=80, help="held-out items measured")
    ap.add_argument("--seed", type=int, default=0, help="item order and the random control direction")
    ap.add_argument("--out", default="reports/organisms/sincere-balanced/causal.csv", help="the table")
    args = ap.parse_args(argv)

    root = Path(args.organism)
    if not (root / "split.csv").is_file() or not (root / "items.jsonl").is_file():
        raise InputError(f"{root}: no split.csv / items.jsonl (not a finished sincere-balanced organism)")
    sets = dict(pd.read_csv(root / "split.csv")[["id", "set"]].itertuples(index=False))
    items = [it for it in planted_order(read_items(root / "items.jsonl"), args.seed)
             if it.n_options == 2 and it.correct is not None]
    calib = [it for it in items if sets.get(it.id) == "train"][:args.calibrate]
    held = [it for it in items if sets.get(it.id) == "held_out"][:args.held_out]
    if not calib or not held:
        raise InputError(f"{root}/split.csv: no train or no held_out items")
    lm = load_model(str(root))
    with torch.enable_grad():
        stance = plant_directions(lm, calib, args.layers, [it.correct for it in calib], forms=("word", "deed"))
    aims = [1 - it.correct for it in held]  # against the stance: each item's incorrect option
    rng = np.random.default_rng([args.seed, 31])
    rows = []
    for L in args.layers:
        random = torch.as_tensor(rng.standard_normal(lm.d_model), dtype=torch.float32)
        got = stance_shifts(lm, held, aims, {"against stance": -stance[L], "random": random}, L, args.multiples)
        rows.extend(got)
        for r in got:
            print(f"block {L} {r['direction']} x{r['multiple']:g} {r['form']}: on incorrect {r['on_aim_mean']:.2f} "
                  f"(sum {r['on_aim_sum']:.2f}), option mass x{r['option_mass_ratio_median']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    verdict = causal_verdict(rows)
    atomic_write_json(out.with_suffix(".json"), {"rule": "reports/organisms/edited/balanced-rules.md", "organism": str(root),
                                                 "n_calibrate": len(calib), "n_held_out": len(held), "forms": verdict})
    for form, v in verdict.items():
        print(f"{form}: {'causal' if v['causal'] else 'not shown'}; best {v['best']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
