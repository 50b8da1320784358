"""Loading a model draws nothing of its own on the console."""


def test_loading_draws_no_library_progress_bar(tiny_model_dir):
    """transformers' own "Loading weights" bar would overwrite wdprobe's stage display: it is silenced."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", f"from wdprobe.core.model import load_model; load_model({str(tiny_model_dir)!r})"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr
