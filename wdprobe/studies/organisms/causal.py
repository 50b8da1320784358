"""Is a stance causal? Add one direction to the residual after one block and count the held-out choices it moves, in
both forms, with the options' probability beside them.

An organism's stance is *decodable* when a probe reads it; it is *causal* when moving its representation moves the
choice. Issue 31 asks the sincere organism for the second, in word and deed prompts alike, on items it was not trained
on, with the answer format kept (a shift that moves choices only by wrecking the options' probability shows nothing).
So each condition adds ``multiple x |residual|`` along a direction after block ``L`` at every position but the first
(the attention sink), scores every option as its own sequence (right-padded batches: nothing the vector reaches moves), and reports, per
form and scoring (per-token mean and sum, side by side), the share of items on the aimed option, the share of the
others it moved, and the median ratio of the options' total probability to the unshifted one. A random direction of
the same size is the control: the stance direction must move more than it, at comparable option mass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.scoring.stats import wilson_interval
from wdprobe.studies.organisms.edit import decoder_block, with_continuation

FORMS = ("word", "deed")


@contextmanager
def added_after_block(model: torch.nn.Module, layer: int, vector: torch.Tensor | None) -> Iterator[None]:
    """Add ``vector`` ([d_model]) to block ``layer``'s output at every position but the first, for the ``with`` body
    (nothing when ``vector`` is None). The hook is removed on exit, errors included."""

    def add(module, inputs, output):
        if vector is None:
            return output
        h = (output[0] if isinstance(output, tuple) else output).clone()
        h[:, 1:] += vector.to(device=h.device, dtype=h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = decoder_block(model, layer).register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def option_logprobs(lm, items: Sequence[Item], form: str, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per two-option item and option, the cloze continuation's summed log-probability and its token count
    ([n, 2] each). Each (prompt, option) is its own sequence; sequences are batched *right*-padded, so every real
    token sits where it would alone (causal attention never reads the padding that follows it) and a vector added
    "at every position but the first" reaches exactly the positions it would alone."""
    model, tok = lm.hf_model, lm.tokenizer
    seqs, where = [], []
    for n, it in enumerate(items):
        if it.n_options != 2:
            raise InputError(f"item {it.id}: {it.n_options} options (the stance check takes two-option items)")
        prompt = cloze_prompt(it, form)
        start = len(tok(prompt)["input_ids"])
        for j, option in enumerate(it.options(form)):
            seqs.append(with_continuation(tok, prompt, option)[0])
            where.append((n, j, start))
    total, n_tok = np.zeros((len(items), 2)), np.zeros((len(items), 2))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    decoder, unembed = model.get_decoder(), model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    order = sorted(range(len(seqs)), key=lambda r: len(seqs[r]))  # similar lengths together: little padding
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        width = max(len(seqs[r]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(seqs[r])], mask[i, :len(seqs[r])] = seqs[r], 1
        # the decoder's final (normed) residual; the vocabulary projection only where option tokens are predicted
        hidden = decoder(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
        for i, r in enumerate(rows):
            n, j, start = where[r]
            end = len(seqs[r])
            logits = unembed(hidden[i, start - 1:end - 1])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits.float(), -1)
            total[n, j] = float(logp.gather(1, seqs[r][start:, None].to(logp.device)).sum())
            n_tok[n, j] = end - start
    return total, n_tok


@torch.no_grad()
def decision_residual_norm(lm, items: Sequence[Item], layer: int, forms: Sequence[str] = FORMS) -> float:
    """Median norm of the residual after block ``layer`` at the last prompt token (the scale shifts are given in)."""
    model, tok = lm.hf_model, lm.tokenizer
    norms = []
    for it in items:
        for form in forms:
            ids = tok(cloze_prompt(it, form), return_tensors="pt")["input_ids"].to(model.device)
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)  # only the residual is read
            norms.append(float(out.hidden_states[layer + 1][0, -1].norm()))
    return float(np.median(norms))


