"""Bad input files fail loudly, naming the file and line; line endings never change what the model reads."""
import pytest
from tiny import write_wdct_csv

from wdprobe.data.wdct import load_wdct, select
from wdprobe.errors import InputError, WDCTFormatError


def test_crlf_and_bom_give_the_same_items_as_the_clean_file(tmp_path):
    clean = write_wdct_csv(tmp_path / "clean.csv")
    text = clean.read_bytes()
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    assert load_wdct(crlf) == load_wdct(clean)
    assert not any("\r" in it.deed_stem + "".join(it.deed_options) for it in load_wdct(crlf))


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.replace(b"Opinion", b"Opi\x00nion", 1), r"line 2: a NUL byte"),
    (lambda b: b.replace(b"Opinion", b"Opinion\xff", 1), r"line 2: not UTF-8"),
    (lambda b: b + b'Opinion,zz,"What is unterminated\nA. x\nB. y,act,\n', r"line \d+: .*unterminated quote"),
    (lambda b: b + b"Opinion,extra,speak,act,,stray\n", r"line \d+: item 'extra': 6 fields, the header has 5"),
])
def test_broken_files_name_the_file_and_line(tmp_path, mutate, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(mutate(write_wdct_csv(tmp_path / "ok.csv").read_bytes()))
    with pytest.raises(WDCTFormatError, match=message) as err:
        load_wdct(path)
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize("kwargs", [{"limit": -2}, {"limit": 0}, {"sample": 0}, {"subset": "WDCT_NE", "domains": ["Theory"]}])
def test_selections_that_would_be_empty_or_silently_cut_are_refused(tmp_path, kwargs):
    items = load_wdct(write_wdct_csv(tmp_path / "w.csv"))
    with pytest.raises(InputError):
        select(items, **kwargs)


def test_batch_size_zero_is_an_input_error():
    from wdprobe.core.forward import length_batches

    with pytest.raises(InputError, match="batch size"):
        list(length_batches([3, 4], 0))


@pytest.mark.parametrize("flags", [["--limit", "-2"], ["--sample", "0"], ["--limit", "0"]])
def test_score_refuses_bad_selections_before_writing_anything(tiny_model_dir, wdct_csv, tmp_path, capsys, flags):
    from wdprobe.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:  # argparse refuses the number, naming the flag, before anything runs
        main(["score", "--model", str(tiny_model_dir), "--data", str(wdct_csv), "--out", str(out), "--quiet", *flags])
    assert exited.value.code == 2
    assert f"argument {flags[0]}: {flags[1]}: at least 1 expected" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
