"""Issue 18's speed measures, side by side in one process on one loaded model (median of --repeats rounds, the
order of the methods alternating between rounds):

1. Fused score+capture (``wdprobe run``: the scoring pass also reads the activations the capture stage wants)
   against scoring and capture as separate passes, on the same seeded items (cyclic orders, letter and cloze
   formats, capture at every layer, positions last and question_mean), each into a fresh run directory. Checks:
   identical choices, largest difference of any captured activation and of any score.
2. Shared-prefix orders: one item's prompts in every option order (and each cloze prompt's option continuations)
   as shared-prefix trees against independent left-padded prompts. Largest difference of any log-probability.
3. Exact positional patching of one deed prompt (resid_pre of every layer x every token, option-swapped
   counterfactual): prefix-shared trees against the batched rows of the previous release. Largest difference.
4. The scoring forward's share of the fp32 matmul roofline on this CPU: useful FLOPs (2 x non-embedding
   parameters per real token, causal attention, the unembedding where it runs) per second of a plain batched
   letter-scoring pass, over the GFLOP/s of a 2048^3 fp32 matmul.

Usage: python benchmarks/bench_speed.py --data PATH/TO/WDCT.csv [--sample 24] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def forward_flops(lm, lengths: list[int], unembedded: int) -> float:
    """Useful FLOPs of forwards over sequences of these real lengths, unembedding ``unembedded`` positions."""
    cfg = lm.hf_model.config
    params = sum(p.numel() for n, p in lm.hf_model.named_parameters() if "embed" not in n and "lm_head" not in n)
    attn_width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    linear = 2 * params * sum(lengths)
    attention = sum(2 * T * T * attn_width for T in lengths) * cfg.num_hidden_layers  # QK^T and AV, causal half
    unembed = 2 * cfg.hidden_size * cfg.vocab_size * unembedded
    return float(linear + attention + unembed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="WDCT.csv")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--sample", type=int, default=24, help="seeded items for parts 1, 2 and 4")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--patch-repeats", type=int, default=1, help="rounds of part 3 (the old heatmap takes minutes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from bench_patching import short_item_with_content_effect

    from wdprobe.core.model import load_model
    from wdprobe.core.option_scoring import continuation_logprobs
    from wdprobe.data.items import read_items
    from wdprobe.data.prompts import cloze_prompt, normal_prompt
    from wdprobe.data.wdct import Presentation, present, select
    from wdprobe.methods.capture import CaptureSpec
    from wdprobe.methods.interventions import resid_hook
    from wdprobe.methods.patching import exact_patching
    from wdprobe.scoring.letters import next_token_logprobs
    from wdprobe.scoring.orders import orders_of
    from wdprobe.stages.capture import capture_wdct, load_activations
    from wdprobe.stages.score import load_score, score_wdct

    lm = load_model(args.model)
    items = read_items(args.data)
    chosen = select(items, sample=args.sample, seed=0)
    print(f"{lm.name}, {len(chosen)} items, {torch.get_num_threads()} threads", flush=True)
    out: dict = {"model": lm.name, "items": len(chosen), "threads": torch.get_num_threads(), "repeats": args.repeats}

    # 1. fused score+capture vs separate passes
    positions = ("last", "question_mean")
    spec = CaptureSpec.parse("all", lm.n_layers, positions=positions)
    sub = [{"id": it.id} for it in chosen]
    ids = [s["id"] for s in sub]
    # "score alone" is the floor a fused pass can approach: separate / score-alone is the best ratio fusion can give
    times: dict[str, list[float]] = {"separate": [], "fused": [], "score alone": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            hows = ["separate", "fused", "score alone"]
            for how in (hows if r % 2 == 0 else hows[::-1]):
                run = Path(tmp) / f"{how.replace(' ', '-')}{r}"
                t0 = time.perf_counter()
                score_wdct(run, data=args.data, sample=args.sample, lm=lm, progress=False,
                           capture=spec if how == "fused" else None)
                if how != "score alone":
                    capture_wdct(run, lm=lm, positions=positions, progress=False)
                times[how].append(time.perf_counter() - t0)
                print(f"round {r}: {how} {times[how][-1]:.1f} s", flush=True)
        a, b = Path(tmp) / "separate0", Path(tmp) / "fused0"
        ra, rb = load_score(a).rows, load_score(b).rows
        same_choices = all(x[k] == y[k] for x, y in zip(ra, rb) for k in ("id", "word_choice", "deed_choice",
                                                                            "word_cloze_choice", "deed_cloze_choice"))
        worst_act = 0.0
        for fmt, orders, pos in [("letter", "all", p) for p in positions] + [("cloze", "shown", p) for p in positions]:
            xa = load_activations(a, position=pos, orders=orders, format=fmt).array
            xb = load_activations(b, position=pos, orders=orders, format=fmt).array
            worst_act = max(worst_act, float(np.abs(xa - xb).max() / max(1.0, np.abs(xa).max())))
        worst_lp = max(abs(float(x[k]) - float(y[k])) for x, y in zip(load_score(a).prompt_rows, load_score(b).prompt_rows)
                       for k in x if k.startswith(("lp_", "ll_")) and x[k] not in ("", None))
    med = {k: statistics.median(v) for k, v in times.items()}
    out["fused"] = {"seconds": times, "median": med, "ratio separate / fused": med["separate"] / med["fused"],
                    "ceiling separate / score alone": med["separate"] / med["score alone"],
                    "fused overhead over score alone": med["fused"] / med["score alone"] - 1,
                    "same choices": same_choices, "max relative activation difference": worst_act,
                    "max log-probability difference": worst_lp}
    print(json.dumps(out["fused"], indent=1), flush=True)
    del ids

    # 2. shared-prefix orders (letters) and shared cloze prompts
    pres = present(chosen, seed=0)
    texts, groups, prompts, conts = [], [], [], []
    for p in pres:
        for f in ("word", "deed"):
            groups.append([])
            for order, _, _ in orders_of(p, f, "cyclic"):
                groups[-1].append(len(texts))
                texts.append(normal_prompt(Presentation(p.item, order, order), f))
            prompts += [cloze_prompt(p.item, f)] * p.item.n_options
            conts += list(p.item.options(f))
    letter_ids = [lm.tokenizer.encode(f" {c}", add_special_tokens=False)[0] for c in "ABCD"]
    methods = {
        "letters: independent prompts": lambda: next_token_logprobs(lm, texts, letter_ids),
        "letters: shared-prefix orders": lambda: next_token_logprobs(lm, texts, letter_ids, groups=groups),
        "cloze: independent rows": lambda: continuation_logprobs(lm, prompts, conts, share_prefix=False)[0],
        "cloze: shared prompt": lambda: continuation_logprobs(lm, prompts, conts)[0],
    }
    times, values = {m: [] for m in methods}, {}
    for r in range(args.repeats):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            t0 = time.perf_counter()
            values[name] = methods[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out["shared_prefix"] = {
        "prompts": len(texts), "cloze rows": len(prompts), "seconds": times, "median": med,
        "ratio letters": med["letters: independent prompts"] / med["letters: shared-prefix orders"],
        "ratio cloze": med["cloze: independent rows"] / med["cloze: shared prompt"],
        "ratio both": (med["letters: independent prompts"] + med["cloze: independent rows"])
        / (med["letters: shared-prefix orders"] + med["cloze: shared prompt"]),
        "max difference letters": float(np.abs(values["letters: independent prompts"]
                                               - values["letters: shared-prefix orders"]).max()),
        "max difference cloze": float(np.abs(values["cloze: independent rows"] - values["cloze: shared prompt"]).max())}
    print(json.dumps({k: v for k, v in out["shared_prefix"].items() if k != "seconds"}, indent=1), flush=True)

    # 4. roofline (before part 3, which takes longest)
    peak = matmul_gflops()
    lengths = [len(t) for t in (lm.tokenizer.encode(x) for x in texts)]
    flops = forward_flops(lm, lengths, unembedded=len(texts))
    secs = min(times["letters: independent prompts"])
    out["roofline"] = {"matmul 2048^3 fp32 GFLOP/s": peak, "scoring forward GFLOP/s": flops / secs / 1e9,
                       "fraction of roofline": flops / secs / 1e9 / peak, "real tokens": sum(lengths),
                       "useful GFLOP": flops / 1e9}
    print(json.dumps(out["roofline"], indent=1), flush=True)

    # 3. exact positional patching: prefix-shared trees vs the previous release's batched rows
    (n_tok, item_id, clean, cf), tok_ids, effect = short_item_with_content_effect(lm, items, "deed")
    hooks = [resid_hook(l, "resid_pre", lm.n_layers) for l in range(lm.n_layers)]
    methods = {"rows (previous release)": lambda: exact_patching(lm, [clean], [cf], hooks, tok_ids, shared_prefix=False),
               "prefix-shared trees": lambda: exact_patching(lm, [clean], [cf], hooks, tok_ids, shared_prefix=True)}
    times, values = {m: [] for m in methods}, {}
    for r in range(args.patch_repeats):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            t0 = time.perf_counter()
            values[name] = methods[name]()[0]["patched"]
            times[name].append(time.perf_counter() - t0)
            print(f"round {r}: {name} {times[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out["exact_patching"] = {"item": item_id, "tokens": n_tok, "layers": lm.n_layers, "patches": n_tok * lm.n_layers,
                             "seconds": times, "median": med,
                             "ratio": med["rows (previous release)"] / med["prefix-shared trees"],
                             "max difference (log-odds)": float(np.abs(values["rows (previous release)"]
                                                                       - values["prefix-shared trees"]).max())}
    print(json.dumps({k: v for k, v in out["exact_patching"].items() if k != "seconds"}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
