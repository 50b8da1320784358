#!/usr/bin/env python
"""Cross-model interchange interventions (DAS) scored on freshly planted edited organisms: each organism is patched
into its parent block by block to find, blind, the first block carrying half of its deed shift; a 1-d subspace is
learned there and read on held-out items (restored share, IIA) and against the planted direction (cosine).
Rules: ``reports/organisms/edited/cross-model-rules.md``, section "Interchange interventions" (written before the run).

    python experiments/interchange_card.py --data ../shared/data/wdct/WDCT.csv
    python experiments/interchange_card.py --data WDCT.csv --blocks 4 --nulls --out /tmp/x

Writes ``--out``: organisms/NAME.json (one per organism, as each finishes; a rerun resumes), interchange.csv, card.md.
Time: on 2 CPU cores about 4 minutes to read the parent, then 3-5 minutes per organism.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.errors import InputError
from wdprobe.methods.subspace import subspace_cosine
from wdprobe.studies.organisms.cross_model_localisation import interchange_at_block, localise_by_patching
from wdprobe.studies.organisms.data import fresh_family_items
from wdprobe.studies.organisms.edit import build_edited_organism, edit_from_reading, read_parent
from wdprobe.studies.organisms.edit_components import decoder_block, norm_gain, post_ff_norm

TARGET = 1
IIA_TARGET, COSINE_TARGET = 0.85, 0.8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (default: the cached download)")
    ap.add_argument("--model", default=None, help="parent model directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--out", default="reports/organisms/edited/interchange", help="results directory")
    ap.add_argument("--work", default="/tmp/wdprobe-interchange-card", help="organisms' weights while read (deleted)")
    ap.add_argument("--blocks", default="2,5,8,11,14", help="blocks planted with an override, comma-separated")
    ap.add_argument("--null-blocks", default="5,11", help="blocks planted with a null-direction edit")
    ap.add_argument("--calibrate", type=int, default=40, help="items that calibrate the edits")
    ap.add_argument("--study", type=int, default=32, help="items studied (after the calibration items)")
    ap.add_argument("--sweep-items", type=int, default=16, help="studied items the blind residual sweep reads")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the subspace")
    args = ap.parse_args(argv)
    try:
        overrides = [int(b) for b in args.blocks.split(",") if b]
        nulls = [int(b) for b in args.null_blocks.split(",") if b]
    except ValueError:
        raise InputError("--blocks and --null-blocks take block numbers separated by commas") from None
    out = Path(args.out)
    (out / "organisms").mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    calib, items = fresh_family_items(read_items(resolve_wdct_path(args.data)), args.calibrate, args.study)
    plan = [(f"override-L{b}-s0", "override", b) for b in overrides] + [(f"null-direction-L{b}-s0", "null-direction", b)
                                                                       for b in nulls]
    todo = [p for p in plan if not (out / "organisms" / f"{p[0]}.json").is_file()]
    if todo:
        started = time.perf_counter()
        reading = read_parent(lm, calib, sorted({b for _, _, b in todo}), target=TARGET)
        print(f"parent read at blocks {sorted({b for _, _, b in todo})} ({time.perf_counter() - started:.0f} s)", flush=True)
    for name, kind, block in todo:
        started = time.perf_counter()
        spec = edit_from_reading(reading, block, kind=kind, strength=20.0, seed=0)
        child_dir = Path(args.work) / name
        build_edited_organism(lm.path, child_dir, spec)
        child = load_model(str(child_dir))
        toward = [TARGET] * len(items)
        sweep = localise_by_patching(lm, child, items[:args.sweep_items], toward[:args.sweep_items], components=False)
        result = {"name": name, "kind": kind, "layer": block, "seed": 0, "unit": spec.unit,
                  "recovered_block": sweep["recovered_block"], "shift_mean": sweep["shift_mean"],
                  "shift_low": sweep["shift_low"], "shift_high": sweep["shift_high"], "shift_p": sweep["shift_p"],
                  "sweep_items": [it.id for it in items[:args.sweep_items]], "items": [it.id for it in items]}
        if sweep["recovered_block"] is not None:
            found = interchange_at_block(lm, child, items, toward, sweep["recovered_block"], epochs=args.epochs)
            learned = found.pop("directions")
            gain = norm_gain(post_ff_norm(decoder_block(lm.hf_model, block)), lm.d_model).cpu().numpy()
            # the plant: the reading's gradient direction; the write: what the unit writes before the norm's gain
            # (the plant itself for an override, the random direction for a null-direction edit)
            result.update({"interchange": found,
                           "cosine_plant": subspace_cosine(learned, reading.plants[block].numpy()),
                           "cosine_written": subspace_cosine(learned, np.asarray(spec.write) / gain)})
        result["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(out / "organisms" / f"{name}.json", result)
        shutil.rmtree(child_dir, ignore_errors=True)
        ic = result.get("interchange") or {}
        print(f"{name}: recovered block {result['recovered_block']} (planted {block}); restored "
              f"{ic.get('restored_mean', float('nan')):.2f}, IIA {ic.get('iia', float('nan')):.2f}, cosine "
              f"{result.get('cosine_plant', float('nan')):.2f} [{result['seconds']:.0f} s]", flush=True)
        del child
    write_card(out, [p[0] for p in plan])
    return 0


def write_card(out: Path, names: list[str]) -> None:
    """The table of every organism read, and the counts against the targets."""
    rows = []
    for name in names:
        f = out / "organisms" / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        ic = r.get("interchange") or {}
        rows.append({"name": name, "kind": r["kind"], "planted": r["layer"], "recovered": r["recovered_block"],
                     "shift_mean": r["shift_mean"], "shift_p": r["shift_p"], "restored": ic.get("restored_mean"),
                     "iia": ic.get("iia"), "n_held": ic.get("n_held"), "n_flipped": ic.get("n_flipped"),
                     "iia_flipped": ic.get("iia_flipped"), "cosine_plant": r.get("cosine_plant"),
                     "cosine_written": r.get("cosine_written"), "loss_first": ic.get("loss_first"),
                     "loss_last": ic.get("loss_last"), "seconds": r["seconds"]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise InputError(f"{out}: no organism read yet")
    frame.to_csv(out / "interchange.csv", index=False)

    def cell(x, fmt="{:.2f}"):
        return "" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)

    lines = ["# Interchange interventions (cross-model DAS) on freshly planted edited organisms", "",
             "Rules: `../cross-model-rules.md`, section \"Interchange interventions\" (written before the run). Each "
             "organism's block is found blind by the cross-model residual sweep; a 1-d subspace of that block's "
             "residual is learned on 19 items and read on 13 held out.", "",
             "| organism | planted | recovered | shift (mean), p | restored by 1-d | IIA held out (no interchange) | "
             "flipped: IIA (n) | cosine with plant | cosine with write |", "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        lines.append(f"| {r.name} | L{r.planted} | {'none' if pd.isna(r.recovered) else 'L' + str(int(r.recovered))} | "
                     f"{r.shift_mean:.3f}, p = {r.shift_p:.3g} | {cell(r.restored)} | {cell(r.iia)} "
                     f"({cell(1 - r.n_flipped / r.n_held if r.n_held else None)}) | "
                     f"{cell(r.iia_flipped)} ({cell(r.n_flipped, '{:.0f}')}) | {cell(r.cosine_plant)} | "
                     f"{cell(r.cosine_written)} |")
    plants = frame[frame["kind"] == "override"]
    at = plants[plants["recovered"] == plants["planted"]]
    lines += ["", f"**Read {len(frame)} of {len(names)} planned organisms. Overrides read: {len(plants)}; block "
              f"recovered exactly: {len(at)}; of those IIA >= {IIA_TARGET}: {int((at['iia'] >= IIA_TARGET).sum())}, "
              f"cosine with the plant >= {COSINE_TARGET}: {int((at['cosine_plant'] >= COSINE_TARGET).sum())}.**", "",
              "IIA held out counts every held-out item; in brackets, the share the parent already answers as the "
              "organism does without any interchange (items the edit did not flip), the level an interchange that "
              "carries nothing reaches. The flipped items' IIA is the informative one. The block is recovered by "
              "cross-model patching's exact shortcut (below the edit the two models are identical), so a hit there "
              "says nothing about the subspace."]
    atomic_write_text(out / "card.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
