"""The PCT study over one run directory: closed-form answers, open-domain texts and their stances,
compass positions under personas, activations and probes across the two forms, and tropes.

Stages (each a function a script can call; ``wdprobe.pipeline.pct.run_pct`` sequences them and skips finished ones):
``closed`` (score the four answers) -> ``open`` (generate, resumable) -> ``judge`` (text -> stance) ->
``compass`` (positions, persona shifts, closed-vs-open agreement) -> ``capture`` (last-token residuals)
-> ``probes`` (stance probes across forms, persona effect inside) -> ``tropes`` -> ``report``.
Every stage reads and writes plain files in the run directory (CSV, JSON, safetensors).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from wdprobe.core.generation import generate_texts
from wdprobe.core.option_scoring import n_sequences, option_logprobs
from wdprobe.core.options import Options, option, positive_int
from wdprobe.data.pct import (
    ANSWERS,
    PCTPrompt,
    build_prompts,
    finish_prompt,
    load_pct,
    prompt_text,
    resolve_pct_dir,
)
from wdprobe.errors import InputError, StageNotFinishedError
from wdprobe.methods.capture import last_token_residuals
from wdprobe.methods.decoding import PERMUTATIONS, decode_layers
from wdprobe.methods.probes import PROBE_KINDS, accuracy, fit_probe, item_folds, probe_layers
from wdprobe.runs.rundir import RunDir, read_csv
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import finish_stage, require_done, save_in_parts, saved_ids, work_left
from wdprobe.scoring.content import cyclic_orders
from wdprobe.studies.pct.compass import (
    load_weights,
    persona_positions,
    persona_shifts,
    sign_flip_test,
)
from wdprobe.studies.pct.stance import agrees, judge_check
from wdprobe.studies.pct.tropes import (
    SentenceTransformerEmbedder,
    find_tropes,
    is_prompt_echo,
    split_sentences,
)

_OPEN_CHUNK = 64  # prompts generated between saves (a crash loses at most this many)
STOP_MARKERS = ("\nResponse", "\nAnswer:", "\nQuestion", "\nProposition", "\n\n\n")


@dataclass
class PCTConfig(Options):
    """Everything that defines a PCT run; saved in the manifest, compared on resume (declared once: the flags of
    every ``wdprobe pct`` command and the saved settings read the same declaration)."""

    model: str = option("gemma-3-270m", help="embedded 'gemma-3-270m', a local HF directory or a Hugging Face id")
    data: str | None = option(None, help="PCT directory (else $WDPROBE_PCT, else the pinned upstream download)")
    out: str = option("runs/gemma-3-270m-pct", help="run directory; settings are read from it")
    propositions: str = option("all", help="'all' or indices like 0-9,20")
    personas: str = option("all", help="'all' (base + 21), or keys like base,age=18, or attribute names like age")
    closed_instructions: str = option("0,5", help="closed-form instruction indices ('all' = 10)")
    open_instructions: str = option("0", help="open-domain instruction indices ('all' = 10)")
    seed: int = option(0, help="closed-form option-order shuffling")
    order_by: str = option("item", choices=("item", "prompt"),
                           help="option order shared by all personas of a proposition and instruction (item) or drawn "
                                "per prompt (prompt, as LLM Tropes)")
    orders: str = option("cyclic", choices=("shown", "cyclic"),
                         help="closed form: the one shuffled order only, or also every cyclic order of the four answers "
                              "(order-free positions)")
    chat: str = option("auto", choices=("auto", "plain", "chat"))
    max_new_tokens: int = option(40, check=positive_int, expect="a positive number", help="token budget per open answer")
    batch_size: int = option(16, check=positive_int, expect="a positive number")
    judge: str | None = option(None, help="judge model for open stances (default: the studied model)")
    calibrate: bool = option(True, help="subtract the judge's content-free answer bias")
    probe_kinds: tuple[str, ...] = option(("diffmean", "logreg"), check=lambda v: all(k in PROBE_KINDS for k in v),
                                          expect="a list of registered probe kinds")
    folds: int = option(5, check=lambda v: isinstance(v, int) and v >= 2, expect="a number of folds >= 2")
    embedder: str | None = option(None, help="sentence-transformers directory (default: bundled all-MiniLM-L6-v2)")
    trope_threshold: float = option(0.7, help="cosine similarity that joins a trope")
    min_prompts: int = option(10, check=positive_int, expect="a positive number",
                              help="distinct prompts a trope must recur in")
    notes: str | None = option(None, help="markdown file with a written reading for the report")

    def selection(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("propositions", "personas", "closed_instructions", "open_instructions", "seed",
                                              "order_by", "orders")}

    def to_json(self) -> dict[str, Any]:
        return self.to_dict()


def trim_generation(text: str) -> str:
    """The model's answer without the next turn it starts to invent ('Response:', 'Question' ...)."""
    t = text.strip()
    cut = min([t.find(m) for m in STOP_MARKERS if m in t] or [len(t)])
    return t[:cut].strip()


# ---- run directory helpers ----------------------------------------------------------------------

