"""Capture throughput and peak memory: wdprobe.capture vs TransformerLens run_with_cache with no filter.

Each method runs in its own fresh process on the same prompts (default model, fp32, same batch size);
a sampler thread reads the process RSS every 5 ms, and the figure reported is the peak RSS during
capture minus the RSS just before it (model already loaded and warmed up).

Usage: python benchmarks/bench_capture.py --data PATH/TO/WDCT.csv [--prompts 64] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def child(method: str, data: str, n_prompts: int, batch_size: int) -> dict:
    import psutil
    import torch

    from wdprobe.core.forward import encode_prompts
    from wdprobe.core.model import load_model
    from wdprobe.data.prompts import normal_prompt
    from wdprobe.data.wdct import load_wdct, present, select
    from wdprobe.methods.capture import CaptureSpec, capture_batch, presentation_spans

    lm = load_model("gemma-3-270m")
    pres = present(select(load_wdct(data), limit=n_prompts // 2), seed=0)
    prompts, spans, n_opts = [], [], []
    for p in pres:
        for form in ("word", "deed"):
            text = normal_prompt(p, form)
            prompts.append(text)
            spans.append(presentation_spans(p, form, text))
            n_opts.append(p.item.n_options)
    spec = CaptureSpec.parse("all", lm.bridge.cfg.n_layers, positions=("last",))
    batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]

    def run_wdprobe(batches):
        return [capture_batch(lm, [prompts[i] for i in b], [spans[i] for i in b], [n_opts[i] for i in b], spec)
                for b in batches]

    @torch.no_grad()
    def run_tl(batches):
        out = []
        for b in batches:
            enc = encode_prompts(lm.tokenizer, [prompts[i] for i in b], lm.device)
            _, cache = lm.bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"])
            out.append(torch.stack([cache[f"blocks.{l}.hook_resid_post"][:, -1] for l in range(lm.bridge.cfg.n_layers)], 1))
            del cache
        return out

    fn = run_wdprobe if method == "wdprobe" else run_tl
    fn(batches[:1])  # warm-up on one batch
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    result = fn(batches)
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    last = torch.cat([r["resid_post/last"] if isinstance(r, dict) else r for r in result])
    return {"method": method, "seconds": secs, "prompts_per_s": len(prompts) / secs,
            "peak_rss_above_baseline_mb": (peak[0] - base) / 2**20, "checksum": float(last.double().abs().sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.prompts, args.batch_size)))
        return
    res = {}
    for method in ("wdprobe", "run_with_cache"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--data", args.data, "--prompts",
                              str(args.prompts), "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                             check=True)
        res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(res[method], flush=True)
    w, t = res["wdprobe"], res["run_with_cache"]
    summary = {"prompts": args.prompts, "batch_size": args.batch_size, "results": res,
               "speed_ratio (wdprobe / run_with_cache, prompts/s)": w["prompts_per_s"] / t["prompts_per_s"],
               "memory_ratio (run_with_cache / wdprobe, peak RSS above baseline)":
                   t["peak_rss_above_baseline_mb"] / max(w["peak_rss_above_baseline_mb"], 1e-9),
               "same_last_position_activations": abs(w["checksum"] - t["checksum"]) / t["checksum"] < 1e-5}
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
