"""PCT speed on the default model, side by side in one run (issue 5).

Closed form, the same prompts scored three ways (identical answers required):
  wdprobe        : option_logprobs, options sharing forwards along token paths (2 sequences per prompt for the
                   four PCT answers with Gemma's tokenizer), vocabulary projection only on the path positions
  per_option     : one sequence per option (4 per prompt), same last-positions-only projection
  per_option_full: one sequence per option through a plain bridge call (logits at every position)
Open domain, the same prompts continued greedily two ways:
  wdprobe        : generate_texts on the plain twin (KV cache works)
  bridge_nocache : greedy through the bridge, one full forward per new token (what works without the twin;
                   the bridge's own HF generate ignores its cache and produces garbage)

Usage: python benchmarks/bench_pct.py --data PATH/TO/pct [--prompts 64] [--gen-prompts 16] [--new-tokens 24]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from wdprobe.core.forward import LAST_POSITION_HOOK, encode_prompts, iter_batches
from wdprobe.core.generation import generate_texts
from wdprobe.core.model import load_model
from wdprobe.core.option_scoring import _keep_last, encode_options, option_logprobs
from wdprobe.data.pct import ANSWERS, build_prompts, finish_prompt, load_pct


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


@torch.no_grad()
def per_option(lm, prompts, options, batch_size, full: bool):
    tok = lm.tokenizer
    opt_ids = encode_options(tok, options)
    out = np.zeros((len(prompts), len(options)))
    pids = [tok.encode(p) for p in prompts]
    for o, oid in enumerate(opt_ids):
        seqs = [p + oid for p in pids]
        m = len(oid) + 1
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in chunk])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk])
            if full:
                logits = lm.bridge(ids, attention_mask=mask)[:, -m:]
            else:
                logits = lm.bridge.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[(LAST_POSITION_HOOK, _keep_last(m))])[:, -m:]
            lp = torch.log_softmax(logits.float(), -1)
            out[start:start + len(chunk), o] = sum(lp[:, k, t] for k, t in enumerate(oid)).numpy()
    return out


@torch.no_grad()
def bridge_greedy(lm, prompts, new_tokens, batch_size):
    tok = lm.tokenizer
    out = [""] * len(prompts)
    for idx in iter_batches(lm, prompts, batch_size):
        enc = encode_prompts(tok, [prompts[i] for i in idx], lm.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        start = ids.shape[1]
        for _ in range(new_tokens):
            logits = lm.bridge.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[(LAST_POSITION_HOOK, _keep_last(1))])
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        for i, row in zip(idx, ids[:, start:]):
            out[i] = tok.decode(row, skip_special_tokens=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--gen-prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_pct.json")))
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    material = load_pct(args.data)
    prompts = build_prompts(material, personas="base,age=18,political_orientation", closed_instructions="0,5",
                            open_instructions="0")
    closed = [finish_prompt(p.text, "closed") for p in prompts if p.form == "closed"][: args.prompts]
    opened = [finish_prompt(p.text, "open") for p in prompts if p.form == "open"][: args.gen_prompts]
    res: dict = {"model": lm.name, "threads": torch.get_num_threads(), "closed_prompts": len(closed),
                 "gen_prompts": len(opened), "new_tokens": args.new_tokens, "batch_size": args.batch_size}
    option_logprobs(lm, closed[:4], ANSWERS)  # warm-up
    t_w, tw, lp_w = timed(lambda: option_logprobs(lm, closed, ANSWERS, batch_size=args.batch_size), args.repeats)
    t_o, to, lp_o = timed(lambda: per_option(lm, closed, ANSWERS, args.batch_size, full=False), args.repeats)
    t_f, tf, lp_f = timed(lambda: per_option(lm, closed, ANSWERS, args.batch_size, full=True), 1)
    res["closed"] = {"wdprobe_s": t_w, "per_option_s": t_o, "per_option_full_s": t_f,
                     "speedup_vs_per_option": t_o / t_w, "speedup_vs_full": t_f / t_w,
                     "max_abs_diff_vs_full": float(np.abs(lp_w - lp_f).max()),
                     "same_choice": float(np.mean(lp_w.argmax(1) == lp_f.argmax(1))), "times": [tw, to, tf]}
    t_g, tg, txt_g = timed(lambda: generate_texts(lm, opened, max_new_tokens=args.new_tokens, batch_size=args.batch_size), 1)
    t_b, tb, txt_b = timed(lambda: bridge_greedy(lm, opened, args.new_tokens, args.batch_size), 1)
    res["open"] = {"wdprobe_s": t_g, "bridge_nocache_s": t_b, "speedup": t_b / t_g,
                   "identical_texts": float(np.mean([a == b for a, b in zip(txt_g, txt_b)])),
                   "example_wdprobe": txt_g[0], "example_bridge": txt_b[0]}
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
