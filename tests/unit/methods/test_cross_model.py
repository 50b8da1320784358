"""Cross-model patching: exact on planted differences (a variant that differs from its reference in one block's MLP,
or in one attention head), skipped where nothing differs, the position classes, and bad input."""
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wdprobe.core.model import load_model
from wdprobe.errors import InterventionError
from wdprobe.methods.cross_model import (
    Site,
    attribute_cross_model,
    attribution_agreement,
    choice_margins,
    cross_model_patch,
    grad_drop_score,
    option_sequences,
    restored_share,
    sites_for,
)

PROMPTS = ["Should schools teach music ? Answer:", "Is it right to lie to a friend ? Answer:",
           "What is your view on city parks ? Answer:"]
OPTIONS = [["No , honesty matters .", "A B"], ["music", "parks and roads"], ["Yes", "No , honesty"]]


def _variant(src, dst, tensor: str, rows: slice | tuple | None = None, seed: int = 1):
    """A copy of the model at ``src`` with ``tensor`` (or the part ``rows`` indexes) redrawn: a planted difference."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    w = weights[tensor]
    part = w if rows is None else w[rows]
    part.copy_(torch.randn(part.shape, generator=g) * 0.5)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return load_model(str(dst))


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory):
    from tiny import build_tiny_model_dir

    root = tmp_path_factory.mktemp("xmodel")
    ref_dir = build_tiny_model_dir(root / "ref", n_layers=3, initializer_range=0.3)
    ref = load_model(str(ref_dir))
    mlp1 = _variant(ref_dir, root / "mlp1", "model.layers.1.mlp.down_proj.weight")
    head0 = _variant(ref_dir, root / "head0", "model.layers.2.self_attn.q_proj.weight", rows=slice(0, 32))
    return ref, mlp1, head0


@pytest.fixture(scope="module")
def head_write(three_blocks, tmp_path_factory):
    """The reference with head 1's columns of block 2's output projection redrawn: the head *writes* differently."""
    ref = three_blocks[0]
    return _variant(type(tmp_path_factory.getbasetemp())(ref.path), tmp_path_factory.mktemp("hw") / "m",
                    "model.layers.2.self_attn.o_proj.weight", rows=(slice(None), slice(32, 64)))


def _sequences(lm):
    return option_sequences(lm, PROMPTS, OPTIONS)


def test_continuation_logprob_equals_a_plain_forward_of_each_sequence_alone(three_blocks):
    ref, mlp1, _ = three_blocks
    seqs, starts = _sequences(ref)
    res = cross_model_patch(ref, mlp1, seqs, starts, [Site("resid", 0)], batch_size=4)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        for lm, got in ((ref, res.target_clean[i]), (mlp1, res.source_clean[i])):
            with torch.no_grad():
                logits = lm.hf_model(torch.tensor([s])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            want = sum(float(lp[p - 1, s[p]]) for p in range(st, len(s)))
            assert got == pytest.approx(want, abs=1e-4)
    assert res.n_tokens.tolist() == [len(s) - st for s, st in zip(seqs, starts)]


def test_an_mlp_plant_is_found_exactly_where_it_was_written(three_blocks):
    ref, mlp1, _ = three_blocks
    seqs, starts = _sequences(ref)
    sites = sites_for(ref, ("resid", "attn", "mlp", "head"))
    res = cross_model_patch(ref, mlp1, seqs, starts, sites, batch_size=3)
    by = {s.label: k for k, s in enumerate(res.sites)}
    assert not np.allclose(res.source_clean, res.target_clean)
    # nothing upstream of the plant, nor block 1's attention, differs: skipped and equal to the clean reading
    for label in ("L0.resid", "L0.attn", "L0.mlp", "L0.head0", "L0.head1", "L1.attn", "L1.head0", "L1.head1"):
        assert res.identical[by[label]], label
        np.testing.assert_array_equal(res.patched[by[label]], res.target_clean)
    # the residual after the planted block, and the planted MLP alone, carry all of it
    for label in ("L1.resid", "L1.mlp", "L2.resid"):
        assert not res.identical[by[label]]
        np.testing.assert_allclose(res.patched[by[label]], res.source_clean, atol=1e-4)
    # the shortcut is exact: running the identical sites too gives the same table
    full = cross_model_patch(ref, mlp1, seqs, starts, sites, batch_size=3, skip_identical=False)
    np.testing.assert_allclose(full.patched, res.patched, atol=1e-5)
    assert full.identical.tolist() == res.identical.tolist()
    share, moved, shift = restored_share(res, "mean")
    assert share[by["L1.mlp"]] == pytest.approx(1.0, abs=1e-3) and share[by["L0.resid"]] == 0.0
    assert moved.shape == (len(sites), len(PROMPTS)) and shift.shape == (len(PROMPTS),)


def test_a_head_plant_is_found_in_its_head_and_positions_split_as_documented(three_blocks):
    ref, _, head0 = three_blocks
    seqs, starts = _sequences(ref)
    sites = [Site("head", 2, 0), Site("head", 2, 1), Site("attn", 2), Site("mlp", 1)]
    full = cross_model_patch(ref, head0, seqs, starts, sites)
    assert full.identical.tolist() == [False, True, False, True]
    np.testing.assert_allclose(full.patched[0], full.source_clean, atol=1e-4)
    np.testing.assert_allclose(full.patched[2], full.source_clean, atol=1e-4)
    # at the last block, only the decision point and the continuation feed the continuation's reading
    cont = cross_model_patch(ref, head0, seqs, starts, sites[:1], positions="continuation")
    np.testing.assert_allclose(cont.patched[0], cont.source_clean, atol=1e-4)
    prompt = cross_model_patch(ref, head0, seqs, starts, sites[:1], positions="prompt")
    np.testing.assert_allclose(prompt.patched[0], prompt.target_clean, atol=1e-5)


def test_a_change_of_one_heads_output_weights_is_found_in_that_head(three_blocks, head_write):
    ref = three_blocks[0]
    seqs, starts = _sequences(ref)
    res = cross_model_patch(ref, head_write, seqs, starts, [Site("head", 2, 0), Site("head", 2, 1)])
    assert res.identical.tolist() == [True, False]
    np.testing.assert_allclose(res.patched[1], res.source_clean, atol=1e-4)
    assert not ref.bridge.cfg.use_attn_result  # per-head results were computed for the call only


def test_back_and_forth_patching_mirror_each_other_at_the_planted_site(three_blocks):
    ref, mlp1, _ = three_blocks
    seqs, starts = _sequences(ref)
    into_ref = cross_model_patch(ref, mlp1, seqs, starts, [Site("mlp", 1)])
    into_var = cross_model_patch(mlp1, ref, seqs, starts, [Site("mlp", 1)])
    np.testing.assert_allclose(into_var.patched[0], into_ref.target_clean, atol=1e-4)
    np.testing.assert_allclose(into_ref.target_clean, into_var.source_clean)


def test_choice_margins_by_hand():
    lp = np.array([-2.0, -6.0, -3.0, -1.0])
    n = np.array([1, 3, 2, 1])
    np.testing.assert_allclose(choice_margins(lp, n, "sum"), [4.0, -2.0])
    np.testing.assert_allclose(choice_margins(lp, n, "mean"), [0.0, -0.5])
    with pytest.raises(InterventionError, match="two options"):
        choice_margins(lp[:3], n[:3], "sum")


def test_bad_input_is_refused_with_the_culprit(three_blocks, tiny_lm):
    ref, mlp1, _ = three_blocks
    seqs, starts = _sequences(ref)
    with pytest.raises(InterventionError, match="unknown site kind 'neuron'"):
        Site("neuron", 1)
    with pytest.raises(InterventionError, match="name the unit"):
        Site("head", 1)
    with pytest.raises(InterventionError, match="out of range"):
        sites_for(ref, ("resid",), layers=[3])
    with pytest.raises(InterventionError, match="positions 'middle'"):
        cross_model_patch(ref, mlp1, seqs, starts, [Site("resid", 1)], positions="middle")
    with pytest.raises(InterventionError, match="sequence 0: continuation start"):
        cross_model_patch(ref, mlp1, seqs, [len(seqs[0])] + starts[1:], [Site("resid", 1)])
    with pytest.raises(InterventionError, match="not the same architecture"):
        cross_model_patch(ref, tiny_lm, seqs, starts, [Site("resid", 1)])


def test_models_with_different_tokenizers_are_refused(three_blocks, pct_lm):
    ref, _, _ = three_blocks
    seqs, starts = _sequences(ref)
    with pytest.raises(InterventionError, match="needs one tokenizer"):
        cross_model_patch(ref, pct_lm, seqs, starts, [Site("resid", 1)])


def _nudged(src, dst, tensor: str, eps: float):
    """A copy of the model at ``src`` with ``tensor`` moved by ``eps`` times a random direction: a small change."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    w = weights[tensor]
    w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(2)) * eps * w.abs().mean())
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return load_model(str(dst))


