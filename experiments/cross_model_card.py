#!/usr/bin/env python
"""Cross-model patching scored on the edited organisms: patch each organism into its parent, block by block and then
component by component, and compare where it localises the organism's deed shift with where the edit was planted.

    python experiments/cross_model_card.py --card reports/organisms/edited/card       # base-model parent
    python experiments/cross_model_card.py --card reports/organisms/edited/balanced   # sincere-balanced parent
    python experiments/cross_model_card.py --card reports/organisms/edited/card --only override-L4-s0 --out /tmp/x

The card directory is an ``experiments/edited_card.py`` output: its ``run.json`` names the parent and the items, and
each ``organisms/NAME.json`` the organism's specification and studied items. Each organism is rebuilt from the same
calibration items and seed (the rebuilt specification must match the stored one), then read by
``wdprobe.studies.organisms.cross_model_localisation`` on at most ``--max-items`` of its studied items; it never
receives the planted block. Rules: ``reports/organisms/edited/cross-model-rules.md`` (committed before the run).
Results: ``--out``/organisms/NAME.json, ``cross-model.csv``, ``card.md``. Rerunning resumes.

Time: on 2 CPU cores about 4 minutes per seed to read the parent, then 20-90 s per organism (less the higher its block).
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.errors import InputError
from wdprobe.figures.crossmodel import recovered_block_figure
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import write_png
from wdprobe.reports.html import CSS, inline_markdown
from wdprobe.studies.organisms.card_rebuild import CardOrganisms, NotTheStoredOrganism, targets_of
from wdprobe.studies.organisms.cross_model_localisation import (
    attribute_components,
    attribution_hit,
    component_hit,
    localise_by_patching,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", required=True, help="an edited_card.py output directory (run.json, organisms/)")
    ap.add_argument("--data", default=None, help="the card's items file, when run.json's path is not valid here")
    ap.add_argument("--model", default=None, help="the parent model directory, when run.json's path is not valid here")
    ap.add_argument("--out", default=None, help="results (default: CARD/cross-model)")
    ap.add_argument("--work", default="/tmp/wdprobe-cross-model", help="rebuilt organisms' weights (deleted)")
    ap.add_argument("--only", nargs="*", default=None, help="organism names to score (default: every one)")
    ap.add_argument("--max-items", type=int, default=10, help="most studied items read per organism")
    ap.add_argument("--min-items", type=int, default=5, help="fewest studied items for an organism to be scored")
    ap.add_argument("--attribution", action="store_true",
                    help="also rank every attention, MLP and head site by attribution patching on each scored organism")
    args = ap.parse_args(argv)

    card = Path(args.card)
    out = Path(args.out) if args.out else card / "cross-model"
    (out / "organisms").mkdir(parents=True, exist_ok=True)
    run = json.loads((card / "run.json").read_text())
    parent_dir = Path(args.model or run["parent"])
    lm = load_model(str(parent_dir))
    organisms = CardOrganisms(card, lm, parent_dir, args.work, args.data)
    by_id, against, records = organisms.by_id, organisms.against, organisms.records
    names = [n for n in records if args.only is None or n in args.only]
    if args.only:
        missing = sorted(set(args.only) - set(records))
        if missing:
            raise InputError(f"{card}: no organisms {missing}")
    t0 = time.perf_counter()
    items_of = organisms.studied

    def rebuilt(name: str, batch: list[str]):
        """The organism rebuilt and loaded, and its weights' directory."""
        _, child_dir = organisms.rebuild(name, batch)
        return load_model(str(child_dir)), child_dir

    todo = [n for n in names if not (out / "organisms" / f"{n}.json").is_file()]

    for name in sorted(todo, key=lambda n: records[n]["seed"]):
        r = records[name]
        spec_stored = r["spec"]
        studied = items_of(name)
        result = {"name": name, "family": r["family"], "layer": r["layer"], "seed": r["seed"],
                  "strength": r["strength"], "component": r.get("component", "mlp"), "unit": spec_stored["unit"],
                  "n_studied": len(studied)}
        if len(studied) < args.min_items:
            result["scored"] = False
            atomic_write_json(out / "organisms" / f"{name}.json", result)
            print(f"{name}: {len(studied)} studied items, not scored", flush=True)
            continue
        started = time.perf_counter()
        child, child_dir = rebuilt(name, todo)
        rng = np.random.default_rng([r["seed"], r["layer"], 23])
        chosen = sorted(studied[k] for k in rng.permutation(len(studied))[:args.max_items])
        items = [by_id[i] for i in chosen]
        found = localise_by_patching(lm, child, items, targets_of(items, against))
        shutil.rmtree(child_dir, ignore_errors=True)
        planted_head = spec_stored["unit"] if result["component"] == "attn-head" else None
        result.update({"scored": True, "items": chosen, **found,
                       "component_hit": component_hit(found, result["component"],
                                                      planted_head),
                       "seconds_total": round(time.perf_counter() - started, 1)})
        atomic_write_json(out / "organisms" / f"{name}.json", result)
        print(f"{name}: shift p {found['shift_p']:.3g}, recovered block {found['recovered_block']} (planted {r['layer']}), component "
              f"{found.get('recovered_component')}{'' if found.get('recovered_head') is None else found['recovered_head']}"
              f" [{result['seconds_total']:.0f} s]", flush=True)

    if args.attribution:  # attribution patching on the organisms already scored (rules: attribution section)
        pending = [n for n in names if (f := out / "organisms" / f"{n}.json").is_file()
                   and json.loads(f.read_text()).get("scored")
                   and not {"attribution", "attribution_skipped"} & set(json.loads(f.read_text()))]
        for name in sorted(pending, key=lambda n: records[n]["seed"]):
            f = out / "organisms" / f"{name}.json"
            result = json.loads(f.read_text())
            try:
                child, child_dir = rebuilt(name, pending)
            except NotTheStoredOrganism as exc:  # not the stored organism: nothing read for it, and the card says so
                result["attribution_skipped"] = str(exc)
                atomic_write_json(f, result)
                print(f"{name}: attribution skipped: {exc}", flush=True)
                continue
            items = [by_id[i] for i in result["items"]]
            found = attribute_components(lm, child, items, targets_of(items, against))
            shutil.rmtree(child_dir, ignore_errors=True)
            planted_head = result["unit"] if result["component"] == "attn-head" else None
            result["attribution"] = found
            result["attribution_hit"] = attribution_hit(found, result["layer"], result["component"], planted_head)
            atomic_write_json(f, result)
            print(f"{name}: attribution ranks {found['top_site']} first (planted L{result['layer']} "
                  f"{result['component']}) [{found['seconds']:.0f} s]", flush=True)

    write_card(out, names, run, against, lm.n_layers)
    atomic_write_json(out / "run.json", {"card": str(card), "parent": str(parent_dir), "max_items": args.max_items,
                                         "min_items": args.min_items, "organisms": names,
                                         "wall_seconds_last_invocation": round(time.perf_counter() - t0, 1)})
    return 0


