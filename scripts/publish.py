"""Push the built site to the gh-pages branch with ghp-import (`make publish`), refusing a stale build.

    python scripts/publish.py [--remote origin] [--branch gh-pages]

The site is _build/html as `make site` leaves it: the HTML book with the PDF (book.pdf) that every page links to.
It is stale when a notebook, a results file or a source of the book (git's tracked and untracked-but-not-ignored
files) is newer than the HTML build or the PDF; then nothing is pushed and the newest such file is named.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_build" / "html"
# what the site is built from
SOURCES = ["notebooks", "results", "_config.yml", "_toc.yml", "references.bib", "*.md", "_static"]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def newest_source() -> tuple[float, str]:
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCES).split("\0")
    return max(((ROOT / f).stat().st_mtime, f) for f in files if f and (ROOT / f).is_file())


def stale_reason() -> str:
    """Why _build/html may not be published, or '' when it is as new as everything it is built from."""
    built = {"the HTML build": SITE / ".buildinfo", "the PDF": SITE / "book.pdf"}
    missing = [path.name for path in built.values() if not path.is_file()]
    if missing:
        return f"{SITE.relative_to(ROOT)} has no {' and no '.join(missing)}: run `make site` first"
    when, what = min((path.stat().st_mtime, what) for what, path in built.items())
    source_time, source = newest_source()
    if source_time > when:
        return f"{what} is older than {source}: run `make site` again"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--remote", default="origin", help="the git remote to push to (default: origin)")
    ap.add_argument("--branch", default="gh-pages", help="the branch the site goes to (default: gh-pages)")
    a = ap.parse_args(argv)
    reason = stale_reason()
    if reason:
        print(f"publish: refused, {reason}", file=sys.stderr)
        return 1
    import ghp_import

    commit = git("rev-parse", "--short", "HEAD").strip()
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no").strip() else ""
    try:
        ghp_import.ghp_import(str(SITE), mesg=f"Publish the book built from {commit}{dirty}", remote=a.remote,
                              branch=a.branch, push=True, nojekyll=True)
    except ghp_import.GhpError as e:
        print(f"publish: ghp-import failed: {e.message}", file=sys.stderr)
        return 1
    print(f"publish: {SITE.relative_to(ROOT)} pushed to {a.remote}/{a.branch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
