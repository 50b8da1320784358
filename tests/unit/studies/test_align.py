"""Alignment runs: split, flip targets, change-rate arithmetic, training loop, resume, inside view, CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import (
    alignment_items,
    alignment_vocabulary_text,
    build_tiny_model_dir,
    write_wdct_csv,
)

from wdprobe.data.wdct import Item, Presentation
from wdprobe.errors import AlignmentDataError
from wdprobe.scoring.letters import item_row
from wdprobe.studies.align.finetune import TrainSettings, dpo_loss, epoch_order, phases
from wdprobe.studies.align.targets import (
    change_rates,
    flip_targets,
    split_items,
    trained_forms,
)

# ---- pure arithmetic ------------------------------------------------------------------------------

def test_split_is_seeded_disjoint_and_order_free():
    ids = [f"it{k}" for k in range(50)]
    tr, ho = split_items(ids, 0.3, seed=1)
    assert len(ho) == 15 and len(tr) == 35
    assert not set(tr) & set(ho) and set(tr) | set(ho) == set(ids)
    tr2, ho2 = split_items(list(reversed(ids)), 0.3, seed=1)
    assert set(ho2) == set(ho)  # the side of an id does not depend on the input order
    assert set(split_items(ids, 0.3, seed=2)[1]) != set(ho)  # ... but does depend on the seed
    # a subset keeps each remaining item's side relative ranking: the held-out set of a count split is stable
    assert split_items(ids, 15, seed=1)[1] == ho
    with pytest.raises(AlignmentDataError, match="it3"):
        split_items(ids + ["it3"], 0.5)


def test_flip_targets_need_two_options():
    rows = [{"id": "a", "n_options": 2, "word_choice": 0, "deed_choice": 1},
            {"id": "b", "n_options": "2", "word_choice": "1", "deed_choice": "1"}]
    assert flip_targets(rows, "word") == {"a": 1, "b": 0}
    assert flip_targets(rows, "deed") == {"a": 0, "b": 0}
    with pytest.raises(AlignmentDataError, match="item c: 3 options"):
        flip_targets(rows + [{"id": "c", "n_options": 3, "word_choice": 0}], "word")


def _pres(iid: str, word_order, deed_order) -> Presentation:
    it = Item(iid, "Opinion", "w?", ("w0", "w1"), "d?", ("d0", "d1"))
    return Presentation(it, tuple(word_order), tuple(deed_order))


def _row(p: Presentation, word_letter: str, deed_letter: str) -> dict:
    """An item row whose model put 0.9 on the given letters."""
    lp = {"A": np.log([0.9, 0.1]), "B": np.log([0.1, 0.9])}
    return item_row(p, lp[word_letter], lp[deed_letter])


def test_change_rates_by_hand_in_canonical_space():
    # Four items, options shuffled independently per form (order[j] = canonical option behind letter j).
    P = {"i1": _pres("i1", (1, 0), (0, 1)), "i2": _pres("i2", (0, 1), (1, 0)),
         "i3": _pres("i3", (0, 1), (0, 1)), "i4": _pres("i4", (1, 0), (1, 0))}
    # before: word letters A,A,A,B -> canonical 1,0,0,0 ; deed letters B,A,A,A -> canonical 1,1,0,1
    before = [_row(P["i1"], "A", "B"), _row(P["i2"], "A", "A"), _row(P["i3"], "A", "A"), _row(P["i4"], "B", "A")]
    assert [r["word_choice"] for r in before] == [1, 0, 0, 0] and [r["deed_choice"] for r in before] == [1, 1, 0, 1]
    targets = flip_targets(before, "word")
    assert targets == {"i1": 0, "i2": 1, "i3": 1, "i4": 1}
    # deeds off the target before: i1 (1 vs 0) and i3 (0 vs 1); on it: i2, i4
    # after word training: word letters B,B,B,A -> canonical 0,1,1,1 = the targets
    # deed letters A,B,B,A -> canonical 0,0,1,1: i1 and i3 moved onto the target, i2 moved off, i4 stayed
    after = [_row(P["i1"], "B", "A"), _row(P["i2"], "B", "B"), _row(P["i3"], "B", "B"), _row(P["i4"], "A", "A")]
    assert [r["word_choice"] for r in after] == [0, 1, 1, 1] and [r["deed_choice"] for r in after] == [0, 0, 1, 1]
    cr = change_rates(before, after, targets, "word")
    assert cr.direct == 1.0
    assert (cr.n_indirect, cr.indirect) == (2, 1.0)
    assert (cr.n_away, cr.indirect_away) == (2, 0.5)
    assert cr.following == pytest.approx(0.5) and cr.other_changed == pytest.approx(0.75)
    # a partial word change: only i1 flipped
    partial = [_row(P["i1"], "B", "B"), _row(P["i2"], "A", "A"), _row(P["i3"], "A", "A"), _row(P["i4"], "B", "A")]
    cr = change_rates(before, partial, targets, "word")
    assert cr.direct == 0.25 and cr.indirect == 0.0 and cr.indirect_away == 0.0 and cr.other_changed == 0.0


def test_change_rates_letter_flip_is_not_following():
    """A model that flips every deed *letter* moves deeds to the target exactly as often as away from it."""
    P = [_pres(f"i{k}", (0, 1), (k % 2, 1 - k % 2)) for k in range(8)]
    before = [_row(p, "A", "A") for p in P]  # word canonical 0 everywhere; deed canonical k%2
    after = [_row(p, "B", "B") for p in P]  # every letter flips
    targets = flip_targets(before, "word")  # all 1
    cr = change_rates(before, after, targets, "word")
    assert cr.direct == 1.0
    assert cr.indirect == 1.0 and cr.indirect_away == 1.0 and cr.following == 0.0
    # the same table seen as deed training: the word answers are "other"
    cr_d = change_rates(before, after, flip_targets(before, "deed"), "deed")
    assert cr_d.direct == 1.0 and cr_d.following == 0.0


def test_change_rates_refuse_mismatched_tables():
    P = _pres("x", (0, 1), (0, 1))
    with pytest.raises(AlignmentDataError, match="different items"):
        change_rates([_row(P, "A", "A")], [], {"x": 1}, "word")
    with pytest.raises(ValueError, match="trained form"):
        change_rates([], [], {}, "letters")


def test_dpo_loss_and_schedule_by_hand():
    z = torch.zeros(3)
    assert float(dpo_loss(z, z, z, z, 0.1)) == pytest.approx(math.log(2))
    # margin of 10 nats at beta 0.1 -> -log sigmoid(1)
    lp_c, lp_r = torch.tensor([-1.0]), torch.tensor([-11.0])
    assert float(dpo_loss(lp_c, lp_r, torch.zeros(1), torch.zeros(1), 0.1)) == pytest.approx(math.log(1 + math.exp(-1)))
    assert phases("sft+dpo", 2, 3) == ["sft", "sft", "dpo", "dpo", "dpo"] and phases("dpo", 2, 1) == ["dpo"]
    assert trained_forms("both") == ("word", "deed") and trained_forms("paraphrase") == ("word",)
    assert (epoch_order(10, 0, 3) == epoch_order(10, 0, 3)).all() and not (epoch_order(10, 0, 3) == epoch_order(10, 0, 4)).all()
    with pytest.raises(ValueError, match="unknown method"):
        phases("ppo", 1, 1)


def test_paraphrase_rules_and_table(tmp_path):
    from wdprobe.data.paraphrase import (
        load_paraphrase_table,
        paraphrase_items,
        rule_paraphrases,
    )

    assert rule_paraphrases("What's your opinion on naturopathy?", 2) == ["Where do you stand on naturopathy?",
                                                                          "Which view on naturopathy do you hold?"]
    assert rule_paraphrases("Do you agree with that it's good to apologize?", 1) == ["Would you say that it's good to apologize?"]
    generic = rule_paraphrases("GDP counts ( ) goods.", 3)
    assert len(generic) == 3 and all("GDP counts ( ) goods." in g for g in generic)
    it = Item("x", "Opinion", "What's your opinion on tea?", ("a", "b"), "d", ("c", "e"))
    out = paraphrase_items([it], 2)
    assert [o.id for o in out] == ["x~p0", "x~p1"] and out[0].word_options == it.word_options
    p = tmp_path / "para.csv"
    p.write_text("id,word_stem\nx,Tea: yes or no?\nx,\n")
    with pytest.raises(ValueError, match=r"para.csv, line 3 \(id 'x'\)"):
        load_paraphrase_table(p)


def test_movement_reads_a_planted_shift():
    from wdprobe.studies.align.inside import balanced_difference, movement, stance_axis

    rng = np.random.default_rng(0)
    n, L, d = 200, 3, 16
    y = rng.integers(0, 2, n)
    letter = rng.integers(0, 2, n)
    u, v = np.eye(d)[0], np.eye(d)[1]
    X0 = rng.normal(0, 0.1, (n, L, d)) + (2.0 * y)[:, None, None] * u + (5.0 * letter)[:, None, None] * v
    # the letter is a strong nuisance; balancing removes it from the stance direction
    diff = balanced_difference(X0, y, letter)
    assert abs(diff[0] @ v) < 0.1 and diff[0] @ u == pytest.approx(2.0, abs=0.1)
    axis = stance_axis(X0, y, letter)
    t = 1 - y
    # move every item half-way towards its target in layer 2 only, not at all elsewhere
    Xe = X0.copy()
    Xe[:, 2] += (np.where(t == 1, 1.0, -1.0))[:, None] * u * 1.0
    mv = movement(axis, X0, Xe, t)
    assert axis.spread[2] == pytest.approx(0.1, rel=0.15) and mv["separation"][2] == pytest.approx(20, rel=0.15)
    # one unit along u towards the target = 1 / spread within-answer standard deviations
    assert mv["shift"][2] == pytest.approx(1.0 / axis.spread[2], rel=0.01) and abs(mv["shift"][0]) < 1e-9
    assert mv["read_target_start"][0] == pytest.approx(0.0, abs=0.02)
    Xe[:, 1] += (np.where(t == 1, 1.0, -1.0))[:, None] * u * 4.0  # all the way across
    assert movement(axis, X0, Xe, t)["read_target"][1] == pytest.approx(1.0)


# ---- the training loop on a tiny model ------------------------------------------------------------

@pytest.fixture(scope="module")
def align_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    # a larger init than the default 0.02 gives the random model peaked letter preferences (it answers A to
    # every item), as real base models do; with tiny weights every logit is near zero and nothing is learnable
    model_dir = build_tiny_model_dir(d / "model", seed=3, extra_text=alignment_vocabulary_text(24), initializer_range=0.3)
    data = write_wdct_csv(d / "items.csv", alignment_items(24))
    return model_dir, data


def _lm(model_dir):
    from wdprobe.core.model import load_model

    return load_model(str(model_dir))


def test_applied_weights_match_peft_and_restore_exactly(align_model):
    from wdprobe.core.forward import last_token_logits
    from wdprobe.studies.align.finetune import Tuner

    model_dir, _ = align_model
    lm = _lm(model_dir)
    tuner = Tuner(lm, TrainSettings(rank=4, seed=1))
    for name, p in tuner.params.items():  # LoRA starts as a no-op (B = 0); make it do something
        torch.nn.init.normal_(p, std=0.2)
    prompts = ["What's your opinion on topic1 ? A . We should support topic1 . Answer:", "Answer: A"]  # unequal lengths
    before = last_token_logits(lm, prompts).clone()
    with torch.no_grad():
        enc = tuner._encode(prompts)
        peft_logits = tuner.model(**enc, logits_to_keep=1).logits[:, -1]
    with tuner.applied():
        inside = last_token_logits(lm, prompts)
    after = last_token_logits(lm, prompts)
    assert (inside - before).abs().max() > 1e-3  # the bridge really computed with the adapters
    # the adapted bridge equals peft's own forward, left padding and all
    assert torch.allclose(inside, peft_logits, atol=1e-4)
    assert torch.equal(after, before)  # and the weights came back bit for bit


def test_training_an_easy_target_reaches_full_direct_change(align_model, tmp_path):
    """With options in their shown order only, the flip target of a letter-biased model is one letter:
    the loop must learn it (direct change near 1) and the rates, tables and checkpoints must say so."""
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    res = run_align(tmp_path / "run", model=str(model_dir), data=data, lm=_lm(model_dir), progress=False,
                    config=AlignConfig(n_items=None, sft_epochs=3, dpo_epochs=1, orders="shown", held_out=0.25),
                    train=TrainSettings(lr=2e-2, batch_size=6, rank=4))
    final = {r["set"]: r for r in res.change_rates if r["epoch"] == 4}
    start = {r["set"]: r for r in res.change_rates if r["epoch"] == 0}
    assert start["train"]["direct"] == 0.0  # by construction every target differs from the first answer
    assert final["train"]["direct"] >= 0.95
    split = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert sum(",held_out," in line for line in split) == 6
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [f"epoch-0{k}" for k in range(1, 5)]
    # only the latest checkpoint keeps its optimizer state
    assert [p.parent.name for p in (tmp_path / "run" / "checkpoints").glob("*/optimizer.pt")] == ["epoch-04"]
    assert res.summary["training"]["4"]["objective"] == "dpo"
    inside = res.summary["inside"]
    assert len(inside["trained_shift"]) == 2  # one value per layer of the tiny model
    for name in ("inside_movement.csv", "inside_drift.csv", "inside_ic.csv", "examples.csv"):
        assert (tmp_path / "run" / name).stat().st_size > 100


def test_both_orders_untie_targets_from_letters(align_model, tmp_path):
    """orders='both' shows every trained item with its options both ways round: each item is trained once
    towards A and once towards B, always the letter that shows the item's target option."""
    from wdprobe.runs.rundir import read_csv
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    lm = _lm(model_dir)
    run_align(tmp_path / "run", model=str(model_dir), data=data, lm=lm, progress=False,
              config=AlignConfig(n_items=12, method="sft", sft_epochs=1, orders="both", held_out=0.5),
              train=TrainSettings(lr=1e-3, batch_size=4))
    ex = read_csv(tmp_path / "run" / "examples.csv")
    targets = {r["id"]: int(r["target"]) for r in read_csv(tmp_path / "run" / "split.csv") if r["set"] == "train"}
    assert len(ex) == 2 * len(targets) == 12
    a_id, b_id = (lm.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B"))
    options = {it[1]: it[3] for it in alignment_items(24)}
    for iid, t in targets.items():
        mine = [r for r in ex if r["item_id"] == iid]
        assert sorted(int(r["target"]) for r in mine) == sorted([a_id, b_id])
        for r in mine:
            letter = "A" if int(r["target"]) == a_id else "B"
            assert f"{letter}. {options[iid][t]}" in r["prompt"]  # the target letter shows the target option
            assert int(r["rejected"]) == (b_id if letter == "A" else a_id)


def test_resume_gives_the_same_next_epoch(align_model, tmp_path):
    from safetensors.torch import load_file

    from wdprobe.runs.rundir import read_csv
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    cfg = AlignConfig(n_items=12, sft_epochs=2, dpo_epochs=1, held_out=0.5)
    ts = TrainSettings(lr=1e-2, batch_size=4, rank=4)
    run_align(tmp_path / "straight", model=str(model_dir), data=data, lm=_lm(model_dir), config=cfg, train=ts, progress=False)
    run_align(tmp_path / "halted", model=str(model_dir), data=data, lm=_lm(model_dir), config=cfg, train=ts, progress=False,
              stop_after_epoch=1)
    assert not (tmp_path / "halted" / "checkpoints" / "epoch-02").exists()
    run_align(tmp_path / "halted", model=str(model_dir), data=data, lm=_lm(model_dir), config=cfg, train=ts, progress=False)
    for epoch in (2, 3):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / f"epoch-0{epoch}" / "trainable.safetensors"))
        b = load_file(str(tmp_path / "halted" / "checkpoints" / f"epoch-0{epoch}" / "trainable.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
        ra = read_csv(tmp_path / "straight" / "epochs" / f"epoch-0{epoch}" / "items.csv")
        rb = read_csv(tmp_path / "halted" / "epochs" / f"epoch-0{epoch}" / "items.csv")
        assert [r["word_choice"] for r in ra] == [r["word_choice"] for r in rb]
        assert np.allclose([float(r["p_word_0"]) for r in ra], [float(r["p_word_0"]) for r in rb], atol=1e-5)
    # a different setting in the same directory is refused, not mixed in
    from wdprobe.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match="sft_epochs"):
        run_align(tmp_path / "halted", model=str(model_dir), data=data, lm=_lm(model_dir), progress=False,
                  config=AlignConfig(n_items=12, sft_epochs=3, dpo_epochs=1, held_out=0.5), train=ts)


def test_full_tuning_and_both_forms(align_model, tmp_path):
    from wdprobe.core.forward import last_token_logits
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    lm = _lm(model_dir)
    before = last_token_logits(lm, ["Answer: A"]).clone()
    res = run_align(tmp_path / "run", model=str(model_dir), data=data, lm=lm, progress=False,
                    config=AlignConfig(n_items=12, form="both", method="sft", sft_epochs=2, held_out=0.5),
                    train=TrainSettings(tuning="full", lr=1e-3, batch_size=4))
    assert not torch.equal(last_token_logits(lm, ["Answer: A"]), before)  # full tuning trains the bridge itself
    ex = (tmp_path / "run" / "examples.csv").read_text()
    assert ",word," in ex and ",deed," in ex
    assert {r["set"] for r in res.change_rates} == {"train", "held_out", "all"}


def test_paraphrase_mode_adds_reworded_word_prompts(align_model, tmp_path):
    from wdprobe.runs.rundir import read_csv
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    run_align(tmp_path / "run", model=str(model_dir), data=data, lm=_lm(model_dir), progress=False,
              config=AlignConfig(n_items=8, form="paraphrase", method="sft", sft_epochs=1, paraphrases=2, held_out=0.5,
                                 orders="shown"), train=TrainSettings(lr=1e-3, batch_size=4))
    ex = read_csv(tmp_path / "run" / "examples.csv")
    assert len(ex) == 4 * 3 and sum("~p" in r["item_id"] for r in ex) == 8
    assert any("Where do you stand on" in r["prompt"] for r in ex)
    targets = {r["id"]: r["target"] for r in read_csv(tmp_path / "run" / "split.csv")}
    # a paraphrase is trained towards its item's target: same letter when the options are shown in the same order
    by_item = {}
    for r in ex:
        by_item.setdefault(r["item_id"].split("~p")[0], set()).add(r["target"])
    assert all(len(v) == 1 for v in by_item.values()) and set(by_item) <= set(targets)


def test_cli_align_and_report(align_model, tmp_path, capsys):
    from wdprobe.cli import main

    model_dir, data = align_model
    run = tmp_path / "run"
    args = ["align", "--model", str(model_dir), "--data", str(data), "--out", str(run), "--form", "deed",
            "--method", "sft+dpo", "--sft-epochs", "1", "--dpo-epochs", "1", "--items", "12", "--orders", "shown",
            "--batch-size", "4", "--lr", "1e-2", "--rank", "4", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held_out" in out and "direct" in out
    manifest = (run / "manifest.json").read_text()
    assert '"form": "deed"' in manifest and '"lr": 0.01' in manifest and '"beta": 0.1' in manifest
    assert main(args) == 0  # a finished run resumes to the same tables without training again
    assert main(["align-report", str(run), "--out", str(tmp_path / "report")]) == 0
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "trained on deeds" in readme and "| 6 |" in readme  # 6 trained and 6 held-out items
    # a verdict table first: one row per run, its first sentence, the whole finding below (and folded on the page)
    assert "| question | what this run says |" in readme and "| Trained on deeds | Words " in readme
    assert readme.index("## Findings") < readme.index("## Settings")  # verdicts before the settings
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<li><details><summary><b>Trained on deeds</b>" in page
    assert (tmp_path / "report" / "tables" / "run" / "change_rates.csv").is_file()
    # evaluated in both orders (the default): the rates are also read on content choices
    assert (run / "change_rates_content.csv").is_file() and "Read on content choices" in readme
    # the following tests the findings quote are kept beside the tables, by letter and on content choices
    import pandas as pd

    tests = pd.read_csv(tmp_path / "report" / "tables" / "run" / "following_tests.csv")
    assert set(tests.reading) <= {"letter", "content"} and (tests.low <= tests.following).all()
    assert "On content choices" in readme or tests[tests.reading == "content"].empty
    # two runs of the same form keep their own tables (keyed by run directory, never by form)
    import shutil

    shutil.copytree(run, tmp_path / "run-both-orders")
    (tmp_path / "run-both-orders" / "change_rates.csv").write_text((run / "change_rates.csv").read_text() + "")
    assert main(["align-report", str(run), str(tmp_path / "run-both-orders"), "--out", str(tmp_path / "report2")]) == 0
    assert {p.name for p in (tmp_path / "report2" / "tables").iterdir()} == {"run", "run-both-orders"}
    # bad input names the culprit
    assert main(args[:-1] + ["--held-out", "1.5"]) == 2
    assert "held_out must be a fraction" in capsys.readouterr().err


def test_a_new_letter_habit_is_not_a_content_change():
    """Before: no letter preference, content prefers option 0 in both forms. After 'training': every answer is
    letter A whatever the options (a letter habit). The shown reading calls half the items changed; the content
    reading (both orders) sees no change at all."""
    from wdprobe.data.wdct import Item
    from wdprobe.scoring.formats import item_columns
    from wdprobe.scoring.orders import letter_prompt_row
    from wdprobe.studies.align.stages import content_change_rates

    def rows(prior):
        out = []
        for k in range(8):
            item = Item(f"i{k}", "Opinion", "Q?", ("a", "b"), "Act?", ("x", "y"))
            shown = (k % 2, 1 - k % 2)
            p = _pres(f"i{k}", shown, shown)
            prompt_rows = []
            for order in (shown, shown[::-1]):
                for form in ("word", "deed"):
                    lp = np.log([prior[j] * (0.6 if c == 0 else 0.4) for j, c in enumerate(order)])
                    prompt_rows.append(letter_prompt_row(item, form, order, order == shown, True, lp))
            lp_shown = np.log([prior[j] * (0.6 if c == 0 else 0.4) for j, c in enumerate(shown)])
            row = item_row(p, lp_shown, lp_shown)
            row.update(item_columns(item, prompt_rows))
            out.append(row)
        return out

    before, after = rows([0.5, 0.5]), rows([0.95, 0.05])
    split = {r["id"]: {"set": "train"} for r in before}
    targets = {r["id"]: 1 for r in before}  # train towards option 1
    assert change_rates(before, after, targets, "word").other_changed == 0.5  # shown: the letter moved deeds
    content = content_change_rates({0: (before, None), 1: (after, None)}, split, targets, "word")
    last = [r for r in content if r["epoch"] == 1 and r["set"] == "train"][0]
    assert last["direct"] == 0.0 and last["other_changed"] == 0.0 and last["indirect"] == 0.0
    assert content_change_rates({0: ([{"id": "i0", "word_content_choice": ""}], None)}, split, targets, "word") == []


def test_following_is_worded_from_its_test():
    from wdprobe.studies.align.report import following_text

    # two options: a form whose answers change at random moves on and off the target alike
    random_moves = {"indirect": 0.5, "n_indirect": 24, "indirect_away": 0.5, "n_away": 24}
    assert "no more than answers changing at random" in following_text(random_moves, "By letter")
    follows = {"indirect": 0.9, "n_indirect": 30, "indirect_away": 0.1, "n_away": 30}
    text = following_text(follows, "On content choices")
    assert text.startswith("On content choices: the other form follows the trained stance, following 0.80 [")
    assert "following not measurable" in following_text({"indirect": 0.5, "n_indirect": 10, "indirect_away": 0.0,
                                                         "n_away": 0}, "By letter")


def test_an_aligned_run_exports_the_model_it_trained(align_model, tmp_path):
    """The exported directory is the run's model after the epoch: the same logits as the tuner with that
    checkpoint applied, every tensor LoRA does not touch bit-identical to the base, its origin recorded."""
    from safetensors.torch import load_file

    from wdprobe.core.forward import last_token_logits
    from wdprobe.errors import InputError, IntegrityError
    from wdprobe.studies.align.export import aligned_record, export_aligned
    from wdprobe.studies.align.finetune import Tuner, load_checkpoint
    from wdprobe.studies.align.stages import AlignConfig, run_align

    model_dir, data = align_model
    train = TrainSettings(lr=2e-2, batch_size=6, rank=4)
    run = tmp_path / "run"
    run_align(run, model=str(model_dir), data=data, lm=_lm(model_dir), progress=False, train=train,
              config=AlignConfig(n_items=12, sft_epochs=2, dpo_epochs=0, method="sft", orders="shown"))
    record = export_aligned(run, tmp_path / "aligned", epoch=1, model=str(model_dir))
    assert record["epoch"] == 1 and aligned_record(tmp_path / "aligned") == record and record["form"] == "word"
    prompts = ["What's your opinion on topic1 ? A . We should support topic1 . Answer:", "Answer: B"]
    lm = _lm(model_dir)
    tuner = Tuner(lm, train)
    load_checkpoint(run, 1, tuner)
    with tuner.applied():
        want = last_token_logits(lm, prompts).clone()
    base_logits = last_token_logits(lm, prompts)
    got = last_token_logits(_lm(tmp_path / "aligned"), prompts)
    assert (want - base_logits).abs().max() > 1e-3  # the epoch changed the model
    assert torch.allclose(got, want, atol=1e-4)
    base = load_file(str(next(model_dir.glob("*.safetensors"))))
    exported = load_file(str(next((tmp_path / "aligned").glob("*.safetensors"))))
    untouched = [k for k in base if not any(t in k for t in train.target_modules)]
    assert untouched and all(torch.equal(base[k], exported[k]) for k in untouched)
    assert any(not torch.equal(base[k], exported[k]) for k in base if k not in untouched)
    with pytest.raises(InputError, match="not empty"):
        export_aligned(run, tmp_path / "aligned", model=str(model_dir))
    with pytest.raises(InputError, match="epoch 5 has no saved checkpoint"):
        export_aligned(run, tmp_path / "other", epoch=5, model=str(model_dir))
    other = build_tiny_model_dir(tmp_path / "other-model", seed=4, extra_text=alignment_vocabulary_text(24),
                                 initializer_range=0.3)
    with pytest.raises(IntegrityError, match="revision"):
        export_aligned(run, tmp_path / "mixed", model=str(other))
