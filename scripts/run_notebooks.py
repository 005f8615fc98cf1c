"""Execute the book's notebooks with papermill, in _toc.yml order.

    python scripts/run_notebooks.py --profile cpu                  # in place, into notebooks/
    python scripts/run_notebooks.py --profile smoke --out /tmp/x --only 02_dip_fitting --param seed=1

A chapter rewritten in notebooks/drafts/ supersedes its namesake: the draft is what runs, and run in
place its executed copy replaces notebooks/<name>.ipynb (delete the draft once that run is committed).

The book's order is _toc.yml's, but a chapter that reads another's results runs after it when both are
selected (``RUN_AFTER``): chapter 07 takes its seconds from chapter 08's timing benchmark, so 08 runs first.

Each notebook gets `profile` plus the --param values (Python literals, else strings) and runs in
notebooks/. Executing into notebooks/ itself goes through a temporary file that replaces the
original only on success. The run stops at the first failure (exit code 1). TDPM_DATA, if set,
reaches the kernels as an absolute path.
"""
import argparse
import ast
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import papermill as pm
import yaml

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"


def toc_notebooks() -> list[Path]:
    """Notebooks under notebooks/ in _toc.yml order (the root page is not a `file:` entry), each replaced by
    its rewrite in notebooks/drafts/ when there is one."""
    def files(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                yield node["file"]
            node = list(node.values())
        for item in node if isinstance(node, list) else []:
            yield from files(item)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    paths = [ROOT / f for f in files(toc) if Path(f).parts[0] == "notebooks"]
    paths = [p if p.suffix == ".ipynb" else p.with_name(p.name + ".ipynb") for p in paths]
    return [NB_DIR / "drafts" / p.name if (NB_DIR / "drafts" / p.name).exists() else p for p in paths]


# chapter -> the chapters whose results it reads and that must run before it when both are selected
RUN_AFTER = {"07_conclusions": ("08_performance",)}


def run_order(notebooks: list[Path]) -> list[Path]:
    """``notebooks`` in their given order, except that a chapter's ``RUN_AFTER`` prerequisites among them are
    moved before it. Nothing is added or dropped."""
    by_stem = {p.stem: p for p in notebooks}
    out: list[Path] = []

    def place(p: Path, seen: tuple = ()) -> None:
        if p in out:
            return
        if p.stem in seen:
            raise ValueError(f"RUN_AFTER has a cycle through {p.stem}")
        for dep in RUN_AFTER.get(p.stem, ()):
            if dep in by_stem:
                place(by_stem[dep], (*seen, p.stem))
        out.append(p)

    for p in notebooks:
        place(p)
    return out


def fold_injected(path: Path, profile: str | None = None) -> None:
    """Keep papermill's injected-parameters cell out of the book, as the parameters cell is: the chapter's
    "Run details" already shows the values the run used. With ``profile``, also point the notes under the
    figures and tables (markdown cells tagged ``source-note``) at this run's results folder and command."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        if profile and "source-note" in tags:
            cell.source = re.sub(r"--profile [\w-]+", f"--profile {profile}",
                                 re.sub(r"results/[\w-]+/", f"results/{profile}/", cell.source))
    nbformat.write(nb, str(path))


def parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def last_line(exc: BaseException) -> str:
    pm_error = isinstance(exc, pm.PapermillExecutionError)
    name, text = (exc.ename, exc.evalue) if pm_error else (type(exc).__name__, str(exc))
    return f"{name}: {(text.strip().splitlines() or [''])[-1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=["smoke", "cpu", "colab", "paper"])
    ap.add_argument("--out", type=Path, default=NB_DIR, help="output folder (default: notebooks)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (by stem)")
    ap.add_argument("--param", type=parse_param, action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--allow-cpu", action="store_true", help="run a GPU-only profile (colab, paper) on the CPU anyway")
    args = ap.parse_args(argv)
    if not args.allow_cpu:
        from tdpmlib.workflow import config

        try:
            config.check_profile_device(args.profile, str(dict(args.param).get("device", "auto")))
        except ValueError as e:
            ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    notebooks = toc_notebooks()
    if args.only:
        if unknown := set(args.only) - {p.stem for p in notebooks}:
            ap.error(f"not in _toc.yml: {', '.join(sorted(unknown))}")
        notebooks = [p for p in notebooks if p.stem in args.only]
    notebooks = run_order(notebooks)
    if os.environ.get("TDPM_DATA") and Path(os.environ["TDPM_DATA"]).expanduser().exists():
        # kernels run in notebooks/, so make a relative path absolute (a hub id such as uoft-cs/cifar10 stays as it is)
        os.environ["TDPM_DATA"] = str(Path(os.environ["TDPM_DATA"]).expanduser().resolve())
    out_dir = args.out.expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    in_place = out_dir == NB_DIR.resolve()
    params = {"profile": args.profile, **dict(args.param)}
    print(f"params={params} out={out_dir} TDPM_DATA={os.environ.get('TDPM_DATA', '(unset)')}")

    timings: list[tuple[str, float]] = []
    failure = None
    for nb in notebooks:
        target = out_dir / nb.name  # in place: a temporary file alongside, so os.replace is atomic
        dest = out_dir / f".{nb.stem}.{os.getpid()}.tmp.ipynb" if in_place else target
        print(f"=== {nb.stem}{' (the draft in notebooks/drafts/)' if nb.parent.name == 'drafts' else ''}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(dest), parameters=params, kernel_name="python3",
                                cwd=str(NB_DIR), progress_bar=False, log_output=True)
            fold_injected(dest, args.profile)
            if in_place:
                os.replace(dest, target)
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            failure = f"{nb.stem}: {last_line(exc)}"
            if in_place and dest.exists():  # the original stays; keep the failed copy to debug
                saved = Path(tempfile.gettempdir()) / f"{nb.stem}.failed.ipynb"
                shutil.move(dest, saved)
                print(f"executed copy of the failed notebook: {saved}", file=sys.stderr)
        finally:
            if in_place and dest.exists():  # interrupted: leave no temporary file behind
                dest.unlink()
        timings.append((nb.stem, time.perf_counter() - start))
        print(f"=== {nb.stem}: {timings[-1][1]:.1f}s{' FAILED' if failure else ''}", flush=True)
        if failure:
            break

    print("\nSummary:")
    for stem, seconds in timings:
        print(f"  {stem:<40} {seconds:8.1f}s")
    print(f"  {'total':<40} {sum(s for _, s in timings):8.1f}s  (profile {args.profile})")
    if failure:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
