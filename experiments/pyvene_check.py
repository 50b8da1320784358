#!/usr/bin/env python
"""wdprobe's interchange intervention against pyvene's, on the real model: does the subspace interchange wdprobe
writes on its own hooks (``wdprobe.methods.interchange.PairInterchange``) score every option exactly as pyvene's
``LowRankRotatedSpaceIntervention`` does, placed on Hugging Face modules and on TransformerLens 4.x's bridge?

    pip install pyvene                     # not a wdprobe dependency: only this check needs it
    python experiments/pyvene_check.py --data ../shared/data/wdct/WDCT.csv
    python experiments/pyvene_check.py --data WDCT.csv --layers 3 9 --items 4 --out /tmp/pv

For each block L and subspace size k, base prompts are deed cloze prompts and sources the word prompts of other items;
the subspace is spanned by differences of source residuals at the decision point (so the interchange moves the
scores); both tools interchange the base's decision point with the source's last prompt token and every option is
scored as a continuation (per-token mean log-likelihood). pyvene is run one option sequence at a time, on
``model.layers[L].output`` (Gemma-3 has no entry in its model card: the module path and the width are given) and on
the bridge's ``blocks[L].hook_resid_post``. Writes ``--out``/result.json: the largest difference between the tools,
how far the interchange moved the scores (so an agreement is not that of two no-ops), library versions and seconds.

Time: about 1 minute on 2 CPU cores for the defaults.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import time
from pathlib import Path

import numpy as np
import torch

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.forward import prompt_token_ids
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.errors import InputError
from wdprobe.methods.cross_model import option_sequences
from wdprobe.methods.interchange import PairInterchange
from wdprobe.methods.subspace import make_subspace


def pyvene_scores(pv, model, component: str, width: int, basis: torch.Tensor, seqs, starts, heads,
                  forward_key: str) -> np.ndarray:
    """Per base row and option: pyvene's interchange of the decision point along ``basis`` ([d, k]), scored as the
    cloze form scores a continuation."""
    k = basis.shape[1]
    cfg = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        component=component, unit="pos", low_rank_dimension=k,
        intervention=pv.LowRankRotatedSpaceIntervention(embed_dim=width, low_rank_dimension=k))])
    wrapped = pv.IntervenableModel(cfg, model=model)
    intervention = next(iter(wrapped.interventions.values()))
    intervention = intervention[0] if isinstance(intervention, tuple) else intervention
    intervention.rotate_layer.weight = basis.to(intervention.rotate_layer.weight.dtype)
    got = np.zeros((len(heads), len(seqs) // len(heads)))
    with torch.no_grad():
        for n, (seq, start) in enumerate(zip(seqs, starts)):
            row, option = divmod(n, got.shape[1])
            source = heads[row]
            _, out = wrapped({forward_key: torch.tensor([seq])}, [{forward_key: torch.tensor([source])}],
                             unit_locations={"sources->base": ([[[len(source) - 1]]], [[[start - 1]]])})
            logits = out if torch.is_tensor(out) else out.logits
            logp = torch.log_softmax(logits[0].float(), -1)
            got[row, option] = float(logp[torch.arange(start - 1, len(seq) - 1), torch.tensor(seq[start:])].mean())
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--model", default=None, help="model id or directory (default: the embedded Gemma-3-270M)")
    ap.add_argument("--layers", type=int, nargs="*", default=[2, 6, 12], help="blocks whose residual is interchanged")
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 4], help="subspace sizes")
    ap.add_argument("--items", type=int, default=6, help="two-option WDCT items (the first in file order)")
    ap.add_argument("--out", default="reports/pyvene-check", help="where result.json is written")
    args = ap.parse_args(argv)
    try:
        import pyvene as pv
    except ImportError as exc:
        raise InputError("pyvene is not installed: `pip install pyvene` (only this check needs it)") from exc
    lm = load_model(args.model)
    items = [i for i in read_items(resolve_wdct_path(args.data)) if i.n_options == 2][:args.items]
    if len(items) < max(args.ks) + 1:
        raise InputError(f"--items {args.items}: a {max(args.ks)}-d subspace needs at least {max(args.ks) + 1} items")
    base = [cloze_prompt(i, "deed") for i in items]
    options = [i.options("deed") for i in items]
    source = [cloze_prompt(i, "word") for i in items[1:] + items[:1]]
    seqs, starts = option_sequences(lm, base, options)
    heads = prompt_token_ids(lm.tokenizer, source)
    rows = list(range(len(items)))
    checks = []
    for layer in args.layers:
        runner = PairInterchange(lm, f"blocks.{layer}.hook_resid_post", base, options, source)
        with torch.no_grad():
            clean = runner.rows.scores(lm, rows).numpy()
        for k in args.ks:
            sub = make_subspace("direction" if k == 1 else "rotation", lm.d_model, k)
            sub.start_from((runner.sources[1:k + 1] - runner.sources[0]).T.numpy())
            basis = sub.basis().detach().float()
            t0 = time.perf_counter()
            with torch.no_grad():
                ours = runner(sub, rows).numpy()
            t_ours = time.perf_counter() - t0
            record = {"layer": layer, "k": k, "rows": len(rows), "options": int(ours.size),
                      "interchange_moved_scores_by": float(np.abs(ours - clean).max()),
                      "wdprobe_seconds": round(t_ours, 2)}
            for where, model, component, key in (
                    ("hugging face module", lm.hf_model, f"model.layers[{layer}].output", "input_ids"),
                    ("transformerlens bridge hook", lm.bridge, f"blocks[{layer}].hook_resid_post.output", "input")):
                t0 = time.perf_counter()
                theirs = pyvene_scores(pv, model, component, lm.d_model, basis, seqs, starts, heads, key)
                record[where] = {"component": component, "max_abs_difference": float(np.abs(ours - theirs).max()),
                                 "same_choices": bool((ours.argmax(1) == theirs.argmax(1)).all()),
                                 "seconds": round(time.perf_counter() - t0, 2)}
            checks.append(record)
            print(record, flush=True)
    versions = {name: md.version(name) for name in ("pyvene", "transformers", "transformer-lens", "torch")}
    worst = max(c[w]["max_abs_difference"] for c in checks for w in ("hugging face module",
                                                                        "transformerlens bridge hook"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "result.json", {"model": lm.name, "versions": versions, "checks": checks,
                                            "max_abs_difference": worst,
                                            "smallest_interchange_effect": min(c["interchange_moved_scores_by"]
                                                                               for c in checks)})
    print(f"largest difference between wdprobe and pyvene: {worst:.2e} (per-token mean log-likelihood)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
