"""Activation patching: cross-form (word -> deed at the final position) and positional (layer x token).

Cross-form patching puts the word run's final-position residual into the deed run of the same item,
layer by layer: the full vector, or only its component along the word-stance direction (the full
residual also carries the *letter* the word answer used, which under independent shuffles may label
the other option in the deed prompt). Metric: the deed run's log-odds toward the word answer.

Positional patching works within one form on aligned counterfactuals (see :func:`swap_counterfactual`):
exact patching with every (layer, position) patch on its own row of batched forward passes, and
attribution patching, a first-order estimate of the whole heatmap from one clean forward plus one
forward and one backward pass on the counterfactual.

Everything goes through :mod:`wdprobe.interventions` (one hook mechanism).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from wdprobe.core.forward import encode_prompts
from wdprobe.core.packing import Tree, common_prefix_length, fits_window
from wdprobe.errors import InterventionError, TokenAlignmentError
from wdprobe.methods.capture import presentation_spans
from wdprobe.methods.interventions import (
    Intervention,
    Row,
    packing_works,
    residuals_at,
    run_interventions,
    run_tree_interventions,
)
from wdprobe.scoring.stats import bootstrap_interval, sign_flip_max_test

CROSS_CONDITIONS = ("full", "stance", "letter", "random")
ROW_TOKENS = 512  # packed row length exact patching aims for: longer rows pay the dense mask's quadratic attention




# ---- cross-form patching ---------------------------------------------------------------------------

def cross_form_rows(n_items: int, layers: Sequence[int], sources: np.ndarray, *, hook_kind: str = "resid_post",
                    conditions: Sequence[str] = CROSS_CONDITIONS, stance_dirs: np.ndarray | None = None,
                    random_dirs: np.ndarray | None = None,
                    letter_dirs: np.ndarray | None = None) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows for one batched run: per item a clean row, then one row per (condition, layer).

    ``sources``: word-run residuals ``[n_items, n_layers_listed, d]`` at the final position;
    ``stance_dirs``/``letter_dirs``: unit directions ``[n_items, n_layers_listed, d]``; ``random_dirs``:
    ``[n_layers_listed, d]``. Conditions: ``full`` (set the whole vector), ``stance``/``letter``/``random``
    (replace only the component along that direction).
    """
    unknown = [c for c in conditions if c not in CROSS_CONDITIONS]
    if unknown:
        raise InterventionError(f"unknown patching condition(s) {unknown}: choose from {list(CROSS_CONDITIONS)}")
    if "stance" in conditions and stance_dirs is None:
        raise InterventionError("the 'stance' condition needs stance directions")
    if "random" in conditions and random_dirs is None:
        raise InterventionError("the 'random' condition needs random directions")
    if "letter" in conditions and letter_dirs is None:
        raise InterventionError("the 'letter' condition needs letter directions")
    src = torch.as_tensor(np.asarray(sources, dtype=np.float32))
    rows, keys = [], []
    for i in range(n_items):
        rows.append(Row(i))
        keys.append({"item": i, "condition": "clean", "layer": -1})
        for cond in conditions:
            for k, layer in enumerate(layers):
                hook = f"blocks.{layer}.hook_{hook_kind}"
                if cond == "full":
                    iv = Intervention(hook, -1, "set", src[i, k])
                else:
                    d = {"stance": lambda: stance_dirs[i, k], "letter": lambda: letter_dirs[i, k],
                         "random": lambda: random_dirs[k]}[cond]()
                    iv = Intervention(hook, -1, "project", src[i, k], torch.as_tensor(np.asarray(d, dtype=np.float32)))
                rows.append(Row(i, [iv]))
                keys.append({"item": i, "condition": cond, "layer": int(layer)})
    return rows, keys


