"""`wdprobe cross-patch` on a tiny model and a variant whose block-1 MLP was redrawn: the per-site table finds the
plant exactly, q-values span every site and form, the page and README are written, reruns resume and other settings
are refused."""
import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import build_tiny_model_dir, write_wdct_csv

from wdprobe.cli import main
from wdprobe.errors import InputError
from wdprobe.studies.crossmodel.study import first_block_restoring


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("xstudy")
    ref = build_tiny_model_dir(root / "ref", n_layers=3, initializer_range=0.3)
    var = root / "variant"
    shutil.copytree(ref, var)
    weights = load_file(str(var / "model.safetensors"))
    w = weights["model.layers.1.mlp.down_proj.weight"]
    w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(4)) * 0.5)
    save_file(weights, str(var / "model.safetensors"), metadata={"format": "pt"})
    return root, ref, var, write_wdct_csv(root / "items.csv")


def test_cross_patch_finds_a_redrawn_mlp_and_writes_its_reading(pair, capsys):
    root, ref, var, data = pair
    out = root / "out"
    args = ["cross-patch", "--reference", str(ref), "--variant", str(var), "--data", str(data), "--sample", "0",
            "--sites", "resid", "attn", "mlp", "head", "--out", str(out), "--no-png", "--quiet"]
    assert main(args) == 0
    table = pd.read_csv(out / "sites.csv")
    assert set(table["form"]) == {"word", "deed"} and len(table) == 2 * 3 * (3 + 2)
    for form in ("word", "deed"):
        part = table[table["form"] == form].set_index("site")
        assert part.loc[["L0.resid", "L0.attn", "L0.mlp", "L1.attn", "L1.head0", "L1.head1"], "identical"].all()
        assert (part.loc[["L0.resid", "L1.attn"], "restored_mean"] == 0).all()
        assert part.loc["L1.mlp", "restored_mean"] == pytest.approx(1.0, abs=1e-3)
        assert part.loc["L1.mlp", "restored_sum"] == pytest.approx(1.0, abs=1e-3)
        assert first_block_restoring(table, form) == 1
    assert table["q_mean"].between(0, 1).all() and (table["q_mean"] >= table["p_mean"] - 1e-12).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_items"] == 4 and summary["n_tests"] == 2 * len(table)
    readme = (out / "README.md").read_text()
    assert "## Findings" in readme and "**deed**" in readme and (out / "index.html").is_file()
    # a rerun with the same settings resumes; other settings are refused, naming what differs
    capsys.readouterr()
    assert main(args[:-1]) == 0
    assert "measured already" in capsys.readouterr().out
    assert main(args[:-4] + ["--positions", "prompt", "--out", str(out), "--no-png", "--quiet"]) == 2
    assert "positions differ" in capsys.readouterr().err
    # a variant rebuilt at the same path with other weights is a different model: no resume into the earlier parts
    saved = json.loads((out / "settings.json").read_text())
    assert saved["variant_revision"].startswith("local-") and saved["variant_revision"] != saved["reference_revision"]
    weights = load_file(str(var / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"].mul_(2.0)
    save_file(weights, str(var / "model.safetensors"), metadata={"format": "pt"})
    try:
        assert main(args) == 2
        assert "variant_revision differ" in capsys.readouterr().err
    finally:
        weights["model.layers.1.mlp.down_proj.weight"].div_(2.0)
        save_file(weights, str(var / "model.safetensors"), metadata={"format": "pt"})


def test_bad_settings_are_refused_before_any_model_loads(pair):
    from wdprobe.studies.crossmodel.study import CrossModelSettings

    with pytest.raises(InputError, match="site kinds"):
        CrossModelSettings("a", "b", kinds=("neuron",))
    with pytest.raises(InputError, match="batch size 0"):
        CrossModelSettings("a", "b", batch_size=0)
    with pytest.raises(InputError, match="2 target options for 1 items"):
        CrossModelSettings("a", "b", item_ids=("x",), toward=(0, 1))


def test_attribution_runs_checked_against_exact_patching(pair):
    root, ref, var, data = pair
    out = root / "attribution"
    assert main(["cross-patch", "--reference", str(ref), "--variant", str(var), "--data", str(data), "--sample", "0",
                 "--forms", "deed", "--sites", "attn", "mlp", "--method", "attribution", "--check-items", "3",
                 "--out", str(out), "--no-png", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    check = summary["change"]["deed"]["check"]
    assert summary["method"] == "attribution" and check["n_items"] == 3 and check["top_k"] == 5
    assert -1 <= check["spearman"] <= 1 and 0 <= check["top_k_agreement"] <= 1
    table = pd.read_csv(out / "sites.csv").set_index("site")
    assert table.loc[["L0.attn", "L0.mlp", "L1.attn"], "identical"].all()
    assert table.loc["L1.mlp", "restored_mean"] > 0  # first order, not exact: the planted MLP still carries it
    readme = (out / "README.md").read_text()
    assert "Method: attribution" in readme and "attribution against exact patching on 3 items" in readme
    with pytest.raises(InputError, match="check_items"):
        from wdprobe.studies.crossmodel.study import CrossModelSettings

        CrossModelSettings("a", "b", check_items=3)


def test_attribution_ranks_the_redrawn_mlp_first_without_being_told_its_block(pair):
    from wdprobe.core.model import load_model
    from wdprobe.data.items import read_items
    from wdprobe.studies.organisms.cross_model_localisation import attribute_components, attribution_hit

    root, ref, var, data = pair
    items = [it for it in read_items(data) if it.n_options == 2][:4]
    found = attribute_components(load_model(str(ref)), load_model(str(var)), items, [0] * len(items))
    assert found["top_site"] == "L1.mlp" and found["ranking"][0]["share"] >= found["ranking"][-1]["share"]
    assert attribution_hit(found, 1, "mlp", None) and not attribution_hit(found, 2, "mlp", None)
    assert attribution_hit(found, 1, "mlp-items", None)  # a per-item plant writes through the MLP too
    assert not attribution_hit(found, 1, "attn-head", 0)  # a head plant needs the attention and the head first


def test_three_instruments_rank_the_redrawn_mlp_first_on_items_chosen_from_outputs_alone(pair):
    from wdprobe.core.model import load_model
    from wdprobe.data.items import read_items
    from wdprobe.studies.organisms.cross_model_localisation import (
        COMPONENT_INSTRUMENTS,
        attribution_hit,
        items_moved_most,
        rank_components,
    )

    root, ref, var, data = pair
    reference, variant = load_model(str(ref)), load_model(str(var))
    pool = [it for it in read_items(data) if it.n_options == 2][:6]
    toward = [0] * len(pool)
    chosen, shift = items_moved_most(reference, variant, pool, toward, 3)
    assert len(chosen) == 3 and [shift[i] for i in chosen] == sorted(shift, reverse=True)[:3]
    items = [pool[i] for i in chosen]
    found = rank_components(reference, variant, items, [toward[i] for i in chosen], batch_size=2)
    # block 0 and block 1's attention (read before the redrawn MLP) are the same in both models: 1 + 4 sites differ
    assert found["n_sites"] == 3 * 4 and found["n_sites_differing"] == 5
    for name in COMPONENT_INSTRUMENTS:
        assert found[name]["top_site"] == "L1.mlp", name
        assert attribution_hit(found[name], 1, "mlp", None)
        assert found[name]["seconds"] >= 0
    # exact patching restores the redrawn MLP's share exactly: with it patched, block 1 and above are the variant's
    assert found["exact"]["ranking"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    for name in ("atp", "atp_star"):
        agree = found[name]["agreement"]
        assert -1 <= agree["spearman"] <= 1 and agree["top_k"] == 5
    with pytest.raises(InputError, match="one target option per item"):
        items_moved_most(reference, variant, pool, toward[:2], 3)


def test_items_listed_in_a_split_table_are_read_in_its_order(pair, capsys):
    from wdprobe.data.items import read_items

    root, ref, var, data = pair
    ids = [i.id for i in read_items(data) if i.n_options == 2]
    split = root / "split.csv"
    split.write_text("id,set,target\n" + "".join(f"{i},{'train' if k % 2 else 'held_out'},{k // 2 % 2}\n"
                                                  for k, i in enumerate(reversed(ids))))
    out = root / "listed"
    args = ["cross-patch", "--reference", str(ref), "--variant", str(var), "--data", str(data), "--ids-from",
            str(split), "--set", "train", "--toward", "listed", "--sites", "resid", "--forms", "deed", "--out",
            str(out), "--no-png", "--quiet"]
    assert main(args) == 0
    want = [(i, k // 2 % 2) for k, i in enumerate(reversed(ids)) if k % 2]  # every listed item, not a sample of 24
    saved = json.loads((out / "settings.json").read_text())
    assert saved["item_ids"] == [i for i, _ in want] and saved["toward"] == [t for _, t in want]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["toward"] == "given"
    change = summary["change"]["deed"]["mean"]  # each item's shift kept, so an equivalence test can be run on them
    assert len(change["per_item"]) == len(want) and sum(change["per_item"]) / len(want) == pytest.approx(change["mean"])
    split.write_text("id,set,target\n" + f"{ids[0]},train,2\n")
    capsys.readouterr()
    assert main(args[:-4] + ["--out", str(root / "listed-bad"), "--no-png", "--quiet"]) == 2
    assert f"split.csv, line 2: item '{ids[0]}' has target '2', not an option index" in capsys.readouterr().err
    split.write_text("id,set\n" + f"{ids[0]},train\nno-such-item,train\n")
    capsys.readouterr()
    assert main(args[:-4] + ["--out", str(root / "listed-bad"), "--no-png", "--quiet"]) == 2
    assert "split.csv, line 3: item 'no-such-item' is not among the items read" in capsys.readouterr().err
    capsys.readouterr()
    alone = ["cross-patch", "--reference", str(ref), "--variant", str(var), "--data", str(data), "--set", "train",
             "--out", str(root / "set-alone"), "--quiet"]
    assert main(alone) == 2  # --set without a table would silently patch every item
    assert "--set train picks rows of the --ids-from table" in capsys.readouterr().err
    assert not (root / "set-alone").exists()
