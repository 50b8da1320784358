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


def test_same_size_weights_with_the_old_modification_time_restored_are_not_taken_as_the_old(tiny_model_dir, tmp_path,
                                                                                           monkeypatch):
    import os

    monkeypatch.setenv("WDPROBE_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    weights = next(copy.glob("*.safetensors"))
    before_stat = weights.stat()
    before = _local_revision(copy)  # cached now
    _flip_one_byte(weights)
    os.utime(weights, ns=(before_stat.st_atime_ns, before_stat.st_mtime_ns))  # size and mtime as they were
    after_stat = weights.stat()
    assert (after_stat.st_size, after_stat.st_mtime_ns) == (before_stat.st_size, before_stat.st_mtime_ns)
    assert _local_revision(copy) != before
    _flip_one_byte(weights)  # the original bytes again: the original revision
    assert _local_revision(copy) == before


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
