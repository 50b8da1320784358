"""Shared-prefix packing: the tree layout, and branches that compute what their own sequences compute alone."""
import numpy as np
import pytest
import torch

from wdprobe.core.packing import Tree, common_prefix_length, pack_trees, packed_forward, tree_batches, tree_of
from wdprobe.errors import InputError, InterventionError
from wdprobe.methods.interventions import Intervention, Row, run_interventions, run_tree_interventions

PROMPTS = ["Should schools teach music ? A parks B roads Answer:", "Should schools teach music ? A roads B parks Answer:",
           "Should schools teach art ? Answer:"]


def _tokens(lm, texts):
    return [lm.encode([t])["input_ids"][0].tolist() for t in texts]


def test_tree_of_keeps_one_token_per_branch_and_rebuilds_every_sequence():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4]]
    t = tree_of(seqs)
    assert t.prefix == (1, 2, 3) and t.branches == ((4,), (5, 6), (4,))
    assert [list(t.sequence(k)) for k in range(3)] == seqs
    assert t.n_tokens == 3 + 4 and t.longest == 5
    # identical sequences still keep their last token in the branch (its next-token distribution is read there)
    assert tree_of([[7, 8], [7, 8]]).prefix == (7,)
    assert common_prefix_length([[1, 2], [3]]) == 0
    with pytest.raises(InputError, match="non-empty"):
        tree_of([[1], []])


def test_packed_mask_lets_a_branch_see_the_prefix_and_itself_only():
    b = pack_trees([Tree((1, 2), ((3, 4), (5,)))], pad_id=0)
    allowed = b.attention_mask[0, 0] == 0
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 2]
    assert b.columns[0] == [[0, 1, 2, 3], [0, 1, 4]]
    assert allowed[4].tolist() == [True, True, False, False, True]  # the second branch does not see the first
    assert allowed[3].tolist() == [True, True, True, True, False]
    # a shorter tree is left-padded and its pad columns attend to themselves only
    b2 = pack_trees([Tree((1, 2), ((3, 4), (5,))), Tree((), ((9,),))], pad_id=0)
    assert b2.columns[1] == [[4]] and (b2.attention_mask[1, 0, 0] == 0).tolist() == [True, False, False, False, False]


def test_tree_batches_respect_the_token_budget():
    trees = [Tree((1,) * n, ((2,),)) for n in (3, 9, 5, 1)]
    batches = tree_batches(trees, max_tokens=12)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert all(len(b) * trees[b[0]].n_tokens <= 12 or len(b) == 1 for b in batches)


def test_branches_compute_what_their_sequences_compute_alone(tiny_lm):
    seqs = _tokens(tiny_lm, PROMPTS)
    tree = tree_of(seqs)
    assert len(tree.prefix) == 4  # BOS and "Should schools teach" are shared
    ids = list(range(4, 10))
    plain = run_interventions(tiny_lm, PROMPTS, [Row(i) for i in range(3)], ids, pack=False)
    shared = run_tree_interventions(tiny_lm, [tree], [[[], [], []]], ids)[0]
    np.testing.assert_allclose(shared, plain, atol=1e-5)
    # every position of every branch, read through packed_forward, equals the plain run's logits there
    b = pack_trees([tree], pad_id=0)
    reads = [(0, c) for cols in b.columns[0] for c in cols]
    logits = packed_forward(tiny_lm, b, reads)
    k = 0
    for s in seqs:
        full = tiny_lm.bridge.run_with_hooks(torch.tensor([s]))[0]
        np.testing.assert_allclose(logits[k: k + len(s)].detach().numpy(), full.detach().numpy(), atol=1e-4)
        k += len(s)


def test_branch_interventions_equal_separate_rows_and_the_prefix_is_refused(tiny_lm):
    seqs = _tokens(tiny_lm, PROMPTS[:2])
    tree = tree_of(seqs)
    P = len(tree.prefix)
    u = torch.ones(tiny_lm.d_model) / 8
    hook = "blocks.1.hook_resid_pre"
    ivs = [[Intervention(hook, P, "add", 3 * u)], [Intervention(hook, -1, "set", u)]]
    shared = run_tree_interventions(tiny_lm, [tree], [ivs], [4, 5])[0]
    rows = [Row(0, [Intervention(hook, P, "add", 3 * u)]), Row(1, [Intervention(hook, -1, "set", u)])]
    np.testing.assert_allclose(shared, run_interventions(tiny_lm, PROMPTS[:2], rows, [4, 5], pack=False), atol=1e-5)
    with pytest.raises(InterventionError, match="shared prefix cannot be patched"):
        run_tree_interventions(tiny_lm, [tree], [[[Intervention(hook, 0, "add", u)], []]], [4, 5])
    with pytest.raises(InterventionError, match="one list per branch"):
        run_tree_interventions(tiny_lm, [tree], [[[]]], [4, 5])


def test_grouped_letter_scoring_and_shared_cloze_prompts_equal_separate_rows(tiny_lm_wide, wdct_csv):
    from wdprobe.core.option_scoring import continuation_logprobs
    from wdprobe.data.prompts import cloze_prompt, normal_prompt
    from wdprobe.data.wdct import Presentation, load_wdct, present
    from wdprobe.scoring.letters import next_token_logprobs
    from wdprobe.scoring.orders import orders_of

    lm = tiny_lm_wide
    texts, groups, prompts, conts = [], [], [], []
    for p in present(load_wdct(wdct_csv), seed=0):
        for f in ("word", "deed"):
            groups.append([])
            for order, _, _ in orders_of(p, f, "cyclic"):
                groups[-1].append(len(texts))
                texts.append(normal_prompt(Presentation(p.item, order, order), f))
            prompts += [cloze_prompt(p.item, f)] * p.item.n_options
            conts += list(p.item.options(f))
    assert max(len(g) for g in groups) >= 3  # items with more options bring more orders
    ids = list(range(4, 10))
    np.testing.assert_allclose(next_token_logprobs(lm, texts, ids, groups=groups), next_token_logprobs(lm, texts, ids),
                               atol=1e-5)
    shared, n1 = continuation_logprobs(lm, prompts, conts)
    apart, n2 = continuation_logprobs(lm, prompts, conts, share_prefix=False)
    np.testing.assert_allclose(shared, apart, atol=1e-4)
    assert (n1 == n2).all()
    with pytest.raises(InputError, match="exactly once"):
        next_token_logprobs(lm, texts, ids, groups=groups[1:])