def _summary(total: np.ndarray, n_tok: np.ndarray, clean_total: np.ndarray, clean_choice: dict[str, np.ndarray],
             aims: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for scoring, score in (("mean", total / n_tok), ("sum", total)):
        choice = score.argmax(1)
        away = clean_choice[scoring] != aims
        out[f"on_aim_{scoring}"] = float((choice == aims).mean())
        out[f"moved_{scoring}"] = float((choice[away] == aims[away]).mean()) if away.any() else float("nan")
    mass = np.logaddexp(total[:, 0], total[:, 1]) - np.logaddexp(clean_total[:, 0], clean_total[:, 1])
    out["option_mass_ratio_median"] = float(np.exp(np.median(mass)))
    return out


def stance_shifts(lm, items: Sequence[Item], aims: Sequence[int], directions: dict[str, torch.Tensor], layer: int,
                  multiples: Sequence[float], *, forms: Sequence[str] = FORMS, scale: float | None = None) -> list[dict]:
    """Shift the residual after block ``layer`` along each of ``directions`` (name -> unit vector) by ``multiple x
    scale`` and read the choices of ``items`` in ``forms``. ``aims``: per item, the canonical option the shift is
    meant to move it to. ``scale``: the shift's unit (default: :func:`decision_residual_norm` on ``items``). One row
    per (direction, multiple, form), the unshifted reading first (``direction`` ``none``, multiple 0)."""
    aims_arr = np.asarray(aims)
    if len(aims_arr) != len(items):
        raise InputError(f"{len(aims_arr)} aims for {len(items)} items")
    if not set(np.unique(aims_arr)) <= {0, 1}:
        raise InputError("aims must be canonical options of two-option items (0 or 1)")
    for name, v in directions.items():
        if v.shape != (lm.d_model,):
            raise InputError(f"direction {name!r} has shape {tuple(v.shape)}, not ({lm.d_model},) for {lm.name}")
    scale = decision_residual_norm(lm, items, layer, forms) if scale is None else scale
    rows = []
    clean = {form: option_logprobs(lm, items, form) for form in forms}
    clean_choice = {form: {"mean": (t / n).argmax(1), "sum": t.argmax(1)} for form, (t, n) in clean.items()}
    for form, (t, n) in clean.items():
        rows.append({"direction": "none", "layer": layer, "multiple": 0.0, "shift_norm": 0.0, "form": form,
                     "n_items": len(items), **_summary(t, n, t, clean_choice[form], aims_arr)})
    for name, v in directions.items():
        unit = v.float() / v.float().norm().clamp_min(1e-12)
        for m in multiples:
            with added_after_block(lm.hf_model, layer, unit * (m * scale)):
                for form in forms:
                    t, n = option_logprobs(lm, items, form)
                    rows.append({"direction": name, "layer": layer, "multiple": float(m), "shift_norm": m * scale,
                                 "form": form, "n_items": len(items),
                                 **_summary(t, n, clean[form][0], clean_choice[form], aims_arr)})
    return rows


MOVED_AT_LEAST = 0.5  # a causal stance moves at least this share of the items on it, by the mean and by the sum ...
MASS_AT_LEAST = 0.5  # ... keeping at least this median share of the options' probability ...
# ... and its moved share's Wilson lower bound clears the random direction's upper bound (``balanced-rules.md``)


def causal_verdict(rows: Sequence[dict], direction: str = "against stance", control: str = "random") -> dict[str, dict]:
    """Per form, whether :func:`stance_shifts` rows show the stance causal (the rule of
    ``reports/organisms/edited/balanced-rules.md``): at some block and multiple the ``direction`` shift moves at least
    ``MOVED_AT_LEAST`` of the items on the stance by the mean and by the sum, keeps the options' median probability at
    least ``MASS_AT_LEAST`` of the unshifted one, and its moved share's Wilson 95% lower bound (mean scoring) is above
    the upper bound of the ``control`` direction's at the same block and multiple. Reports every condition that
    passes and the best one (largest lower bound) either way."""
    n_on = {}
    for r in rows:  # how many items were on the stance before any shift, per block and form (the moved share's n)
        if r["direction"] == "none":
            n_on[(r["layer"], r["form"])] = round(r["n_items"] * (1 - r["on_aim_mean"]))
    control_of = {(r["layer"], r["multiple"], r["form"]): r for r in rows if r["direction"] == control}
    out: dict[str, dict] = {}
    for form in sorted({r["form"] for r in rows}):
        passing, best = [], None
        for r in (r for r in rows if r["direction"] == direction and r["form"] == form):
            n = n_on.get((r["layer"], form), 0)
            c = control_of.get((r["layer"], r["multiple"], form))
            if n == 0 or c is None or not np.isfinite(r["moved_mean"]):
                continue
            low = float(wilson_interval(r["moved_mean"], n)[0])
            c_high = float(wilson_interval(c["moved_mean"], n)[1]) if np.isfinite(c["moved_mean"]) else 1.0
            cell = {"layer": r["layer"], "multiple": r["multiple"], "n_on_stance": n, "moved_mean": r["moved_mean"],
                    "moved_sum": r["moved_sum"], "moved_low": round(low, 4), "random_moved": c["moved_mean"],
                    "random_high": round(c_high, 4), "option_mass_ratio_median": r["option_mass_ratio_median"]}
            ok = (r["moved_mean"] >= MOVED_AT_LEAST and r["moved_sum"] >= MOVED_AT_LEAST
                  and r["option_mass_ratio_median"] >= MASS_AT_LEAST and low > c_high)
            if ok:
                passing.append(cell)
            if best is None or low > best["moved_low"]:
                best = cell
        out[form] = {"causal": bool(passing), "passing": passing, "best": best}
    return out
