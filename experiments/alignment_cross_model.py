#!/usr/bin/env python
"""Where did word training change the deed? The alignment study's `word` run re-read by exact cross-model patching:
the base model as reference, the model the paper's protocol produced as variant, on the run's trained items, both
forms read in the cloze form, each item's change counted toward its flip target. Rules:
``reports/<model>/alignment/cross-model/rules.md`` (written before the run).

    python experiments/alignment_cross_model.py --data ../shared/data/wdct/WDCT.csv
    python experiments/alignment_cross_model.py --data WDCT.csv --run deed      # where deed training changed words
    python experiments/alignment_cross_model.py --data WDCT.csv --runs /tmp/align --out /tmp/x   # elsewhere

Steps (each resumes): train the `word` run with the alignment study's settings (``experiments/alignment.py``) unless
it is finished; check that its change rates reproduce the committed ones; export its last epoch's model
(``wdprobe align-export``); patch (``wdprobe cross-patch``); add the rules' verdicts (``verdicts.json``) and the
hand-written ``reading.md`` of ``--out`` to the README. Time on 2 CPU cores: about 8 minutes of training and
evaluation, then about 21 minutes of patching (word 6, deed 14: the deed's options are longer).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control
from statsmodels.stats.weightstats import DescrStatsW

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.data.items import read_items
from wdprobe.data.wdct import items_listed, listed_targets, resolve_wdct_path
from wdprobe.studies.align.export import aligned_record, export_aligned
from wdprobe.studies.align.stages import AlignConfig, run_align
from wdprobe.studies.crossmodel.study import cross_model_study, first_block_restoring

EQUIVALENCE_MARGIN = 0.2  # nats per token: a third of the smallest plant the cross-model card detected (0.63)
ALPHA = 0.05
RATE_COLUMNS = ["epoch", "set", "direct", "indirect", "indirect_away"]


def reproduced(run: Path, committed: Path) -> tuple[bool, str]:
    """Whether the retrained run's change rates equal the committed ones (to 1e-9), and what differs if not."""
    if not committed.is_file():
        return False, f"{committed} not found: nothing to compare with"
    mine, theirs = pd.read_csv(run / "change_rates.csv"), pd.read_csv(committed)
    cols = [c for c in RATE_COLUMNS if c in mine and c in theirs]
    a, b = mine[cols].sort_values(["epoch", "set"]).reset_index(drop=True), theirs[cols].sort_values(["epoch", "set"]).reset_index(drop=True)
    if a.shape != b.shape:
        return False, f"{len(a)} rows against {len(b)} committed"
    diff = (a.drop(columns=["set"]) - b.drop(columns=["set"])).abs().to_numpy(float)
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    return worst < 1e-9, f"largest difference {worst:.3g} over {cols}"


def verdicts(out: Path) -> dict:
    """The rules' verdicts per form, from the run's summary and site table."""
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "sites.csv")
    forms = list(summary["change"])
    p = [summary["change"][f]["mean"]["p"] for f in forms]
    q = dict(zip(forms, false_discovery_control(np.asarray(p, float), method="bh")))
    result = {}
    for form in forms:
        ch = summary["change"][form]["mean"]
        shifts = np.asarray(ch["per_item"], float)
        tost_p = float(DescrStatsW(shifts).ttost_mean(-EQUIVALENCE_MARGIN, EQUIVALENCE_MARGIN)[0])
        if q[form] < ALPHA:
            verdict = "moved toward the target" if ch["mean"] > 0 else "moved away from the target"
        elif tost_p < ALPHA:
            verdict = f"no change (within ±{EQUIVALENCE_MARGIN} nats per token)"
        else:
            verdict = f"inconclusive at n = {ch['n_items']}"
        entry = {"verdict": verdict, "shift": ch["mean"], "low": ch["low"], "high": ch["high"], "p": ch["p"],
                 "q": float(q[form]), "tost_p": tost_p, "margin": EQUIVALENCE_MARGIN, "n_items": ch["n_items"]}
        if q[form] < ALPHA:
            entry["first_block_half"] = first_block_restoring(table, form)
            comps = table[(table["form"] == form) & (table["kind"] != "resid") & (table["q_mean"] < ALPHA)]
            entry["components"] = [{"site": r.site, "share": r.restored_mean, "low": r.low_mean, "high": r.high_mean,
                                    "q": r.q_mean} for r in comps.sort_values("restored_mean", ascending=False).itertuples()]
        result[form] = entry
    return result


