"""Behavioural scoring: which option letter a model puts its next-token mass on, word vs deed.

One forward pass per prompt, batched with left padding, and logits computed *only at the last
position*: a hook on ``unembed.hook_in`` slices the residual to the final token before the
unembedding, which for Gemma's 262k vocabulary is most of a plain forward's cost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from wdprobe.core.forward import (
    default_batch_tokens,
    prompt_token_ids,
)
from wdprobe.core.generation import plain_twin
from wdprobe.core.packing import TokenRead, Tree, packable, tree_of, tree_readout
from wdprobe.core.vocab_reads import VocabularyReads
from wdprobe.data.prompts import Demo, cot_prompt, normal_prompt, wrap
from wdprobe.data.wdct import LETTERS, Presentation
from wdprobe.errors import InputError
from wdprobe.scoring.metrics import pcs

LETTER_VARIANTS = {"space": " {}", "bare": "{}"}


@dataclass(frozen=True)
class LetterTokens:
    """The token ids a model uses for answer letters after ``Answer:``, decided per tokenizer/model."""

    variant: str  # key of LETTER_VARIANTS
    ids: tuple[int, ...]  # token id of letters A, B, C, ... in order
    calibration: dict[str, float] = field(default_factory=dict)  # mean next-token mass of each variant

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LetterTokens":
        return cls(d["variant"], tuple(d["ids"]), dict(d.get("calibration", {})))


def letter_candidates(tokenizer, n_letters: int) -> dict[str, tuple[int, ...]]:
    """Each variant (" A" or "A") whose letters are all single tokens in this tokenizer."""
    out = {}
    for name, fmt in LETTER_VARIANTS.items():
        ids = [tokenizer.encode(fmt.format(ch), add_special_tokens=False) for ch in LETTERS[:n_letters]]
        if all(len(t) == 1 for t in ids) and len({t[0] for t in ids}) == n_letters:
            out[name] = tuple(t[0] for t in ids)
    if not out:
        raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no single-token form of the letters "
                         f"{LETTERS[:n_letters]!r} (tried ' A' and 'A')")
    return out


@torch.no_grad()
def next_token_logprobs(lm, prompts: Sequence[str], token_ids: Sequence[int], *, batch_size: int = 32,
                        max_batch_tokens: int | None | str = "auto",
                        on_batch: Callable[[int], None] | None = None,
                        groups: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Full-vocabulary log-probabilities of ``token_ids`` as the next token, ``[len(prompts), len(token_ids)]``.

    ``groups`` (a partition of the prompt indices, e.g. one item's prompts in every option order) lets prompts
    that begin alike run their common prefix once (:mod:`wdprobe.core.packing`); each prompt still gets what its
    own forward gives. Without groups, or on a model that cannot be packed, prompts run as left-padded rows."""
    out = np.zeros((len(prompts), len(token_ids)), dtype=np.float64)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    rest = list(range(len(prompts)))
    if groups is not None:
        trees = prompt_trees(lm.tokenizer, prompts, groups)
        packed = packable(lm, trees)
        if packed:
            reads = [TokenRead(j, k, -1, tuple(token_ids)) for j, t in enumerate(packed) for k in range(len(groups[t]))]
            lps, _ = tree_readout(lm, [trees[t] for t in packed], reads, max_batch_tokens=budget, max_rows=batch_size,
                                  on_batch=on_batch)
            out[[i for t in packed for i in groups[t]]] = np.stack(lps)
            done = set(packed)
            rest = [i for t, g in enumerate(groups) if t not in done for i in g]
    if rest and lm.tokenizer.padding_side != "left":
        raise InputError("the tokenizer must pad on the left so that position -1 is every prompt's last token")
    vocab = VocabularyReads(lm)
    for idx in lm.batches([prompts[i] for i in rest], batch_size, budget):
        rows = [rest[j] for j in idx]
        enc = lm.encode([prompts[i] for i in rows])
        read = vocab.hook(lambda x: x[:, -1], [(i, token_ids) for i in rows])  # left-padded: -1 is every last token
        vocab.after_forward(lm.bridge.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"],
                                                     fwd_hooks=[read]))
        if on_batch:
            on_batch(len(rows))
    vocab.flush()
    for i in rest:
        out[i] = vocab.logprobs[i]
    return out


