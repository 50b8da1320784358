"""Models split across devices: on CPU, accelerate can place a layer on "disk" (offloaded, loaded per call)
while the rest stays in memory — a real split with hooks moving weights and activations, the same path a
multi-GPU device map takes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
         "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def split_lm(tiny_model_dir, tmp_path_factory):
    from wdprobe.core.model import load_model

    return load_model(str(tiny_model_dir), device_map=SPLIT, offload_folder=str(tmp_path_factory.mktemp("offload")))


def test_split_model_reads_the_same_as_the_whole(tiny_lm, split_lm):
    from wdprobe.methods.capture import last_token_readout

    assert split_lm.device_map["model.layers.1"] == "disk" and split_lm.device == torch.device("cpu")
    assert split_lm.manifest()["device_map"]["model.layers.1"] == "disk"
    prompts = ["What is your view on city parks ? A . Parks matter more . Answer:", "Answer: A"]
    lp_a, res_a = last_token_readout(tiny_lm, prompts, [5, 6, 7])
    lp_b, res_b = last_token_readout(split_lm, prompts, [5, 6, 7])
    assert np.array_equal(res_a, res_b) and np.allclose(lp_a, lp_b, atol=1e-6)


def test_hooks_on_an_offloaded_layer_patch_the_same(tiny_lm, split_lm):
    """An intervention on the layer that lives "elsewhere" changes the output exactly as on the whole model."""
    from wdprobe.core.forward import encode_prompts, forward_last

    shift = torch.randn(tiny_lm.bridge.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def add(x, hook=None):
        x = x.clone()
        x[:, -1] += shift.to(x.device)
        return x

    prompts = ["Answer: A B", "Is it right to lie to a friend ? Answer:"]
    outs = []
    for lm in (tiny_lm, split_lm):
        enc = encode_prompts(lm.tokenizer, prompts, lm.device)
        with torch.no_grad():
            clean = forward_last(lm, enc["input_ids"], enc["attention_mask"])
            patched = forward_last(lm, enc["input_ids"], enc["attention_mask"], hooks=[("blocks.1.hook_resid_pre", add)])
        assert (patched - clean).abs().max() > 1e-3
        outs.append(patched)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_scoring_a_split_model_records_the_placement(split_lm, tiny_lm, tmp_path):
    from tiny import write_two_option_copies

    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=2)
    a = score_wdct(tmp_path / "whole", lm=tiny_lm, data=data, progress=False)
    b = score_wdct(tmp_path / "split", lm=split_lm, data=data, progress=False)
    assert [r["word_choice"] for r in a.rows] == [r["word_choice"] for r in b.rows]
    assert a.metrics["pcs_micro"] == pytest.approx(b.metrics["pcs_micro"], abs=1e-9)
    stage = json.loads((tmp_path / "split" / "manifest.json").read_text())["stages"]["score"]
    assert stage["model"]["device_map"]["model.layers.1"] == "disk"


def test_device_placement_errors_name_the_problem(tiny_model_dir):
    from wdprobe.core.model import load_model

    with pytest.raises(ValueError, match="either device='cpu' or a device map"):
        load_model(str(tiny_model_dir), device="cpu", device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="n_devices=2 requires CUDA"):
            load_model(str(tiny_model_dir), n_devices=2)


def test_cli_reads_a_json_device_map(tiny_model_dir, tmp_path):
    from tiny import write_two_option_copies

    from wdprobe.cli import main

    data = write_two_option_copies(tmp_path / "w.csv", copies=1)
    dm = dict(SPLIT, **{"model.layers.1": "cpu"})
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--device-map", json.dumps(dm), "--quiet"]) == 0
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["score"]
    assert stage["model"]["device_map"] == {k: v for k, v in dm.items()}
    with pytest.raises(SystemExit) as exc:  # argparse: usage line and "is not valid JSON", exit status 2
        main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "bad"),
              "--device-map", "{not json", "--quiet"])
    assert exc.value.code == 2


def test_later_stages_reload_a_split_model_the_same_way(split_lm, tmp_path, monkeypatch):
    from tiny import write_two_option_copies

    from wdprobe.core.model import load_for_run
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv", copies=1)
    score_wdct(tmp_path / "run", lm=split_lm, data=data, progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path / "cache"))  # the offload folder goes under the cache
    again = load_for_run(manifest)
    assert again.device_map is not None and again.device_map["model.layers.1"] == "disk"
    assert load_for_run(manifest, device="cpu").device_map is None  # an explicit device wins


def test_study_stages_on_a_split_model_match_the_whole(split_lm, tiny_lm, tmp_path):
    """capture -> lens -> cross-form patching on the split model give the unsplit model's numbers."""
    import pandas as pd
    from tiny import write_two_option_copies

    from wdprobe.stages.capture import capture_wdct, load_activations
    from wdprobe.stages.lens import run_lens
    from wdprobe.stages.patching import run_cross_patch
    from wdprobe.stages.score import score_wdct

    data = write_two_option_copies(tmp_path / "w.csv")
    out = {}
    for name, lm in (("whole", tiny_lm), ("split", split_lm)):
        run = tmp_path / name
        score_wdct(run, lm=lm, data=data, progress=False)
        capture_wdct(run, lm=lm, progress=False)
        run_lens(run, lm=lm, progress=False)
        run_cross_patch(run, n_items=12, lm=lm, progress=False)
        out[name] = (load_activations(run).array, pd.read_csv(run / "lens" / "trajectory.csv"),
                     pd.read_csv(run / "patching" / "cross_form.csv"))
    assert np.array_equal(out["whole"][0], out["split"][0])
    pd.testing.assert_frame_equal(out["whole"][1], out["split"][1], atol=1e-5)
    pd.testing.assert_frame_equal(out["whole"][2], out["split"][2], atol=1e-5)
