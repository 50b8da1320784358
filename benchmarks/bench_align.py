"""Alignment speed on the default model, side by side in one run (issue 8).

Evaluation after each epoch needs both the answer letters and the residual stream of every layer:
  fused    : last_token_readout, letters and residuals from one bridge pass per batch (what align does)
  separate : next_token_logprobs, then last_token_residuals (two passes, as scoring + capture would)
Training, one epoch of the same examples (seconds per example):
  lora     : peft LoRA r=8 on all attention and MLP projections
  full     : every weight except the tied embedding
Applying the LoRA update to the bridge's weights and restoring them (Tuner.applied): milliseconds.

Usage: python benchmarks/bench_align.py --data WDCT.csv [--items 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_pct import timed  # noqa: E402  (same folder: python benchmarks/bench_align.py)

from wdprobe.core.model import load_model
from wdprobe.data.wdct import load_wdct, present
from wdprobe.methods.capture import last_token_readout, last_token_residuals
from wdprobe.scoring.letters import build_prompts, item_row, next_token_logprobs, resolve_letter_tokens
from wdprobe.studies.align.finetune import TrainSettings, Tuner
from wdprobe.studies.align.stages import build_examples, two_option_items
from wdprobe.studies.align.targets import flip_targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results_align.json")
    args = ap.parse_args()

    lm = load_model("gemma-3-270m")
    items = two_option_items(load_wdct(args.data), args.items, seed=0)
    pres = present(items, seed=0)
    prompts = build_prompts(pres, setting="normal", tokenizer=lm.tokenizer, use_chat=False)
    flat = prompts["word"] + prompts["deed"]
    letters = resolve_letter_tokens(lm, flat[:16], n_letters=2).ids
    res: dict = {"items": len(items), "prompts": len(flat), "torch_threads": torch.get_num_threads()}

    t_fused, tf, (lp_f, resid_f) = timed(lambda: last_token_readout(lm, flat, letters, batch_size=16), args.repeats)
    t_sep, ts, (lp_s, resid_s) = timed(lambda: (next_token_logprobs(lm, flat, letters, batch_size=16),
                                                last_token_residuals(lm, flat, batch_size=16)), args.repeats)
    res["evaluate"] = {"fused_s": round(t_fused, 2), "separate_s": round(t_sep, 2), "speedup": round(t_sep / t_fused, 2),
                       "prompts_per_s_fused": round(len(flat) / t_fused, 2),
                       "max_abs_diff_logprobs": float(np.abs(lp_f - lp_s).max()),
                       "max_abs_diff_residuals": float(np.abs(resid_f - resid_s).max()), "runs_s": [tf, ts]}

    rows = [item_row(p, lp_f[i], lp_f[len(pres) + i]) for i, p in enumerate(pres)]
    targets = flip_targets(rows, "word")
    examples = build_examples(pres, targets, ("word",), letters, orders="cyclic", tokenizer=lm.tokenizer, use_chat=False)
    train = {}
    for tuning, lr in (("lora", 1e-3), ("full", 1e-5)):
        lm_t = load_model("gemma-3-270m")  # full tuning changes the weights: a fresh copy each
        tuner = Tuner(lm_t, TrainSettings(tuning=tuning, lr=lr, batch_size=8))
        opt = tuner.new_optimizer()
        t0 = time.perf_counter()
        stats = tuner.train_epoch(examples, opt, objective="sft", epoch=1)
        sec = time.perf_counter() - t0
        train[tuning] = {"seconds": round(sec, 2), "s_per_example": round(sec / len(examples), 3),
                         "trainable_params": tuner.n_trainable(), "loss": round(stats["loss"], 4)}
        if tuning == "lora":
            def apply_restore(t=tuner):
                with t.applied():
                    pass
            t_apply, _, _ = timed(apply_restore, args.repeats)
            train["lora"]["apply_restore_ms"] = round(1000 * t_apply, 1)
        del tuner, opt, lm_t
    train["full_over_lora"] = round(train["full"]["seconds"] / train["lora"]["seconds"], 2)
    res["train"] = {"examples": len(examples), **train}
    print(json.dumps(res, indent=2, default=lambda x: [round(v, 2) for v in x]))
    Path(args.out).write_text(json.dumps(res, indent=2, default=lambda x: [round(v, 2) for v in x]) + "\n")


if __name__ == "__main__":
    main()
