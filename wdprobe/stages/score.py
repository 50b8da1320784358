"""The WDCT scoring stage: model x items -> per-item CSV, metrics JSON and manifest in a run directory.

This is what ``wdprobe score`` calls; scripts call :func:`score_wdct` directly. Items are scored in
chunks; each finished chunk is written atomically, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.model import load_model
from wdprobe.data.prompts import load_demos, resolve_chat
from wdprobe.data.wdct import (
    LETTERS,
    Presentation,
    file_sha256,
    load_wdct,
    present,
    resolve_wdct_path,
    select,
)
from wdprobe.errors import InputError, MergeError, StageNotFinishedError
from wdprobe.runs.rundir import RunDir, Timer, read_csv
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import save_in_parts, scored_entry, work_left
from wdprobe.scoring.letters import (
    LetterTokens,
    build_prompts,
    complete_cot,
    item_row,
    next_token_logprobs,
    resolve_letter_tokens,
)
from wdprobe.scoring.metrics import summarise

STAGE = "score"
ITEM_COLUMNS = ["id", "domain", "n_options", "word_order", "deed_order",
                "word_choice", "word_letter", "word_letter_mass", "deed_choice", "deed_letter", "deed_letter_mass",
                "consistent", "pcs", "correct", "word_is_correct", "deed_is_correct"] + \
               [f"p_{f}_{c}" for f in ("word", "deed") for c in range(4)]
LOW_MASS = 0.1  # below this the model is barely answering with a letter at all


@dataclass
class ScoreResult:
    """What a scoring run produced: per-item rows (canonical space), metrics and where they live."""

    run_dir: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def typed_item_row(row: dict[str, str]) -> dict[str, Any]:
    """A per-item CSV row with its numbers parsed back (the inverse of writing items.csv)."""
    out: dict[str, Any] = dict(row)
    for k in ("n_options", "word_choice", "deed_choice", "consistent"):
        out[k] = int(row[k])
    for k in ("pcs", "word_letter_mass", "deed_letter_mass"):
        out[k] = float(row[k])
    for k in ("correct", "word_is_correct", "deed_is_correct"):
        out[k] = int(row[k]) if row.get(k, "") != "" else None
    for k in ITEM_COLUMNS:
        if k.startswith("p_"):
            out[k] = float(row[k]) if row.get(k, "") != "" else None
    return out


def _letter_copy_consistent(row: dict[str, Any]) -> int:
    j = LETTERS.index(row["word_letter"])
    return int(int(row["word_order"][j]) == int(row["deed_order"][j]))


def wdct_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """CS/PCS (micro, macro, per domain) plus answer-format diagnostics and correctness."""
    m = summarise(rows)
    for form in ("word", "deed"):
        mass = np.array([r[f"{form}_letter_mass"] for r in rows])
        m[f"{form}_letter_mass_mean"] = float(mass.mean()) if len(mass) else None
        m[f"{form}_letter_mass_below_{LOW_MASS}"] = float((mass < LOW_MASS).mean()) if len(mass) else None
        m[f"{form}_chose_A"] = float(np.mean([r[f"{form}_letter"] == "A" for r in rows])) if rows else None
        graded = [r[f"{form}_is_correct"] for r in rows if r[f"{form}_is_correct"] is not None]
        m[f"{form}_accuracy"] = float(np.mean(graded)) if graded else None
        m[f"{form}_accuracy_n"] = len(graded)
    # CS a responder would get by answering the deed with the *letter* it gave the word question:
    # the floor/ceiling that letter-position habits alone explain, under independent shuffles.
    m["cs_letter_copy_baseline"] = float(np.mean([_letter_copy_consistent(r) for r in rows])) if rows else None
    m["same_letter_rate"] = float(np.mean([r["word_letter"] == r["deed_letter"] for r in rows])) if rows else None
    m["n_multi_option_items"] = sum(r["n_options"] > 2 for r in rows)
    return m


def score_wdct(out: str | Path, *, model: str = "gemma-3-270m", data: str | Path | None = None, setting: str = "normal",
               seed: int = 0, limit: int | None = None, sample: int | None = None, domains: Sequence[str] | None = None,
               subset: str | None = None, batch_size: int = 32, dtype: str = "float32", device: str | None = None,
               device_map: str | None = None, chat: str = "auto", demos: str | Path | None = None,
               chunk_items: int = 64, progress: bool = True, lm=None, shard: "str | None" = None) -> ScoreResult:
    """Score WDCT items with a model into run directory ``out`` (resumable).

    ``lm`` lets a script reuse an already loaded :class:`~wdprobe.core.model.LoadedModel`. ``shard`` (``"i/n"``)
    scores only the items of that shard (by item id) into ``out/shards/score/i-of-n/``; answer letters are
    still calibrated on the whole selection, so ``wdprobe merge out`` gives exactly the unsharded run.
    """

    timer = Timer()
    part = Shard.parse(shard)
    run = RunDir(shard_dir(out, STAGE, part) if part else out)
    data_path = resolve_wdct_path(data)
    with timer("load_data"):
        all_items = load_wdct(data_path)
        items = select(all_items, domains=domains, subset=subset, sample=sample, seed=seed, limit=limit)
        sha = file_sha256(data_path)
    if lm is None:
        with timer("load_model"):
            lm = load_model(model, device=device, dtype=dtype, device_map=device_map)
    use_chat = resolve_chat(chat, lm.name, lm.tokenizer)
    demo_list = load_demos(demos) if setting == "cot" else None
    config = {"model": lm.name, "model_revision": lm.revision, "dtype": str(lm.dtype).replace("torch.", ""),
              "data_sha256": sha, "setting": setting, "seed": seed, "chat_template": use_chat,
              "items": {"domains": list(domains) if domains else None, "subset": subset, "sample": sample, "limit": limit}}
    if part:
        config["shard"] = str(part)
    manifest = run.check_or_start(STAGE, config)
    stage = manifest["stages"][STAGE]
    pres = present(items, seed=seed)

    with timer("resolve_letters"):
        if "letters" in stage:
            letters = LetterTokens.from_json(stage["letters"])
        else:
            calib = build_prompts(pres[:16], setting="normal", tokenizer=lm.tokenizer, use_chat=use_chat)
            letters = resolve_letter_tokens(lm, calib["word"] + calib["deed"], n_letters=4, batch_size=batch_size)
            run.update_stage(STAGE, letters=letters.to_json())
    if part:  # letters were calibrated on the whole selection (as unsharded); score this shard's items only
        run.update_stage(STAGE, selection_ids=[p.item.id for p in pres])
        pres = part.select(pres, key=lambda p: p.item.id)

    done = {r["id"]: typed_item_row(r) for r in run.read_parts(STAGE)}
    todo = work_left(pres, done, key=lambda p: p.item.id)
    bar = tqdm(total=2 * len(pres), initial=2 * (len(pres) - len(todo)), unit="prompt", desc=f"score {lm.name}",
               disable=not progress)

    def score(chunk: Sequence[Presentation]) -> list[dict[str, Any]]:
        prompts = build_prompts(chunk, setting=setting, tokenizer=lm.tokenizer, use_chat=use_chat,
                                demos=demo_list, seed=seed)
        if setting == "cot":
            prompts["deed"] = complete_cot(lm, prompts["deed"], batch_size=max(1, batch_size // 2))
        lp = next_token_logprobs(lm, prompts["word"] + prompts["deed"], letters.ids, batch_size=batch_size,
                                 on_batch=bar.update)
        n = len(chunk)
        return [item_row(p, lp[i], lp[n + i]) for i, p in enumerate(chunk)]

    with timer("score"):
        new = save_in_parts(run, STAGE, todo, chunk_size=chunk_items, columns=ITEM_COLUMNS, compute=score)
    done.update({r["id"]: typed_item_row(dict((k, str(v)) for k, v in r.items())) for r in new})
    bar.close()

    rows = [done[p.item.id] for p in pres]
    metrics = wdct_metrics(rows)
    run.write_table("items.csv", rows, ITEM_COLUMNS)

    atomic_write_json(run.path / "metrics.json", metrics)
    previous = run.read_manifest()["stages"][STAGE].get("timings", {})
    timings = {k: round(previous.get(k, 0.0) + v, 3) for k, v in timer.seconds.items()}
    run.mark_done(STAGE, model=lm.manifest(), data={"path": str(data_path), "sha256": sha, "n_items": len(pres)},
                     letters=letters.to_json(), timings=timings, batch_size=batch_size)
    return ScoreResult(run.path, rows, metrics)


def load_score(run_dir: str | Path) -> ScoreResult:
    """Read a finished scoring run back (items.csv + metrics.json)."""

    run = RunDir(run_dir)
    items = run.path / "items.csv"
    if not items.is_file():
        raise StageNotFinishedError(f"{run.path} has no items.csv: run `wdprobe score --out {run.path}` first")
    rows = [typed_item_row(r) for r in read_csv(items)]
    return ScoreResult(run.path, rows, json.loads((run.path / "metrics.json").read_text()))


def scored_prompts(run_dir: str | Path, tokenizer) -> tuple[list, dict[str, list[str]], ScoreResult]:
    """The presentations and word/deed prompts of a scored run, rebuilt exactly as they were scored
    (same items, shuffling seed and chat template), aligned with the run's item rows."""
    scored = load_score(run_dir)
    cfg = scored_entry(RunDir(run_dir))
    if cfg["config"]["setting"] != "normal":
        raise InputError(f"{run_dir}: this stage supports runs scored in the 'normal' setting, "
                         f"not {cfg['config']['setting']!r}")
    by_id = {it.id: it for it in load_wdct(cfg["data"]["path"])}
    missing = [r["id"] for r in scored.rows if r["id"] not in by_id]
    if missing:
        raise InputError(f"{run_dir}: item(s) {missing[:5]} of the run are not in {cfg['data']['path']} any more")
    pres = present([by_id[r["id"]] for r in scored.rows], seed=cfg["config"]["seed"])
    prompts = build_prompts(pres, setting="normal", tokenizer=tokenizer, use_chat=cfg["config"]["chat_template"])
    return pres, prompts, scored