def test_attribution_is_exact_to_first_order_and_zero_where_nothing_differs(three_blocks, tmp_path):
    ref = three_blocks[0]
    small = _nudged(type(tmp_path)(ref.path), tmp_path / "small", "model.layers.1.mlp.down_proj.weight", 1e-2)
    seqs, starts = _sequences(ref)
    sites = sites_for(ref, ("resid", "attn", "mlp", "head"))
    exact = cross_model_patch(ref, small, seqs, starts, sites)
    approx = attribute_cross_model(ref, small, seqs, starts, sites, batch_size=2)
    np.testing.assert_allclose(approx.target_clean, exact.target_clean, atol=1e-4)
    np.testing.assert_allclose(approx.source_clean, exact.source_clean, atol=1e-4)
    assert approx.identical.tolist() == exact.identical.tolist()
    d_exact = exact.patched - exact.target_clean
    d_est = approx.patched - approx.target_clean
    assert np.abs(d_exact).max() > 1e-5  # the nudge is visible
    # first order: the error is a small share of each site's largest effect (second-order terms, and float32 noise)
    scale = np.abs(d_exact).max(axis=1, keepdims=True)
    assert (np.abs(d_est - d_exact) <= 0.05 * scale + 1e-6).all()
    np.testing.assert_array_equal(d_est[approx.identical], 0.0)


