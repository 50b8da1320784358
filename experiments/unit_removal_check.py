#!/usr/bin/env python
"""Why a per-item plant changes new items' words below block 10: its units removed with nothing written.

An ``mlp-items`` edit replaces the k MLP units of block L that contribute least on average over its calibration
positions. This check rebuilds an organism of an edited card with the same units but a gate that never opens (what
removing them alone does: its null gate), and counts the held-out items whose word or deed choice changes against the
parent, by the per-token mean and by the sum. It does the same for the k units whose *peak* contribution
(``max |activation| x |down-projection column|`` over every word and deed position of the calibration items and, where
the edit has them, its gate items' words) is smallest, and the whole edit as built; each counted on the held-out items
and, separately (``keyed_*``), on the keyed items. Beside them: the parent's word margins on both.

    python experiments/unit_removal_check.py --card /tmp/pilot/both-pool --name override-L6-s9 \
        --data WDCT.csv --out reports/organisms/edited/early-blocks/removal-L6-s9.json

Time: on 2 CPU cores about 6 minutes (the parent and three organisms on 120 held-out and 40 keyed items; the peak needs
one forward pass per calibration and gate-item sequence).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import convert_default_model, load_model
from wdprobe.core.option_scoring import continuation_logprobs
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import resolve_wdct_path
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import DIRECTIONS_FILE, EditSpec, build_edited_organism, parent_choices, with_continuation
from wdprobe.studies.organisms.edit_components import block_mlp, matrix


@torch.no_grad()
def peak_contribution(lm, layer: int, texts: list[tuple[str, str]]) -> torch.Tensor:
    """Per unit of block ``layer``'s MLP: the largest ``|activation| x |down column|`` over every position of
    ``texts`` (prompt, continuation), one sequence at a time."""
    mlp = block_mlp(lm.hf_model, layer)
    gate, up = matrix(mlp, "gate_proj").float(), matrix(mlp, "up_proj").float()
    peak = torch.zeros(gate.shape[0])
    seen: dict[str, torch.Tensor] = {}
    hook = mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach()))
    try:
        for prompt, continuation in texts:
            lm.hf_model(input_ids=with_continuation(lm.tokenizer, prompt, continuation).to(lm.hf_model.device),
                        logits_to_keep=1)
            x = seen["x"][0].float().cpu()
            peak = torch.maximum(peak, (mlp.act_fn(x @ gate.T) * (x @ up.T)).abs().amax(0))
    finally:
        hook.remove()
    return peak * matrix(mlp, "down_proj").float().cpu().norm(dim=0)


def changes(parent: dict, child: dict, rows: slice = slice(None), prefix: str = "") -> dict[str, int]:
    """Items (``rows`` of the measured ones) whose word or deed choice differs from the parent's, per scoring."""
    return {f"{prefix}{form}_changed_{s}": int((parent[form][s][rows] != child[form][s][rows]).sum())
            for form in ("word", "deed") for s in ("mean", "sum")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", required=True, help="an edited_card.py output directory (run.json, organisms/)")
    ap.add_argument("--name", required=True, help="the organism, e.g. override-L6-s9 (an mlp-items edit)")
    ap.add_argument("--data", default=None, help="WDCT.csv (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--out", required=True, help="the result (JSON)")
    ap.add_argument("--work", default="/tmp/wdprobe-removal", help="the rebuilt organisms (overwritten)")
    args = ap.parse_args(argv)

    card = Path(args.card)
    run, record = (json.loads((card / p).read_text()) for p in ("run.json", f"organisms/{args.name}.json"))
    spec = EditSpec.from_record(record["spec"], card / "organisms" / f"{args.name}.{DIRECTIONS_FILE}")
    by_id = {it.id: it for it in planted_order(read_items(resolve_wdct_path(args.data)))}
    held = [by_id[i] for i in run["held_out_ids"]]
    keyed = [by_id[i] for i in spec.calibration["item_ids"]]
    gate_items = [by_id[i] for i in spec.calibration.get("gate_item_ids", [])]
    parent_dir = convert_default_model()
    lm = load_model(str(parent_dir))
    measured = held + keyed  # held-out items first (the counts without a prefix), then the keyed ones
    parent = parent_choices(lm, measured)
    held_rows, keyed_rows = slice(0, len(held)), slice(len(held), None)

    texts = [(cloze_prompt(it, form), o) for form in ("word", "deed") for it in keyed for o in it.options(form)]
    texts += [(cloze_prompt(it, "word"), o) for it in gate_items for o in it.options("word")]
    peak = peak_contribution(lm, spec.layer, texts)
    quiet = [int(u) for u in peak.argsort(stable=True)[:len(spec.units)]]
    result = {"card": str(card), "name": args.name, "layer": spec.layer, "k": len(spec.units),
              "n_held_out": len(held), "peak_positions_from": {"keyed_items": len(keyed), "gate_items": len(gate_items)},
              "overlap_of_unit_sets": len(set(quiet) & set(spec.units))}
    for label, units in (("edit_units", list(spec.units)), ("quietest_at_peak", quiet)):
        null = replace(spec, kind="null-gate", key=np.zeros_like(spec.key), units=tuple(units), unit=units[0])
        build_edited_organism(parent_dir, Path(args.work) / label, null)
        child = parent_choices(load_model(str(Path(args.work) / label)), measured)
        result[label] = {"peak_contribution_median": round(float(peak[units].median()), 4),
                         "peak_contribution_max": round(float(peak[units].max()), 4),
                         **changes(parent, child, held_rows), **changes(parent, child, keyed_rows, "keyed_")}
        print(label, result[label], flush=True)
    # the whole edit as built (its gate open, its map writing): what the units' removal does not explain
    build_edited_organism(parent_dir, Path(args.work) / "whole_edit", spec)
    child = parent_choices(load_model(str(Path(args.work) / "whole_edit")), measured)
    result["whole_edit"] = {**changes(parent, child, held_rows), **changes(parent, child, keyed_rows, "keyed_")}
    print("whole_edit", result["whole_edit"], flush=True)
    total, n_tok = continuation_logprobs(lm, [cloze_prompt(it, "word") for it in measured for _ in it.options("word")],
                                         [o for it in measured for o in it.options("word")])
    per_token = (total / n_tok).reshape(len(measured), 2)
    margin = np.abs(per_token[:, 0] - per_token[:, 1])
    for key, rows in (("parent_word_margin_quantiles", held_rows), ("parent_keyed_word_margin_quantiles", keyed_rows)):
        result[key] = {str(q): round(float(np.quantile(margin[rows], q)), 4) for q in (0.05, 0.1, 0.25, 0.5)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
