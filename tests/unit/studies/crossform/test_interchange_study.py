"""The cross-form interchange study on a tiny Gemma-3: pairs are built as the protocol says (opposite stances, labels
that are never the base's own answer, held-out pairs from held-out items only), a run writes one table per block and
resumes, other settings are refused, and the summary's numbers are recomputed by hand on a made-up outcome table."""
import numpy as np
import pandas as pd
import pytest

from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.crossform.interchange import (
    InterchangeSettings,
    item_stances,
    run_cross_form,
    split_items,
    stance_pairs,
    summarise,
)

WORDS = "schools teach music lie friend city parks wallet street club action gift truth roads honesty leaders".split()


def _items(n: int, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
        out.append(Item(f"it{i}", "EthV", w(5) + " ?", ("Yes , " + w(1), "No , " + w(2)), w(6) + " ?",
                        (w(2), w(3)), correct=int(rng.integers(0, 2))))
    return out


def test_pairs_take_opposite_stances_and_ask_for_the_sources_stance():
    items = _items(20)
    stance = np.array([1, 0] * 10)
    held = split_items(20, 0.6, seed=0)
    assert held.sum() == 8
    p = stance_pairs(items, stance, held, "deed", per_item=3, seed=0)
    pools = [np.sum((stance != stance[i]) & (held == held[i])) for i in range(20)]
    assert len(p.base) == sum(min(3, n) for n in pools)  # three sources each, fewer where the split has fewer
    assert np.all(stance[p.base] != stance[p.source])
    assert np.array_equal(held[p.base], held[p.source])  # no pair crosses the split
    for b, s, lab in zip(p.base, p.source, p.label):
        own = items[b].correct if stance[b] == 1 else 1 - items[b].correct
        assert lab != own  # the base's own answer never scores
        assert lab == (items[b].correct if stance[s] == 1 else 1 - items[b].correct)
    again = stance_pairs(items, stance, held, "deed", per_item=3, seed=0)
    assert np.array_equal(p.source, again.source)


def test_a_run_writes_each_block_resumes_and_refuses_other_settings(tiny_lm, tmp_path):
    items = _items(24)
    settings = InterchangeSettings(layers=(0, 1), epochs=1, batch_size=8, sources_per_item=1)
    stances = {f: item_stances(tiny_lm, items, f) for f in ("word", "deed")}
    if min(s.mean() for s in stances.values()) in (0, 1) or max(s.mean() for s in stances.values()) == 1:
        pytest.skip("the tiny model took one stance on every item")
    out = run_cross_form(tiny_lm, items, settings, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "layers").iterdir()) == ["block-00.csv", "block-01.csv"]
    assert set(out["condition"]) == {"within", "cross", "random"} and set(out["form"]) == {"word", "deed"}
    held_ids = {items[i].id for i in np.flatnonzero(split_items(24, 0.6, 0))}
    assert set(out["base"]) <= held_ids and set(out["source"]) <= held_ids
    # the success column is the answer against the label
    assert (out["success"] == (out["answer"] == out["label"]).astype(int)).all()
    stamp = (tmp_path / "run" / "layers" / "block-00.csv").stat().st_mtime_ns
    again = run_cross_form(tiny_lm, items, settings, tmp_path / "run")
    assert (tmp_path / "run" / "layers" / "block-00.csv").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(out, again)
    with pytest.raises(InputError, match="other settings"):
        run_cross_form(tiny_lm, items, InterchangeSettings(layers=(0, 1), epochs=2), tmp_path / "run")
    with pytest.raises(InputError, match=r"layers \[5\] outside 0..1"):
        run_cross_form(tiny_lm, items, InterchangeSettings(layers=(5,)), tmp_path / "other")
    three = [Item("x", "EthV", "a ?", ("a", "b", "c"), "b ?", ("a", "b", "c"), correct=0)]
    with pytest.raises(InputError, match="items \\['x'\\]: .* two options"):
        run_cross_form(tiny_lm, three, settings, tmp_path / "third")


def test_settings_are_validated():
    with pytest.raises(InputError, match="subspace kind 'cube'"):
        InterchangeSettings(layers=(0,), kind="cube")
    with pytest.raises(InputError, match="train share 1.0"):
        InterchangeSettings(layers=(0,), train_share=1.0)


def test_the_summary_by_hand():
    rows = []
    # block 3, deed form: 4 base items with one pair each. within succeeds on all, cross on 3, random on none.
    for b, (w, c) in enumerate([(1, 1), (1, 1), (1, 1), (1, 0)]):
        for cond, s in (("within", w), ("cross", c), ("random", 0)):
            rows.append({"layer": 3, "form": "deed", "condition": cond, "base": f"b{b}", "success": s})
    # base b0 has a second pair at block 3 where cross fails: its mean is 0.5
    rows.append({"layer": 3, "form": "deed", "condition": "cross", "base": "b0", "success": 0})
    table, best = summarise(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["iia_within"] == 1.0 and row["iia_random"] == 0.0
    assert row["iia_cross"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert row["gap"] == pytest.approx(1 - 0.625)
    assert not row["shared"]  # a gap of 0.375 is no equivalence
    assert best["deed"]["block"] == 3 and best["deed"]["cross_minus_random"] == pytest.approx(0.625)
    assert 0 < row["q_cross_vs_random"] <= 1 and row["q_cross_vs_random"] >= row["p_cross_vs_random"]


def test_the_command_runs_the_study_and_words_its_report(tiny_model_dir, tmp_path, capsys):
    from tiny import write_wdct_csv

    from wdprobe.cli import main

    rng = np.random.default_rng(1)
    rows = []
    for i in range(24):
        w = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
        rows.append(("EthV" if i % 2 else "Theory", f"x{i}", w(5) + "?", ["Yes, " + w(1), "No, " + w(2)], w(6) + "?",
                     [w(2), w(3)], "AB"[int(rng.integers(0, 2))]))
    data = write_wdct_csv(tmp_path / "items.csv", rows)
    out = tmp_path / "ic"
    code = main(["interchange", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--items", "24",
                 "--layers", "0,1", "--epochs", "1", "--quiet"])
    assert code == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Cross-form interchange") and "**Deed pairs.**" in text and "| deed | 1 |" in text
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["layer"]) == {0, 1} and {"q_cross_vs_random", "gap_low90", "shared"} <= set(summary.columns)
    assert (out / "index.html").is_file() and "results in" in capsys.readouterr().out
    assert main(["interchange", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--layers", "1;2"]) != 0
    assert "--layers '1;2'" in capsys.readouterr().err
