#!/usr/bin/env python
"""Screenshots of the committed report pages, as a reader first sees them (headless Chromium, the top of each page),
in a 1,280 px (laptop) and a 1,920 px (desktop) window: ``{page}-1280.png`` and ``{page}-1920.png``. Each page is also
measured (``wdprobe.reports.fit``): a figure or title that runs past the window or its figure's edge is reported and
the script exits 1.

    python docs/screenshots/make.py                      # every page below, into docs/screenshots/
    python docs/screenshots/make.py --chromium /usr/bin/chromium --height 2200

Pages: the study (reports/gemma-3-270m/index.html), PCT order-free, alignment on content, the compare page of the
base model beside its organisms (reports/organisms/compare.html) and the edited organisms' card of curves
(reports/organisms/edited/card/index.html). Time: a few seconds a page.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from wdprobe.reports.fit import WIDTHS, page_overflow

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "study": "reports/gemma-3-270m/index.html",
    "pct": "reports/gemma-3-270m/pct/order-free/index.html",
    "alignment": "reports/gemma-3-270m/alignment/content/index.html",
    "compare": "reports/organisms/compare.html",
    "card": "reports/organisms/edited/card/index.html",
}


def shoot(chromium: str, page: Path, png: Path, width: int, height: int) -> None:
    """One screenshot: the page laid out at ``width``, its top ``height`` pixels, after the figures have drawn."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
           "--virtual-time-budget=15000", f"--screenshot={png}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium failed on {page}: {proc.stderr[-800:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium",
                    help="the Chromium (or Chrome) binary")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="window widths in pixels")
    ap.add_argument("--height", type=int, default=2400, help="how much of the page's top to capture, in pixels")
    ap.add_argument("--pages", nargs="+", default=list(PAGES), choices=list(PAGES), help="which pages")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = 0
    for name in args.pages:
        page = ROOT / PAGES[name]
        if not page.is_file():
            print(f"skipped {name}: {page} does not exist", file=sys.stderr)
            continue
        for width in args.widths:
            shoot(args.chromium, page, out / f"{name}-{width}.png", width, args.height)
            layout = page_overflow(page, width, chromium=args.chromium)
            print(out / f"{name}-{width}.png", "fits" if layout.fits else f"OVERFLOWS: {layout.elements[:5]}")
            problems += not layout.fits
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