def markdown_table_html(rows: list[str]) -> str:
    """A markdown table's lines (header, rule, rows) as an HTML table, cells' inline markdown kept."""
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows if not set(r) <= set("|-")]
    head, body = cells[0], cells[1:]
    return ("<table><tr>" + "".join(f"<th>{inline_markdown(c)}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{inline_markdown(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")


def yes_no(value) -> str:
    """A table cell for a yes/no that may be missing."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else ("yes" if value else "no")


def write_card(out: Path, names: list[str], run: dict, against: bool, n_layers: int) -> None:
    """The table of every organism (scored or not), the shift tests corrected across them, and the card's summary."""
    rows = []
    for name in names:
        f = out / "organisms" / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        rec = r.get("recovered_block")
        rows.append({"name": name, "family": r["family"], "layer": r["layer"], "seed": r["seed"],
                     "strength": r["strength"], "n_studied": r["n_studied"], "scored": r["scored"],
                     "n_items": r.get("n_items"), "shift_mean": r.get("shift_mean"), "shift_low": r.get("shift_low"),
                     "shift_high": r.get("shift_high"), "shift_p": r.get("shift_p"), "shift_sum": r.get("shift_sum"),
                     "identical_everywhere": r.get("identical_everywhere"), "recovered_block": rec,
                     "error": None if rec is None else abs(rec - r["layer"]),
                     "recovered_component": r.get("recovered_component"), "recovered_head": r.get("recovered_head"),
                     "component_hit": r.get("component_hit"), "seconds": r.get("seconds"),
                     "attribution_top": (r.get("attribution") or {}).get("top_site"),
                     "attribution_hit": r.get("attribution_hit"),
                     "attribution_skipped": r.get("attribution_skipped")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise InputError(f"{out}: no organism scored or listed yet")
    scored = frame[frame["scored"] & frame["shift_p"].notna()] if len(frame) else frame
    frame["shift_q"] = np.nan
    if len(scored):
        frame.loc[scored.index, "shift_q"] = false_discovery_control(scored["shift_p"].to_numpy(float), method="bh")
    frame["detected"] = frame["scored"] & (frame["shift_q"] < 0.05) & frame["recovered_block"].notna()
    frame.to_csv(out / "cross-model.csv", index=False)
    parent = "the sincere-balanced organism (against its stance)" if against else "the base model (canonical option 1)"
    with_atp = bool(frame["attribution_top"].notna().any())
    lines = [f"# Cross-model patching on the edited organisms of {parent}", "",
             "Rules: `../../cross-model-rules.md` (committed before the run). Each organism patched into its parent; "
             "the recovered block is the first whose residual restores at least half of the organism's deed shift "
             "(per-token mean), the recovered component the site restoring most at that block.", "",
             "| organism | planted | items | shift (mean) [95% CI], q | detected | recovered block | error | component | hit |"
             + (" attribution first | hit |" if with_atp else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_atp else "")]
    for _, r in frame.iterrows():
        if not r["scored"]:
            lines.append(f"| {r['name']} | L{r['layer']} | {r['n_studied']} studied | not scored (< min items) | | | | | |"
                         + (" | |" if with_atp else ""))
            continue
        comp = "" if r["recovered_component"] is None or pd.isna(r["recovered_component"]) else str(r["recovered_component"])
        if comp and not pd.isna(r["recovered_head"]) and comp != "mlp":
            comp += f" (head {int(r['recovered_head'])} first)"
        rec = "none" if pd.isna(r["recovered_block"]) else f"L{int(r['recovered_block'])}"
        err = "" if pd.isna(r["error"]) else str(int(r["error"]))
        hit = "" if r["component_hit"] is None or pd.isna(r["component_hit"]) else ("yes" if r["component_hit"] else "no")
        ident = " (identical to parent)" if r["identical_everywhere"] else ""
        lines.append(f"| {r['name']} | L{r['layer']} | {int(r['n_items'])} | {r['shift_mean']:.3f} "
                     f"[{r['shift_low']:.3f}, {r['shift_high']:.3f}], q = {r['shift_q']:.3g}{ident} | "
                     f"{'yes' if r['detected'] else 'no'} | {rec} | {err} | "
                     f"{comp} | {hit} |" + (f" {r['attribution_top'] or ''} | {yes_no(r['attribution_hit'])} |" if with_atp
                                            else ""))
    families = frame["family"].astype(str)
    plants = frame[frame["scored"] & (families.isin(["override", "head-override"]) | families.str.startswith("strength"))]
    found = plants[plants["detected"]]
    nulls = frame[frame["scored"] & (frame["family"] == "null-gate")]
    exact = int((found["error"] == 0).sum())
    hits = int((found["component_hit"] == True).sum())  # noqa: E712
    lines += ["", f"**Plants scored: {len(plants)}; detected: {len(found)}; of those recovered at the planted block: "
              f"{exact}, planted component first: {hits}. Null-gate organisms scored: {len(nulls)}, detected: "
              f"{int(nulls['detected'].sum())}.** Not scored (fewer studied items than the minimum): "
              f"{int((~frame['scored']).sum())}. Detected: the organism's deed shift differs from zero (sign-flip "
              "test, q < 0.05 by Benjamini-Hochberg across the scored organisms) and some block restores at least half."]
    if with_atp:
        atp = found[found["attribution_top"].notna()]
        lines += ["", f"**Attribution patching (one forward and backward, every attention, MLP and head site, no block "
                  f"given; rules: attribution section): the planted component first on "
                  f"{int((atp['attribution_hit'] == True).sum())} of {len(atp)} detected plants.**"]  # noqa: E712
        skipped = frame[frame["attribution_skipped"].notna()]
        if len(skipped):
            lines += ["", "Not read by attribution (the rebuilt organism was not the stored one): "
                      + ", ".join(skipped["name"]) + "."]
    atomic_write_text(out / "card.md", "\n".join(lines) + "\n")
    fig = recovered_block_figure(frame, n_layers, title=f"Cross-model patching on the edited organisms of {parent}<br>"
                                 "<sup>the first block whose residual carries half of the organism's deed shift, "
                                 "against the planted block; hollow on the none row: shift not detected (q >= 0.05)</sup>")
    write_png(fig, out / "card.png")
    last_row = max(k for k, line in enumerate(lines) if line.startswith("|"))
    verdict = "".join(f"<p>{inline_markdown(line)}</p>" for line in lines[last_row + 1:] if line)
    table = "".join(f"<p>{inline_markdown(line)}</p>" for line in lines[2:4]) + \
        markdown_table_html([line for line in lines if line.startswith("|")])
    atomic_write_text(out / "index.html", f"<!doctype html><html><head><meta charset='utf-8'><title>cross-model card"
                                          f"</title><style>{CSS}</style></head><body><h1>{html.escape(lines[0][2:])}</h1>"
                                          f"{verdict}{figure_html([fig], out / 'index.html')}{table}</body></html>")


if __name__ == "__main__":
    raise SystemExit(main())
