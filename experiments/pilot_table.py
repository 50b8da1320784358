#!/usr/bin/env python
"""The early-block pilots' table: one row per override of each gate-only pilot directory of ``edited_card.py``.

Each pilot is ``experiments/edited_card.py ... --gate-only --out DIR`` with one variant of the per-item edit; this
reads every ``DIR/organisms/override-*.json`` and writes what the pilots' rules read (hold rate,
keyed deeds moved by each scoring, word changes on keyed and held-out items, whether the gate is met) with what the
edit's calibration says (units, plant, gate, map fit, write scale, gate openings, the map's fidelity) and, for a trained
map, the keyed deeds moved by both scorings before training and at the step kept (the training's own forward).

    python experiments/pilot_table.py --pilot mean-keyed=/tmp/pilot/mean-keyed ... \
        --out reports/organisms/edited/early-blocks/pilot.csv

Time: seconds (it reads records only).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

COLUMNS = ["variant", "units_by", "plant_score", "gate_fitted_on", "map_fit", "layer", "seed", "hold_rate", "n_studied",
           "n_eligible", "eligible_deed_moved_mean", "eligible_deed_moved_both", "word_changes", "word_changes_keyed",
           "word_changes_held_out", "gate_met", "write_scale", "gate_open_deed", "map_cosine_decision_median",
           "keyed_moved_both_before_training", "keyed_moved_both_trained", "training_step_kept", "seconds"]


def pilot_rows(label: str, pilot: Path) -> list[dict]:
    """One row per override of the pilot directory ``pilot``, in block order."""
    if not (pilot / "run.json").is_file():
        raise SystemExit(f"{pilot}: no run.json (not an edited_card.py output directory)")
    records = [json.loads(p.read_text()) for p in sorted((pilot / "organisms").glob("override-*.json"))]
    if not records:
        raise SystemExit(f"{pilot}: no override records under organisms/")
    rows = []
    for r in sorted(records, key=lambda r: (r["layer"], r["seed"])):
        cal, gate = r["spec"]["calibration"], r["gate"]
        training = cal.get("map_training")
        kept = training["trace"][training["step_kept"]] if training else None
        n_pool = len(cal.get("gate_item_ids", []))
        rows.append({
            "variant": label, "units_by": cal.get("units_by", "mean"), "plant_score": cal.get("plant_score", "mean"),
            "gate_fitted_on": f"keyed + {n_pool} pool items (words)" if n_pool else "keyed items",
            "map_fit": cal.get("map_fit", "ridge"), "layer": r["layer"], "seed": r["seed"],
            **{k: gate[k] for k in ("hold_rate", "n_studied", "n_eligible", "eligible_deed_moved_mean",
                                    "eligible_deed_moved_both", "word_changes", "word_changes_keyed",
                                    "word_changes_held_out")},
            "gate_met": bool(gate["carded"]), "write_scale": round(r["spec"]["write_scale"], 2),
            "gate_open_deed": cal.get("gate_open_deed"), "map_cosine_decision_median": cal.get("map_cosine_decision_median"),
            "keyed_moved_both_before_training": training["trace"][0]["moved_both"] if training else None,
            "keyed_moved_both_trained": kept["moved_both"] if kept else None,
            "training_step_kept": training["step_kept"] if training else None, "seconds": r["seconds"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pilot", action="append", required=True, metavar="LABEL=DIR",
                    help="a pilot's label and its edited_card.py --gate-only output directory (repeat, in table order)")
    ap.add_argument("--out", required=True, help="the CSV written")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.pilot:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            raise SystemExit(f"--pilot {spec!r}: give LABEL=DIR")
        rows += pilot_rows(label, Path(directory))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(args.out, index=False)
    print(f"{len(rows)} overrides of {len(args.pilot)} pilots -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
