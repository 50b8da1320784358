"""Cross-model patching (issue 32): what a full site sweep costs on the default model, side by side in one process.

Two pairs, both on ``--items`` deed prompts (two options each, read as continuations):

* a variant that differs everywhere (``--variant``, e.g. a trained organism against the base model): the residual
  after every block patched in batched passes (all sequences of a batch in one forward per site) against one forward
  per (site, sequence), and whether the two tables agree; then every site
  (the residual after each block, each block's attention and MLP, each head's write) patched exactly, against
  attribution patching of the same sites (one forward and backward per batch) and AtP* (attribution with GradDrop: one
  more backward per block); the ratios, and how well each ranks the sites (Spearman over sites, top-5 agreement; AtP*'s
  magnitude against the absolute exact effect, plain AtP's absolute value beside it);
* an edited organism (the base model with one block-``--edit-layer`` MLP unit rewritten): exact patching with the
  identical-site shortcut (every site below the edit skipped, exactly) against the same sweep with the shortcut
  off (every site run), and whether the two tables are equal.

Usage: python benchmarks/bench_cross_model.py --data WDCT.csv --variant ORGANISM_DIR [--items 8] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="WDCT.csv")
    ap.add_argument("--variant", required=True, help="a model differing from the default everywhere (an organism)")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--edit-layer", type=int, default=9)
    ap.add_argument("--json", default=str(Path(__file__).with_name("results_cross_model.json")))
    args = ap.parse_args()

    import torch

    import wdprobe.methods.cross_model as xm
    from wdprobe.core.model import default_model_dir, load_model
    from wdprobe.data.items import read_items
    from wdprobe.data.prompts import cloze_prompt
    from wdprobe.studies.organisms.edit import build_edited_organism, calibrate_edit

    pool = sorted((i for i in read_items(args.data) if i.n_options == 2 and i.correct is not None), key=lambda i: i.id)
    order = np.random.default_rng(1).permutation(len(pool))
    items = [pool[k] for k in order[:args.items]]
    ref = load_model("gemma-3-270m")
    seqs, starts = xm.option_sequences(ref, [cloze_prompt(i, "deed") for i in items], [i.options("deed") for i in items])
    sites = xm.sites_for(ref, ("resid", "attn", "mlp", "head"))
    out: dict = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "items": args.items, "sequences": len(seqs), "sites": len(sites),
                 "tokens_per_sequence": float(np.mean([len(s) for s in seqs]))}

    var = load_model(args.variant)
    resid = xm.sites_for(ref, ("resid",))
    t = time.perf_counter()
    batched = xm.cross_model_patch(ref, var, seqs, starts, resid, skip_identical=False)
    out["resid_batched_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    single = xm.cross_model_patch(ref, var, seqs, starts, resid, skip_identical=False, batch_size=1)
    out["resid_one_forward_per_patch_s"] = round(time.perf_counter() - t, 2)
    out["resid_ratio_one_per_patch_over_batched"] = round(out["resid_one_forward_per_patch_s"] / out["resid_batched_s"], 1)
    out["resid_tables_max_abs_difference"] = float(np.abs(batched.patched - single.patched).max())
    t = time.perf_counter()
    exact = xm.cross_model_patch(ref, var, seqs, starts, sites)
    out["trained_exact_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    approx = xm.attribute_cross_model(ref, var, seqs, starts, sites)
    out["trained_attribution_s"] = round(time.perf_counter() - t, 1)
    out["trained_ratio_exact_over_attribution"] = round(out["trained_exact_s"] / out["trained_attribution_s"], 1)
    effect = lambda r: (xm.choice_margins(r.patched, r.n_tokens, "mean")  # noqa: E731
                        - xm.choice_margins(r.target_clean, r.n_tokens, "mean")[None]).sum(1)
    out["trained_agreement"] = xm.attribution_agreement(effect(exact), effect(approx), top=5)
    t = time.perf_counter()
    star = xm.attribute_cross_model(ref, var, seqs, starts, sites, grad_drop=True)
    out["trained_atp_star_s"] = round(time.perf_counter() - t, 1)
    out["trained_ratio_exact_over_atp_star"] = round(out["trained_exact_s"] / out["trained_atp_star_s"], 1)
    # AtP*'s GradDrop score is a magnitude: compared with the absolute exact effect
    star_score = np.mean([np.abs(effect(replace(star, patched=layer, dropped=None))) for layer in star.dropped], axis=0)
    out["trained_atp_star_agreement"] = xm.attribution_agreement(np.abs(effect(exact)), star_score, top=5)
    out["trained_atp_abs_agreement"] = xm.attribution_agreement(np.abs(effect(exact)), np.abs(effect(approx)), top=5)
    del var

    work = Path(tempfile.mkdtemp())
    try:
        spec = calibrate_edit(ref, [pool[k] for k in order[args.items:args.items + 40]], args.edit_layer)
        build_edited_organism(default_model_dir(), work / "edited", spec)
        edited = load_model(str(work / "edited"))
        t = time.perf_counter()
        skipped = xm.cross_model_patch(ref, edited, seqs, starts, sites)
        out["edited_with_shortcut_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        full = xm.cross_model_patch(ref, edited, seqs, starts, sites, skip_identical=False)
        out["edited_without_shortcut_s"] = round(time.perf_counter() - t, 1)
        out["edited_sites_skipped"] = int(skipped.identical.sum())
        out["edited_ratio"] = round(out["edited_without_shortcut_s"] / out["edited_with_shortcut_s"], 1)
        out["edited_tables_max_abs_difference"] = float(np.abs(skipped.patched - full.patched).max())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
