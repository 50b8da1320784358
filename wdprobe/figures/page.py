"""Figures on HTML pages with plotly.js shared: one copy of the library per folder of pages (about 3.5 MB), loaded
by a relative ``<script src>``, instead of inlined into every page. Pages stay usable offline: the library sits
beside them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import plotly
import plotly.graph_objects as go

from wdprobe.core.cache import atomic_write_text

__all__ = ["PLOTLY_FILE", "plotly_script", "figure_html"]

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
    parts += [wrap.format(fig.to_html(full_html=False, include_plotlyjs=False)) for fig in figures]
    return "\n".join(parts)
