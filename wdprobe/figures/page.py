"""Figures on HTML pages with plotly.js shared: one copy of the library per folder of pages (about 3.5 MB), loaded
by a relative ``<script src>``, instead of inlined into every page. Pages stay usable offline: the library sits
beside them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import plotly
import plotly.graph_objects as go

from wdprobe.core.cache import atomic_write_text

__all__ = ["PLOTLY_FILE", "plotly_script", "figure_html", "embed_figure", "wrap_title", "PAGE_WIDTH"]

PLOTLY_FILE = f"plotly-{plotly.__version__}.min.js"  # versioned: pages never load a library they were not made with


SEARCH_UP = 3  # a page uses a copy this many folders above it (a report's sub-reports share the report's copy)


def plotly_script(page: str | Path, root: str | Path | None = None) -> str:
    """The ``<script src>`` tag a page at ``page`` loads plotly.js with. The library is the copy in ``root`` if given,
    else the nearest copy in the page's folder or up to ``SEARCH_UP`` folders above it, else a new copy written into
    the page's folder."""
    page = Path(page)
    if root is not None:
        folder = Path(root)
    else:
        above = [page.parent, *list(page.parent.parents)[:SEARCH_UP]]
        folder = next((f for f in above if (f / PLOTLY_FILE).is_file()), page.parent)
    target = folder / PLOTLY_FILE
    if not target.is_file():
        from plotly.offline import get_plotlyjs

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, get_plotlyjs())
    rel = os.path.relpath(target, page.parent).replace(os.sep, "/")
    return f"<script src='{rel}' charset='utf-8'></script>"


def figure_html(figures: Sequence[go.Figure], page: str | Path, *, root: str | Path | None = None,
                wrap: str = "<div class='fig'>{}</div>") -> str:
    """The figures as HTML fragments for the page at ``page``, plotly.js loaded once from the shared copy."""
    parts = [plotly_script(page, root)] if figures else []
    parts += [wrap.format(embed_figure(fig)) for fig in figures]
    return "\n".join(parts)


PAGE_WIDTH = 1200  # pixels a figure gets on a report page in a 1,280 px window (the page's margins taken off)
_CHAR_PX = {"title": 9.5, "sub": 7.0}  # a generous average glyph width of plotly's title and <sup> subtitle fonts


def wrap_title(text: str, width: int) -> tuple[str, int]:
    """A figure title whose lines (``<br>``-separated; a ``<sup>`` subtitle in the smaller font) fit ``width``
    pixels, broken at spaces; and how many lines were added. Plotly never wraps a title: a long subtitle is cut at
    the figure's edge."""
    out, added = [], 0
    for line in re.split(r"<br\s*/?>", text):
        sub = "<sup>" in line
        plain = re.sub(r"</?[A-Za-z][^<>]*>", "", line)  # tags only: a "q < 0.05" in the text is kept
        limit = max(20, int(width / _CHAR_PX["sub" if sub else "title"]))
        if len(plain) <= limit:
            out.append(line)
            continue
        words, pieces, current = plain.split(" "), [], ""
        for word in words:
            if current and len(current) + 1 + len(word) > limit:
                pieces.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        pieces.append(current)
        added += len(pieces) - 1
        out += [f"<sup>{p}</sup>" if sub else p for p in pieces]
    return "<br>".join(out), added


def embed_figure(fig: go.Figure, page_width: int = PAGE_WIDTH) -> str:
    """A figure as an HTML fragment that fits its page: drawn at the container's width (plotly's responsive
    autosize) up to the width it was designed at (kept in the layout for PNG export), its title wrapped for the
    narrowest page it is drawn on, the top margin grown by the lines that adds."""
    design = fig.layout.width
    shown = go.Figure(fig)
    title = shown.layout.title.text
    if title:
        text, added = wrap_title(title, min(design or page_width, page_width))
        if added:
            top = shown.layout.margin.t if shown.layout.margin.t is not None else 100
            shown.update_layout(title_text=text, margin_t=top + 24 * added)
            if shown.layout.height:
                shown.update_layout(height=shown.layout.height + 24 * added)
    shown.update_layout(width=None, autosize=True)
    html = shown.to_html(full_html=False, include_plotlyjs=False, default_width="100%", config={"responsive": True})
    return f"<div style='max-width:{int(design)}px'>{html}</div>" if design else html