def test_attribution_ranks_a_large_plant_first_and_agreement_is_measured(three_blocks):
    ref, mlp1, _ = three_blocks
    seqs, starts = _sequences(ref)
    sites = sites_for(ref, ("attn", "mlp", "head"))
    exact = restored_share(cross_model_patch(ref, mlp1, seqs, starts, sites), "sum")[0]
    approx = restored_share(attribute_cross_model(ref, mlp1, seqs, starts, sites), "sum")[0]
    agree = attribution_agreement(exact, approx, top=1)
    assert np.argmax(np.abs(exact)) == [s.label for s in sites].index("L1.mlp")
    assert set(agree) == {"spearman", "top_k", "top_k_agreement"} and -1 <= agree["spearman"] <= 1
    assert attribution_agreement(np.array([3.0, 1, 0]), np.array([2.0, 1.5, 0]), top=1) == \
        {"spearman": 1.0, "top_k": 1, "top_k_agreement": 1.0}
    with pytest.raises(InterventionError, match="one shape"):
        attribution_agreement(np.zeros(3), np.zeros(2))


def _with_silent_block(src, dst, layer: int):
    """A copy of the model at ``src`` whose block ``layer`` writes nothing (attention and MLP output matrices zero):
    no gradient passes back through its branches, so dropping it must change no attribution."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    for name in (f"model.layers.{layer}.self_attn.o_proj.weight", f"model.layers.{layer}.mlp.down_proj.weight"):
        weights[name].zero_()
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_grad_drop_keeps_plain_attribution_and_drops_exactly_the_paths_through_the_dropped_block(three_blocks, tmp_path):
    ref_dir = type(tmp_path)(three_blocks[0].path)
    silent_dir = _with_silent_block(ref_dir, tmp_path / "silent", 1)
    silent = load_model(str(silent_dir))
    variant = _variant(silent_dir, tmp_path / "variant", "model.layers.0.mlp.down_proj.weight")
    seqs, starts = _sequences(silent)
    sites = sites_for(silent, ("attn", "mlp", "head"))
    plain = attribute_cross_model(silent, variant, seqs, starts, sites, batch_size=2)
    gd = attribute_cross_model(silent, variant, seqs, starts, sites, batch_size=2, grad_drop=True)
    np.testing.assert_allclose(gd.patched, plain.patched, atol=1e-6)  # the plain estimate is unchanged
    assert gd.dropped.shape == (silent.n_layers, len(sites), len(seqs)) and plain.dropped is None
    est = gd.patched - gd.target_clean
    drop = gd.dropped - gd.target_clean
    k_mlp0 = [s.label for s in sites].index("L0.mlp")
    assert np.abs(est[k_mlp0]).max() > 1e-4
    np.testing.assert_array_equal(drop[0, k_mlp0], 0.0)  # its own block dropped: nothing passes back to it
    np.testing.assert_allclose(drop[1, k_mlp0], est[k_mlp0], atol=1e-6)  # the silent block carries nothing
    assert np.abs(drop[2, k_mlp0] - est[k_mlp0]).max() > 1e-5  # block 2 carries part of the plant's effect
    above = [k for k, s in enumerate(sites) if s.layer == 2 and not gd.identical[k]]
    assert above and all(np.array_equal(drop[0, k], est[k]) for k in above)  # blocks below a site: the plain one
    np.testing.assert_array_equal(drop[:, gd.identical], 0.0)
    score = grad_drop_score(gd, "sum")
    hand = np.mean([np.abs(restored_share(replace(gd, patched=gd.dropped[b], dropped=None), "sum")[0])
                    for b in range(silent.n_layers)], axis=0)
    np.testing.assert_allclose(score, hand)
    assert np.argmax(score) == k_mlp0
    with pytest.raises(InterventionError, match="grad_drop=True"):
        grad_drop_score(plain, "sum")
