"""Report pages fit the reader's window: figures are drawn at their container's width (up to the width they were
designed at), titles wrapped rather than cut, and headless Chromium measures what still runs past an edge."""
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from wdprobe.figures.page import embed_figure, figure_html, wrap_title
from wdprobe.reports.fit import WIDTHS, find_chromium, page_overflow

LONG = ("<sup>difference-of-means probes on the final-position residual stream, folds by item, every option order; "
        "dotted: random labels, dashed: the family-wise threshold over every layer</sup>")


def wide_figure(width: int = 1650) -> go.Figure:
    fig = make_subplots(rows=1, cols=4, subplot_titles=["a", "b", "c", "IC(l)"])
    for c in range(1, 5):
        fig.add_trace(go.Scatter(x=[0, 1, 2], y=[0.5, 0.6, 0.7], name=f"curve {c}"), row=1, col=c)
    fig.update_layout(title="Content probes<br>" + LONG, width=width, height=420)
    return fig


def test_a_long_subtitle_is_wrapped_at_spaces_to_the_width_it_is_drawn_at():
    text, added = wrap_title("Short title<br>" + LONG, 600)
    lines = text.split("<br>")
    assert lines[0] == "Short title" and added == len(lines) - 2 >= 1
    assert all(line.startswith("<sup>") and line.endswith("</sup>") for line in lines[1:])
    assert all(len(line) - len("<sup></sup>") <= 600 / 7.0 for line in lines[1:])
    assert " ".join(line[5:-6] for line in lines[1:]) == LONG[5:-6]  # every word kept, in order
    assert wrap_title("Fits", 600) == ("Fits", 0)


def test_a_less_than_sign_in_a_subtitle_is_text_not_the_start_of_a_tag():
    # it once swallowed everything from "q < 0.05" to the closing </sup>: the subtitle ended at "(BH q"
    sub = "<sup>" + " ".join(["closed form filled; * shift significant (BH q < 0.05); bars: s.d. over instructions"] * 2) + "</sup>"
    text, _ = wrap_title("Title<br>" + sub, 600)
    assert text.count("< 0.05") == 2 and text.endswith("instructions</sup>")


def test_an_embedded_figure_takes_its_containers_width_and_keeps_its_own_for_png():
    fig = wide_figure()
    html = embed_figure(fig)
    assert html.startswith("<div style='max-width:1650px'>") and '"responsive": true' in html
    assert '"width":1650' not in html.replace(" ", "")  # drawn at the container's width, not a fixed one
    assert fig.layout.width == 1650 and fig.layout.title.text.count("<br>") == 1  # the figure itself is untouched


chromium = pytest.mark.skipif(find_chromium() is None, reason="needs a Chromium binary (apt-get install chromium)")


@chromium
def test_a_page_of_embedded_figures_fits_where_a_fixed_width_figure_does_not(tmp_path):
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    body = "<!doctype html><html><head><meta charset='utf-8'></head><body style='max-width:1360px;margin:2em auto'>{}</body></html>"
    good.write_text(body.format(figure_html([wide_figure()], good)))
    bad.write_text(body.format(figure_html([], bad) + "<script src='" + good.with_name(
        [p.name for p in tmp_path.glob("plotly-*.js")][0]).name + "'></script>"
        + wide_figure().to_html(full_html=False, include_plotlyjs=False)
        + wide_figure(600).to_html(full_html=False, include_plotlyjs=False)))
    for width in WIDTHS:
        fits = page_overflow(good, width)
        assert fits.fits, (width, fits.elements)
    overflow = page_overflow(bad, 1280)
    assert not overflow.fits and any(right > 1280 for _, right in overflow.elements)
    assert any(name.startswith("cut text: Content probes") for name, _ in overflow.elements)  # the 600 px one's title
    assert not list(tmp_path.glob(".fit-*"))  # the measuring copy is gone


REPORTS = __import__("pathlib").Path(__file__).resolve().parents[3] / "reports"
STAGE_PAGES_BEFORE_EMBEDDING = {"gemma-3-270m/probes/resid_post-last.html", "gemma-3-270m/probes/resid_post-question_mean.html"}


def committed_pages() -> list:
    """Every HTML page committed under reports/ (plotly.js left out); the two letter-probe pages the probes stage
    drew before figures were embedded at the page's width are a known defect (strict: fixed when that stage is
    rerun, then the mark must go)."""
    pages = sorted(str(p.relative_to(REPORTS)) for p in REPORTS.rglob("*.html") if not p.name.startswith("plotly"))
    return [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="drawn at a fixed 1,280 px by the probes "
                                                                   "stage before figures were embedded responsively"))
            if p in STAGE_PAGES_BEFORE_EMBEDDING else p for p in pages]


@chromium
@pytest.mark.parametrize("page", committed_pages())
def test_every_committed_page_fits_both_windows(page):
    for width in WIDTHS:
        layout = page_overflow(REPORTS / page, width)
        assert layout.fits, (page, width, layout.scroll_width, layout.elements[:5])
