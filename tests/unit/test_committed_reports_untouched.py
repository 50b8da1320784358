"""The README's first command, with its defaults, writes nothing into the committed reports/."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from tests.tiny import write_two_option_copies
from wdprobe.pipeline.config import StudyConfig

ROOT = Path(__file__).resolve().parents[2]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_run_leaves_the_committed_reports_alone(tiny_model_dir, tmp_path):
    checkout = tmp_path / "checkout"  # a temporary checkout: the README's command runs from the repository root
    shutil.copytree(ROOT / "reports", checkout / "reports", ignore=shutil.ignore_patterns("*.js"))
    before = _digest(checkout / "reports")
    data = write_two_option_copies(tmp_path / "w.csv")
    # `wdprobe run` exactly as the README gives it, with only what this offline test must add: a tiny model and data
    # (the default model's name is "gemma-3-270m"; name the tiny model so, and its default folders are the real ones)
    model = checkout / "gemma-3-270m"
    shutil.copytree(tiny_model_dir, model)
    proc = subprocess.run([sys.executable, "-m", "wdprobe.cli", "run", "--model", "./gemma-3-270m", "--data", str(data),
                           "--stages", "score,report", "--quiet"], cwd=checkout, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert StudyConfig(model="./gemma-3-270m").report_dir == Path("runs/gemma-3-270m/report")
    assert (checkout / "runs" / "gemma-3-270m" / "report" / "index.html").is_file()
    assert _digest(checkout / "reports") == before
