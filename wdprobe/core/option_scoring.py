"""Log-likelihood of whole option texts ("Strongly agree") after a prompt, sharing forwards between options.

An option of tokens t_0..t_{k-1} needs next-token distributions after the prompt and after each of
t_0..t_{k-2}. Options whose prefixes lie on one token path share a forward: one sequence
``prompt + path`` yields the distributions at every position of the path. For the four PCT answers and
Gemma's tokenizer (" Strongly"+" agree", " Strongly"+" disagree", " Dis"+"agree", " Agree") that is two
sequences per prompt instead of four, and the vocabulary projection runs only on the path positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from wdprobe.core.forward import (
    LAST_POSITION_HOOK,
    default_batch_tokens,
    length_batches,
)
from wdprobe.core.packing import TokenRead, Tree, packable, tree_of, tree_readout
from wdprobe.errors import InputError, PromptTooLongError


@dataclass(frozen=True)
class OptionPaths:
    """Token ids per option, and the token paths (continuations) whose forwards cover them."""

    options: tuple[tuple[int, ...], ...]
    paths: tuple[tuple[int, ...], ...]
    path_of: tuple[int, ...]  # which path covers each option


def option_paths(token_ids: Sequence[Sequence[int]]) -> OptionPaths:
    """Fewest paths (greedy, longest options first) such that each option minus its last token prefixes one."""
    options = tuple(tuple(t) for t in token_ids)
    if any(len(t) == 0 for t in options):
        raise InputError("an option encodes to no tokens")
    paths: list[tuple[int, ...]] = []
    for opt in sorted(options, key=len, reverse=True):
        need = opt[:-1]
        if not any(p[: len(need)] == need for p in paths):
            paths.append(need)
    path_of = tuple(next(j for j, p in enumerate(paths) if p[: len(o) - 1] == o[:-1]) for o in options)
    return OptionPaths(options, tuple(paths), path_of)


def encode_options(tokenizer, options: Sequence[str], prefix: str = " ") -> list[list[int]]:
    """Token ids of each option as it follows the prompt (``prefix`` + text, no special tokens)."""
    return [tokenizer.encode(prefix + o, add_special_tokens=False) for o in options]


def n_sequences(tokenizer, options: Sequence[str], prefix: str = " ") -> int:
    """Forwards per prompt that :func:`option_logprobs` needs for these options."""
    return len(option_paths(encode_options(tokenizer, options, prefix)).paths)


def _keep_last(m: int):
    def hook(resid: torch.Tensor, hook=None) -> torch.Tensor:
        return resid[:, -m:, :]
    return hook


def _last_logprobs(lm, seqs: Sequence[Sequence[int]], pad: int, m: int) -> torch.Tensor:
    """One left-padded forward of token sequences; log-probabilities at the last ``m`` positions only
    (the vocabulary projection runs on those alone), ``[len(seqs), m, vocab]`` on the CPU."""
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, width - len(q):] = torch.tensor(q)
        mask[r, width - len(q):] = 1
    logits = lm.bridge.run_with_hooks(ids.to(lm.device), attention_mask=mask.to(lm.device),
                                      fwd_hooks=[(LAST_POSITION_HOOK, _keep_last(m))])[:, -m:, :]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def option_logprobs(lm, prompts: Sequence[str], options: Sequence[str], *, prefix: str = " ", batch_size: int = 32,
                    max_batch_tokens: int | None | str = "auto",
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Sum of token log-probabilities of each option text after each prompt, ``[len(prompts), len(options)]``.

    ``on_batch(n)`` is called after each batch of ``n`` sequences; there are
    ``len(prompts) * n_sequences(lm.tokenizer, options, prefix)`` in all.
    """
    tok = lm.tokenizer
    paths = option_paths(encode_options(tok, options, prefix))
    bos = getattr(tok, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    prompt_ids = [tok.encode(p, add_special_tokens=add_special) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = np.zeros((len(prompts), len(options)), dtype=np.float64)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    for j, path in enumerate(paths.paths):
        m = len(path) + 1
        covered = [o for o in range(len(options)) if paths.path_of[o] == j]
        seqs = [ids + list(path) for ids in prompt_ids]
        for idx in length_batches([len(s) for s in seqs], batch_size, budget):
            lp = _last_logprobs(lm, [seqs[i] for i in idx], pad, m)
            for o in covered:
                toks = paths.options[o]
                total = sum(lp[:, pos, t] for pos, t in enumerate(toks))
                out[idx, o] = total.numpy()
            if on_batch:
                on_batch(len(idx))
    return out


def softmax_rows(lp: np.ndarray) -> np.ndarray:
    """Distribution over the options from their log-likelihoods."""
    z = lp - lp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ContinuationTrees:
    """Continuation rows grouped by their prompt: one shared-prefix tree per distinct prompt (its continuations are
    the branches), the token reads that score every continuation token, and which reads belong to which row."""

    trees: list[Tree]
    reads: list[TokenRead]
    row_reads: list[list[int]]  # per row, its reads (one per continuation token)
    row_branch: list[tuple[int, int]]  # per row, (tree, branch)
    prompt_lengths: list[int]  # per row, the prompt's token count
    n_tokens: np.ndarray  # per row, the continuation's token count


def continuation_trees(tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                       prefix: str = " ") -> ContinuationTrees:
    """Group (prompt, continuation) rows by prompt into trees: the prompt runs once, each continuation is a branch."""
    if len(prompts) != len(continuations):
        raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    bos = getattr(tokenizer, "bos_token", None)
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    trees, reads = [], []
    row_reads: list[list[int]] = [[] for _ in prompts]
    row_branch: list[tuple[int, int]] = [(0, 0)] * len(prompts)
    lengths, n_cont = [0] * len(prompts), np.zeros(len(prompts), dtype=np.int64)
    for p, rows in by_prompt.items():
        head = tokenizer.encode(p, add_special_tokens=not (bos and p.startswith(bos)))
        seqs = []
        for i in rows:
            cont = tokenizer.encode(prefix + continuations[i], add_special_tokens=False)
            if not cont:
                raise InputError(f"continuation {continuations[i]!r} encodes to no tokens")
            seqs.append(head + cont)
            lengths[i], n_cont[i] = len(head), len(cont)
        t = len(trees)
        trees.append(tree_of(seqs))
        for k, i in enumerate(rows):
            row_branch[i] = (t, k)
            for j in range(n_cont[i]):  # the token after position len(head) - 1 + j is continuation token j
                row_reads[i].append(len(reads))
                reads.append(TokenRead(t, k, len(head) - 1 + j, (seqs[k][len(head) + j],)))
    return ContinuationTrees(trees, reads, row_reads, row_branch, lengths, n_cont)


@torch.no_grad()
def continuation_logprobs(lm, prompts: Sequence[str], continuations: Sequence[str], *, prefix: str = " ",
                          batch_size: int = 32, max_batch_tokens: int | None | str = "auto",
                          on_batch: Callable[[int], None] | None = None,
                          share_prefix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each ``continuation`` after its own ``prompt`` (pairs, one per row), as the cloze form
    scores options: returns ``(sum of token log-probabilities, number of tokens)``, each ``[len(prompts)]``.

    Rows with the same prompt share it: the prompt runs once and each continuation is a branch after it
    (:mod:`wdprobe.core.packing`); on a model that cannot be packed (or ``share_prefix=False``) every row is its
    own left-padded sequence. Either way the vocabulary projection runs only where continuation tokens are
    predicted."""
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    ct = continuation_trees(lm.tokenizer, prompts, continuations, prefix=prefix)
    limit = getattr(lm, "context_length", None)
    for r in range(len(prompts)) if limit else ():  # past the context the answer is read off extrapolated positions
        n = len(ct.trees[ct.row_branch[r][0]].sequence(ct.row_branch[r][1]))
        if n > limit:
            raise PromptTooLongError(f"a prompt with its option is {n} tokens, longer than {lm.name}'s context of "
                                     f"{limit} (it begins {prompts[r][:80]!r}); shorten it or leave the item out",
                                     prompts[r])
    total = np.zeros(len(prompts), dtype=np.float64)
    packed = packable(lm, ct.trees) if share_prefix else []
    if packed:
        slot = {t: j for j, t in enumerate(packed)}
        mine = [r for r in range(len(prompts)) if ct.row_branch[r][0] in slot]
        reads = [ct.reads[k] for r in mine for k in ct.row_reads[r]]
        reads = [TokenRead(slot[rd.tree], rd.branch, rd.position, rd.tokens) for rd in reads]
        # half the token budget: every continuation token is a vocabulary-wide read (measured ~15% faster on CPU)
        lps, _ = tree_readout(lm, [ct.trees[t] for t in packed], reads, max_batch_tokens=budget // 2 if budget else None,
                              max_rows=batch_size, on_batch=on_batch)
        k = 0
        for r in mine:
            n = len(ct.row_reads[r])
            total[r] = sum(float(lp[0]) for lp in lps[k: k + n])
            k += n
    done = {t for t in packed}
    rest = [r for r in range(len(prompts)) if ct.row_branch[r][0] not in done]
    tok = lm.tokenizer
    seqs = {r: list(ct.trees[ct.row_branch[r][0]].sequence(ct.row_branch[r][1])) for r in rest}
    n_cont = ct.n_tokens
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for batch in length_batches([len(seqs[r]) for r in rest], batch_size, budget):
        idx = [rest[j] for j in batch]
        m = int(max(n_cont[i] for i in idx)) + 1
        lp = _last_logprobs(lm, [seqs[i] for i in idx], pad, m)
        for r, i in enumerate(idx):
            n = int(n_cont[i])
            targets = torch.tensor(seqs[i][-n:])
            # position m-1-n .. m-2 of the kept window predict the n continuation tokens
            total[i] = float(lp[r, m - 1 - n: m - 1].gather(1, targets[:, None]).sum())
        if on_batch:
            on_batch(len(idx))
    return total, np.asarray(n_cont, dtype=np.int64)


@dataclass(frozen=True)
class DecisionPoint:
    """Where a cloze prompt's two options part: the prompt's tokens plus the options' shared first tokens
    (``sequence``), and the first token of each option after that (``tokens``). The next-token log-odds of
    ``tokens[1]`` over ``tokens[0]`` after ``sequence`` is the cloze decision's first distinguishing step."""

    sequence: list[int]
    tokens: tuple[int, int]
    shared: int  # how many option tokens the two options share before they part


def decision_point(tokenizer, prompt: str, options: Sequence[str], *, prefix: str = " ") -> DecisionPoint | None:
    """The decision point of a two-option cloze prompt, or None when one option's tokens are a prefix of the
    other's (the options never part at one position). Options that start alike ("You decide to ...") part later:
    the shared tokens are appended to the prompt, so the reading is taken where the choice is actually made."""
    if len(options) != 2:
        raise InputError(f"a decision point needs two options, not {len(options)}")
    a, b = encode_options(tokenizer, options, prefix)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    if k == min(len(a), len(b)):
        return None
    bos = getattr(tokenizer, "bos_token", None)
    head = tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))
    return DecisionPoint(head + a[:k], (a[k], b[k]), k)


@torch.no_grad()
def last_residuals(lm, seqs: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int = 16,
                   max_batch_tokens: int | None | str = "auto") -> np.ndarray:
    """``resid_post`` at the last position of each token sequence, at each of ``layers``: ``[n, len(layers), d]``
    (float32), from left-padded batches with the unembedding at the last position only."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(seqs), len(layers), lm.d_model), dtype=np.float32)
    budget = default_batch_tokens(lm.device) if max_batch_tokens == "auto" else max_batch_tokens
    for idx in length_batches([len(s) for s in seqs], batch_size, budget):
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]):] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]):] = 1
        got: dict[int, torch.Tensor] = {}

        def keep(slot: int):
            def hook(x, hook=None):
                got[slot] = x[:, -1].detach().float().cpu()
                return x
            return hook

        lm.forward_last(ids.to(lm.device), mask.to(lm.device),
                        [(f"blocks.{l}.hook_resid_post", keep(k)) for k, l in enumerate(layers)])
        for k in range(len(layers)):
            out[idx, k] = got[k].numpy()
    return out