def _require(run: RunDir, stage: str, needed: str) -> None:
    require_done(run, stage, needed, f"wdprobe pct {needed} --out {run.path}")


def prompt_table(run: RunDir) -> list[dict[str, str]]:
    """The run's prompts (``prompts.csv``), or an error naming the command that writes them."""
    path = run.path / "prompts.csv"
    if not path.is_file():
        raise StageNotFinishedError(f"{path}: missing; start the run with `wdprobe pct closed` or `wdprobe pct run`")
    return read_csv(path)


def write_prompts(run: RunDir, cfg: PCTConfig, tokenizer=None, use_chat: bool = False) -> list[dict[str, Any]]:
    """Build the selection's prompts and save them (with the final text each model call sees)."""
    material = load_pct(resolve_pct_dir(cfg.data))
    prompts: list[PCTPrompt] = build_prompts(material, propositions=cfg.propositions, personas=cfg.personas,
                                             closed_instructions=cfg.closed_instructions,
                                             open_instructions=cfg.open_instructions, seed=cfg.seed,
                                             order_by=cfg.order_by)
    if cfg.orders not in ("shown", "cyclic"):
        raise InputError(f"PCT orders must be 'shown' or 'cyclic', not {cfg.orders!r}")
    rows = [{"id": p.id, "pair_id": p.pair_id, "form": p.form, "proposition": p.proposition,
             "section": material.sections[p.proposition], "persona": p.persona, "instruction": p.instruction,
             "order": "".join(map(str, p.order)), "statement": material.propositions[p.proposition],
             "prompt": finish_prompt(p.text, p.form, tokenizer, use_chat)} for p in prompts]
    run.write_table("prompts.csv", rows, list(rows[0]))
    if cfg.orders == "cyclic":  # the same closed prompt with the answers listed in every cyclic order
        persona = {q.key: q for q in material.personas}
        variants = []
        for p in prompts:
            if p.form != "closed":
                continue
            cyclic = cyclic_orders(len(ANSWERS))
            for order in cyclic + ([p.order] if p.order not in cyclic else []):  # the shown order is always asked
                text = prompt_text(material, p.proposition, persona[p.persona], "closed", p.instruction, order)
                variants.append({"id": p.id, "order": "".join(map(str, order)), "shown": int(order == p.order),
                                 "prompt": finish_prompt(text, "closed", tokenizer, use_chat)})
        run.write_table("closed_orders.csv", variants, ["id", "order", "shown", "prompt"])
    return rows


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, unit="prompt")


# ---- stages -------------------------------------------------------------------------------------

SHARDABLE = ("closed", "open", "judge", "capture")
CLOSED_COLUMNS = ["id", "pair_id", "proposition", "section", "persona", "instruction", "order"] + \
    [f"lp_{k}" for k in range(4)] + [f"p_{k}" for k in range(4)] + ["choice", "answer", "p_agree", "shown_choice",
                                                                    "shown_p_agree", "n_orders", "order_sensitive",
                                                                    "by_order"]
OPEN_COLUMNS = ["id", "pair_id", "proposition", "section", "persona", "instruction", "text", "raw"]


def _shard_work(run: RunDir, stage: str, shard) -> tuple[RunDir, Any]:
    """Where a (possibly sharded) stage writes its parts, and the shard (None when unsharded)."""

    part = Shard.parse(shard)
    if part is None:
        return run, None
    work = RunDir(shard_dir(run.path, stage, part))
    work.check_or_start(stage, {"shard": str(part), "selection": run.read_manifest()["stages"]["pct"]["config"]})
    return work, part