def cross_form_patching(lm, deed_prompts: Sequence[str], sources: np.ndarray, toward: Sequence[int], away: Sequence[int],
                        token_ids: Sequence[int], layers: Sequence[int], *, conditions: Sequence[str] = CROSS_CONDITIONS,
                        stance_dirs: np.ndarray | None = None, random_dirs: np.ndarray | None = None,
                        letter_dirs: np.ndarray | None = None, hook_kind: str = "resid_post", batch_size: int = 64, progress: Callable[[int], None] | None = None):
    """Patch word residuals into deed runs; one frame row per item x condition x layer (plus ``clean``).

    ``toward[i]``/``away[i]``: positions in ``token_ids`` of the deed prompt's letter for the word answer
    and for the other option. Columns: item, condition, layer, toward_word (log-odds), letter_mass.
    """
    import pandas as pd

    rows, keys = cross_form_rows(len(deed_prompts), layers, sources, hook_kind=hook_kind, conditions=conditions,
                                 stance_dirs=stance_dirs, random_dirs=random_dirs, letter_dirs=letter_dirs)
    lp = run_interventions(lm, deed_prompts, rows, token_ids, batch_size=batch_size, progress=progress)
    frame = pd.DataFrame(keys)
    it = frame["item"].to_numpy()
    frame["toward_word"] = lp[np.arange(len(rows)), np.asarray(toward)[it]] - lp[np.arange(len(rows)), np.asarray(away)[it]]
    frame["letter_mass"] = np.exp(lp[:, :2]).sum(1)
    return frame


def summarise_cross_form(frame, items) -> Any:
    """Per condition x layer: flip rate and mean normalised effect on inconsistent items, break rate on
    consistent ones, and the CS of all the items with the patch in place; ``items`` has per item ``consistent``, ``word_self`` (the word run's log-odds for its
    own answer) and ``same_letter`` (the word answer's letter is also its letter in the deed prompt)."""
    import pandas as pd

    f = frame.merge(items, left_on="item", right_index=True)
    clean = f[f.condition == "clean"].set_index("item")["toward_word"]
    f = f[f.condition != "clean"].copy()
    f["clean"] = clean.reindex(f["item"]).to_numpy()
    f["normalised"] = (f["toward_word"] - f["clean"]) / (f["word_self"] - f["clean"])
    out = []
    for (cond, layer), g in f.groupby(["condition", "layer"]):
        rec: dict[str, Any] = {"condition": cond, "layer": layer}
        for name, sub in (("all", g), ("same_letter", g[g.same_letter == 1]), ("other_letter", g[g.same_letter == 0])):
            inc, con = sub[sub.consistent == 0], sub[sub.consistent == 1]
            sfx = "" if name == "all" else f"_{name}"
            rec[f"flip_rate{sfx}"] = float((inc["toward_word"] > 0).mean()) if len(inc) else np.nan
            rec[f"normalised_effect{sfx}"] = float(inc["normalised"].mean()) if len(inc) else np.nan
            rec[f"break_rate{sfx}"] = float((con["toward_word"] < 0).mean()) if len(con) else np.nan
            rec[f"n_inconsistent{sfx}"] = int(len(inc))
        rec["cs_after"] = float((g["toward_word"] > 0).mean())  # CS of these items with the patch in place
        rec["letter_mass"] = float(g["letter_mass"].mean())
        out.append(rec)
    return pd.DataFrame(out).sort_values(["condition", "layer"]).reset_index(drop=True)


def cross_form_headline(summary, items) -> dict[str, Any]:
    """Per condition, the layer with the most inconsistent items flipped, and that layer's numbers."""
    out: dict[str, Any] = {"n_items": int(len(items)), "n_inconsistent": int((items.consistent == 0).sum()),
                           "cs_clean": float(items["consistent"].mean()),
                           "same_letter_rate_inconsistent": float(items[items.consistent == 0]["same_letter"].mean())}
    for cond, g in summary.groupby("condition"):
        best = g.loc[g["flip_rate"].idxmax()]
        out[cond] = {k: (float(best[k]) if k != "layer" else int(best[k])) for k in
                     ("layer", "flip_rate", "normalised_effect", "break_rate", "flip_rate_same_letter",
                      "flip_rate_other_letter", "cs_after", "letter_mass")}
        top = g.loc[g["cs_after"].idxmax()]
        out[cond]["best_cs_after"] = {"layer": int(top["layer"]), "cs_after": float(top["cs_after"])}
        out[cond]["flip_rate_by_layer"] = {int(r.layer): round(float(r.flip_rate), 4) for r in g.itertuples()}
    return out


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


