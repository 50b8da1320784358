"""Does a report page fit the reader's window? Headless Chromium lays the page out at a given width, lets its
figures draw, and reports every element that reaches past the window's right edge and every figure text (title,
subtitle, legend entry) that runs past its figure's edge, where plotly cuts it.

A plotly figure drawn wider than the page hides panels and legend entries behind a horizontal scrollbar, which a
reader at 1,280 px may never notice; a screenshot cannot show what is cut off, a measurement can. The page itself is
never changed: a copy with a small measuring script is laid out in a temporary folder beside it (so its relative
links, plotly.js included, still resolve) and removed afterwards.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wdprobe.errors import InputError

__all__ = ["Overflow", "find_chromium", "page_overflow", "WIDTHS"]

WIDTHS = (1280, 1920)  # the window widths a report page must fit (a laptop, a desktop monitor)
_MARK = "wdprobe-fit"
_SCRIPT = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const w = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > w + 1 && !el.closest('details:not([open])')) {
      const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
        (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
      wide.push([name, Math.round(r.right)]);
    }
  }
  const cut = [];
  for (const box of document.querySelectorAll('.svg-container')) {
    const edge = box.getBoundingClientRect();
    for (const t of box.querySelectorAll('text')) {
      const r = t.getBoundingClientRect();
      if (r.width > 0 && (r.right > edge.right + 2 || r.left < edge.left - 2)) {
        cut.push(['cut text: ' + t.textContent.slice(0, 60), Math.round(r.right)]);
      }
    }
  }
  const out = document.createElement('pre');
  out.id = 'MARK';
  out.textContent = JSON.stringify({client: w, scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 20).concat(cut.slice(0, 20))});
  document.body.appendChild(out);
}, 1500));
</script>""".replace("MARK", _MARK)


@dataclass(frozen=True)
class Overflow:
    """A page laid out at ``width``: the page's own width (``scroll_width``), the elements that reach past the window
    (tag.class, right edge in pixels) and figure texts cut at their figure's edge (``cut text: ...``)."""

    width: int
    scroll_width: int
    elements: tuple[tuple[str, int], ...]

    @property
    def fits(self) -> bool:
        return self.scroll_width <= self.width and not self.elements


def find_chromium() -> str | None:
    """A Chromium (or Chrome) binary on the PATH, or None."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def page_overflow(page: str | Path, width: int, *, chromium: str | None = None, timeout: float = 180) -> Overflow:
    """Lay ``page`` out at ``width`` pixels in headless Chromium and measure what reaches past the right edge."""
    page = Path(page)
    if not page.is_file():
        raise InputError(f"{page}: no such page to measure")
    binary = chromium or find_chromium()
    if binary is None:
        raise InputError("no Chromium binary found (install chromium, or pass chromium=...)")
    text = page.read_text(encoding="utf-8")
    probe = text.replace("</body>", _SCRIPT + "</body>") if "</body>" in text else text + _SCRIPT
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=page.parent, prefix=".fit-", delete=False,
                                     encoding="utf-8") as fh:
        fh.write(probe)
        copy = Path(fh.name)
    try:
        proc = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--window-size={width},1200", "--virtual-time-budget=20000", "--dump-dom",
                               copy.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        copy.unlink(missing_ok=True)
    m = re.search(rf'<pre id="{_MARK}">(.*?)</pre>', proc.stdout, flags=re.S)
    if proc.returncode != 0 or not m:
        raise InputError(f"chromium could not lay out {page} at {width} px: {proc.stderr[-600:]}")
    data = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    return Overflow(width, int(data["scroll"]), tuple((str(n), int(r)) for n, r in data["wide"]))