def pct_closed(run: RunDir, lm, *, use_chat: bool = False, batch_size: int = 16, chunk: int = 256,
               progress: bool = True, shard: str | None = None) -> Path:
    """Closed form: log-likelihood of each answer text, in canonical order; choice and distribution.

    When the run lists the answers in every cyclic order too (``closed_orders.csv``, ``orders="cyclic"``), each
    prompt is scored in each of them and its row holds the *content* reading: per answer, the mean over orders of
    its normalised log-likelihood, renormalised (a preference for the first-listed answer cancels); ``shown_*``
    keep the reading of the one shuffled order, ``order_sensitive`` whether the choice moves with the order, and
    ``closed_orders.csv`` every order's log-likelihoods.
    ``shard`` (``"i/n"``): only the prompts of that shard (split by prompt id), into ``RUN/shards/closed/``."""

    prompts = [r for r in prompt_table(run) if r["form"] == "closed"]
    variants: dict[str, list[dict[str, str]]] = {}
    if (run.path / "closed_orders.csv").is_file():
        for v in read_csv(run.path / "closed_orders.csv"):
            variants.setdefault(v["id"], []).append(v)
    work, piece = _shard_work(run, "closed", shard)
    done = saved_ids(work, "closed")
    todo = work_left(prompts, done, key=lambda r: r["id"], shard=piece)
    prefix = "" if use_chat else " "
    per_prompt = {r["id"]: len(variants.get(r["id"], [])) or 1 for r in prompts}
    per = n_sequences(lm.tokenizer, ANSWERS, prefix)
    bar = _bar(sum(per_prompt[r["id"]] for r in todo) * per, "closed-form answers (sequences)", progress)
    cols = CLOSED_COLUMNS

    def score(part: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        texts, owner = [], []
        for i, r in enumerate(part):
            for v in variants.get(r["id"], [{"order": r["order"], "prompt": r["prompt"]}]):
                texts.append(v["prompt"])
                owner.append((i, v["order"]))
        lp = option_logprobs(lm, texts, ANSWERS, prefix=prefix, batch_size=batch_size, on_batch=bar.update)
        rows = []
        for i, r in enumerate(part):
            mine = {order: lp[j] for j, (k, order) in enumerate(owner) if k == i}
            rows.append(closed_row(r, mine))
        return rows

    save_in_parts(work, "closed", todo, chunk_size=chunk, columns=cols, compute=score)
    bar.close()
    if piece is not None:
        finish_stage(work, "closed", n_prompts=len(done) + len(todo))
        return work.path
    rows = _ordered(run.read_parts("closed"), prompts)
    if variants:
        run.write_table("closed_by_order.csv", [
            {"id": r["id"], "order": order, "shown": int(order == r["order"]), **{f"lp_{k}": v[k] for k in range(4)}}
            for r in rows for order, v in json.loads(r["by_order"]).items()], ["id", "order", "shown"] +
            [f"lp_{k}" for k in range(4)])
    return run.write_table("closed.csv", rows, cols)


def closed_row(prompt: dict[str, str], by_order: dict[str, np.ndarray]) -> dict[str, Any]:
    """One closed prompt's row from its answers' log-likelihoods in each order it was asked in (canonical answer
    order, one array per order string): the content reading over the cyclic orders when there are several, else
    the one order's."""
    def norm(x: np.ndarray) -> np.ndarray:
        return x - np.logaddexp.reduce(x)

    shown = by_order.get(prompt["order"])
    cyclic = ["".join(map(str, o)) for o in cyclic_orders(len(ANSWERS))]
    content_orders = [o for o in cyclic if o in by_order]
    if len(by_order) > 1 and content_orders:
        lp = norm(np.mean([norm(by_order[o]) for o in content_orders], axis=0))
    else:
        lp = np.asarray(shown if shown is not None else next(iter(by_order.values())), dtype=np.float64)
    p = np.exp(norm(lp))
    c = int(np.argmax(lp))
    row = {**{k: prompt[k] for k in CLOSED_COLUMNS[:7]}, **{f"lp_{k}": round(float(lp[k]), 4) for k in range(4)},
           **{f"p_{k}": round(float(p[k]), 4) for k in range(4)},
           "choice": c, "answer": ANSWERS[c], "p_agree": round(float(p[2] + p[3]), 4)}
    ref = np.asarray(shown if shown is not None else lp)
    ps = np.exp(norm(ref))
    row.update({"shown_choice": int(np.argmax(ref)), "shown_p_agree": round(float(ps[2] + ps[3]), 4),
                "n_orders": len(by_order),
                "order_sensitive": int(len({int(np.argmax(v)) for v in by_order.values()}) > 1),
                "by_order": json.dumps({o: [round(float(x), 4) for x in v] for o, v in by_order.items()})})
    return row


def _ordered(rows: list[dict[str, str]], prompts: list[dict[str, str]]) -> list[dict[str, str]]:
    by_id = {r["id"]: r for r in rows}
    missing = [p["id"] for p in prompts if p["id"] not in by_id]
    if missing:
        raise StageNotFinishedError(f"{len(missing)} prompts have no result (first: {missing[0]}); rerun the stage to resume")
    return [by_id[p["id"]] for p in prompts]


def pct_open(run: RunDir, lm, *, max_new_tokens: int = 40, batch_size: int = 16, chunk: int | None = None,
             progress: bool = True, shard: str | None = None) -> Path:
    """Open domain: greedy generation per prompt, saved every ``chunk`` prompts (a rerun resumes).
    ``shard`` (``"i/n"``): only the prompts of that shard, into ``RUN/shards/open/``."""

    prompts = [r for r in prompt_table(run) if r["form"] == "open"]
    work, piece = _shard_work(run, "open", shard)
    done = saved_ids(work, "open")
    todo = work_left(prompts, done, key=lambda r: r["id"], shard=piece)
    bar = _bar(len(done) + len(todo), "open-domain generation", progress)
    bar.update(len(done))
    cols = OPEN_COLUMNS

    def generate(part: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        texts = generate_texts(lm, [r["prompt"] for r in part], max_new_tokens=max_new_tokens, batch_size=batch_size,
                               on_batch=lambda idx, _: bar.update(len(idx)))
        return [{**{k: r[k] for k in cols[:6]}, "text": trim_generation(t), "raw": t} for r, t in zip(part, texts)]

    save_in_parts(work, "open", todo, chunk_size=chunk or _OPEN_CHUNK, columns=cols, compute=generate)
    bar.close()
    if piece is not None:
        finish_stage(work, "open", n_prompts=len(done) + len(todo))
        return work.path
    return run.write_table("open.csv", _ordered(run.read_parts("open"), prompts), cols)


def merge_pct_stage(run_dir: str | Path, stage: str) -> dict[str, Any]:
    """Join ``RUN/shards/<closed|open|judge|capture>/*`` into the run: its parts and table (or the
    activation file), and a finished stage, exactly as the unsharded stage writes them."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, stage)
    started = time.time()
    if stage == "capture":
        return _merge_pct_capture(run, entries, started)
    table = {"closed": "closed.csv", "open": "open.csv", "judge": "stances.csv"}[stage]
    run.reset_stage(stage, [table])
    settings = {k: v for k, v in entries[0][1].get("config", {}).items() if k != "shard"}
    cols = {"closed": CLOSED_COLUMNS, "open": OPEN_COLUMNS, "judge": JUDGE_COLUMNS}[stage]
    for d, _ in entries:
        rows = RunDir(d).read_parts(stage)
        if rows:
            run.write_part(stage, rows, cols, settings=settings)
    order = read_csv(run.path / "open.csv") if stage == "judge" else \
        [r for r in prompt_table(run) if r["form"] == stage]
    run.write_table(table, _ordered(run.read_parts(stage), order), cols)
    finish_stage(run, stage, seconds=round(time.time() - started, 1), result=f"{len(order)} {'closed prompts' if stage == 'closed' else 'texts'} "
                                 f"(merged from {len(entries)} shards)")
    return {"n_prompts": len(order)}


def _merge_pct_capture(run: RunDir, entries, started: float) -> dict[str, Any]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    rows: dict[str, dict[str, torch.Tensor]] = {}
    for d, _ in entries:
        with safe_open(str(d / "activations.safetensors"), "pt") as f:
            ids = json.loads(f.metadata()["ids"])
            for name in ids:
                t = f.get_tensor(name)
                rows.setdefault(name, {}).update({i: t[k] for k, i in enumerate(ids[name])})
    prompts = prompt_table(run)
    meta = {form: [r["id"] for r in prompts if r["form"] == form] for form in ("closed", "open")}
    if "closed_orders" in rows:
        meta["closed_orders"] = [v["key"] for v in closed_variants(run)]
    tensors = {name: torch.stack([rows[name][i] for i in keys]) for name, keys in meta.items()}
    atomic_write_bytes(run.path / "activations.safetensors",
                       save(tensors, metadata={"ids": json.dumps(meta), "hook": "resid_post", "position": "last"}))
    finish_stage(run, "capture", seconds=round(time.time() - started, 1), result=f"activations.safetensors (merged from {len(entries)} shards)")
    return {"n_prompts": len(prompts)}


JUDGE_COLUMNS = ["id", "pair_id", "proposition", "section", "persona", "instruction"] + [f"s_{k}" for k in range(4)] + \
    ["stance", "answer", "empty"]


def pct_judge(run: RunDir, judge, *, chunk: int = 256, progress: bool = True, shard: str | None = None) -> Path:
    """Stance of each open text (a :class:`wdprobe.studies.pct.stance.StanceJudge`), saved in parts.
    ``shard`` (``"i/n"``): only the texts of that shard, into ``RUN/shards/judge/``."""
    texts = read_csv(run.path / "open.csv")
    statements = {r["id"]: r["statement"] for r in prompt_table(run)}
    work, piece = _shard_work(run, "judge", shard)
    done = saved_ids(work, "judge")
    todo = work_left(texts, done, key=lambda r: r["id"], shard=piece)
    bar = _bar(len(done) + len(todo), f"judging stances ({judge.name})", progress)
    bar.update(len(done))
    cols = JUDGE_COLUMNS

    def judged(part: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        scores = judge.stance_logprobs([statements[r["id"]] for r in part], [r["text"] or "N/A" for r in part])
        rows = []
        for r, s in zip(part, scores):
            c = int(np.argmax(s))
            rows.append({**{k: r[k] for k in cols[:6]}, **{f"s_{k}": round(float(s[k]), 4) for k in range(4)},
                         "stance": c, "answer": ANSWERS[c], "empty": int(not r["text"].strip())})
        bar.update(len(part))
        return rows

    save_in_parts(work, "judge", todo, chunk_size=chunk, columns=cols, compute=judged)
    bar.close()
    write_judge_check(run, judge)  # into RUN itself (identical from every shard; the first one writes it)
    if piece is not None:
        finish_stage(work, "judge", n_prompts=len(done) + len(todo))
        return work.path
    return run.write_table("stances.csv", _ordered(run.read_parts("judge"), texts), cols)


def write_judge_check(run: RunDir, judge) -> Path:
    """The judge's accuracy on planted statements about the run's propositions (``judge_check.json``)."""

    path = run.path / "judge_check.json"
    if not path.is_file():
        unique = sorted({r["statement"] for r in prompt_table(run)})
        atomic_write_json(path, judge_check(judge, unique))
    return path


def agreement_rows(closed: list[dict], stances: list[dict]) -> list[dict[str, Any]]:
    """Closed answer vs open stance per pair (same proposition, persona and instruction index)."""
    by_pair = {r["pair_id"]: r for r in stances}
    out = []
    for c in closed:
        s = by_pair.get(c["pair_id"])
        if s is None:
            continue
        a, b = int(c["choice"]), int(s["stance"])
        out.append({"pair_id": c["pair_id"], "proposition": c["proposition"], "section": c["section"],
                    "persona": c["persona"], "instruction": c["instruction"], "closed": a, "open": b,
                    "exact": int(a == b), "same_side": int((a >= 2) == (b >= 2))})
    return out


def pct_compass(run: RunDir, weights_path: str | Path, *, n_perm: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Positions per persona (closed form and, through the judge, open form), shifts vs base, agreement."""

    weights = load_weights(weights_path)
    closed = read_csv(run.path / "closed.csv")
    cols_pos = ["persona", "econ", "social", "econ_sd", "social_sd", "n_instructions", "econ_low", "econ_high",
                "social_low", "social_high"]
    pos = [dict(r, form="closed") for r in persona_positions(closed, weights, seed=seed)]
    if closed and int(closed[0].get("n_orders") or 1) > 1:  # the one shuffled order's reading, for comparison
        shown = [dict(r, choice=r["shown_choice"]) for r in closed]
        pos += [dict(r, form="closed_shown") for r in persona_positions(shown, weights, seed=seed)]
    shifts = [dict(r, form="closed") for r in persona_shifts(closed, weights, n_perm=n_perm, seed=seed)]
    summary: dict[str, Any] = {"closed_prompts": len(closed)}
    if (run.path / "stances.csv").is_file():
        stances = read_csv(run.path / "stances.csv")
        as_choice = [dict(r, choice=r["stance"]) for r in stances]
        pos += [dict(r, form="open") for r in persona_positions(as_choice, weights, seed=seed)]
        shifts += [dict(r, form="open") for r in persona_shifts(as_choice, weights, n_perm=n_perm, seed=seed)]
        agree = agreement_rows(closed, stances)
        run.write_table("agreement.csv", agree, list(agree[0]))
        summary.update(pairs=len(agree), exact=round(float(np.mean([a["exact"] for a in agree])), 4),
                       same_side=round(float(np.mean([a["same_side"] for a in agree])), 4),
                       empty_open_texts=int(sum(int(r["empty"]) for r in stances)))
        # chance agreement from the two forms' answer rates alone (agreement that needs no shared stance)
        ca = np.bincount([a["closed"] for a in agree], minlength=4) / len(agree)
        ob = np.bincount([a["open"] for a in agree], minlength=4) / len(agree)
        summary["exact_chance"] = round(float(ca @ ob), 4)
        side_c, side_o = np.mean([a["closed"] >= 2 for a in agree]), np.mean([a["open"] >= 2 for a in agree])
        summary["same_side_chance"] = round(float(side_c * side_o + (1 - side_c) * (1 - side_o)), 4)
    summary["personas_compared"] = sum(r["form"] == "closed" for r in shifts)
    summary["instruction_noise"] = instruction_noise(closed)
    summary["position_bias"] = position_bias(closed)
    run.write_table("positions.csv", pos, ["form"] + cols_pos)
    shift_cols = ["form", "persona", "d_econ", "d_social", "d_econ_low", "d_econ_high", "d_social_low", "d_social_high",
                  "p_econ", "p_social", "q_econ", "q_social", "answers_changed", "n_pairs"]
    run.write_table("shifts.csv", shifts, shift_cols)
    summary["closed_answer_rates"] = {ANSWERS[k]: round(float(np.mean([int(r["choice"]) == k for r in closed])), 4)
                                      for k in range(4)}

    atomic_write_json(run.path / "compass.json", summary)
    return summary


def position_bias(closed: Sequence[dict]) -> dict[str, Any]:
    """Where in the listed order the chosen answer sits: a model reading the options picks by content,
    a position-biased one picks the first (or last) listed whatever it says."""
    def shares(key: str) -> tuple[np.ndarray, float]:
        pos = [r["order"].index(str(r[key])) for r in closed]
        first_side = [int(r["order"][0]) >= 2 for r in closed]
        side = [int(r[key]) >= 2 for r in closed]
        return np.bincount(pos, minlength=4) / max(len(pos), 1), float(np.mean([a == b for a, b in zip(side, first_side)]))

    share, same = shares("choice")
    out: dict[str, Any] = {"chosen_listed_position_share": [round(float(x), 4) for x in share],
                           "same_side_as_first_listed": round(same, 4)}
    if closed and int(closed[0].get("n_orders") or 1) > 1:  # content reading: also the shown order's, for comparison
        share, same = shares("shown_choice")
        out["shown_order"] = {"chosen_listed_position_share": [round(float(x), 4) for x in share],
                              "same_side_as_first_listed": round(same, 4)}
        out["order_sensitive"] = round(float(np.mean([int(r["order_sensitive"]) for r in closed])), 4)
    return out


def instruction_noise(closed: Sequence[dict]) -> dict[str, Any] | None:
    """Noise floor for persona effects: how often the same persona answers a proposition differently under
    two closed instructions, against how often a persona's answer differs from the base case's under the
    same instruction."""
    ans: dict[tuple[str, int, int], int] = {(r["persona"], int(r["proposition"]), int(r["instruction"])): int(r["choice"])
                                            for r in closed}
    insts = sorted({k[2] for k in ans})
    if len(insts) < 2:
        return None
    diff_inst = [ans[(p, q, insts[0])] != ans[(p, q, i)] for (p, q, i) in ans if i != insts[0] and (p, q, insts[0]) in ans]
    diff_persona = [ans[(p, q, i)] != ans[("base", q, i)] for (p, q, i) in ans if p != "base" and ("base", q, i) in ans]
    return {"instructions": insts, "answer_changes_between_instructions": round(float(np.mean(diff_inst)), 4),
            "answer_changes_persona_vs_base": round(float(np.mean(diff_persona)), 4) if diff_persona else None}


def closed_variants(run: RunDir) -> list[dict[str, str]]:
    """The closed prompts in every order a cyclic run asked them in (``closed_orders.csv``), each with its capture
    key ``id|order``; empty for a run that asked the shown order only."""
    path = run.path / "closed_orders.csv"
    return [dict(v, key=f"{v['id']}|{v['order']}") for v in read_csv(path)] if path.is_file() else []


CAPTURED = ("closed", "open", "closed_orders")


def pct_capture(run: RunDir, lm, *, batch_size: int = 16, progress: bool = True, shard: str | None = None) -> Path:
    """Last-token residual stream (every layer) of every closed and open prompt, float16 safetensors; in a cyclic
    run also of every closed prompt in every order it was asked in (``closed_orders``, keys ``id|order``), so
    probes can separate the answer's content from its position in the list.
    ``shard`` (``"i/n"``): only that shard's prompts, into ``RUN/shards/capture/i-of-n/``."""
    import torch
    from safetensors.torch import save

    work, piece = _shard_work(run, "capture", shard)
    prompts = [r for r in prompt_table(run) if piece is None or piece.holds(r["id"])]
    variants = [v for v in closed_variants(run) if piece is None or piece.holds(v["id"])]
    sets = {"closed": [r for r in prompts if r["form"] == "closed"], "open": [r for r in prompts if r["form"] == "open"]}
    if variants:
        sets["closed_orders"] = variants
    tensors, meta = {}, {}
    for name, rows in sets.items():
        bar = _bar(len(rows), f"capture ({name.replace('_', ' in all ')})", progress)
        arr = last_token_residuals(lm, [r["prompt"] for r in rows], batch_size=batch_size, on_batch=bar.update)
        bar.close()
        tensors[name] = torch.from_numpy(arr).to(torch.float16)
        meta[name] = [r.get("key", r["id"]) for r in rows]
    path = work.path / "activations.safetensors"
    atomic_write_bytes(path, save(tensors, metadata={"ids": json.dumps(meta), "hook": "resid_post", "position": "last"}))
    if piece is not None:
        finish_stage(work, "capture", n_prompts=len(prompts))
    return path


def load_pct_activations(run: RunDir) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The captured last-token residuals of the closed and open prompts (and, in a cyclic run, of the closed prompts
    in every order: ``closed_orders``), with their ids."""
    from safetensors import safe_open

    path = run.path / "activations.safetensors"
    if not path.is_file():
        raise StageNotFinishedError(f"{path}: missing; run `wdprobe pct capture --out {run.path}`")
    with safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        arrays = {k: f.get_tensor(k).float().numpy() for k in CAPTURED if k in ids}
    return arrays, ids


def pct_content_probes(run: RunDir, *, folds: int = 5, seed: int = 0, n_perm: int = PERMUTATIONS) -> Path:
    """The closed prompts in every order of a cyclic run: where the answer's *content* becomes decodable (decide: the
    side, agree or disagree, of the order-averaged choice — one label under every order of a prompt, so the list
    position cannot carry it), where the answer *said in this order* is (its side), and the position control
    (whether the first-listed answer agrees: prompt text, no stance). Difference-of-means probes per layer, folds
    holding out whole propositions, each tested against its random-label control with the max over layers (content
    labels permuted per prompt, the others per row). Writes ``probes_content.csv`` and ``probes_content.json``."""
    arrays, ids = load_pct_activations(run)
    if "closed_orders" not in arrays:
        raise StageNotFinishedError(f"{run.path}: no closed prompts captured in every order; content probes need a run "
                                    "with --orders cyclic captured after its closed stage (`wdprobe pct run --stages "
                                    "capture,content_probes`)")
    closed = {r["id"]: r for r in read_csv(run.path / "closed.csv")}
    keys = [k.rsplit("|", 1) for k in ids["closed_orders"]]
    missing = sorted({i for i, _ in keys if i not in closed})
    if missing:
        raise StageNotFinishedError(f"{run.path}: {len(missing)} captured prompts have no closed-form result (first: "
                                    f"{missing[0]})")
    rows = [closed[i] for i, _ in keys]
    said = [int(np.argmax(json.loads(r["by_order"])[o])) for r, (_, o) in zip(rows, keys)]
    labels = {"content": agrees([int(r["choice"]) for r in rows]), "said": agrees(said),
              "first_listed_agrees": np.array([int(o[0]) >= 2 for _, o in keys], dtype=int)}
    groups = np.array([int(r["proposition"]) for r in rows])
    prompt_of = np.array([i for i, _ in keys])
    X = arrays["closed_orders"]
    out, summary = [], {"n_prompts": len(set(prompt_of)), "n_rows": len(rows), "n_propositions": len(set(groups))}
    for name, y in labels.items():
        if len(np.unique(y)) < 2:
            summary[name] = {"skipped": f"one side only ({int(y[0])})"}
            continue
        test = decode_layers(X, y, groups, folds=folds, n_perm=n_perm, seed=seed,
                             **({"units": prompt_of} if name == "content" else {"permute": "rows"}))
        out += test.to_rows(label=name)
        summary[name] = test.summary()
    atomic_write_text(run.path / "probes_content.json", json.dumps(summary, indent=2) + "\n")
    return run.write_table("probes_content.csv", out, list(out[0]) if out else ["label", "layer"])


def pct_probes(run: RunDir, *, kinds: Sequence[str] = ("diffmean", "logreg"), folds: int = 5, seed: int = 0,
               progress: bool = True) -> Path:
    """Probes across forms (closed = 'word', open = 'deed'), folds grouped by proposition, and the persona
    effect along the internal stance direction."""

    arrays, ids = load_pct_activations(run)
    closed = {r["id"]: r for r in read_csv(run.path / "closed.csv")}
    stances = {r["id"]: r for r in read_csv(run.path / "stances.csv")}
    c_index = {i: k for k, i in enumerate(ids["closed"])}
    o_index = {stances[i]["pair_id"]: (k, stances[i]) for k, i in enumerate(ids["open"])}
    pairs = [(c_index[i], o_index[closed[i]["pair_id"]][0], closed[i], o_index[closed[i]["pair_id"]][1])
             for i in ids["closed"] if closed[i]["pair_id"] in o_index]
    if len(pairs) < 2 * folds:
        raise InputError(f"{run.path}: {len(pairs)} closed/open pairs are too few for {folds}-fold probes")
    ci, oi = [p[0] for p in pairs], [p[1] for p in pairs]
    y_closed = agrees([int(p[2]["choice"]) for p in pairs])
    y_open = agrees([int(p[3]["stance"]) for p in pairs])
    groups = [int(p[2]["proposition"]) for p in pairs]
    res = probe_layers(arrays["closed"][ci], arrays["open"][oi], y_closed, y_open, kinds=kinds, folds=folds,
                       seed=seed, progress=progress, groups=groups)
    df = res.summary()
    df["metric"] = df["metric"].map(_rename_metric)
    df.to_csv(run.path / "probes.csv", index=False)
    res_frame = res.to_frame()
    res_frame["metric"] = res_frame["metric"].map(_rename_metric)
    res_frame.to_csv(run.path / "probes_folds.csv", index=False)
    order_control(arrays["closed"][ci], [p[2] for p in pairs], groups, kinds=kinds, folds=folds, seed=seed) \
        .to_csv(run.path / "probes_order_control.csv", index=False)
    effect = persona_effect(arrays["closed"], [closed[i] for i in ids["closed"]], seed=seed)
    effect.to_csv(run.path / "persona_effect.csv", index=False)
    return run.path / "probes.csv"


def order_control(X: np.ndarray, rows: Sequence[dict], groups: Sequence[int], *, kinds: Sequence[str], folds: int,
                  seed: int = 0):
    """Control for closed prompts: how well each layer decodes whether the *first-listed* option agrees
    (prompt text, not a stance), beside the closed answer's side, with the same proposition-grouped folds."""
    import pandas as pd

    first = np.array([int(r["order"][0]) >= 2 for r in rows], dtype=int)
    chosen = agrees([int(r["choice"]) for r in rows])
    splits = item_folds(len(rows), folds, groups)
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1]  # the inner CV keeps propositions together too
    out = []
    for layer in range(X.shape[1]):
        for kind in kinds:
            for label, y in (("closed->closed", chosen), ("first_listed_agrees", first)):
                accs = [accuracy(y[te], fit_probe(kind, seed, X[tr, layer], y[tr], group_ids[tr]).predict(X[te, layer]))
                        for tr, te in splits if len(np.unique(y[tr])) == 2]
                if accs:
                    out.append({"layer": layer, "probe": kind, "metric": label, "mean": float(np.mean(accs)),
                                "sem": float(np.std(accs) / np.sqrt(len(accs)))})
    return pd.DataFrame(out)