def cross_form_tests(frame, items, *, n_perm: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The claims the patching finding words, each a sign-flip test over items with the max over layers:
    ``restores_<condition>`` — CS with the patch beats clean CS at the best layer (paired per item: consistent
    after minus consistent before); ``<condition>_beats_random`` — the patch moves more items to consistency than a
    random direction of the same norm at the best layer."""
    f = frame.merge(items[["consistent"]], left_on="item", right_index=True)
    f = f[f.condition != "clean"]
    after = {c: g.pivot(index="item", columns="layer", values="toward_word").gt(0).astype(float)
             for c, g in f.groupby("condition")}
    clean = items["consistent"].astype(float)
    out: dict[str, dict[str, Any]] = {}
    for cond, table in after.items():
        diffs = table.sub(clean.reindex(table.index).to_numpy(), axis=0).to_numpy()
        test = sign_flip_max_test(diffs, n_perm=n_perm, seed=seed).to_json()
        test["setting"] = int(table.columns[test["setting"]])
        out[f"restores_{cond}"] = test
        if cond != "random" and "random" in after:
            common = table.index.intersection(after["random"].index)
            cols = [c for c in table.columns if c in after["random"].columns]
            diffs = (table.loc[common, cols] - after["random"].loc[common, cols]).to_numpy()
            test = sign_flip_max_test(diffs, n_perm=n_perm, seed=seed).to_json()
            test["setting"] = int(cols[test["setting"]])
            out[f"{cond}_beats_random"] = test
    return out


def letter_split(frame, items):
    """Per item x condition x layer, the patch's shift of the deed's log-odds toward the word answer in the deed
    order where that answer carries the word run's letter (``same``) and in the order where it carries the other
    letter (``opposite``), split into what moves with the option's content and what moves with the letter.

    ``frame`` holds both deed orders of every item (``deed_order`` "shown" and "swapped", as
    :func:`cross_form_patching` returns them for each), including the ``clean`` rows; ``items`` has ``same_letter``
    per item (the shown deed order is the ``same`` one). With ``d_same = s + l`` and ``d_opposite = s - l``, a patch
    that carries only the stance moves both orders alike (``l = 0``) and one that carries only the letter moves
    them oppositely (``s = 0``): ``stance_shift = s`` and ``letter_shift = l``. The content log-odds (mean of the two
    orders, i.e. the order-averaged reading) decides content consistency before and after the patch."""
    import pandas as pd

    need = {"item", "condition", "layer", "deed_order", "toward_word"}
    if not need <= set(frame.columns):
        raise InterventionError(f"a letter split needs columns {sorted(need)}; got {sorted(frame.columns)}")
    wide = frame.pivot_table(index=["item", "condition", "layer"], columns="deed_order", values="toward_word",
                             aggfunc="first")
    if not {"shown", "swapped"} <= set(wide.columns) or wide[["shown", "swapped"]].isna().any().any():
        raise InterventionError("a letter split needs every item patched in both deed orders (shown and swapped)")
    wide = wide.reset_index()
    same = items["same_letter"].astype(bool).reindex(wide["item"]).to_numpy()
    wide["same"] = np.where(same, wide["shown"], wide["swapped"])
    wide["opposite"] = np.where(same, wide["swapped"], wide["shown"])
    clean = wide[wide.condition == "clean"].set_index("item")
    out = wide[wide.condition != "clean"].copy()
    for col in ("same", "opposite"):
        out[f"clean_{col}"] = clean[col].reindex(out["item"]).to_numpy()
    out["content"] = (out["same"] + out["opposite"]) / 2
    out["clean_content"] = (out["clean_same"] + out["clean_opposite"]) / 2
    d_same, d_opp = out["same"] - out["clean_same"], out["opposite"] - out["clean_opposite"]
    out["stance_shift"] = (d_same + d_opp) / 2
    out["letter_shift"] = (d_same - d_opp) / 2
    return pd.DataFrame(out[["item", "condition", "layer", "same", "opposite", "clean_same", "clean_opposite", "content",
                             "clean_content", "stance_shift", "letter_shift"]]).reset_index(drop=True)


def summarise_letter_split(split, *, seed: int = 0) -> Any:
    """Per condition x layer: flips of content-inconsistent items (order-averaged deed reading against the word
    answer), flips within the same-letter and the opposite-letter deed order, content CS with the patch in place,
    and the mean stance and letter shifts with bootstrap intervals over items."""
    import pandas as pd

    rows = []
    for (cond, layer), g in split.groupby(["condition", "layer"]):
        rec: dict[str, Any] = {"condition": cond, "layer": int(layer), "n_items": int(len(g))}
        for name, col in (("content", "content"), ("same", "same"), ("opposite", "opposite")):
            inc = g[g[f"clean_{col}"] < 0]
            rec[f"flip_rate_{name}"] = float((inc[col] > 0).mean()) if len(inc) else np.nan
            rec[f"n_inconsistent_{name}"] = int(len(inc))
        rec["content_cs_after"] = float((g["content"] > 0).mean())
        for shift in ("stance_shift", "letter_shift"):
            lo, hi = bootstrap_interval(g[shift].to_numpy(), seed=seed)
            rec[shift], rec[f"{shift}_low"], rec[f"{shift}_high"] = float(g[shift].mean()), lo, hi
        rows.append(rec)
    out = pd.DataFrame(rows).sort_values(["condition", "layer"]).reset_index(drop=True)
    return out


def letter_split_tests(split, *, n_perm: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Sign-flip tests over items with the max over layers, per condition: ``stance_transport_<c>`` (the patch moves
    the deed toward the word answer's *content* in both orders), ``letter_transport_<c>`` (it moves the deed toward
    the word run's *letter* beyond that), and ``content_restores_<c>`` (content consistency after minus before)."""
    out: dict[str, dict[str, Any]] = {}
    for cond, g in split.groupby("condition"):
        g = g.assign(restored=(g["content"] > 0).astype(float) - (g["clean_content"] > 0).astype(float))
        for name, col in (("stance_transport", "stance_shift"), ("letter_transport", "letter_shift"),
                          ("content_restores", "restored")):
            table = g.pivot(index="item", columns="layer", values=col)
            test = sign_flip_max_test(table.to_numpy(), n_perm=n_perm, seed=seed).to_json()
            test["setting"] = int(table.columns[test["setting"]])
            out[f"{name}_{cond}"] = test
    return out


# ---- positional patching on aligned counterfactuals ---------------------------------------------------

def swap_counterfactual(pres, form: str):
    """The same two-option item with its option texts swapped between letters A and B.

    Clean and counterfactual prompts then differ only inside the two option texts. When both options
    tokenise to the same number of tokens (checked by :func:`swap_alignment`), every position plays the
    same role in both prompts: patching position p moves exactly what the model stored there.
    """
    from dataclasses import replace

    if pres.item.n_options != 2:
        raise TokenAlignmentError(f"item {pres.item.id}: option swapping needs two options, not {pres.item.n_options}")
    order = pres.order(form)
    swapped = tuple(reversed(order))
    return replace(pres, **{f"{form}_order": swapped})


def aligned_tokens(tokenizer, clean: str, counterfactual: str, *, name: str = "item") -> list[str]:
    """Token strings of ``clean`` after checking that ``counterfactual`` tokenises to the same length.

    Raises :class:`TokenAlignmentError` naming the item when the lengths differ (positional patching needs
    position p to mean the same slot in both prompts)."""
    a = encode_prompts(tokenizer, [clean], "cpu")["input_ids"][0].tolist()
    b = encode_prompts(tokenizer, [counterfactual], "cpu")["input_ids"][0].tolist()
    if len(a) != len(b):
        raise TokenAlignmentError(f"{name}: clean and counterfactual prompts tokenise to {len(a)} and {len(b)} tokens; "
                             "positional patching needs aligned prompts (choose items whose swapped options have equal "
                             "token lengths, see wdprobe.methods.patching.swap_counterfactual)")
    return [tokenizer.decode([t]) for t in a]


def swap_alignment(tokenizer, pres, form: str, clean: str, counterfactual: str) -> list[str]:
    """Check that an option-swapped pair aligns token by token; return the clean prompt's tokens.

    Equal total length is not enough: options of different token lengths shift the second option's label.
    Each option slot must hold the same number of tokens in both prompts, and every token outside the
    option texts must be identical at the same position. Raises :class:`TokenAlignmentError` naming the item.
    """

    tokens = aligned_tokens(tokenizer, clean, counterfactual, name=f"item {pres.item.id} ({form})")
    swapped = swap_counterfactual(pres, form)
    slots = []
    for prompt, p in ((clean, pres), (counterfactual, swapped)):
        n = len(encode_prompts(tokenizer, [prompt], "cpu")["input_ids"][0])
        offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"][-n:]
        spans = presentation_spans(p, form, prompt)
        by_letter = [spans.options[c] for c in p.order(form)]  # option text spans in letter order
        slots.append([[t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s] for s, e in by_letter])
    for j, (a, b) in enumerate(zip(*slots)):
        if a != b:
            raise TokenAlignmentError(f"item {pres.item.id} ({form}): option {chr(65 + j)} spans {len(a)} tokens in the clean "
                                 f"prompt and {len(b)} in the swapped one; positions would not align")
    inside = {t for slot in slots[0] for t in slot}
    ids_a = encode_prompts(tokenizer, [clean], "cpu")["input_ids"][0].tolist()
    ids_b = encode_prompts(tokenizer, [counterfactual], "cpu")["input_ids"][0].tolist()
    outside = [t for t in range(len(ids_a)) if t not in inside and ids_a[t] != ids_b[t]]
    if outside:
        raise TokenAlignmentError(f"item {pres.item.id} ({form}): tokens outside the options differ at positions {outside[:5]}")
    return tokens


def _letter_logodds(lp: np.ndarray) -> np.ndarray:
    return lp[..., 0] - lp[..., 1]


def exact_patching(lm, clean: Sequence[str], counterfactual: Sequence[str], hooks: Sequence[str],
                   token_ids: Sequence[int], *, batch_size: int = 64, max_batch_tokens: int | None | str = "auto",
                   progress: Callable[[int], None] | None = None, shared_prefix: bool | str = "auto",
                   row_tokens: int = ROW_TOKENS) -> list[dict[str, Any]]:
    """Exact denoising patching: each clean activation (hook, position) into the counterfactual run.

    A patch at position p leaves every earlier position of the counterfactual run untouched, so the patches at p
    share that prefix: it runs once, followed by one copy of positions p..T-1 per patched hook (a shared-prefix
    tree, :mod:`wdprobe.core.packing`; copies split so a packed row stays near ``row_tokens``). Positions before the
    first token where clean and counterfactual differ hold the same activations in both runs, so patching them
    changes nothing: their entries are the counterfactual's log-odds without a forward. Each patch computes
    what its own full forward computes. ``shared_prefix=False`` (or a model that does not honour packed masks, or
    a prompt longer than its sliding window) runs every patch as its own row of batched forwards instead.
    Returns per item ``{"clean", "counterfactual", "patched": [n_hooks, T]}`` as log-odds of ``token_ids[0]``
    over ``token_ids[1]``.
    """
    _check_pairs(lm, clean, counterfactual)
    acts = residuals_at(lm, list(clean), list(hooks))
    prompts = list(clean) + list(counterfactual)
    n = len(clean)
    base = _letter_logodds(run_interventions(lm, prompts, [Row(i) for i in range(2 * n)], token_ids[:2],
                                             batch_size=batch_size, max_batch_tokens=max_batch_tokens))
    out = [{"clean": float(base[i]), "counterfactual": float(base[n + i]),
            "patched": np.zeros((len(hooks), acts[hooks[0]][i].shape[0]))} for i in range(n)]
    cf_tokens = [encode_prompts(lm.tokenizer, [c], "cpu")["input_ids"][0].tolist() for c in counterfactual]
    longest = max((len(t) for t in cf_tokens), default=0)
    use_trees = shared_prefix is True or (
        shared_prefix == "auto" and n > 0 and fits_window(lm, longest) and packing_works(lm, counterfactual[0]))
    if shared_prefix is True and not fits_window(lm, longest):
        raise InterventionError(f"a counterfactual of {longest} tokens is longer than the model's sliding window: "
                                "use shared_prefix='auto' or False")
    if use_trees:
        trees, interventions, index = [], [], []
        for i in range(n):
            T = len(cf_tokens[i])
            clean_tokens = encode_prompts(lm.tokenizer, [clean[i]], "cpu")["input_ids"][0].tolist()
            first = common_prefix_length([clean_tokens, cf_tokens[i]])
            # before the first differing token both runs hold the same activations (causal attention): a patch
            # there writes the value already present, and the patched run is the counterfactual run itself
            out[i]["patched"][:, :first] = out[i]["counterfactual"]
            for p in range(first, T):
                copies = max(1, min(len(hooks), (row_tokens - p) // (T - p)))
                for s0 in range(0, len(hooks), copies):
                    hs = range(s0, min(len(hooks), s0 + copies))
                    trees.append(Tree(tuple(cf_tokens[i][:p]), tuple(tuple(cf_tokens[i][p:]) for _ in hs)))
                    interventions.append([[Intervention(hooks[h], p, "set", acts[hooks[h]][i][p])] for h in hs])
                    index.append([(i, h, p) for h in hs])
        lps = run_tree_interventions(lm, trees, interventions, token_ids[:2], max_batch_tokens=max_batch_tokens,
                                     progress=progress)
        for keys, lp in zip(index, lps):
            for (i, h, p), v in zip(keys, _letter_logodds(lp)):
                out[i]["patched"][h, p] = v
        return out
    rows: list[Row] = []
    index_rows = []
    for i in range(n):
        T = acts[hooks[0]][i].shape[0]
        for h, hook in enumerate(hooks):
            for p in range(T):
                rows.append(Row(n + i, [Intervention(hook, p, "set", acts[hook][i][p])]))
                index_rows.append((i, h, p))
    lp = run_interventions(lm, prompts, rows, token_ids[:2], batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                           progress=progress)
    for (i, h, p), v in zip(index_rows, _letter_logodds(lp)):
        out[i]["patched"][h, p] = v
    return out


def exact_patching_one_by_one(lm, clean: str, counterfactual: str, hooks: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
    """Reference: one plain forward per patch (the TransformerLens ``patching`` style, full logits).

    Returns ``[n_hooks, T]`` log-odds; used to check and time the batched version."""
    _check_pairs(lm, [clean], [counterfactual])
    acts = residuals_at(lm, [clean], list(hooks))
    ids = lm.encode([counterfactual])["input_ids"]
    T = ids.shape[1]
    out = np.zeros((len(hooks), T))
    tok = list(token_ids[:2])
    for h, hook in enumerate(hooks):
        for p in range(T):
            vec = acts[hook][0][p]

            def setter(x, hook=None, p=p, vec=vec):
                x = x.clone()
                x[0, p] = vec.to(x.dtype)
                return x

            with torch.no_grad():
                logits = lm.bridge.run_with_hooks(ids, fwd_hooks=[(hook, setter)])[0, -1].float()
            lp = torch.log_softmax(logits, -1)[tok]
            out[h, p] = float(lp[0] - lp[1])
    return out


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the duration (attribution needs activation gradients only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def attribution_patching(lm, clean: Sequence[str], counterfactual: Sequence[str], hooks: Sequence[str],
                         token_ids: Sequence[int], *, batch_size: int = 16) -> list[dict[str, Any]]:
    """Attribution patching: ``(a_clean - a_cf) . d metric / d a_cf`` for every hook and position.

    One clean forward (activations) and one counterfactual forward + backward per batch of items give the
    whole heatmap. The estimate is exact when the metric is linear in the patched activation. Returns
    per item ``{"clean", "counterfactual", "patched": [n_hooks, T]}`` with patched = cf + estimated change.
    """
    _check_pairs(lm, clean, counterfactual)
    acts = residuals_at(lm, list(clean), list(hooks))
    tok = torch.tensor(list(token_ids[:2]), device=lm.device)
    lengths = [acts[hooks[0]][i].shape[0] for i in range(len(clean))]
    out: list[dict[str, Any]] = [None] * len(clean)  # type: ignore[list-item]
    clean_lo = _letter_logodds(run_interventions(lm, list(clean), [Row(i) for i in range(len(clean))], token_ids[:2]))
    for s in range(0, len(clean), batch_size):
        batch = list(range(s, min(s + batch_size, len(clean))))
        enc = lm.encode([counterfactual[i] for i in batch])
        T = enc["input_ids"].shape[1]
        deltas: dict[str, torch.Tensor] = {}
        seen: dict[str, torch.Tensor] = {}

        def make(hook_name):
            def hook(x, hook=None):
                delta = torch.zeros_like(x, dtype=torch.float32, requires_grad=True)
                deltas[hook_name] = delta
                seen[hook_name] = x.detach().float()
                return x + delta.to(x.dtype)
            return hook

        with frozen_parameters(lm.hf_model), torch.enable_grad():
            logits = lm.forward_last(enc["input_ids"], enc["attention_mask"], [(h, make(h)) for h in hooks]).float()
            lp = torch.log_softmax(logits, -1)[:, tok]
            lo = lp[:, 0] - lp[:, 1]
            lo.sum().backward()  # rows are independent: each row's gradient is its own metric's
        for j, i in enumerate(batch):
            n = lengths[i]
            est = np.zeros((len(hooks), n))
            for h, hook in enumerate(hooks):
                a_cf = seen[hook][j, T - n:]
                g = deltas[hook].grad[j, T - n:].float()
                est[h] = ((acts[hook][i].to(g.device) - a_cf) * g).sum(-1).cpu().numpy()
            out[i] = {"clean": float(clean_lo[i]), "counterfactual": float(lo[j].detach()),
                      "patched": float(lo[j].detach()) + est}
    return out


def _check_pairs(lm, clean: Sequence[str], counterfactual: Sequence[str]) -> None:
    if len(clean) != len(counterfactual):
        raise TokenAlignmentError(f"{len(clean)} clean prompts but {len(counterfactual)} counterfactuals")
    for i, (a, b) in enumerate(zip(clean, counterfactual)):
        aligned_tokens(lm.tokenizer, a, b, name=f"prompt pair {i}")


def normalised(result: dict[str, Any]) -> np.ndarray:
    """Patched log-odds rescaled so 0 = counterfactual and 1 = clean."""
    return (result["patched"] - result["counterfactual"]) / (result["clean"] - result["counterfactual"])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two heatmaps (flattened)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)
