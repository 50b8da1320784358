"""The one intervention mechanism: identities, batching, prefix sharing, attribution vs exact, bad input."""
import numpy as np
import pytest
import torch

from wdprobe.core.forward import last_token_logits
from wdprobe.errors import InterventionError, TokenAlignmentError
from wdprobe.methods.interventions import (
    Intervention,
    Row,
    parse_layers,
    resid_hook,
    residuals_at,
    run_interventions,
)
from wdprobe.methods.patching import (
    aligned_tokens,
    attribution_patching,
    exact_patching,
    exact_patching_one_by_one,
    rank_correlation,
)

PROMPTS = ["What is your view on city parks ? Answer:", "Should schools teach music ? A B Answer:",
           "Is it right to lie to a friend ? No , honesty matters . Answer:"]
# aligned pairs: same token count, only the option words differ
CLEAN = ["Should schools teach music ? A parks B roads Answer:", "What is your view ? A music B math Answer:"]
CF = ["Should schools teach music ? A roads B parks Answer:", "What is your view ? A math B music Answer:"]


def _ids(lm, n=6):
    return list(range(4, 4 + n))


def _all_resid_post(lm):
    return [resid_hook(l, "resid_post", lm.bridge.cfg.n_layers) for l in range(lm.bridge.cfg.n_layers)]


def test_clean_rows_equal_plain_scoring(tiny_lm):
    lp = run_interventions(tiny_lm, PROMPTS, [Row(i) for i in range(3)], _ids(tiny_lm), pack=False)
    ref = torch.log_softmax(last_token_logits(tiny_lm, PROMPTS).float(), -1)[:, _ids(tiny_lm)].numpy()
    np.testing.assert_allclose(lp, ref, atol=1e-5)


def test_patching_a_run_with_its_own_activations_changes_nothing(tiny_lm):
    hooks = _all_resid_post(tiny_lm)
    own = residuals_at(tiny_lm, PROMPTS, hooks)
    rows = [Row(i, [Intervention(h, p, "set", own[h][i][p]) for h in hooks for p in range(len(own[h][i]))])
            for i in range(3)]
    clean = run_interventions(tiny_lm, PROMPTS, [Row(i) for i in range(3)], _ids(tiny_lm))
    patched = run_interventions(tiny_lm, PROMPTS, rows, _ids(tiny_lm))
    np.testing.assert_allclose(patched, clean, atol=1e-5)


@pytest.mark.parametrize("pack", [False, True])
def test_patching_every_layer_final_position_reproduces_the_source(tiny_lm, pack):
    hooks = _all_resid_post(tiny_lm)
    src = residuals_at(tiny_lm, PROMPTS, hooks, positions=[[-1]] * 3)
    # prompt i receives the final-position residuals of prompt i+1 at every layer
    rows = [Row(i, [Intervention(h, -1, "set", src[h][(i + 1) % 3][0]) for h in hooks]) for i in range(3)]
    patched = run_interventions(tiny_lm, PROMPTS, rows, _ids(tiny_lm), pack=pack)
    source = run_interventions(tiny_lm, PROMPTS, [Row((i + 1) % 3) for i in range(3)], _ids(tiny_lm))
    np.testing.assert_allclose(patched, source, atol=1e-5)
    clean = run_interventions(tiny_lm, PROMPTS, [Row(i) for i in range(3)], _ids(tiny_lm))
    assert np.abs(patched - clean).max() > 1e-3  # the patch did something