def _rename_metric(m: str) -> str:
    return m.replace("word", "closed").replace("deed", "open")


def persona_effect(X: np.ndarray, rows: Sequence[dict], *, base: str = "base", seed: int = 0, n_perm: int = 2000):
    """Per layer and persona: how far the persona moves closed prompts along the internal stance direction.

    Direction per layer: mean(agreeing answers) - mean(disagreeing answers) over the *base-case* prompts
    (unit vector). Shift: mean over shared (proposition, instruction) of projection(persona) -
    projection(base), in units of the base's agree-minus-disagree gap along that direction (1.0 = as far
    as a change of answer). Behavioural shift: mean change of P(agree). Sign-flip p-value per cell.
    """
    import pandas as pd

    key = [(r["persona"], int(r["proposition"]), int(r["instruction"])) for r in rows]
    index = {k: i for i, k in enumerate(key)}
    y = np.array([int(r["choice"]) >= 2 for r in rows])
    p_agree = np.array([float(r["p_agree"]) for r in rows])
    is_base = np.array([k[0] == base for k in key])
    out = []
    if is_base.sum() == 0 or len(set(y[is_base])) < 2:
        return pd.DataFrame(out)
    for layer in range(X.shape[1]):
        Xl = X[:, layer].astype(np.float64)
        d = Xl[is_base & y].mean(0) - Xl[is_base & ~y].mean(0)
        norm = np.linalg.norm(d)
        if norm == 0:
            continue
        proj = Xl @ (d / norm)
        gap = proj[is_base & y].mean() - proj[is_base & ~y].mean()
        for persona in sorted({k[0] for k in key} - {base}):
            pairs = [(index[k], index[(base, k[1], k[2])]) for k in key if k[0] == persona and (base, k[1], k[2]) in index]
            if not pairs:
                continue
            a, b = np.array(pairs).T
            diff = (proj[a] - proj[b]) / gap
            out.append({"layer": layer, "persona": persona, "shift": round(float(diff.mean()), 4),
                        "p": round(sign_flip_test(diff, n_perm=n_perm, seed=seed), 4),
                        "behaviour_shift": round(float((p_agree[a] - p_agree[b]).mean()), 4), "n_pairs": len(pairs)})
    return pd.DataFrame(out)


