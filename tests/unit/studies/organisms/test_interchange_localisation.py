"""Cross-model interchange (DAS) on a tiny edited organism: below the edited block the learned subspace restores
nothing, exactly (the two models agree there); at the edited block it moves the reading and its training lowers the
loss (the tiny organism's shift has mixed signs over items, so its restored share is not a stable number to assert;
the planted-direction recovery is tested in tests/unit/methods/test_interchange.py); bad input is refused."""
from __future__ import annotations

import pytest
from tiny import alignment_vocabulary_text, build_tiny_model_dir, organism_items, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.errors import InputError
from wdprobe.studies.organisms.cross_model_localisation import interchange_at_block
from wdprobe.studies.organisms.edit import build_edited_organism, calibrate_edit


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("ic")
    model_dir = build_tiny_model_dir(d / "model", seed=3, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(24) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(24)))
    parent = load_model(str(model_dir))
    spec = calibrate_edit(parent, items[:16], layer=2, strength=40.0)
    build_edited_organism(model_dir, d / "edited", spec)
    return parent, load_model(str(d / "edited")), [it for it in items if it.n_options == 2]


def test_below_the_edit_nothing_is_restored_and_at_it_one_direction_carries_the_shift(pair):
    parent, child, items = pair
    toward = [1] * len(items)
    below = interchange_at_block(parent, child, items, toward, 1, epochs=1, batch_size=8)
    assert below["restored_mean"] == 0.0
    if below["n_flipped"]:
        assert below["iia_flipped"] == 0.0
    at = interchange_at_block(parent, child, items, toward, 2, epochs=2, batch_size=8)
    assert at["restored_mean"] != 0.0 and at["loss_last"] <= at["loss_first"]  # the models differ here, and it learns
    assert at["directions"].shape == (parent.d_model, 1)
    assert at["n_train"] + at["n_held"] == len(items)


def test_bad_input_is_refused(pair):
    parent, child, items = pair
    with pytest.raises(InputError, match="at least 4 items"):
        interchange_at_block(parent, child, items[:3], [1, 1, 1], 2)
    with pytest.raises(InputError, match="one target option per item"):
        interchange_at_block(parent, child, items, [1], 2)


def test_a_fresh_family_calibrates_and_reads_on_disjoint_ethics_items_in_the_planted_order(tmp_path):
    import pytest
    from tiny import write_two_option_copies

    from wdprobe.data.items import read_items
    from wdprobe.errors import InputError
    from wdprobe.studies.organisms.data import fresh_family_items, planted_order

    items = read_items(write_two_option_copies(tmp_path / "w.csv"))
    pool = [it for it in planted_order(items) if it.domain in ("EthV", "Theory")]
    calib, study = fresh_family_items(items, 4, 6)
    assert [it.id for it in calib + study] == [it.id for it in pool[:10]]
    assert not {it.id for it in calib} & {it.id for it in study}
    assert all(it.n_options == 2 and it.correct is not None for it in calib + study)
    with pytest.raises(InputError, match=f"{len(pool)} two-option EthV/Theory items; {len(pool) + 1} needed"):
        fresh_family_items(items, len(pool), 1)
