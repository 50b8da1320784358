"""Surface baselines: they must catch a planted cue confound and stay at chance where the text carries no stance."""
from __future__ import annotations

import numpy as np
import pytest

from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.studies.organisms.data import HELD_OUT_CUES, balanced_split, planted_split
from wdprobe.studies.organisms.surface import SURFACE_MAX, split_surface_baselines, surface_baselines

WORDS = "garden river window market ladder candle pocket meadow engine harbour velvet signal".split()


def _items(n: int, rng) -> list[Item]:
    out = []
    for k in range(n):
        a, b, c = rng.choice(WORDS, 3, replace=False)
        out.append(Item(f"item{k:03d}", "EthV", f"Do you like the {a}?", ("Yes.", "No."),
                        f"Sam sees a {b} near the {c}. What does Sam do?", (f"Sam takes the {b}.", f"Sam leaves the {c}."),
                        correct=0))
    return out


def test_the_cued_design_is_caught_by_its_cue():
    """WDCT's correct option is canonical 0, so the cue alone gives the cued option: the baseline must fail it."""
    split = planted_split(_items(80, np.random.default_rng(0)), cued=True, seed=0)
    out = split_surface_baselines(split, "deed")
    assert out["cue_alone"]["balanced_accuracy"] == pytest.approx(1.0)
    assert out["bag_of_words"]["balanced_accuracy"] > SURFACE_MAX  # the cue's words are in the prompt
    assert not out["passed"]


def test_a_stance_the_text_does_not_carry_stays_at_chance():
    rng = np.random.default_rng(1)
    items = _items(120, rng)
    prompts = [f"{['You act well.', 'You act badly.'][k % 2]}\n{it.deed_stem}" for k, it in enumerate(items)]
    cues = [p.split("\n")[0] for p in prompts]
    labels = rng.integers(0, 2, len(items))  # drawn apart from the text
    out = surface_baselines(prompts, cues, labels, seed=0)
    assert out["cue_alone"]["balanced_accuracy"] <= SURFACE_MAX
    assert out["bag_of_words"]["balanced_accuracy"] <= SURFACE_MAX
    assert out["passed"]
    assert out["cue_alone"]["low"] <= out["cue_alone"]["balanced_accuracy"] <= out["cue_alone"]["high"]


def test_surface_baselines_refuse_bad_input():
    with pytest.raises(InputError, match="one cue and one label"):
        surface_baselines(["a", "b"], ["x"], [0, 1])
    with pytest.raises(InputError, match="two stance labels"):
        surface_baselines(["a", "b", "c"], ["x", "y", "z"], [0, 0, 0])
    with pytest.raises(InputError, match="no cues"):
        split_surface_baselines(planted_split(_items(10, np.random.default_rng(2))))


def test_the_balanced_design_hides_the_stance_from_the_text():
    """Options swapped on a seeded half, cue lines drawn apart from the stance: the cue and the cloze prompt's words
    (no options in it) stay near chance."""
    split = balanced_split(_items(160, np.random.default_rng(3)), seed=0)
    correct = np.array([it.correct for it in split.items()])
    assert 0.4 <= correct.mean() <= 0.6  # the correct option is canonical 0 or 1 about equally often
    out = split_surface_baselines(split, "deed")
    assert out["passed"], out
    held_cues = {split.cues[it.id] for it in split.held_out}
    assert held_cues <= set(HELD_OUT_CUES) and not ({split.cues[it.id] for it in split.train} & set(HELD_OUT_CUES))


def test_the_slot_baseline_reads_a_stance_written_into_the_options():
    """The synthetic correct option always says "takes": with the options' words by slot the bag of words must read
    the stance (the content carries it), without them it cannot."""
    split = balanced_split(_items(120, np.random.default_rng(4)), seed=1)  # the swap moves "takes" with the stance
    assert not split_surface_baselines(split, "deed", options=True)["passed"]
    assert split_surface_baselines(split, "deed", options=False)["passed"]
