"""Activation capture: residual stream at chosen layers and positions, streamed to disk in shards.

Only the hooks asked for are registered, and each hook keeps only the positions asked for, so a
batch never holds more than ``batch x layers x positions x d_model`` floats of activations; the
unembedding is skipped (the forward stops after the last layer needed). Shards are written
atomically per chunk of prompts, so an interrupted capture resumes where it stopped.

Position kinds (computed per prompt from token offsets, never assumed):
  ``last``            the final prompt token (where the answer letter is predicted)
  ``question_mean``   mean over the tokens of the question (stem and options, as shown)
  ``option{c}_last``  last token of canonical option c's text (c = 0..3; zeros where an item has fewer)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from wdprobe.core.model import load_for_run
from wdprobe.errors import (
    CaptureSpecError,
    InputError,
    IntegrityError,
    MergeError,
    NonFiniteError,
    StageNotFinishedError,
)
from wdprobe.methods.capture import (
    STORAGE_DTYPES,
    CaptureSpec,
    capture_batch,
)
from wdprobe.runs.rundir import RunDir, read_checked, write_checked
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import finish_stage, scored_entry
from wdprobe.scoring.formats import ANSWER_FORMATS
from wdprobe.stages.score import scored_run_prompts
from wdprobe.stages.stash import drop_stash, read_stash

# ---- the capture stage: a scored run directory -> activation shards + metadata ---------------------

STAGE = "capture"
META_COLUMNS = ["prompt_index", "id", "domain", "form", "format", "n_options", "order", "shown", "in_content", "choice",
                "letter", "consistent", "content_choice", "content_consistent", "correct", "shard", "row"]


def _shard_path(run_dir: Path, n: int) -> Path:
    return Path(run_dir) / "capture" / f"shard-{n:05d}.safetensors"


def capture_wdct(run_dir: str | Path, *, layers: str | Sequence[int] | None = None, hooks: Sequence[str] = ("resid_post",),
                 positions: Sequence[str] = ("last", "question_mean"), storage_dtype: str = "float32",
                 batch_size: int = 16, chunk_prompts: int = 128, progress: bool = True, lm=None,
                 shard: str | None = None) -> Path:
    """Capture activations for every prompt of a scored run (``wdprobe score``) into that run directory.

    Prompts are rebuilt exactly as scored (same items, seed, setting and chat template): every letter-format
    prompt of the run, i.e. each item's word prompts then its deed prompts, one per option order the run was
    scored in (``prompt_index`` numbers them in that order; ``shown`` marks the paper's seeded order).
    ``shard`` (``"i/n"``): only the prompts of that shard's items, into ``RUN/shards/capture/i-of-n/``;
    ``wdprobe merge RUN`` then assembles ``RUN/capture`` as an unsharded capture would be.
    """

    from safetensors.torch import save
    from tqdm.auto import tqdm

    run = RunDir(run_dir)
    manifest = run.read_manifest()
    cfg = scored_entry(run)["config"]
    if lm is None:
        lm = load_for_run(manifest)
    if lm.revision != cfg["model_revision"]:
        raise InputError(f"{run.path} was scored with model revision {cfg['model_revision']}, but {lm.name} is {lm.revision}")
    spec = CaptureSpec.parse(layers, lm.n_layers, hooks, positions, storage_dtype)
    part = Shard.parse(shard)
    scored_run = run
    if part:
        run = RunDir(shard_dir(scored_run.path, STAGE, part))
    run.check_or_start(STAGE, {"spec": spec.to_json(), "model_revision": lm.revision, **({"shard": str(part)} if part else {})})

    all_prompts, meta, spans, n_opts = [], [], [], []
    for k, sp in enumerate(scored_run_prompts(scored_run.path, lm.tokenizer)):
        item = sp.item
        all_prompts.append(sp.text)
        spans.append(sp.spans())
        n_opts.append(sp.n_option_lines)
        meta.append({"prompt_index": k, "id": sp.view.item.id, "domain": sp.view.item.domain, "form": sp.form,
                     "format": sp.format, "n_options": sp.view.item.n_options, "order": sp.order_text,
                     "shown": int(sp.shown), "in_content": int(sp.in_content), "choice": sp.choice, "letter": sp.letter,
                     "consistent": sp.consistent, "content_choice": sp.content_choice,
                     "content_consistent": sp.content_consistent,
                     "correct": "" if item["correct"] is None else item["correct"]})

    done = {int(r["prompt_index"]) for r in run.read_parts(STAGE)}
    todo = [k for k in range(len(all_prompts)) if k not in done and (part is None or part.holds(meta[k]["id"]))]
    bar = tqdm(total=len(done) + len(todo), initial=len(done), unit="prompt", desc="capture", disable=not progress)
    store = STORAGE_DTYPES[spec.storage_dtype]
    # prompts the scoring pass already read for this spec (``wdprobe run``: one forward for both stages)
    stashed = read_stash(scored_run, spec, lm.revision) if todo else {}
    for s in range(0, len(todo), chunk_prompts):
        chunk = todo[s: s + chunk_prompts]
        acts: dict[str, torch.Tensor] = {}
        have = [k for k in chunk if _key(meta[k]) in stashed]
        for name in (f"{h}/{p}" for h in spec.hooks for p in spec.positions):
            if have:
                acts[name] = torch.from_numpy(np.stack([stashed[_key(meta[k])][name] for k in have]))
        order_in_chunk: list[int] = list(have)
        bar.update(len(have))
        need = [k for k in chunk if _key(meta[k]) not in stashed]
        for idx in lm.batches([all_prompts[k] for k in need], batch_size):
            ks = [need[j] for j in idx]
            got = capture_batch(lm, [all_prompts[k] for k in ks], [spans[k] for k in ks], [n_opts[k] for k in ks], spec)
            for name, t in got.items():
                acts[name] = torch.cat([acts[name], t.cpu()]) if name in acts else t.cpu()
            order_in_chunk.extend(ks)
            bar.update(len(ks))
        n_part = run.next_part(STAGE)  # the CSV part written below gets the same number: never one in use
        for name, t in acts.items():  # a NaN or infinite activation is never saved as data
            finite_or_refused(t, name, [meta[k] for k in order_in_chunk], spec.layers)
        tensors = {name: _stored(name, t, store) for name, t in acts.items()}
        tensors["prompt_index"] = torch.tensor(order_in_chunk, dtype=torch.int64)
        write_checked(_shard_path(run.path, n_part), save(tensors, metadata={"layers": ",".join(map(str, spec.layers))}))
        run.write_part(STAGE, [dict(meta[k], shard=n_part, row=r) for r, k in enumerate(order_in_chunk)], META_COLUMNS)
    bar.close()
    finish_stage(run, STAGE, n_prompts=len(done) + len(todo), layers=list(spec.layers))
    if part is None:
        drop_stash(scored_run.path)
    return run.path


def _key(meta_row: dict[str, Any]) -> tuple[str, str, str, str]:
    """A prompt's key in the scoring stash: item id, form, format, order."""
    return (meta_row["id"], meta_row["form"], meta_row["format"], meta_row["order"])


def merge_capture(run_dir: str | Path) -> dict[str, Any]:
    """Assemble ``RUN/capture`` from ``RUN/shards/capture/*``: tensor files renumbered, metadata joined
    (``load_activations`` then returns what an unsharded capture gives)."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, STAGE)
    run.reset_stage(STAGE, outputs=["capture"])
    (run.path / "capture").mkdir(parents=True, exist_ok=True)
    rows, n_out, seen = [], 0, set()
    for d, _ in entries:
        remap: dict[int, int] = {}
        for r in RunDir(d).read_parts(STAGE):  # each part checked against its recorded checksum
            if r["prompt_index"] in seen:
                raise MergeError(f"prompt {r['prompt_index']} (item {r['id']}) captured by two shards")
            seen.add(r["prompt_index"])
            old = int(r["shard"])
            if old not in remap:
                remap[old] = n_out
                # verified against its checksum file, written again with a fresh one
                write_checked(_shard_path(run.path, n_out), read_checked(_shard_path(d, old)))
                n_out += 1
            rows.append(dict(r, shard=remap[old]))
    first = entries[0][1]
    config = {k: v for k, v in first["config"].items() if k != "shard"}
    run.write_part(STAGE, rows, META_COLUMNS, settings=config)
    manifest = run.read_manifest()
    manifest.setdefault("stages", {})[STAGE] = {"config": config, "complete": True, "n_prompts": len(rows),
                                               "layers": first.get("layers"),
                                               "merged_from": [str(d.relative_to(run.path)) for d, _ in entries]}
    run.write_manifest(manifest)
    return {"n_prompts": len(rows), "tensor_files": n_out}


def finite_or_refused(t: torch.Tensor, name: str, rows: Sequence[Mapping[str, Any]], layers: Sequence[int]) -> None:
    """Refuse activations ``[prompt, layer, d_model]`` holding NaN or infinity, naming the first prompt's item, form
    and the layer (a broken model, e.g. float16 overflow, would otherwise be probed as if it had read the prompt)."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        r, layer = (int(v) for v in bad.nonzero()[0][:2])
        row = rows[r]
        raise NonFiniteError(f"capture {name}: item {row['id']!r} ({row['form']} form) has a NaN or infinite activation "
                             f"at layer {layers[layer]}; nothing of this chunk is saved. A float16 model can overflow: "
                             "load it with --dtype float32 or bfloat16")


def _stored(name: str, t: torch.Tensor, store: torch.dtype) -> torch.Tensor:
    """``t`` in the storage dtype, refusing values that dtype cannot hold (float16 tops out at 65,504)."""
    if store.is_floating_point and t.is_floating_point():
        peak = float(t.abs().max()) if t.numel() else 0.0
        limit = torch.finfo(store).max
        if peak > limit:
            raise InputError(f"capture {name}: a value of {peak:,.0f} overflows {str(store).replace('torch.', '')} "
                             f"(max {limit:,.0f}); use --storage-dtype bfloat16 or float32")
    return t.to(store).contiguous()


@dataclass
class Activations:
    """Activations of one hook kind and position kind: ``array[prompt, layer_slot, d_model]`` plus metadata."""

    array: np.ndarray
    meta: Any  # pandas.DataFrame, one row per prompt, in prompt_index order
    layers: tuple[int, ...]
    hook: str
    position: str

    def form(self, form: str) -> tuple[np.ndarray, Any]:
        keep = (self.meta["form"] == form).to_numpy()
        return self.array[keep], self.meta[keep].reset_index(drop=True)


def load_activations(run_dir: str | Path, hook: str = "resid_post", position: str = "last", *,
                     orders: str = "shown", format: str = "letter", allow_partial: bool = False) -> Activations:
    """Read captured activations back as one ``(n_prompts, n_layers, d_model)`` float32 array.

    ``orders="shown"`` keeps the paper's one seeded order per (item, form) — what the classic analyses pair word
    with deed on; ``orders="all"`` every captured order (content probes, decide vs bind). ``format="cloze"``
    reads the cloze prompts instead (one per item and form, no options, no letters; ``orders`` does not apply):
    ``choice`` and ``content_choice`` are then the cloze choice, ``consistent`` cloze consistency.

    An unfinished capture is refused by name; ``allow_partial=True`` reads the prompts captured so far
    and warns how many that is."""
    import pandas as pd
    from safetensors import SafetensorError
    from safetensors.torch import load

    run = RunDir(run_dir)
    st = run.stage_entry(STAGE)
    if not st:
        raise StageNotFinishedError(f"{run.path} has no capture: run `wdprobe capture --run {run.path}` first")
    if not st.get("complete") and not allow_partial:
        raise StageNotFinishedError(f"{run.path}: the capture did not finish; rerun `wdprobe capture --run {run.path}` "
                                    "(it resumes), or pass allow_partial=True to read the prompts captured so far")
    spec = st["config"]["spec"]
    name = f"{hook}/{position}"
    if hook not in spec["hooks"] or position not in spec["positions"]:
        raise CaptureSpecError(f"{run.path} captured hooks {spec['hooks']} at positions {spec['positions']}, not {name}")
    if orders not in ("shown", "all"):
        raise InputError(f"orders must be 'shown' or 'all', not {orders!r}")
    if format not in ANSWER_FORMATS:
        raise InputError(f"format must be one of {tuple(ANSWER_FORMATS)}, not {format!r}")
    meta = pd.DataFrame(run.read_parts(STAGE))
    if "shown" not in meta:  # captured before orders existed: one shown prompt per (item, form)
        meta["shown"], meta["in_content"], meta["content_choice"], meta["content_consistent"] = 1, 0, "", ""
    if "format" not in meta:  # captured before the cloze format: letter prompts only
        meta["format"] = "letter"
    meta["format"] = meta["format"].fillna("letter").replace("", "letter")
    for c in ("prompt_index", "n_options", "choice", "consistent", "shard", "row", "shown", "in_content"):
        meta[c] = meta[c].astype(int)
    meta = meta.sort_values("prompt_index").reset_index(drop=True)
    chunks, indices = [], []
    for n in sorted(meta["shard"].unique()):
        path = _shard_path(run.path, int(n))
        try:
            t = load(read_checked(path))
        except (SafetensorError, ValueError, OSError) as exc:  # truncated or overwritten without a checksum
            raise IntegrityError(f"{path}: not a readable safetensors file ({exc}); delete {run.path / 'capture'} and "
                                 f"{run.parts_dir(STAGE)} and rerun `wdprobe capture --run {run.path}`") from None
        chunks.append(t[name].float().numpy())  # bfloat16 has no numpy dtype: widen via torch
        indices.append(t["prompt_index"].numpy())
    arr = np.concatenate(chunks)
    idx = np.concatenate(indices)
    pos = {int(k): i for i, k in enumerate(idx)}
    meta = meta[meta["format"] == format].reset_index(drop=True)
    if not len(meta):
        raise CaptureSpecError(f"{run.path} captured no {format} prompts: score the run with --format "
                               f"{format} (or both) and capture again")
    if orders == "shown" and ANSWER_FORMATS[format].ordered:
        meta = meta[meta["shown"] == 1].reset_index(drop=True)
    arr = arr[[pos[int(k)] for k in meta["prompt_index"]]]
    if not st.get("complete"):
        warnings.warn(f"{run.path}: reading an unfinished capture ({len(meta)} prompts so far)", stacklevel=2)
    return Activations(arr, meta, tuple(spec["layers"]), hook, position)


def paired_forms(acts) -> tuple[np.ndarray, np.ndarray, "object"]:
    """Word and deed arrays aligned by item (two-option items only), plus the per-item metadata."""
    meta = acts.meta
    two = (meta["n_options"] == 2).to_numpy()
    w = two & (meta["form"] == "word").to_numpy()
    d = two & (meta["form"] == "deed").to_numpy()
    mw, md = meta[w].reset_index(drop=True), meta[d].reset_index(drop=True)
    if not (mw["id"].to_numpy() == md["id"].to_numpy()).all():
        raise InputError("word and deed prompts are not paired item by item in the capture metadata")
    items = mw[["id", "domain", "consistent", "correct"]].copy()
    items["y_word"], items["y_deed"] = mw["choice"].to_numpy(), md["choice"].to_numpy()
    items["letter_word"] = (mw["letter"] != "A").astype(int).to_numpy()
    items["letter_deed"] = (md["letter"] != "A").astype(int).to_numpy()
    return acts.array[w], acts.array[d], items


run_capture = capture_wdct  # the stage's name in the registry and the CLI: every stage function is run_<stage>
