"""The built book in headless Chromium: a screenshot of every page, or the whole book as one PDF.

    python scripts/book_browser.py screenshots      # _build/html -> _build/screenshots/<page>-NN.png
    python scripts/book_browser.py pdf              # _build/singlehtml -> _build/pdf/book.pdf (make pdf)

Offline, the CDN MathJax the pages load cannot be reached and formulas would stay TeX source. With
``--mathjax DIR`` (a MathJax 3 ``es5`` folder, as ``npm install mathjax@3`` writes; ``make pdf`` fetches one
into _build/mathjax) the pages are copied to a scratch folder, pointed at that copy and served on localhost.
Screenshots are taken ``--height`` px tall, cropped below the page's end and cut into ``--tile``-px pieces that
are readable one by one; each page's height in screens goes to ``heights.csv`` beside them and to the
output. Needs Debian's ``chromium`` (``scripts/install_pdf_tools.sh``).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# as this workplace's machines need them: no background connections, no sandbox as root
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3/es5/")


def pages(html_dir: Path) -> list[Path]:
    """The book's pages (the intro, the chapters, the references), not Sphinx's search and index pages."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    return sorted(p for p in html_dir.rglob("*.html") if p.name not in skip and "_static" not in p.parts
                  and "_sources" not in p.parts and "_mathjax" not in p.parts)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log
        pass

    def handle(self):  # Chromium drops connections it no longer needs (favicon)
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def served(html_dir: Path, mathjax: Path | None):
    """(url of the site root, scratch folder): a copy of ``html_dir`` served on localhost, MathJax local."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(html_dir, site)
        if mathjax is not None:
            shutil.copytree(mathjax, site / "_mathjax")
            for p in pages(site):
                p.write_text(CDN.sub("/_mathjax/", p.read_text()))
        handler = functools.partial(Quiet, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", Path(tmp), site
        finally:
            server.shutdown()


def chromium(binary: str, profile: Path, *args: str) -> None:
    subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args],
                   capture_output=True, timeout=300, check=True)


def crop_and_tile(png: Path, tile: int) -> list[Path]:
    """Cut the blank space under the page's end, then split the shot into ``tile``-px-high pieces."""
    import numpy as np
    from PIL import Image

    im = Image.open(png).convert("RGB")
    main = np.asarray(im)[:, im.width // 5:].astype(int)  # the text column, right of the sidebar's border line
    busy = np.flatnonzero(main.max(axis=(1, 2)) - main.min(axis=(1, 2)) > 8)  # rows that are not one colour
    gaps = np.flatnonzero(np.diff(busy) > 800)  # the page ends at the first long blank run (the window is taller)
    end = busy[gaps[0]] if len(gaps) else (busy[-1] if len(busy) else im.height)
    im = im.crop((0, 0, im.width, min(im.height, end + 24)))
    png.unlink()
    out = []
    for k, top in enumerate(range(0, im.height, tile)):
        piece = png.with_name(f"{png.stem}-{k + 1:02d}.png")
        im.crop((0, top, im.width, min(im.height, top + tile))).save(piece)
        out.append(piece)
    return out


def screenshots(a) -> int:
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("*.png"):
        old.unlink()
    from PIL import Image

    heights = []
    with served(a.html, a.mathjax) as (url, tmp, site):
        for p in pages(site):
            rel = p.relative_to(site)
            png = a.out / (str(rel.with_suffix("")).replace("/", "__") + ".png")
            chromium(a.chromium, tmp / "profile", f"--window-size={a.width},{a.height}", f"--screenshot={png}",
                     f"{url}/{rel}")
            pieces = crop_and_tile(png, a.tile)
            height = sum(Image.open(q).height for q in pieces)
            heights.append((str(rel), height))
            print(*pieces, sep="\n")
    # each page's height in screens of the capture size (the book's target: at most 8 of 1280 x 1600)
    lines = ["page,height_px,screens"] + [f"{r},{h},{h / a.tile:.1f}" for r, h in heights]
    (a.out / "heights.csv").write_text("\n".join(lines) + "\n")
    for r, h in heights:
        print(f"{r:45s} {h:6d} px  {h / a.tile:4.1f} screens{'  (more than 8)' if h > 8 * a.tile else ''}")
    return 0


def pdf(a) -> int:
    a.out.mkdir(parents=True, exist_ok=True)
    target = a.out / "book.pdf"
    with served(a.html, a.mathjax) as (url, tmp, site):
        partial = tmp / "book.pdf"
        chromium(a.chromium, tmp / "profile", "--no-pdf-header-footer", f"--print-to-pdf={partial}",
                 f"{url}/index.html")
        shutil.move(partial, target)  # only a finished PDF reaches _build/pdf
    print(target)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, html, out in (("screenshots", "html", "screenshots"), ("pdf", "singlehtml", "pdf")):
        p = sub.add_parser(name)
        p.add_argument("--html", type=Path, default=ROOT / "_build" / html)
        p.add_argument("--out", type=Path, default=ROOT / "_build" / out)
        p.add_argument("--mathjax", type=Path, default=None, help="a local MathJax 3 es5 folder (offline)")
        p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
        if name == "screenshots":
            p.add_argument("--width", type=int, default=1280)
            p.add_argument("--height", type=int, default=30000, help="capture height in px (longer pages are cut)")
            p.add_argument("--tile", type=int, default=1600, help="height of each saved piece in px")
    a = ap.parse_args(argv)
    if not (a.html / "index.html").exists():
        ap.error(f"--html {a.html}: no index.html; build the book first ({'make book' if a.command == 'screenshots' else 'make pdf'})")
    if a.mathjax is not None and not (a.mathjax / "tex-mml-chtml.js").exists():
        ap.error(f"--mathjax {a.mathjax}: no tex-mml-chtml.js; give a MathJax 3 es5 folder")
    if not shutil.which(a.chromium):
        ap.error(f"--chromium {a.chromium}: not found; install Debian's chromium (scripts/install_pdf_tools.sh)")
    return screenshots(a) if a.command == "screenshots" else pdf(a)


if __name__ == "__main__":
    raise SystemExit(main())
