"""Report pages share one plotly.js per folder, and say once when PNG figures cannot be written."""
from __future__ import annotations

import plotly.graph_objects as go

from wdprobe.figures import probes as plots
from wdprobe.figures.page import PLOTLY_FILE, figure_html, plotly_script


def _fig() -> go.Figure:
    return go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))


def test_pages_load_one_shared_copy_of_plotly(tmp_path):
    first = plots.write_html([_fig(), _fig()], tmp_path / "a.html", heading="a")
    second = plots.write_html([_fig()], tmp_path / "b.html", heading="b")
    library = tmp_path / PLOTLY_FILE
    assert library.is_file() and library.stat().st_size > 1_000_000
    for page in (first, second):
        text = page.read_text()
        assert text.count("<script src=") == 1 and f"src='{PLOTLY_FILE}'" in text and len(text) < 100_000
    stamp = library.stat().st_mtime_ns
    plotly_script(tmp_path / "c.html")  # already there: not rewritten
    assert library.stat().st_mtime_ns == stamp
    nested = figure_html([_fig()], tmp_path / "sub" / "page.html", root=tmp_path)  # a page below the shared copy
    assert f"src='../{PLOTLY_FILE}'" in nested and not (tmp_path / "sub").exists()
    assert figure_html([], tmp_path / "empty.html") == ""
    below = figure_html([_fig()], tmp_path / "x" / "y" / "page.html")  # no root: the nearest copy above is used
    assert f"src='../../{PLOTLY_FILE}'" in below and not (tmp_path / "x" / "y" / PLOTLY_FILE).exists()


def test_missing_png_export_is_said_once(monkeypatch, tmp_path, capsys):
    def broken(self, *args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome to be installed")

    monkeypatch.setattr(go.Figure, "write_image", broken)
    monkeypatch.setattr(plots, "_PNG_WARNED", {})
    monkeypatch.setattr(plots, "png_enabled", lambda: True)
    assert plots.png_problem() is None
    assert plots.write_png(_fig(), tmp_path / "a.png") is None and plots.write_png(_fig(), tmp_path / "b.png") is None
    err = capsys.readouterr().err
    assert err.count("static PNG figures were not written") == 1 and "wdprobe[png]" in err
    assert "Kaleido requires Google Chrome" in plots.png_problem()