def prompt_trees(tokenizer, prompts: Sequence[str], groups: Sequence[Sequence[int]]) -> list[Tree]:
    """One shared-prefix tree per group of prompts; the groups must cover every prompt exactly once."""
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(len(prompts))):
        raise InputError(f"prompt groups must cover the {len(prompts)} prompts exactly once")
    toks = prompt_token_ids(tokenizer, prompts)
    return [tree_of([toks[i] for i in g]) for g in groups]


def resolve_letter_tokens(lm, prompts: Sequence[str], n_letters: int = 4, *, batch_size: int = 32) -> LetterTokens:
    """Pick " A" or "A" by which variant actually carries more next-token mass on these prompts."""
    cands = letter_candidates(lm.tokenizer, n_letters)
    names = list(cands)
    flat = [i for n in names for i in cands[n]]
    lp = next_token_logprobs(lm, prompts, flat, batch_size=batch_size)
    masses = {}
    for j, n in enumerate(names):
        block = lp[:, j * n_letters: (j + 1) * n_letters]
        masses[n] = float(np.exp(block[:, :2]).sum(axis=1).mean())  # A and B exist on every item
    best = max(masses, key=masses.get)
    return LetterTokens(best, cands[best], masses)


# ---- items ---------------------------------------------------------------------------------------

def build_prompts(pres: Sequence[Presentation], *, setting: str = "normal", tokenizer=None, use_chat: bool = False,
                  demos: Sequence[Demo] | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Word and deed prompts for each presentation. In the CoT setting the deed prompt is the 3-shot
    query ending in ``Belief:``; it needs :func:`complete_cot` before scoring (as upstream, the word
    question keeps the normal prompt)."""
    if setting not in ("normal", "cot"):
        raise InputError(f"setting must be 'normal' or 'cot', not {setting!r}")
    word = [wrap(normal_prompt(p, "word"), tokenizer, use_chat) for p in pres]
    if setting == "normal":
        deed = [wrap(normal_prompt(p, "deed"), tokenizer, use_chat) for p in pres]
    else:
        if not demos:
            raise InputError("the cot setting needs demonstrations: pass --demos PATH/TO/demo.csv")
        deed = [wrap(cot_prompt(p, demos, seed), tokenizer, use_chat) for p in pres]
    return {"word": word, "deed": deed}


@torch.no_grad()
def complete_cot(lm, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 8) -> list[str]:
    """Greedily generate each CoT belief, cut it at 'Answer:' and end the prompt there, ready for the letter."""

    out = [""] * len(prompts)
    model = plain_twin(lm)  # the bridge's own HF model ignores its KV cache (see wdprobe.generation)
    for idx in lm.batches(prompts, batch_size):
        batch = [prompts[i] for i in idx]
        enc = lm.encode(batch)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=lm.tokenizer.pad_token_id)
        texts = lm.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            belief = t.split("Answer:")[0].rstrip()
            out[i] = prompts[i] + belief + "\nAnswer:"
    return out


def item_row(pres: Presentation, word_lp: np.ndarray, deed_lp: np.ndarray) -> dict[str, Any]:
    """Per-item result in canonical option space from letter log-probs (letters A.. in presented order)."""
    it = pres.item
    k = it.n_options
    row: dict[str, Any] = {"id": it.id, "domain": it.domain, "n_options": k,
                           "word_order": "".join(map(str, pres.word_order)),
                           "deed_order": "".join(map(str, pres.deed_order))}
    dists = {}
    for form, lp in (("word", word_lp[:k]), ("deed", deed_lp[:k])):
        probs = np.exp(lp)
        letter_p = probs / probs.sum()
        canon = np.zeros(k)
        for j, c in enumerate(pres.order(form)):
            canon[c] = letter_p[j]
        dists[form] = canon
        choice = int(np.argmax(canon))
        row[f"{form}_choice"] = choice
        row[f"{form}_letter"] = pres.letter_of(form, choice)
        row[f"{form}_letter_mass"] = float(probs.sum())
        for c in range(4):
            row[f"p_{form}_{c}"] = float(canon[c]) if c < k else ""
    row["consistent"] = int(row["word_choice"] == row["deed_choice"])
    row["pcs"] = float(pcs(dists["word"], dists["deed"]))
    row["correct"] = "" if it.correct is None else it.correct
    for form in ("word", "deed"):
        row[f"{form}_is_correct"] = "" if it.correct is None else int(row[f"{form}_choice"] == it.correct)
    return row