def pct_tropes(run: RunDir, embedder=None, *, threshold: float = 0.7, min_prompts: int = 10) -> Path:
    """Sentences of the open texts, embedded and clustered; tropes with counts by stance and persona."""

    texts = read_csv(run.path / "open.csv")
    prompt_of = {r["id"]: r["prompt"] for r in prompt_table(run)}
    stance = {r["id"]: int(r["stance"]) for r in read_csv(run.path / "stances.csv")}
    sentences, owners, echoes = [], [], 0
    for r in texts:
        # a sentence repeated inside one text counts once; the piece cut off by the token budget is dropped
        for s in dict.fromkeys(split_sentences(r["text"], complete_only=True)):
            if is_prompt_echo(s, prompt_of[r["id"]]):
                echoes += 1
                continue
            sentences.append(s)
            owners.append(r)
    embedder = embedder or SentenceTransformerEmbedder()
    emb = embedder.encode(sentences) if sentences else np.zeros((0, 1), np.float32)
    tropes = find_tropes(sentences, [o["id"] for o in owners], emb, threshold=threshold, min_prompts=min_prompts)
    rows, members = [], []
    for t in tropes:
        who = [owners[i] for i in t.members]
        st = [stance[o["id"]] for o in who]
        personas = sorted({o["persona"] for o in who})
        props = sorted({int(o["proposition"]) for o in who})
        rows.append({"trope": t.id, "label": t.label, "sentences": len(t.members), "prompts": t.n_prompts,
                     "propositions": len(props), "personas": len(personas), "cohesion": t.cohesion,
                     **{f"n_{a.lower().replace(' ', '_')}": st.count(k) for k, a in enumerate(ANSWERS)},
                     "agree_share": round(float(np.mean([s >= 2 for s in st])), 3),
                     "top_personas": "; ".join(f"{p} ({n})" for p, n in _top([o["persona"] for o in who])),
                     "top_propositions": "; ".join(f"p{p:02d} ({n})" for p, n in _top([int(o["proposition"]) for o in who]))})
        members += [{"trope": t.id, "id": owners[i]["id"], "persona": owners[i]["persona"],
                     "proposition": owners[i]["proposition"], "stance": stance[owners[i]["id"]], "sentence": sentences[i]}
                    for i in t.members]
    cols = ["trope", "label", "sentences", "prompts", "propositions", "personas", "cohesion", "n_strongly_disagree",
            "n_disagree", "n_agree", "n_strongly_agree", "agree_share", "top_personas", "top_propositions"]
    run.write_table("tropes.csv", rows, cols)
    run.write_table("trope_sentences.csv", members, ["trope", "id", "persona", "proposition", "stance", "sentence"])

    atomic_write_json(run.path / "tropes.json", {"sentences": len(sentences), "texts": len(texts), "tropes": len(rows),
                                                  "dropped_prompt_echoes": echoes,
                                                  "embedder": getattr(embedder, "name", type(embedder).__name__),
                                                  "threshold": threshold, "min_prompts": min_prompts})
    return run.path / "tropes.csv"


def _top(values: Sequence, k: int = 3) -> list[tuple[Any, int]]:
    from collections import Counter

    return Counter(values).most_common(k)
