#!/usr/bin/env python
"""Component-level localisation scored on freshly planted edited organisms: every attention, MLP and head site of
every block read by exact cross-model patching, attribution patching (AtP) and AtP* (GradDrop), each organism
patched into its parent on the items it moves most, and the site each instrument ranks first compared with the
planted one. Rules: ``reports/organisms/edited/cross-model-rules.md``, section "Component level" (written before the
run).

    python experiments/component_card.py --data ../shared/data/wdct/WDCT.csv
    python experiments/component_card.py --data WDCT.csv --blocks 5 --out /tmp/x

Writes ``--out``: organisms/NAME.json (one per organism, as each finishes; a rerun resumes), components.csv, card.md.
Time: on 2 CPU cores about 4 minutes to read the parent, then about 5 minutes per organism.
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
from wdprobe.scoring.stats import wilson_interval
from wdprobe.studies.organisms.cross_model_localisation import (
    COMPONENT_INSTRUMENTS,
    attribution_hit,
    items_moved_most,
    rank_components,
)
from wdprobe.studies.organisms.data import fresh_family_items
from wdprobe.studies.organisms.edit import build_edited_organism, edit_from_reading, read_parent

TARGET = 1
HIT_SHARE, SPEARMAN_TARGET = 0.9, 0.9
COMPONENTS = {"override": "mlp", "head-override": "attn-head"}
LABELS = {"exact": "exact patching", "atp": "AtP", "atp_star": "AtP* (GradDrop)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (default: the cached download)")
    ap.add_argument("--model", default=None, help="parent model directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--out", default="reports/organisms/edited/components", help="results directory")
    ap.add_argument("--work", default="/tmp/wdprobe-component-card", help="organisms' weights while read (deleted)")
    ap.add_argument("--blocks", default="2,5,8,11,14", help="blocks planted (an MLP and a head override each)")
    ap.add_argument("--calibrate", type=int, default=40, help="items that calibrate the edits")
    ap.add_argument("--candidates", type=int, default=96, help="items the studied ones are chosen from")
    ap.add_argument("--items", type=int, default=12, help="items read per organism (those it moves most)")
    args = ap.parse_args(argv)
    try:
        blocks = [int(b) for b in args.blocks.split(",") if b]
    except ValueError:
        raise InputError("--blocks takes block numbers separated by commas") from None
    out = Path(args.out)
    (out / "organisms").mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    calib, candidates = fresh_family_items(read_items(resolve_wdct_path(args.data)), args.calibrate, args.candidates)
    plan = [(f"{family}-L{b}-s0", family, b) for family in COMPONENTS for b in blocks]
    todo = [p for p in plan if not (out / "organisms" / f"{p[0]}.json").is_file()]
    if todo:
        started = time.perf_counter()
        reading = read_parent(lm, calib, sorted({b for _, _, b in todo}), target=TARGET, heads=True)
        print(f"parent read at blocks {sorted({b for _, _, b in todo})} ({time.perf_counter() - started:.0f} s)", flush=True)
    toward = [TARGET] * len(candidates)
    for name, family, block in todo:
        started = time.perf_counter()
        spec = edit_from_reading(reading, block, kind="override", strength=20.0, seed=0, component=COMPONENTS[family])
        child_dir = Path(args.work) / name
        build_edited_organism(lm.path, child_dir, spec)
        child = load_model(str(child_dir))
        chosen, shift = items_moved_most(lm, child, candidates, toward, args.items)
        result = {"name": name, "family": family, "component": COMPONENTS[family], "layer": block, "seed": 0,
                  "unit": spec.unit, "items": [candidates[i].id for i in chosen],
                  "candidate_shift_mean": float(shift.mean()), "chosen_shift_total": float(shift[chosen].sum())}
        if result["chosen_shift_total"] > 0:
            found = rank_components(lm, child, [candidates[i] for i in chosen], [TARGET] * len(chosen))
            result.update({"scored": True, **found})
            head = spec.unit if COMPONENTS[family] == "attn-head" else None
            for inst in COMPONENT_INSTRUMENTS:
                result[inst]["hit"] = attribution_hit(found[inst], block, COMPONENTS[family], head)
        else:
            result["scored"] = False
        result["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(out / "organisms" / f"{name}.json", result)
        shutil.rmtree(child_dir, ignore_errors=True)
        firsts = ", ".join(f"{i} {result[i]['top_site']}" + ("" if result["component"] == "mlp" else
                                                             f"/L{result[i]['top_head_block']}.head{result[i]['top_head']}")
                           for i in COMPONENT_INSTRUMENTS) if result["scored"] else "not scored"
        print(f"{name} (unit {spec.unit}): {firsts} [{result['seconds']:.0f} s]", flush=True)
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
        row = {"name": name, "family": r["family"], "planted": r["layer"], "unit": r["unit"], "scored": r["scored"],
               "chosen_shift_total": r["chosen_shift_total"], "n_sites_differing": r.get("n_sites_differing"),
               "seconds": r["seconds"]}
        for inst in COMPONENT_INSTRUMENTS:
            got = r.get(inst) or {}
            row[f"{inst}_first"] = got.get("top_site")
            row[f"{inst}_first_head"] = (None if got.get("top_head") is None
                                         else f"L{got['top_head_block']}.head{got['top_head']}")
            row[f"{inst}_hit"] = got.get("hit")
            row[f"{inst}_seconds"] = got.get("seconds")
            row[f"{inst}_spearman"] = (got.get("agreement") or {}).get("spearman")
            row[f"{inst}_top5"] = (got.get("agreement") or {}).get("top_k_agreement")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise InputError(f"{out}: no organism read yet")
    frame.to_csv(out / "components.csv", index=False)

    def cell(x, fmt="{:.2f}"):
        return "" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)

    def first(r, inst):
        site = r[f"{inst}_first"]
        if site is None or (isinstance(site, float) and np.isnan(site)):
            return ""
        head = "" if r["family"] == "override" else f" / {r[f'{inst}_first_head']}"
        return f"{site}{head} ({'hit' if r[f'{inst}_hit'] else 'miss'})"

    lines = ["# Component-level localisation on freshly planted edited organisms", "",
             "Rules: `../cross-model-rules.md`, section \"Component level\" (written before the run). Each organism "
             "is patched into its parent at every attention, MLP and head site of every block, on the 12 of 96 "
             "candidate items it moves most toward option 1; no block is given. Planted: an MLP unit (override) or "
             "one head's output (head-override, head in brackets).", "",
             "| organism | planted | sites differing | " + " | ".join(f"{LABELS[i]} first" for i in COMPONENT_INSTRUMENTS)
             + " | AtP vs exact: Spearman (top 5) | AtP* vs exact: Spearman (top 5) | seconds: exact / AtP / AtP* |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        planted = f"L{r['planted']}." + ("mlp" if r["family"] == "override" else f"head{r['unit']}")
        if not r["scored"]:
            lines.append(f"| {r['name']} | {planted} | not scored: no positive shift on its chosen items | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {planted} | {int(r['n_sites_differing'])} | "
                     + " | ".join(first(r, i) for i in COMPONENT_INSTRUMENTS) + " | "
                     f"{cell(r['atp_spearman'])} ({cell(r['atp_top5'])}) | {cell(r['atp_star_spearman'])} "
                     f"({cell(r['atp_star_top5'])}) | {cell(r['exact_seconds'], '{:.0f}')} / "
                     f"{cell(r['atp_seconds'], '{:.0f}')} / {cell(r['atp_star_seconds'], '{:.0f}')} |")
    scored = frame[frame["scored"]]
    n = len(scored)
    lines += ["", f"**Read {len(frame)} of {len(names)} planned organisms; scored {n}.**", ""]
    for inst in COMPONENT_INSTRUMENTS:
        if not n:
            break
        hits = int((scored[f"{inst}_hit"] == True).sum())  # noqa: E712
        low, high = (float(v) for v in wilson_interval(hits / n, n))
        by = "; ".join(f"{fam}: {int((g[f'{inst}_hit'] == True).sum())} of {len(g)}"  # noqa: E712
                       for fam, g in scored.groupby("family"))
        verdict = "meets" if hits >= HIT_SHARE * n else "misses"
        lines.append(f"- **{LABELS[inst]}**: planted component first on {hits} of {n} ({hits / n:.2f}, Wilson 95% "
                     f"[{low:.2f}, {high:.2f}]; {by}) — {verdict} the target of {HIT_SHARE:.0%}; median wall time "
                     f"{scored[f'{inst}_seconds'].median():.0f} s per organism.")
    for inst in ("atp", "atp_star"):
        rho = scored[f"{inst}_spearman"].dropna()
        if len(rho):
            lines.append(f"- **{LABELS[inst]} against exact patching**: median Spearman {rho.median():.2f} (range "
                         f"{rho.min():.2f}-{rho.max():.2f}; >= {SPEARMAN_TARGET} on {int((rho >= SPEARMAN_TARGET).sum())} of "
                         f"{len(rho)}) over the sites where the two models differ"
                         + (f" — {'meets' if rho.median() >= SPEARMAN_TARGET else 'misses'} the target of "
                            f"{SPEARMAN_TARGET} (AtP* is compared by magnitude: its score with the absolute exact share)."
                            if inst == "atp_star" else "."))
    atomic_write_text(out / "card.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