def verdict_lines(result: dict) -> list[str]:
    """The verdicts in words, one bullet per form."""
    lines = []
    for form, v in result.items():
        text = (f"- **{form}** (cloze content, toward each item's flip target): {v['verdict']} — shift "
                f"{v['shift']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}] nats per token, p = {v['p']:.3g}, q = {v['q']:.3g} "
                f"over the two forms; equivalence within ±{v['margin']} p = {v['tost_p']:.3g}; n = {v['n_items']}.")
        if "first_block_half" in v:
            block = v["first_block_half"]
            text += (f" The residual first carries half of it after block {block}." if block is not None
                     else " Spread: no block's residual alone carries half of it.")
            if v["components"]:
                text += " Sites with a share (q < 0.05): " + "; ".join(
                    f"{c['site']} {c['share']:.2f} [{c['low']:.2f}, {c['high']:.2f}]" for c in v["components"][:5]) + "."
        lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="the base model (embedded default, directory or HF id)")
    ap.add_argument("--data", default=None, help="WDCT.csv (default: $WDPROBE_WDCT or the pinned download)")
    ap.add_argument("--runs", default=None, help="parent of the alignment run directories (default runs/<model>-align)")
    ap.add_argument("--out", default=None, help="results folder (default reports/<model>/alignment/cross-model)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    ap.add_argument("--run", default="word", choices=["word", "deed"], help="which core run of the study: word-trained "
                                                                         "(default) or deed-trained")
    args = ap.parse_args(argv)
    name = Path(args.model).name
    runs = Path(args.runs or f"runs/{name}-align")
    out = Path(args.out or f"reports/{name}/alignment/" + ("cross-model" if args.run == "word" else f"cross-model-{args.run}"))
    run = runs / args.run
    study = alignment_study()
    form, orders = study.RUNS[args.run]
    config = AlignConfig(**{**study.CPU_STUDY.to_json(), "form": form, "orders": orders, "domains": None})
    if not (run / "summary.json").is_file():
        print(f"== training {run} (the alignment study's {args.run} run) ==", flush=True)
        run_align(run, model=args.model, data=args.data, config=config, train=study.CPU_TRAINING)
    same, how = reproduced(run, Path(f"reports/{name}/alignment/content/tables/{args.run}/change_rates.csv"))
    print(f"change rates {'reproduce' if same else 'DO NOT reproduce'} the committed {args.run} run ({how})", flush=True)
    model_dir = runs / f"{args.run}-model"
    if aligned_record(model_dir) is None:
        export_aligned(run, model_dir, model=args.model)
    items = [i for i in read_items(resolve_wdct_path(args.data)) if i.n_options == 2]
    trained = items_listed(items, run / "split.csv", set_name="train")
    targets = listed_targets(trained, run / "split.csv", set_name="train")
    cross_model_study(out, args.model, str(model_dir), trained, forms=("word", "deed"), kinds=("resid", "attn", "mlp"),
                      positions="all", toward=targets, batch_size=args.batch_size)
    result = verdicts(out)
    record = aligned_record(model_dir)
    atomic_write_json(out / "verdicts.json", {"reproduced": same, "reproduction": how, "run": str(run),
                                              "epoch": record["epoch"], "checkpoint_sha256": record["checkpoint_sha256"],
                                              "rules": "rules.md", "forms": result})
    readme = (out / "README.md").read_text()
    head = ["## Verdicts (rules.md, written before the run)", "",
            f"Re-read of the `{args.run}` alignment run (its change rates {'reproduce' if same else 'do NOT reproduce'} the "
            f"committed run: {how}); variant: its model after epoch {record['epoch']}, on its {len(trained)} trained "
            "items.", "", *verdict_lines(result), ""]
    readme = readme.replace("## Findings", "\n".join(head) + "\n## Findings", 1)
    if (out / "reading.md").is_file():  # the hand-written reading, kept across reruns
        readme = readme.replace("## Files", "## Reading\n\n" + (out / "reading.md").read_text().strip() + "\n\n## Files", 1)
    atomic_write_text(out / "README.md", readme)
    print("\n".join(head))
    return 0


def alignment_study():
    """The alignment study's settings (``experiments/alignment.py``), loaded from beside this script."""
    spec = importlib.util.spec_from_file_location("alignment_study", Path(__file__).with_name("alignment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    raise SystemExit(main())
