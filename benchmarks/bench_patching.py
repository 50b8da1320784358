"""Patching speed: a full layer x position heatmap three ways, and final-position patching two ways.

1. Heatmap (resid_pre of every layer x every token of one WDCT prompt, option-swapped counterfactual):
   - batched exact patching (``wdprobe.methods.patching.exact_patching``: every patch is a row, rows share forwards,
     logits only at the last position);
   - one forward per patch (``exact_patching_one_by_one``: the TransformerLens ``patching`` style, a plain
     bridge call with full logits per patch);
   - attribution patching (one clean forward, one counterfactual forward + backward).
   Ratios of times, the largest difference between batched and one-per-patch values, and the Spearman
   rank correlation of attribution vs exact.
2. Cross-form patching rows (every layer x {full, stance, random} + clean, final position) for a few
   items: prefix-shared final-token copies vs separate padded rows.

Methods run round-robin (each repeat times each method once, in turn); medians are reported.

Usage: python benchmarks/bench_patching.py --data PATH/TO/WDCT.csv [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def short_item_with_content_effect(lm, items, form: str, pool: int = 64):
    """Of the ``pool`` shortest two-option items whose option-swapped prompt aligns, the one whose answer
    moves most when the options are swapped (so the heatmap has something to find)."""
    from wdprobe.data.prompts import normal_prompt
    from wdprobe.data.wdct import present
    from wdprobe.errors import TokenAlignmentError
    from wdprobe.methods.interventions import Row, run_interventions
    from wdprobe.methods.patching import swap_alignment, swap_counterfactual

    cands = []
    for p in present([it for it in items if it.n_options == 2], seed=0):
        clean, cf = normal_prompt(p, form), normal_prompt(swap_counterfactual(p, form), form)
        try:
            toks = swap_alignment(lm.tokenizer, p, form, clean, cf)
        except TokenAlignmentError:
            continue
        cands.append((len(toks), p.item.id, clean, cf))
    cands = sorted(cands)[:pool]
    ids = [lm.tokenizer.encode(f" {c}", add_special_tokens=False)[0] for c in "AB"]
    lp = run_interventions(lm, [c[2] for c in cands] + [c[3] for c in cands], [Row(i) for i in range(2 * len(cands))], ids)
    lo = lp[:, 0] - lp[:, 1]
    effect = np.abs(lo[: len(cands)] - lo[len(cands):])
    best = int(np.argmax(effect))
    return cands[best], ids, float(effect[best])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--form", default="deed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cross-items", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from wdprobe.core.model import load_model
    from wdprobe.data.prompts import normal_prompt
    from wdprobe.data.wdct import load_wdct, present
    from wdprobe.methods.interventions import Intervention, Row, resid_hook, residuals_at, run_interventions
    from wdprobe.methods.patching import attribution_patching, exact_patching, exact_patching_one_by_one, rank_correlation

    lm = load_model(args.model)
    items = load_wdct(args.data)
    (n_tok, item_id, clean, cf), ids, effect = short_item_with_content_effect(lm, items, args.form)
    L = lm.bridge.cfg.n_layers
    hooks = [resid_hook(l, "resid_pre", L) for l in range(L)]
    print(f"heatmap: item {item_id} ({args.form}), {n_tok} tokens x {L} layers = {n_tok * L} patches; "
          f"swapping its options moves the answer log-odds by {effect:.2f}", flush=True)

    # final-position rows for the prefix-sharing comparison
    pres = present([it for it in items if it.n_options == 2][: args.cross_items], seed=0)
    word = [normal_prompt(p, "word") for p in pres]
    deed = [normal_prompt(p, "deed") for p in pres]
    post = [resid_hook(l, "resid_post", L) for l in range(L)]
    src = residuals_at(lm, word, post, positions=[[-1]] * len(word))
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(len(deed)):
        rows.append(Row(i))
        for h in post:
            u = torch.randn(lm.bridge.cfg.d_model, generator=g)
            u /= u.norm()
            s = src[h][i][0]
            rows += [Row(i, [Intervention(h, -1, "set", s)]), Row(i, [Intervention(h, -1, "project", s, u)]),
                     Row(i, [Intervention(h, -1, "project", s, -u)])]

    results: dict[str, dict] = {}
    methods = {
        "heatmap: batched exact": lambda: exact_patching(lm, [clean], [cf], hooks, ids)[0]["patched"],
        "heatmap: one forward per patch": lambda: exact_patching_one_by_one(lm, clean, cf, hooks, ids),
        "heatmap: attribution": lambda: attribution_patching(lm, [clean], [cf], hooks, ids)[0]["patched"],
        "final position: prefix-shared copies": lambda: run_interventions(lm, deed, rows, ids, pack=True),
        "final position: separate rows": lambda: run_interventions(lm, deed, rows, ids, pack=False),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            results[name] = {"value": out}
            print(f"repeat {r}: {name}: {times[name][-1]:.2f} s", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    ex, one, at = (results[k]["value"] for k in ("heatmap: batched exact", "heatmap: one forward per patch",
                                                   "heatmap: attribution"))
    packed, separate = results["final position: prefix-shared copies"]["value"], results["final position: separate rows"]["value"]
    summary = {
        "model": lm.name, "item": item_id, "form": args.form, "content_effect": effect, "tokens": n_tok, "layers": L, "patches": n_tok * L,
        "final_position_rows": len(rows), "repeats": args.repeats, "median_seconds": med,
        "all_seconds": times,
        "ratio one-per-patch / batched exact": med["heatmap: one forward per patch"] / med["heatmap: batched exact"],
        "ratio one-per-patch / attribution": med["heatmap: one forward per patch"] / med["heatmap: attribution"],
        "ratio batched exact / attribution": med["heatmap: batched exact"] / med["heatmap: attribution"],
        "max |batched - one-per-patch| (log-odds)": float(np.abs(ex - one).max()),
        "spearman attribution vs exact": rank_correlation(at, ex),
        "ratio separate rows / prefix-shared": med["final position: separate rows"] / med["final position: prefix-shared copies"],
        "max |prefix-shared - separate| (log-prob)": float(np.abs(packed - separate).max()),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "all_seconds"}, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
