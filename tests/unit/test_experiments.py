"""The scripts in experiments/ run end to end on the real Gemma-3-270M with a small subset (slow)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args, "--quiet"], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_paper_table_script(shared_data, tmp_path):
    _run("paper_table.py", ["--data", str(shared_data / "wdct" / "WDCT.csv"), "--sample", "12"], tmp_path)
    table = (tmp_path / "reports" / "paper_table.md").read_text()
    metrics = json.loads((tmp_path / "runs" / "paper-table" / "gemma-3-270m" / "metrics.json").read_text())
    assert f"| gemma-3-270m | 12 | {metrics['cs_macro']:.3f} | {metrics['pcs_macro']:.3f} |" in table


def test_base_vs_instruct_script_runs_base_and_its_noise_floor(shared_data, tmp_path):
    out = _run("base_vs_instruct.py", ["--data", str(shared_data / "wdct" / "WDCT.csv"), "--sample", "24",
                                       "--patch-items", "8"], tmp_path)
    assert "comparison page" in out
    table = pd.read_csv(tmp_path / "reports" / "base_vs_instruct.csv", index_col="metric")
    assert list(table.columns) == ["base (seed 0)", "base (seed 1, noise floor)"]
    # the same items under two option shufflings: same item count, both runs complete through patching
    assert table.loc["items"].astype(int).tolist() == [24, 24]
    assert table.loc["patch: best flip rate"].notna().all()


def test_per_domain_script(shared_data, tmp_path):
    _run("per_domain.py", ["--data", str(shared_data / "wdct" / "WDCT.csv"), "--sample", "40"], tmp_path)
    text = (tmp_path / "reports" / "per_domain" / "README.md").read_text()
    metrics = json.loads((tmp_path / "runs" / "per-domain-gemma-3-270m" / "metrics.json").read_text())
    for d, v in metrics["per_domain"].items():
        assert f"| {d} | {v['n']} | {v['cs']:.3f} |" in text
    assert (tmp_path / "reports" / "per_domain" / "per_domain.html").is_file()


def test_own_data_script_runs_the_example_items(tmp_path):
    out = _run("own_data.py", ["--out", str(tmp_path / "run"), "--stages", "score,capture,probes,report"], tmp_path)
    assert "cloze (no letters)" in out and "Honesty" in out and "Risk" in out
    assert (tmp_path / "run" / "report" / "index.html").is_file()
