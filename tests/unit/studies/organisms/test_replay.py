"""Replaying the parent's shared blocks on a tiny random Gemma-3: an edited organism scored with blocks 0..L-1 replayed
from the parent's record gives the full forward's log-likelihoods to the bit, a pass the parent was not recorded on is
refused by name, and the blocks compute again afterwards."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import alignment_vocabulary_text, build_tiny_model_dir, organism_items, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.core.option_scoring import continuation_logprobs
from wdprobe.data.items import read_items
from wdprobe.data.prompts import cloze_prompt
from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit import build_edited_organism, calibrate_edit, cloze_choices, parent_choices
from wdprobe.studies.organisms.replay import recorded_prefixes, replayed_prefix

LAYER = 2


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    model_dir = build_tiny_model_dir(d / "model", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(20) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(20)))
    lm = load_model(str(model_dir))
    build_edited_organism(model_dir, d / "edited", calibrate_edit(lm, items[:12], layer=LAYER, strength=4.0))
    return lm, load_model(str(d / "edited")), items


def _texts(items):
    return ([cloze_prompt(it, f) for it in items for f in ("word", "deed") for _ in range(2)],
            [it.options(f)[j] for it in items for f in ("word", "deed") for j in range(2)])


def test_scores_under_replay_equal_the_full_forward_to_the_bit(family, tmp_path):
    lm, child, items = family
    prompts, conts = _texts(items[12:])
    with recorded_prefixes(lm.hf_model, [1, LAYER]) as record:
        parent_total, _ = continuation_logprobs(lm, prompts, conts)
    full, _ = continuation_logprobs(child, prompts, conts)
    with replayed_prefix(child.hf_model, LAYER, record[LAYER]):
        replayed, _ = continuation_logprobs(child, prompts, conts)
    assert np.array_equal(full, replayed)
    assert not np.array_equal(full, parent_total)  # the edit did change something: the check can fail
    # choices too, from a record spilled to disk, whatever the order of the calls (the parent read word then deed; the organism deed then word)
    with recorded_prefixes(lm.hf_model, [LAYER], spill_to=tmp_path / "spilled") as record:
        parent_choices(lm, items[12:])
    assert all(p.is_file() for p in record[LAYER].values())  # written to disk as they came
    with replayed_prefix(child.hf_model, LAYER, record[LAYER]):
        fast = {form: cloze_choices(child, items[12:], form) for form in ("deed", "word")}
    slow = parent_choices(child, items[12:])
    for form in ("word", "deed"):
        for scoring in ("mean", "sum"):
            assert np.array_equal(fast[form][scoring], slow[form][scoring])


def test_a_pass_the_parent_was_not_recorded_on_is_refused_and_the_blocks_compute_again(family):
    lm, child, items = family
    prompts, conts = _texts(items[12:14])
    with recorded_prefixes(lm.hf_model, [LAYER]) as record:
        continuation_logprobs(lm, prompts, conts)
    other_prompts, other_conts = _texts(items[14:16])
    before, _ = continuation_logprobs(child, other_prompts, other_conts)
    with pytest.raises(InputError, match="not recorded"), replayed_prefix(child.hf_model, LAYER, record[LAYER]):
        continuation_logprobs(child, other_prompts, other_conts)
    after, _ = continuation_logprobs(child, other_prompts, other_conts)  # no replay left behind
    assert np.array_equal(before, after) and np.isfinite(before).all()
