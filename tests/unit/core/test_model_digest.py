"""A local model is identified by the content of its weights, not their size."""
import shutil

import pytest

from wdprobe.core.model import _local_revision, verify_converted
from wdprobe.errors import ModelLoadError


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data, same file size
    path.write_bytes(bytes(data))


def test_same_size_different_weights_give_another_revision(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = _local_revision(copy)
    assert before == _local_revision(tiny_model_dir)
    weights = next(copy.glob("*.safetensors"))
    size = weights.stat().st_size
    _flip_one_byte(weights)
    assert weights.stat().st_size == size
    assert _local_revision(copy) != before


def test_a_corrupted_converted_copy_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "converted"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "wdprobe-converted.json").write_text("{}")
    verify_converted(copy)  # first sight records the digests
    verify_converted(copy)
    _flip_one_byte(next(copy.glob("*.safetensors")))
    with pytest.raises(ModelLoadError, match="changed since conversion.*convert-model"):
        verify_converted(copy)
