"""The README's Python snippets run as written (on a few items of the real model: slow)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_the_labelled_results_and_own_data_snippets():
    snippets = _snippets()
    assert len(snippets) == 2 and "Run(" in snippets[0] and "items=frame" in snippets[1]


def test_readme_snippets_run(example_items, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "examples").mkdir(parents=True)
    (tmp_path / "data" / "examples" / "say-do-20.jsonl").write_text(
        (ROOT / "data" / "examples" / "say-do-20.jsonl").read_text())
    first, second = _snippets()
    # the shipped items stand in for WDCT, so the snippet runs on any fresh clone
    first = first.replace('data="WDCT.csv", sample=200', f'data="{example_items}", sample=12')
    exec(compile(first, "README snippet 1", "exec"), {})
    assert (tmp_path / "lens.html").is_file() and (tmp_path / "runs" / "quick" / "lens" / "trajectory.csv").is_file()
    assert (tmp_path / "lens.html").stat().st_size < 500_000  # plotly.js shared, not inlined (4.8 MB a page)
    exec(compile(second, "README snippet 2", "exec"), {})
    assert (tmp_path / "runs" / "say-do-api" / "report" / "index.html").is_file()
