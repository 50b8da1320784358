"""A model whose outputs are not numbers (NaN log-probabilities, as a float16 overflow gives) stops scoring with an
error naming the item; before, every argmax over NaN chose option 0 and the run read as "CS 1.000 PCS 1.000"."""
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from tiny import write_two_option_copies

from wdprobe.cli import main
from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.errors import NonFiniteError
from wdprobe.scoring.orders import cloze_prompt_row, finite_or_refused, letter_prompt_row
from wdprobe.stages.score import score_wdct


@pytest.fixture(scope="module")
def nan_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with one weight of its last block's MLP set to NaN: every log-probability is NaN."""
    dst = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(tiny_model_dir, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_scoring_a_model_that_outputs_nan_stops_with_the_item_named(nan_model, tmp_path, fmt):
    data = write_two_option_copies(tmp_path / "w.csv")
    first = read_items(data)[0].id
    with pytest.raises(NonFiniteError, match=rf"item '{first}' \(word form.*not finite.*--dtype float32"):
        score_wdct(tmp_path / "run", data=data, lm=load_model(str(nan_model)), progress=False, format=fmt)
    assert not (tmp_path / "run" / "metrics.json").exists()  # no headline was written from NaN


def test_the_command_line_says_so_without_a_traceback(nan_model, tmp_path, capsys):
    data = write_two_option_copies(tmp_path / "w.csv")
    assert main(["score", "--model", str(nan_model), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "Traceback" not in err


def test_rows_refuse_nan_and_infinity_and_keep_finite_numbers(tiny_model_dir, tmp_path):
    item = read_items(write_two_option_copies(tmp_path / "w.csv"))[0]
    for bad in ([np.nan, -1.0], [0.0, np.inf], [-np.inf, -np.inf]):
        with pytest.raises(NonFiniteError, match="not finite"):
            letter_prompt_row(item, "deed", (0, 1), True, True, np.array(bad))
        with pytest.raises(NonFiniteError, match="cloze"):
            cloze_prompt_row(item, "word", np.array(bad), np.array([2, 3]))
    assert letter_prompt_row(item, "deed", (1, 0), True, True, np.array([-0.1, -2.3]))["choice"] == 1
    assert cloze_prompt_row(item, "word", np.array([-4.0, -3.0]), np.array([2, 1]))["choice"] == 0  # -2 > -3 per token
    finite_or_refused(np.array([-1e30, 0.0]), "big but finite")


def test_capture_refuses_a_nan_activation_naming_item_and_layer(tiny_lm, tmp_path, monkeypatch):
    """A run scored on the healthy model, captured with the broken one's activations: the NaN stops the capture."""
    import torch

    import wdprobe.stages.capture as capture_stage
    from wdprobe.stages.capture import capture_wdct, finite_or_refused

    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    score_wdct(run, data=data, lm=tiny_lm, progress=False)
    real = capture_stage.capture_batch

    def broken(*args, **kwargs):  # the healthy model's activations, one value of the first prompt made NaN
        got = real(*args, **kwargs)
        for t in got.values():
            t[0, -1, 0] = float("nan")
        return got

    monkeypatch.setattr(capture_stage, "capture_batch", broken)
    with pytest.raises(NonFiniteError, match=r"item '.*' \((word|deed) form\) has a NaN or infinite activation at layer 1"):
        capture_wdct(run, layers="0-1", lm=tiny_lm, progress=False)
    assert not list((run / "capture").glob("shard-*")) if (run / "capture").is_dir() else True
    finite_or_refused(torch.ones(2, 2, 3), "x", [{"id": "a", "form": "word"}] * 2, [0, 1])  # finite: nothing said
