import pytest

from wdprobe.cli import main
from wdprobe.core.model import load_model
from wdprobe.errors import ModelLoadError


def test_unknown_model_name_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        load_model("no-such-org/no-such-model-xyz")
    msg = str(e.value)
    assert "no-such-org/no-such-model-xyz" in msg and "local Hugging Face model directory" in msg


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_local_directory_loads_as_bridge(tiny_lm, tiny_model_dir):
    assert tiny_lm.bridge.cfg.n_layers == 2 and tiny_lm.bridge.cfg.d_model == 64
    assert tiny_lm.tokenizer.padding_side == "left"
    assert tiny_lm.revision.startswith("local-")
    m = tiny_lm.manifest()
    assert m["path"] == str(tiny_model_dir.resolve()) and m["dtype"] == "float32"


def test_cli_score_on_local_model(tiny_model_dir, wdct_csv, tmp_path, capsys):
    rc = main(["score", "--model", str(tiny_model_dir), "--data", str(wdct_csv), "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "items: 6" in out and (tmp_path / "r" / "items.csv").is_file()


def test_cli_reports_bad_data_cleanly(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text('Type,id,speak,act,correct_answer\nOpinion,q9,"Q?\nA. one","S?\nA. x\nB. y",\n')
    rc = main(["score", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "'q9'" in capsys.readouterr().err


def test_a_prompt_longer_than_the_context_is_refused(tiny_lm):
    import pytest

    from wdprobe.errors import InputError

    assert tiny_lm.context_length == 512
    long = " ".join(["Answer:"] * 600)
    with pytest.raises(InputError, match="longer than .* context of 512"):
        list(tiny_lm.batches(["Answer: A", long], batch_size=4))
    assert sorted(i for b in tiny_lm.batches(["Answer: A", "Answer: B"], batch_size=4) for i in b) == [0, 1]


def test_the_handle_owns_encoding_and_last_position_forwards(tiny_lm):
    import torch

    prompts = ["Answer: A", "What is your view on city parks? Answer:"]
    enc = tiny_lm.encode(prompts)
    assert enc["input_ids"].shape == enc["attention_mask"].shape and enc["attention_mask"][0, 0] == 0  # left padding
    logits = tiny_lm.forward_last(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (2, tiny_lm.bridge.cfg.d_vocab)
    assert torch.allclose(logits, tiny_lm.last_token_logits(prompts))
    assert (tiny_lm.n_layers, tiny_lm.d_model) == (2, 64)


def test_a_too_long_prompt_is_refused_naming_its_item_and_never_read_past_the_context(tiny_lm, tiny_model_dir, tmp_path,
                                                                                     capsys):
    import csv

    import pytest
    from tiny import write_wdct_csv

    from wdprobe.cli import main
    from wdprobe.core.option_scoring import continuation_logprobs
    from wdprobe.errors import PromptTooLongError

    long = " ".join(["Answer:"] * 600)
    with pytest.raises(PromptTooLongError, match="longer than .* context of 512") as caught:
        continuation_logprobs(tiny_lm, ["Answer: A", long], ["yes", "no"])
    assert caught.value.prompt == long
    data = write_wdct_csv(tmp_path / "items.csv")
    rows = list(csv.DictReader(open(data, newline="")))
    rows[-1]["act"] = rows[-1]["act"].replace("?", " " + long + "?", 1)
    with open(tmp_path / "long.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(tmp_path / "long.csv"),
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"item {rows[-1]['id']!r}: a prompt of" in err and "Traceback" not in err
