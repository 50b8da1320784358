"""Where is an organism's behaviour written? Cross-model patching of the organism into its parent, under a rule fixed
before any organism was read (``reports/organisms/edited/cross-model-rules.md``).

The organism (variant) and its parent (reference) read the same cloze prompts and options; the variant's residual
after block k, at every position, replaces the parent's, and the share of the variant's shift of the choice margin
(toward the planted option) that the patch reproduces is read per block, by the per-token mean and by the sum. The
recovered block is the first whose residual restores at least :data:`RESTORES_AT_LEAST` by the mean (blocks are read in
ascending groups and the sweep stops after the group that holds it). At that block the
attention contribution, the MLP contribution and each head's output are patched alone; the one restoring most is the
recovered component. The analysis receives the two models and the items, never the planted block.

:func:`rank_components` reads every attention, MLP and head site of every block with exact patching, attribution
patching (AtP) and AtP* (GradDrop) side by side, for the component-level record of the same rules file.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from wdprobe.core.option_scoring import continuation_logprobs
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.methods.cross_model import (
    attribute_cross_model,
    attribution_agreement,
    cross_model_patch,
    grad_drop_score,
    option_sequences,
    restored_share,
    sites_for,
)
from wdprobe.methods.interchange import CrossModelInterchange
from wdprobe.methods.subspace import (
    first_order_basis,
    fit_subspace,
    interchange_accuracy,
    interchange_scores,
    make_subspace,
)
from wdprobe.scoring.stats import bootstrap_indices, paired_difference_test

RESTORES_AT_LEAST = 0.5
SWEEP_GROUP = 4  # residual sites per patching call while looking for the first block that restores enough
SCORINGS = ("mean", "sum")


def _share_interval(moved: np.ndarray, shift: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval over items of each site's restored share (a ratio of sums)."""
    idx = bootstrap_indices(shift.size, seed=seed)
    den = shift[idx].sum(1)
    num = moved[:, idx].sum(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = num / den[None]
    return np.nanpercentile(boots, 2.5, axis=1), np.nanpercentile(boots, 97.5, axis=1)


def localise_by_patching(reference, variant, items: Sequence[Item], toward: Sequence[int], *, form: str = "deed",
                         components: bool = True, batch_size: int = 16,
                         progress: Callable[[str], None] | None = None) -> dict:
    """The rule above on ``items`` (two options each; ``toward[i]``: the option the variant is expected to favour,
    0 or 1). Returns the per-block table, the recovered block and component, the variant's shift with its test, and
    the time taken."""
    if not items:
        raise InputError("no items to localise on")
    if len(toward) != len(items) or any(t not in (0, 1) for t in toward):
        raise InputError("toward needs one option (0 or 1) per item")
    bad = [it.id for it in items if it.n_options != 2]
    if bad:
        raise InputError(f"items {bad[:3]}: cross-model localisation reads two-option items")
    started = time.perf_counter()
    seqs, starts = option_sequences(reference, [cloze_prompt(it, form) for it in items], [it.options(form) for it in items])
    sign = np.where(np.asarray(toward) == 0, 1.0, -1.0)  # margins are option 0 minus option 1
    blocks: list[dict] = []
    shift_of: dict[str, np.ndarray] = {}
    identical = []
    for lo in range(0, reference.n_layers, SWEEP_GROUP):  # ascending groups; stop once a block restores enough
        group = sites_for(reference, ("resid",), range(lo, min(lo + SWEEP_GROUP, reference.n_layers)))
        resid = cross_model_patch(reference, variant, seqs, starts, group, batch_size=batch_size)
        identical.extend(resid.identical.tolist())
        shares = {}
        for scoring in SCORINGS:
            share, moved, shift = restored_share(resid, scoring, toward=sign)
            low, high = _share_interval(moved, shift)
            shares[scoring] = (share, low, high)
            shift_of[scoring] = shift
        for k, site in enumerate(resid.sites):
            blocks.append({"block": site.layer, "identical": bool(resid.identical[k]),
                           **{f"restored_{s}": float(shares[s][0][k]) for s in SCORINGS},
                           **{f"low_{s}": float(shares[s][1][k]) for s in SCORINGS},
                           **{f"high_{s}": float(shares[s][2][k]) for s in SCORINGS}})
        if any(b["restored_mean"] >= RESTORES_AT_LEAST for b in blocks):
            break
    if progress:
        progress(f"residual sweep done ({time.perf_counter() - started:.0f} s)")
    recovered = next((b["block"] for b in blocks if b["restored_mean"] >= RESTORES_AT_LEAST), None)
    shift_mean = shift_of["mean"]
    test = paired_difference_test(shift_mean)
    out = {"n_items": len(items), "form": form, "blocks": blocks, "recovered_block": recovered,
           "shift_mean": float(shift_mean.mean()), "shift_low": test.low, "shift_high": test.high, "shift_p": test.p_value,
           "shift_sum": float(shift_of["sum"].mean()),
           "identical_everywhere": bool(all(identical)) and len(blocks) == reference.n_layers}
    if components and recovered is not None:
        sites = sites_for(reference, ("attn", "mlp", "head"), [recovered])
        comp = cross_model_patch(reference, variant, seqs, starts, sites, batch_size=batch_size)
        share_mean = restored_share(comp, "mean", toward=sign)[0]
        share_sum = restored_share(comp, "sum", toward=sign)[0]
        out["components"] = [{"site": s.label, "kind": s.kind, "unit": s.unit, "identical": bool(comp.identical[k]),
                              "restored_mean": float(share_mean[k]), "restored_sum": float(share_sum[k])}
                             for k, s in enumerate(comp.sites)]
        best = max(out["components"], key=lambda c: c["restored_mean"])
        heads = [c for c in out["components"] if c["kind"] == "head"]
        out["recovered_component"] = best["kind"]
        out["recovered_head"] = max(heads, key=lambda c: c["restored_mean"])["unit"] if heads else None
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


MLP_COMPONENTS = ("mlp", "mlp-items")  # edit components that write through the MLP (``edit_components``)


def component_hit(result: dict, planted_component: str, planted_head: int | None) -> bool | None:
    """Did the recovered component name the planted one? An MLP plant needs ``mlp``; a head plant needs the attention
    contribution (or one head) first and the planted head first among the heads. None when nothing was recovered."""
    if result.get("recovered_component") is None:
        return None
    if planted_component in MLP_COMPONENTS:
        return result["recovered_component"] == "mlp"
    return result["recovered_component"] in ("attn", "head") and result.get("recovered_head") == planted_head


def attribute_components(reference, variant, items: Sequence[Item], toward: Sequence[int], *, form: str = "deed",
                         batch_size: int = 8) -> dict:
    """Attribution patching's estimate of every attention, MLP and head site of every block at once (one forward and
    backward per batch; no sweep, no planted block): each site's estimated restored share of the variant's shift
    toward ``toward`` (per-token mean), the attention or MLP site ranked first and the head ranked first."""
    if not items or len(toward) != len(items):
        raise InputError("attribution needs items and one target option per item")
    started = time.perf_counter()
    seqs, starts = option_sequences(reference, [cloze_prompt(it, form) for it in items], [it.options(form) for it in items])
    sign = np.where(np.asarray(toward) == 0, 1.0, -1.0)
    sites = sites_for(reference, ("attn", "mlp", "head"))
    est = attribute_cross_model(reference, variant, seqs, starts, sites, batch_size=batch_size)
    share = restored_share(est, "mean", toward=sign)[0]
    ranked = [{"site": s.label, "kind": s.kind, "block": s.layer, "unit": s.unit, "share": float(v)}
              for v, s in sorted(zip(share, sites), key=lambda t: -t[0] if np.isfinite(t[0]) else np.inf)]
    top = next((r for r in ranked if r["kind"] in ("attn", "mlp")), None)
    top_head = next((r for r in ranked if r["kind"] == "head"), None)
    return {"top_site": top and top["site"], "top_block": top and top["block"], "top_kind": top and top["kind"],
            "top_head_block": top_head and top_head["block"], "top_head": top_head and top_head["unit"],
            "ranking": ranked[:10], "seconds": round(time.perf_counter() - started, 1)}


def attribution_hit(found: dict, planted_block: int, planted_component: str, planted_head: int | None) -> bool:
    """The rule of ``cross-model-rules.md`` (attribution section): the planted block's MLP first among attention and
    MLP sites; for a head plant, the planted block's attention first and the planted head first among all heads."""
    if planted_component in MLP_COMPONENTS:
        return found["top_block"] == planted_block and found["top_kind"] == "mlp"
    return (found["top_block"] == planted_block and found["top_kind"] == "attn"
            and found["top_head_block"] == planted_block and found["top_head"] == planted_head)


def interchange_at_block(reference, variant, items: Sequence[Item], toward: Sequence[int], block: int, *,
                         form: str = "deed", kind: str = "direction", train_share: float = 0.6, epochs: int = 2,
                         lr: float = 0.01, batch_size: int = 16, seed: int = 0) -> dict:
    """How much of the variant's change one learned subspace of block ``block``'s residual carries (cross-model
    distributed alignment search; the block comes from the caller's blind sweep, never from the plant).

    Items are split once (seeded) into training and held-out ones; on the training items a ``kind`` subspace is
    learned, from the first-order start, so that the reference with the variant's component interchanged at every
    position gives the variant's own choice distribution (soft labels: only the subspace that carries all of the
    change meets them). Held out: the share of the variant's shift toward ``toward`` it restores (per-token mean,
    ratio of sums), and its IIA, the share of items whose interchanged choice is the variant's (all items, and the
    items whose choice the variant changed). Returns those and the learned directions (``[d, k]``)."""
    if len(toward) != len(items) or len(items) < 4:
        raise InputError("interchange localisation needs at least 4 items and one target option per item")
    started = time.perf_counter()
    run = CrossModelInterchange(reference, variant, f"blocks.{int(block)}.hook_resid_post",
                                [cloze_prompt(it, form) for it in items], [it.options(form) for it in items])
    clean_ref, clean_var = run.clean()
    order = np.random.default_rng([seed, int(block), 29]).permutation(len(items))
    n_train = int(round(train_share * len(items)))
    train, held = sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())
    soft = np.exp(clean_var - clean_var.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    sign = np.where(np.asarray(toward) == 0, 1.0, -1.0)
    grads, deltas = run.first_order(train, batch_size=batch_size)
    start, _ = first_order_basis(grads, deltas, sign[train])
    sub = make_subspace(kind, reference.d_model, seed=seed)
    sub.start_from(start)
    fit = fit_subspace(sub, run, soft, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    patched = interchange_scores(sub, run, held, batch_size=batch_size)
    margin = lambda s: s[:, 0] - s[:, 1]  # noqa: E731
    ref_m, var_m, pat_m = margin(clean_ref[held]), margin(clean_var[held]), margin(patched)
    shift = ((var_m - ref_m) * sign[held]).sum()
    restored = float(((pat_m - ref_m) * sign[held]).sum() / shift) if shift != 0 else float("nan")
    var_choice, ref_choice = clean_var[held].argmax(1), clean_ref[held].argmax(1)
    flipped = var_choice != ref_choice
    return {"block": int(block), "kind": kind, "n_train": len(train), "n_held": len(held),
            "restored_mean": restored, "iia": interchange_accuracy(patched, var_choice),
            "n_flipped": int(flipped.sum()),
            "iia_flipped": interchange_accuracy(patched[flipped], var_choice[flipped]) if flipped.any() else None,
            "loss_first": fit.losses[0], "loss_last": fit.losses[-1], "directions": sub.directions(),
            "seconds": round(time.perf_counter() - started, 1)}


COMPONENT_INSTRUMENTS = ("exact", "atp", "atp_star")


def items_moved_most(reference, variant, items: Sequence[Item], toward: Sequence[int], k: int, *,
                     form: str = "deed", batch_size: int = 16) -> tuple[list[int], np.ndarray]:
    """The ``k`` items whose choice margin (per-token mean) the variant moves most toward ``toward`` over the
    reference, read from the two models' clean outputs only, and every item's shift (largest first in the list)."""
    if len(toward) != len(items) or any(it.n_options != 2 for it in items):
        raise InputError("items_moved_most needs two-option items and one target option per item")
    prompts = [cloze_prompt(it, form) for it in items for _ in range(2)]
    conts = [o for it in items for o in it.options(form)]

    def margins(lm) -> np.ndarray:
        total, n_tok = continuation_logprobs(lm, prompts, conts, batch_size=batch_size)
        mean = (total / n_tok).reshape(len(items), 2)
        return mean[:, 0] - mean[:, 1]

    sign = np.where(np.asarray(toward) == 0, 1.0, -1.0)
    shift = (margins(variant) - margins(reference)) * sign
    return sorted(np.argsort(-shift, kind="stable")[:k].tolist(), key=lambda i: -shift[i]), shift


def _ranked(sites, score: np.ndarray) -> dict:
    """The attention or MLP site first by ``score`` and the head first, as :func:`attribution_hit` reads them."""
    order = [int(k) for k in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")]
    top = next(k for k in order if sites[k].kind in ("attn", "mlp"))
    heads = [k for k in order if sites[k].kind == "head"]
    return {"top_site": sites[top].label, "top_block": sites[top].layer, "top_kind": sites[top].kind,
            "top_head_block": sites[heads[0]].layer if heads else None,
            "top_head": sites[heads[0]].unit if heads else None,
            "ranking": [{"site": sites[k].label, "score": float(score[k])} for k in order[:10]]}


def rank_components(reference, variant, items: Sequence[Item], toward: Sequence[int], *, form: str = "deed",
                    batch_size: int = 8) -> dict:
    """Every attention, MLP and head site of every block read three ways (``reports/organisms/edited/
    cross-model-rules.md``, component section): exact cross-model patching and AtP by the signed share of the
    variant's shift toward ``toward`` they restore (per-token mean), AtP* by its GradDrop magnitude. Per instrument
    the site ranked first and its wall time; the agreement of AtP and AtP* with exact patching over the sites where
    the two models differ. The planted site is never given."""
    if not items or len(toward) != len(items):
        raise InputError("component ranking needs items and one target option per item")
    seqs, starts = option_sequences(reference, [cloze_prompt(it, form) for it in items], [it.options(form) for it in items])
    sign = np.where(np.asarray(toward) == 0, 1.0, -1.0)
    sites = sites_for(reference, ("attn", "mlp", "head"))
    seconds, scores = {}, {}
    t = time.perf_counter()
    exact = cross_model_patch(reference, variant, seqs, starts, sites, batch_size=batch_size)
    seconds["exact"] = time.perf_counter() - t
    scores["exact"], _, shift = restored_share(exact, "mean", toward=sign)
    t = time.perf_counter()
    plain = attribute_cross_model(reference, variant, seqs, starts, sites, batch_size=batch_size)
    seconds["atp"] = time.perf_counter() - t
    scores["atp"] = restored_share(plain, "mean", toward=sign)[0]
    t = time.perf_counter()
    star = attribute_cross_model(reference, variant, seqs, starts, sites, batch_size=batch_size, grad_drop=True)
    seconds["atp_star"] = time.perf_counter() - t
    scores["atp_star"] = grad_drop_score(star, "mean", toward=sign)
    differ = ~exact.identical
    out = {"n_items": len(items), "n_sites": len(sites), "n_sites_differing": int(differ.sum()),
           "shift_mean": float(shift.mean()), "shift_total": float(shift.sum()),
           "sites": [s.label for s in sites], "identical": exact.identical.tolist()}
    for name in COMPONENT_INSTRUMENTS:
        out[name] = {**_ranked(sites, scores[name]), "scores": [float(v) for v in scores[name]],
                     "seconds": round(seconds[name], 1)}
    if differ.sum() >= 2:
        out["atp"]["agreement"] = attribution_agreement(scores["exact"][differ], scores["atp"][differ], top=5)
        out["atp_star"]["agreement"] = attribution_agreement(np.abs(scores["exact"][differ]),
                                                             scores["atp_star"][differ], top=5)
    return out
