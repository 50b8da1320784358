"""Cross-form patching in the cloze form: the word run's residual at its decision point, put into the deed run at
the deed's decision point, layer by layer.

A cloze prompt has no letters, so what the patch can carry is the choice itself. Each form is read where its two
options part (:func:`wdprobe.core.option_scoring.decision_point`: the prompt plus the tokens both options share);
the metric is the deed's next-token log-odds, at that step, of the option the word chose over the other. An item
counts as consistent at that step when its clean deed log-odds point to the word's choice. Conditions: ``full``
(the whole residual), ``stance`` (only its component along the cross-fitted cloze stance direction: the difference
of means of the word decision-point residuals by the word's cloze choice) and ``random`` (a random direction's
component, the control). Outputs ``patching/cloze_cross_form*``; finished chunks live in ``patch_cloze.parts``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.forward import encode_prompts
from wdprobe.core.option_scoring import decision_point, last_residuals
from wdprobe.errors import InputError, InterventionError
from wdprobe.methods.interventions import resolve_layers, run_interventions
from wdprobe.methods.patching import cross_form_rows, cross_form_tests
from wdprobe.methods.probes import crossfit_directions
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import model_for_run, progress_bar, save_in_parts, saved_ids, stage_seconds
from wdprobe.stages.pairs import choose_items
from wdprobe.stages.score import load_score, scored_cloze_prompts

STAGE = "patch_cloze"
COLUMNS = ["id", "condition", "layer", "toward_word"]
CONDITIONS = ("full", "stance", "random")


def cloze_pairs(run_dir: str | Path, lm, *, n_items: int | None = 64, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Two-option items readable at a decision point in both forms, whose deed decision text re-encodes to its
    tokens: per item the word's decision sequence, the deed's decision text, the deed's decision tokens and the
    word's cloze choice. A seeded sample of ``n_items``, half cloze-inconsistent. Also the ids left out."""
    scored = load_score(run_dir)
    prompts = {(p.view.item.id, p.form): p for p in scored_cloze_prompts(run_dir, lm.tokenizer)}
    if not prompts:
        raise InputError(f"{run_dir}: the run has no cloze prompts; score it with --format cloze or both")
    tok = lm.tokenizer
    rows, kept, left_out = [], [], []
    for r in scored.rows:
        if r["n_options"] != 2:
            continue
        w, d = prompts[(r["id"], "word")], prompts[(r["id"], "deed")]
        pw = decision_point(tok, w.text, w.view.item.options("word"))
        pd_ = decision_point(tok, d.text, d.view.item.options("deed"))
        if pw is None or pd_ is None:
            left_out.append(r["id"])
            continue
        shared = tok.decode(pd_.sequence[len(pd_.sequence) - pd_.shared:]) if pd_.shared else ""
        text = d.text + shared
        if encode_prompts(tok, [text], "cpu")["input_ids"][0].tolist() != pd_.sequence:
            left_out.append(r["id"])  # the decision text would not re-tokenise to the decision tokens
            continue
        rows.append(dict(r, consistent=r["cloze_consistent"]))
        kept.append({"id": r["id"], "domain": r["domain"], "y_word": w.choice, "y_deed": d.choice,
                     "word_sequence": pw.sequence, "deed_text": text, "deed_tokens": pd_.tokens})
    pick = choose_items(rows, n_items, seed, consistency="cloze_consistent")
    return [kept[i] for i in pick], left_out