def test_alpha_zero_steering_is_identity_and_nonzero_is_not(tiny_lm):
    d = tiny_lm.bridge.cfg.d_model
    u = torch.randn(d, generator=torch.Generator().manual_seed(0))
    hook = resid_hook(1, "resid_pre", tiny_lm.bridge.cfg.n_layers)
    clean = run_interventions(tiny_lm, PROMPTS, [Row(i) for i in range(3)], _ids(tiny_lm))
    zero = run_interventions(tiny_lm, PROMPTS, [Row(i, [Intervention(hook, -1, "add", 0.0 * u)]) for i in range(3)],
                             _ids(tiny_lm))
    np.testing.assert_allclose(zero, clean, atol=1e-6)
    moved = run_interventions(tiny_lm, PROMPTS, [Row(i, [Intervention(hook, -1, "add", 5.0 * u)]) for i in range(3)],
                              _ids(tiny_lm))
    assert np.abs(moved - clean).max() > 1e-3


def test_projection_patch_replaces_only_the_component_along_the_direction(tiny_lm):
    hooks = _all_resid_post(tiny_lm)[:1]
    acts = residuals_at(tiny_lm, PROMPTS[:2], hooks, positions=[[-1], [-1]])
    x, s = acts[hooks[0]][0][0], acts[hooks[0]][1][0]
    u = torch.zeros_like(x)
    u[3] = 1.0
    # projecting prompt 1's value onto axis 3 == setting x with coordinate 3 replaced
    expected = x.clone()
    expected[3] = s[3]
    a = run_interventions(tiny_lm, PROMPTS, [Row(0, [Intervention(hooks[0], -1, "project", s, u)])], _ids(tiny_lm))
    b = run_interventions(tiny_lm, PROMPTS, [Row(0, [Intervention(hooks[0], -1, "set", expected)])], _ids(tiny_lm))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_prefix_shared_copies_equal_separate_rows(tiny_lm):
    hooks = _all_resid_post(tiny_lm)
    src = residuals_at(tiny_lm, PROMPTS, hooks, positions=[[-1]] * 3)
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(3):
        rows.append(Row(i))
        for h in hooks:
            u = torch.randn(tiny_lm.bridge.cfg.d_model, generator=g)
            u /= u.norm()
            rows += [Row(i, [Intervention(h, -1, "set", src[h][(i + 2) % 3][0])]),
                     Row(i, [Intervention(h, -1, "project", src[h][(i + 1) % 3][0], u)]),
                     Row(i, [Intervention(h, -1, "add", 4 * u)])]
    separate = run_interventions(tiny_lm, PROMPTS, rows, _ids(tiny_lm), pack=False)
    shared = run_interventions(tiny_lm, PROMPTS, rows, _ids(tiny_lm), pack=True)
    np.testing.assert_allclose(shared, separate, atol=1e-5)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_batched_exact_patching_equals_one_patch_per_forward(tiny_lm, shared_prefix):
    hooks = [resid_hook(l, k, 2) for l in (0, 1) for k in ("resid_pre", "resid_post")]
    ids = [tiny_lm.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    # row_tokens=20 splits each position's copies over several packed rows
    batched = exact_patching(tiny_lm, CLEAN, CF, hooks, ids, batch_size=7, shared_prefix=shared_prefix, row_tokens=20)
    for i in range(2):
        one = exact_patching_one_by_one(tiny_lm, CLEAN[i], CF[i], hooks, ids)
        np.testing.assert_allclose(batched[i]["patched"], one, atol=1e-5)
        # before the option words the prompts agree: those patches leave the counterfactual run as it was
        assert np.allclose(one[:, :5], batched[i]["counterfactual"], atol=1e-5)
    # patching resid_pre of layer 0 at every position turns the counterfactual into the clean run
    assert batched[0]["patched"].shape == (4, len(tiny_lm.tokenizer(CLEAN[0])["input_ids"]))


def test_attribution_equals_exact_for_a_metric_linear_in_the_patched_activation(tiny_lm):
    # logits are linear in the unembedding's input, so the letter log-odds' first-order estimate is exact
    ids = [tiny_lm.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    exact = exact_patching(tiny_lm, CLEAN, CF, ["unembed.hook_in"], ids)
    attr = attribution_patching(tiny_lm, CLEAN, CF, ["unembed.hook_in"], ids)
    for e, a in zip(exact, attr):
        np.testing.assert_allclose(a["patched"], e["patched"], atol=1e-4)
        assert a["clean"] == pytest.approx(e["clean"], abs=1e-5)
        assert e["patched"][0, -1] == pytest.approx(e["clean"], abs=1e-5)  # the last position carries it all


def test_attribution_tracks_exact_patching_on_residual_hooks(tiny_lm):
    hooks = [resid_hook(l, "resid_pre", 2) for l in (0, 1)]
    ids = [tiny_lm.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    exact = exact_patching(tiny_lm, CLEAN, CF, hooks, ids)
    attr = attribution_patching(tiny_lm, CLEAN, CF, hooks, ids)
    e = np.concatenate([r["patched"].ravel() - r["counterfactual"] for r in exact])
    a = np.concatenate([r["patched"].ravel() - r["counterfactual"] for r in attr])
    assert rank_correlation(a, e) > 0.3
    # parameters keep requiring gradients after the backward pass
    assert all(p.requires_grad for p in tiny_lm.hf_model.parameters())


def test_bad_input_gets_clear_errors(tiny_lm):
    with pytest.raises(TokenAlignmentError, match="prompt pair 0: .* 12 and 10 tokens"):
        exact_patching(tiny_lm, CLEAN[:1], ["Should schools teach music ? A B Answer:"], ["blocks.0.hook_resid_pre"], [5, 6])
    with pytest.raises(TokenAlignmentError, match="item ev1"):
        aligned_tokens(tiny_lm.tokenizer, CLEAN[0], "short prompt", name="item ev1")
    with pytest.raises(InterventionError, match=r"layer 2 out of range.*0\.\.1"):
        resid_hook(2, "resid_post", 2)
    with pytest.raises(InterventionError, match=r"layer\(s\) \[7\] out of range"):
        parse_layers("0,7", 2)
    with pytest.raises(InterventionError, match="unknown residual hook kind 'resid_side'"):
        resid_hook(0, "resid_side", 2)
    with pytest.raises(InterventionError, match="hook 'blocks.9.hook_resid_post' does not exist"):
        run_interventions(tiny_lm, PROMPTS, [Row(0, [Intervention("blocks.9.hook_resid_post", -1, "add",
                                                                  torch.zeros(64))])], [5], pack=False)
    with pytest.raises(InterventionError, match="position 40 out of range for prompt 0"):
        run_interventions(tiny_lm, PROMPTS, [Row(0, [Intervention("blocks.0.hook_resid_post", 40, "add",
                                                                  torch.zeros(64))])], [5])
    with pytest.raises(InterventionError, match="needs a direction"):
        Intervention("blocks.0.hook_resid_post", -1, "project", torch.zeros(64))


def test_prompts_longer_than_the_sliding_window_are_not_packed(tiny_lm):
    # the tiny model's sliding window is 64 tokens: a longer prompt must run unpacked and stay exact
    long_prompt = " ".join(["music"] * 80) + " ? Answer:"
    prompts = [long_prompt, PROMPTS[0]]
    u = torch.ones(tiny_lm.bridge.cfg.d_model) / 8
    rows = [Row(i, [Intervention("blocks.0.hook_resid_post", -1, "add", k * u)]) for i in range(2) for k in range(3)]
    auto = run_interventions(tiny_lm, prompts, rows, _ids(tiny_lm))
    separate = run_interventions(tiny_lm, prompts, rows, _ids(tiny_lm), pack=False)
    np.testing.assert_allclose(auto, separate, atol=1e-6)
    with pytest.raises(InterventionError, match="sliding window \\(64 tokens\\)"):
        run_interventions(tiny_lm, prompts, rows, _ids(tiny_lm), pack=True)


def test_option_swap_alignment_is_checked_slot_by_slot(tiny_lm, wdct_csv):
    from wdprobe.data.prompts import normal_prompt
    from wdprobe.data.wdct import load_wdct, present
    from wdprobe.methods.patching import swap_alignment, swap_counterfactual

    pres = {p.item.id: p for p in present(load_wdct(wdct_csv), seed=0)}
    ok = pres["op1"]  # "Parks matter more." / "Roads matter more.": same length, swap aligns
    tokens = swap_alignment(tiny_lm.tokenizer, ok, "word", normal_prompt(ok, "word"),
                            normal_prompt(swap_counterfactual(ok, "word"), "word"))
    assert tokens[-1] == "Answer:" or tokens[-1].strip() in (":", "Answer")
    bad = pres["ev1"]  # "No, honesty matters." (5 tokens) / "Yes, if it helps." (6): same total, shifted slots
    clean, cf = normal_prompt(bad, "word"), normal_prompt(swap_counterfactual(bad, "word"), "word")
    assert len(tiny_lm.tokenizer(clean)["input_ids"]) == len(tiny_lm.tokenizer(cf)["input_ids"])
    with pytest.raises(TokenAlignmentError, match=r"item ev1 \(word\): option A spans \d tokens .* \d in the swapped"):
        swap_alignment(tiny_lm.tokenizer, bad, "word", clean, cf)
    with pytest.raises(TokenAlignmentError, match="three|two options"):
        swap_counterfactual(pres["ev2"], "word")


def test_a_new_intervention_kind_is_one_class_and_one_registry_line(tiny_lm):
    """Directional ablation (the component along a unit direction set to zero), registered as a new kind, equals a
    'project' patch whose source has no component along that direction; mixed kinds on one hook each act alone."""
    from wdprobe.methods import interventions as iv_module
    from wdprobe.methods.interventions import InterventionKind, register_intervention_kind

    class AblateDirection(InterventionKind):
        """The activation's component along the unit ``direction`` removed."""

        name = "ablate"
        needs_direction = True

        @staticmethod
        def apply(current, value, direction):
            return current - (current * direction).sum(-1, keepdim=True) * direction

    register_intervention_kind(AblateDirection)
    try:
        with pytest.raises(InterventionError, match="registered already"):
            register_intervention_kind(AblateDirection)
        hook = resid_hook(0, "resid_post", tiny_lm.n_layers)
        d = torch.randn(tiny_lm.d_model)
        d /= d.norm()
        zero = torch.zeros(tiny_lm.d_model)
        ablated = run_interventions(tiny_lm, PROMPTS, [Row(i, [Intervention(hook, -1, "ablate", zero, d)])
                                                       for i in range(3)], _ids(tiny_lm), pack=False)
        projected = run_interventions(tiny_lm, PROMPTS, [Row(i, [Intervention(hook, -1, "project", zero, d)])
                                                         for i in range(3)], _ids(tiny_lm), pack=False)
        np.testing.assert_allclose(ablated, projected, atol=1e-5)
        # one row ablated and one steered at the same hook in one batch: each as it would be alone
        add = torch.randn(tiny_lm.d_model)
        both = run_interventions(tiny_lm, PROMPTS[:2], [Row(0, [Intervention(hook, -1, "ablate", zero, d)]),
                                                        Row(1, [Intervention(hook, -1, "add", add)])], _ids(tiny_lm),
                                 pack=False)
        alone = run_interventions(tiny_lm, PROMPTS[1:2], [Row(0, [Intervention(hook, -1, "add", add)])], _ids(tiny_lm),
                                  pack=False)
        np.testing.assert_allclose(both[0], ablated[0], atol=1e-5)
        np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    finally:
        iv_module.INTERVENTION_KINDS.pop("ablate", None)
    with pytest.raises(InterventionError, match="unknown intervention kind 'ablate'"):
        Intervention(hook, -1, "ablate", zero, d)
    with pytest.raises(InterventionError, match="'project' intervention at .* needs a direction"):
        Intervention(hook, -1, "project", zero)
