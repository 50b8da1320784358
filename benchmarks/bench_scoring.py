"""Scoring speed on the default model, side by side in one run (issue: foundation, item 8).

Compares, on the same WDCT prompts, dtype and batch size (baselines get length-sorted batches of --batch-size):
  wdprobe      : TransformerBridge forward, logits only at the last position, wdprobe's own batching
                 (length-sorted, at most --batch-size prompts and, on CPU, ~1.5k padded tokens per batch)
  bare_hf_last : Hugging Face forward with logits_to_keep=1 (the floor for a logit read-out)
  upstream_gen : upstream's method, 10-token greedy generate, letters read from the first step's scores
  bridge_full  : a plain TransformerBridge call (logits at every position), the trap to avoid
Then wdprobe in bfloat16, its effect on CS/PCS over a sample of items, and first vs cached model load.

Usage: python benchmarks/bench_scoring.py --data PATH/TO/WDCT.csv [--prompts 64] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wdprobe.core.forward import default_batch_tokens, encode_prompts, iter_batches
from wdprobe.core.model import load_model
from wdprobe.data.prompts import normal_prompt
from wdprobe.data.wdct import load_wdct, present, select
from wdprobe.scoring.letters import next_token_logprobs
from wdprobe.stages.score import score_wdct


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


@torch.no_grad()
def bare_hf_last(lm, prompts, batches, ids):
    for b in batches:
        enc = encode_prompts(lm.tokenizer, [prompts[i] for i in b], lm.device)
        logits = lm.hf_model(**enc, logits_to_keep=1).logits[:, -1].float()
        torch.log_softmax(logits, -1)[:, ids]


@torch.no_grad()
def upstream_generate(lm, prompts, batches, ids):
    for b in batches:
        enc = encode_prompts(lm.tokenizer, [prompts[i] for i in b], lm.device)
        out = lm.hf_model.generate(**enc, max_new_tokens=10, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
        out.scores[0][:, ids]


@torch.no_grad()
def bridge_full(lm, prompts, batches, ids):
    for b in batches:
        enc = encode_prompts(lm.tokenizer, [prompts[i] for i in b], lm.device)
        lm.bridge(enc["input_ids"], attention_mask=enc["attention_mask"])[:, -1, ids]


def load_seconds(cache: str | None) -> float:
    """Load the default model in a fresh process (cold imports included), optionally with an empty cache."""
    env = dict(os.environ)
    if cache:
        env["WDPROBE_CACHE"] = cache
    code = "import time;t=time.perf_counter();from wdprobe.core.model import load_model;load_model();print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16-repeats", type=int, default=1, help="bf16 is slow on CPUs without bf16 matmul units")
    ap.add_argument("--dtype-items", type=int, default=48, help="items for the fp32 vs bf16 CS/PCS comparison")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    items = load_wdct(args.data)
    pres = present(select(items, limit=args.prompts // 2), seed=0)
    prompts = [normal_prompt(p, f) for p in pres for f in ("word", "deed")]
    lm = load_model("gemma-3-270m", dtype="float32")
    ids = torch.tensor([lm.tokenizer.encode(f" {c}", add_special_tokens=False)[0] for c in "ABCD"])
    batches = list(iter_batches(lm, prompts, args.batch_size))
    n_tok = sum(len(lm.tokenizer.encode(p)) for p in prompts)
    print(f"{len(prompts)} prompts, {n_tok} tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    # warm-up
    next_token_logprobs(lm, prompts[:4], ids.tolist(), batch_size=4)
    wd = lambda: next_token_logprobs(lm, prompts, ids.tolist(), batch_size=args.batch_size)
    wd_batches = list(iter_batches(lm, prompts, args.batch_size, default_batch_tokens(lm.device)))
    methods = {"wdprobe": wd, "bare_hf_last": lambda: bare_hf_last(lm, prompts, batches, ids),
               "bare_hf_last_wdprobe_batches": lambda: bare_hf_last(lm, prompts, wd_batches, ids),
               "upstream_gen": lambda: upstream_generate(lm, prompts, batches, ids),
               "bridge_full": lambda: bridge_full(lm, prompts, batches, ids)}
    all_t: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):  # round-robin, so machine noise hits every method alike
        for name, fn in methods.items():
            all_t[name].append(timed(fn, 1)[0])
    res = {k: statistics.median(v) for k, v in all_t.items()}
    for name, ts in all_t.items():
        print(f"fp32 {name:28s} median {res[name]:6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
    # equality of read-outs: wdprobe vs bare HF on the same prompts
    lp = wd()
    ref = []
    with torch.no_grad():
        for i, p in enumerate(prompts[:8]):
            enc = encode_prompts(lm.tokenizer, [p], lm.device)
            ref.append(torch.log_softmax(lm.hf_model(**enc, logits_to_keep=1).logits[0, -1].float(), -1)[ids].numpy())
    max_diff = float(np.abs(np.stack(ref) - lp[:8]).max())

    lm16 = load_model("gemma-3-270m", dtype="bfloat16")
    next_token_logprobs(lm16, prompts[:4], ids.tolist(), batch_size=4)
    res["wdprobe_bf16"], bf16_t = timed(lambda: next_token_logprobs(lm16, prompts, ids.tolist(), batch_size=args.batch_size),
                                       args.bf16_repeats)
    print(f"bf16 wdprobe                      median {res['wdprobe_bf16']:6.2f} s  ({', '.join(f'{t:.2f}' for t in bf16_t)})")

    with tempfile.TemporaryDirectory() as tmp:
        sub = dict(sample=args.dtype_items, seed=0, data=args.data, progress=False, batch_size=args.batch_size)
        a = score_wdct(Path(tmp) / "fp32", lm=lm, **sub)
        b = score_wdct(Path(tmp) / "bf16", lm=lm16, **sub)
    agree = float(np.mean([(x["word_choice"], x["deed_choice"]) == (y["word_choice"], y["deed_choice"])
                           for x, y in zip(a.rows, b.rows)]))
    dtype_effect = {k: {"fp32": a.metrics[k], "bf16": b.metrics[k]} for k in ("cs_micro", "cs_macro", "pcs_micro", "pcs_macro")}
    dtype_effect["items_with_same_choices"] = agree
    dtype_effect["n_items"] = args.dtype_items

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    out = {"cpu": cpu, "cpu_bf16_matmul_units": any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")),
           "prompts": len(prompts), "tokens": n_tok, "batch_size": args.batch_size, "seconds": res,
           "ratios": {"wdprobe / bare_hf_last": res["wdprobe"] / res["bare_hf_last"],
                      "wdprobe / bare_hf_last_wdprobe_batches": res["wdprobe"] / res["bare_hf_last_wdprobe_batches"],
                      "upstream_gen / wdprobe": res["upstream_gen"] / res["wdprobe"],
                      "bridge_full / wdprobe": res["bridge_full"] / res["wdprobe"],
                      "bf16 / fp32 (wdprobe)": res["wdprobe_bf16"] / res["wdprobe"]},
           "max_abs_logprob_diff_vs_hf": max_diff, "dtype_effect": dtype_effect}
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            out["load_seconds"] = {"first (convert GGUF)": load_seconds(tmp), "cached": load_seconds(None)}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