def run_cloze_patch(run_dir: str | Path, *, n_items: int | None = 64, layers: str | Sequence[int] | None = None,
                    conditions: Sequence[str] = CONDITIONS, seed: int = 0, folds: int = 5, chunk_items: int = 8,
                    batch_size: int = 64, progress: bool = True, restart: bool = False, lm=None) -> dict[str, Any]:
    """Word -> deed patching at the decision points of a run's cloze prompts; writes ``patching/cloze_cross_form*``."""
    import pandas as pd

    t_start = time.perf_counter()
    run = RunDir(run_dir)
    lm = model_for_run(run, lm)
    layers = resolve_layers(layers, lm)
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise InterventionError(f"unknown cloze patching condition(s) {bad}: choose from {list(CONDITIONS)}")
    if restart:
        run.reset_stage(STAGE, ["patching/cloze_cross_form*"])
    run.check_or_start(STAGE, {"n_items": n_items, "layers": layers, "conditions": list(conditions), "seed": seed,
                               "folds": folds, "hook": "resid_post", "position": "decision point"})
    items, left_out = cloze_pairs(run.path, lm, n_items=n_items, seed=seed)
    if len(items) < 2:
        raise InputError(f"{run.path}: {len(items)} cloze items readable at a decision point; cloze patching needs two")
    sources = last_residuals(lm, [it["word_sequence"] for it in items], layers, batch_size=16)
    y = np.array([it["y_word"] for it in items])
    notes = []
    stance, fold_of = np.zeros((1, len(layers), sources.shape[-1])), np.zeros(len(items), dtype=int)
    if "stance" in conditions:
        try:
            if len(items) < 2 * folds:
                raise InputError(f"{len(items)} items")
            stance, fold_of, _ = crossfit_directions(sources, y, folds=folds)
        except InputError as exc:  # a small sample: no cross-fitted direction to patch along
            conditions = [c for c in conditions if c != "stance"]
            notes.append(f"stance left out: no cross-fitted direction from {len(items)} items in {folds} folds ({exc})")
    rng = np.random.default_rng(seed + 7919)
    rand = rng.standard_normal((len(layers), sources.shape[-1]))
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    union = sorted({t for it in items for t in it["deed_tokens"]})
    column = {t: k for k, t in enumerate(union)}
    done = saved_ids(run, STAGE)
    todo = [i for i, it in enumerate(items) if it["id"] not in done]
    per_item = 1 + len(conditions) * len(layers)
    bar = progress_bar(len(items) * per_item, "patch word->deed (cloze)", progress, (len(items) - len(todo)) * per_item)

    def patch(idx: Sequence[int]) -> list[dict[str, Any]]:
        idx = list(idx)
        rows, keys = cross_form_rows(len(idx), layers, sources[idx], conditions=conditions,
                                     stance_dirs=stance[fold_of[idx]], random_dirs=rand)
        lp = run_interventions(lm, [items[i]["deed_text"] for i in idx], rows, union, batch_size=batch_size,
                               progress=bar.update)
        out = []
        for r, key in enumerate(keys):
            it = items[idx[key["item"]]]
            toward = it["deed_tokens"][it["y_word"]]
            away = it["deed_tokens"][1 - it["y_word"]]
            out.append({"id": it["id"], "condition": key["condition"], "layer": key["layer"],
                        "toward_word": float(lp[r, column[toward]] - lp[r, column[away]])})
        return out

    save_in_parts(run, STAGE, todo, chunk_size=chunk_items, columns=COLUMNS, compute=patch)
    bar.close()
    frame = pd.DataFrame(run.read_parts(STAGE))
    frame["layer"] = frame["layer"].astype(int)
    frame["toward_word"] = frame["toward_word"].astype(float)
    pos = {it["id"]: k for k, it in enumerate(items)}
    frame["item"] = frame["id"].map(pos)
    clean = frame[frame.condition == "clean"].set_index("item")["toward_word"]
    table = pd.DataFrame({"id": [it["id"] for it in items], "domain": [it["domain"] for it in items],
                          "consistent": (clean.reindex(range(len(items))) > 0).astype(int).to_numpy()})
    summary = summarise_cloze_patch(frame, table)
    out = run.path / "patching"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "cloze_cross_form.csv", frame.merge(table[["id", "consistent"]], on="id").to_csv(index=False))
    atomic_write_text(out / "cloze_cross_form_summary.csv", summary.to_csv(index=False))
    head: dict[str, Any] = {"n_items": len(items), "n_left_out": len(left_out), "notes": notes,
                            "cs_clean_decision_step": float(table["consistent"].mean()),
                            "tests": cross_form_tests(frame, table, seed=seed)}
    for cond, g in summary.groupby("condition"):
        best = g.loc[g["cs_after"].idxmax()]
        head[cond] = {"layer": int(best["layer"]), **{k: float(best[k]) for k in ("flip_rate", "break_rate", "cs_after")}}
    atomic_write_text(out / "cloze_cross_form_headline.json", json.dumps(head, indent=2) + "\n")
    run.mark_done(STAGE, headline=head, **stage_seconds(run, STAGE, t_start))
    return head


def summarise_cloze_patch(frame, items) -> Any:
    """Per condition x layer: the share of decision-step-inconsistent items the patch flips to the word's choice, the
    share of consistent ones it breaks, and the decision-step CS with the patch in place."""
    import pandas as pd

    f = frame.merge(items[["consistent"]], left_on="item", right_index=True)
    out = []
    for (cond, layer), g in f[f.condition != "clean"].groupby(["condition", "layer"]):
        inc, con = g[g.consistent == 0], g[g.consistent == 1]
        out.append({"condition": cond, "layer": int(layer),
                    "flip_rate": float((inc["toward_word"] > 0).mean()) if len(inc) else np.nan,
                    "break_rate": float((con["toward_word"] < 0).mean()) if len(con) else np.nan,
                    "cs_after": float((g["toward_word"] > 0).mean()), "n_inconsistent": int(len(inc))})
    return pd.DataFrame(out).sort_values(["condition", "layer"]).reset_index(drop=True)