def merge_score(run_dir: str | Path) -> dict[str, Any]:
    """Merge the scoring shards into ``run_dir/items.csv``, ``metrics.json`` and the manifest."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, STAGE)
    order = entries[0][1].get("selection_ids")
    if not order:
        raise MergeError(f"{entries[0][0]}: the manifest lacks selection_ids (written by sharded scoring)")
    rows: dict[str, dict[str, Any]] = {}
    for d, _ in entries:
        for r in read_csv(d / "items.csv"):
            if r["id"] in rows:
                raise MergeError(f"item {r['id']} appears in two shards ({d.name} and another)")
            rows[r["id"]] = typed_item_row(r)
    missing = [i for i in order if i not in rows]
    if missing:
        raise MergeError(f"{len(missing)} selected items are in no shard, e.g. {missing[:3]}")
    merged = [rows[i] for i in order]
    metrics = wdct_metrics(merged)
    run.write_table("items.csv", merged, ITEM_COLUMNS)
    atomic_write_json(run.path / "metrics.json", metrics)
    first = entries[0][1]
    config = {k: v for k, v in first["config"].items() if k != "shard"}
    manifest = run.read_manifest()
    manifest.setdefault("environment", RunDir(entries[0][0]).read_manifest().get("environment"))
    timings: dict[str, float] = {}
    for _, e in entries:
        for k, v in e.get("timings", {}).items():
            timings[k] = round(timings.get(k, 0.0) + v, 3)
    manifest.setdefault("stages", {})[STAGE] = {
        "config": config, "letters": first["letters"], "model": first.get("model"),
        "data": dict(first.get("data", {}), n_items=len(merged)), "batch_size": first.get("batch_size"),
        "timings": timings, "complete": True,
        "merged_from": [str(d.relative_to(run.path)) for d, _ in entries]}
    run.write_manifest(manifest)
    return metrics
