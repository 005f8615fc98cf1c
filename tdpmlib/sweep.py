"""Run a notebook over a grid of parameters with papermill, then merge the results into one CSV.

    python -m tdpmlib.sweep notebooks/06_ablations.ipynb -p t_trunc 0 5 10 50 -p schedule linear cosine --profile cpu
    tdpm-sweep notebooks/06_ablations.ipynb -p seed 0 1 2 --profile smoke --dry-run

Every point of the grid (the Cartesian product of the -p values, in the order the flags were given)
is one run of the notebook with the run name ``<stem>__<k1>-<v1>__<k2>-<v2>``. The notebook gets the
grid values plus ``profile``, ``results_dir`` (absolute) and ``run_name``, and writes its results to
``<results-dir>/<profile>/<run_name>/results.csv``; the executed copy of the notebook goes to
``<out-dir>/<run_name>.ipynb``.

* Values are Python literals, else strings ("5" -> 5, "1e-3" -> 0.001, "True" -> True, "cosine" ->
  "cosine"). Names are checked against the notebook's ``parameters`` cell and values against the
  type of the default before anything runs (exit code 2 on bad input).
* A point whose results.csv exists is skipped ("skip (done)") unless --force.
* A failed point is recorded and the sweep goes on; the exit code is 1 if any point failed.
* Sweeps may run side by side into the same results folder: each point is guarded by a lock file
  ``<results-dir>/<profile>/<run_name>/.lock`` holding the owner's pid. A point locked by a live
  process is skipped ("skip (running elsewhere)"); a lock left by a dead process is taken over.
* At the end the results of every grid point that has them are merged, with one column per grid
  parameter and ``run_name``, into ``<results-dir>/<profile>/sweeps/<stem>.csv``.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import papermill as pm

PROFILES = ("smoke", "cpu", "colab", "paper")
# Set by the sweep itself, never through -p; the notebook must declare all three.
RESERVED = ("profile", "results_dir", "run_name")
DONE, SKIP_DONE, SKIP_RUNNING, FAILED, PENDING = "done", "skip (done)", "skip (running elsewhere)", "failed", "run"
# A lock file with no pid in it yet is taken to be held for this long (its owner is between
# creating it and writing its pid); after that it counts as stale.
EMPTY_LOCK_GRACE_S = 30.0


class UsageError(Exception):
    """Bad command-line input: reported on stderr as one line, exit code 2."""


# ---------------------------------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tdpm-sweep",
        description="Run a notebook over a parameter grid with papermill and merge the results.",
        epilog="example: tdpm-sweep notebooks/06_ablations.ipynb -p t_trunc 0 5 10 50 -p schedule linear cosine --profile cpu",
    )
    ap.add_argument("notebook", type=Path, help="the notebook to run (.ipynb with a cell tagged `parameters`)")
    ap.add_argument("-p", "--param", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                    help="NAME VALUE [VALUE ...]: one grid axis; repeat for more axes. "
                         "Values are Python literals, else strings")
    ap.add_argument("--profile", choices=PROFILES, default="cpu", help="the notebooks' profile (default: cpu)")
    ap.add_argument("--results-dir", type=Path, default=Path("results"),
                    help="results root, relative to the current folder (default: results)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="folder for the executed notebooks (default: <results-dir>/<profile>/sweeps/<stem>/)")
    ap.add_argument("--force", action="store_true", help="re-run points that already have results")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and what would run, run nothing")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    ap.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="time limit per cell (default: none)")
    return ap.parse_args(argv)


def parse_value(text: str) -> object:
    """A Python literal if `text` is one ("5" -> 5, "1e-3" -> 0.001, "True" -> True), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def notebook_parameters(notebook: Path) -> dict[str, str]:
    """The names declared in the notebook's `parameters` cell -> the source text of their defaults."""
    try:
        declared = pm.inspect_notebook(str(notebook))
    except Exception as exc:  # unreadable or not a notebook
        raise UsageError(f"cannot read {notebook}: {one_line(exc)}") from None
    if not declared:
        raise UsageError(f"{notebook} has no code cell tagged `parameters` (or it declares nothing)")
    return {name: info.get("default", "") for name, info in declared.items()}


def check_value(name: str, value: object, default_src: str) -> None:
    """Raise UsageError if `value` obviously does not fit the type of the parameter's default."""
    try:
        default = ast.literal_eval(default_src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return  # the default is an expression: nothing obvious to check against
    if isinstance(default, bool):
        ok, allowed = isinstance(value, bool), "True or False"
    elif isinstance(default, (int, float)):
        ok, allowed = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, allowed = isinstance(value, str), "a string (quote it, e.g. '\"5\"', to pass digits as text)"
    else:
        return  # None, lists, ...: anything goes
    if not ok:
        raise UsageError(f"-p {name}: {value!r} is not allowed; {name} defaults to {default!r} "
                         f"({type(default).__name__}), so use {allowed}")


def parse_grid_axes(raw: list[list[str]], declared: dict[str, str]) -> list[tuple[str, list[object]]]:
    """[["t_trunc", "0", "5"], ...] -> [("t_trunc", [0, 5]), ...], checked against the notebook."""
    axes: list[tuple[str, list[object]]] = []
    allowed = ", ".join(n for n in declared if n not in RESERVED)
    for item in raw:
        name, texts = item[0], item[1:]
        if not texts:
            raise UsageError(f"-p {name}: give at least one value (-p NAME VALUE [VALUE ...])")
        if name in RESERVED:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"-p {name}: {name} is set by the sweep" + (f"; use {flag}" if name != "run_name" else ""))
        if name not in declared:
            raise UsageError(f"-p {name}: unknown parameter; the notebook's parameters are: {allowed}")
        if name in (n for n, _ in axes):
            raise UsageError(f"-p {name}: given twice; put all its values after one -p")
        values = [parse_value(t) for t in texts]
        for value in values:
            check_value(name, value, declared[name])
        axes.append((name, values))
    return axes


# ---------------------------------------------------------------------------------------------- grid

@dataclass
class Point:
    run_name: str
    params: dict[str, object]


def safe(value: object) -> str:
    """A value as a piece of a file name: characters outside [A-Za-z0-9._-] become `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value))


def build_grid(stem: str, axes: list[tuple[str, list[object]]]) -> list[Point]:
    """The Cartesian product of the axes, in the order given, each point with its run name."""
    names = [name for name, _ in axes]
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        run_name = "__".join([stem] + [f"{safe(k)}-{safe(v)}" for k, v in zip(names, combo)])
        points.append(Point(run_name, dict(zip(names, combo))))
    seen: dict[str, Point] = {}
    for point in points:
        if point.run_name in seen:
            raise UsageError(f"grid points {seen[point.run_name].params} and {point.params} share the run name "
                             f"{point.run_name!r} (repeated values, or values equal once made file-name safe)")
        seen[point.run_name] = point
    return points


def run_dir(results_dir: Path, profile: str, run_name: str) -> Path:
    return results_dir / profile / run_name


def has_results(results_dir: Path, profile: str, run_name: str) -> bool:
    return (run_dir(results_dir, profile, run_name) / "results.csv").is_file()


# --------------------------------------------------------------------------------------------- locks

def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(lock: Path) -> int | None:
    """The pid in a lock file; None if it has none (yet). Raises FileNotFoundError if it is gone."""
    text = lock.read_text().strip()
    return int(text) if text.isdigit() else None


def lock_is_live(lock: Path, pid: int | None) -> bool:
    if pid is None:  # just created by its owner, or left empty by a crash long ago
        try:
            return time.time() - lock.stat().st_mtime < EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    return pid_alive(pid)


def break_stale_lock(lock: Path, stale_pid: int | None) -> None:
    """Remove `lock` if it still is the stale one we looked at.

    It is renamed away first (atomic: of two sweeps breaking it at once only one succeeds), and if
    what was renamed turns out to be a fresh lock that another sweep took in the meantime, it is
    linked back (os.link never overwrites).
    """
    aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else broke it
    try:
        if read_lock(aside) != stale_pid:
            try:
                os.link(aside, lock)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def acquire_lock(lock: Path) -> bool:
    """Take the lock (a file created with O_EXCL, holding our pid); False if a live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = read_lock(lock)
            except FileNotFoundError:
                continue  # released in between: try again
            if lock_is_live(lock, holder):
                return False
            break_stale_lock(lock, holder)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False  # lost every race: let the other sweep have it


def release_lock(lock: Path) -> None:
    try:
        if read_lock(lock) == os.getpid():
            lock.unlink()
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------------------------- run

@dataclass
class Outcome:
    point: Point
    status: str
    error: str = ""
    seconds: float = 0.0
    path: Path | None = None  # the executed notebook; for a point locked elsewhere, the lock file


def one_line(exc: BaseException) -> str:
    """`ename: evalue` on one line, for a papermill error or any other exception."""
    if isinstance(exc, pm.PapermillExecutionError):
        text = f"{exc.ename}: {exc.evalue}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def file_version(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None if there is none: changes when the file is rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_point(notebook: Path, point: Point, *, profile: str, results_dir: Path, out_dir: Path,
              kernel: str = "python3", timeout: float | None = None, force: bool = False) -> Outcome:
    """Run one grid point (unless it is done or locked elsewhere); never raises for a failed run."""
    if not force and has_results(results_dir, profile, point.run_name):
        return Outcome(point, SKIP_DONE)
    lock = run_dir(results_dir, profile, point.run_name) / ".lock"
    if not acquire_lock(lock):
        return Outcome(point, SKIP_RUNNING, path=lock)
    csv = run_dir(results_dir, profile, point.run_name) / "results.csv"
    executed = out_dir / f"{point.run_name}.ipynb"
    tmp = out_dir / f".{point.run_name}.{os.getpid()}.tmp.ipynb"  # papermill wants the .ipynb suffix
    t0 = time.monotonic()
    try:
        # Another sweep may have finished it between our check and our lock.
        if not force and has_results(results_dir, profile, point.run_name):
            return Outcome(point, SKIP_DONE)
        out_dir.mkdir(parents=True, exist_ok=True)
        before = file_version(csv)  # under --force, results of an earlier run are there already
        parameters = {**point.params, "profile": profile, "results_dir": str(results_dir), "run_name": point.run_name}
        try:
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=kernel,
                                cwd=str(notebook.parent), progress_bar=False, execution_timeout=timeout)
            if file_version(csv) in (None, before):
                raise RuntimeError(f"the notebook finished but wrote no {csv} (does it use run_name?)")
        except Exception as exc:  # PapermillExecutionError, a dead kernel, a timeout, ...
            return Outcome(point, FAILED, one_line(exc), time.monotonic() - t0, executed)
        finally:
            if tmp.exists():  # keep the executed copy, failed or not, for inspection
                os.replace(tmp, executed)
        return Outcome(point, DONE, "", time.monotonic() - t0, executed)
    finally:
        tmp.unlink(missing_ok=True)
        release_lock(lock)


# --------------------------------------------------------------------------------------------- merge

def merge_results(points: list[Point], *, results_dir: Path, profile: str, dest: Path) -> int:
    """Concatenate the results.csv of every point that has one, with the grid values and run_name as
    leading columns, into `dest` (written atomically). Returns the number of rows (0: nothing written)."""
    frames = []
    for point in points:
        csv = run_dir(results_dir, profile, point.run_name) / "results.csv"
        if not csv.is_file():
            continue
        try:
            df = pd.read_csv(csv)
        except Exception as exc:
            print(f"warning: cannot read {csv}: {one_line(exc)}", file=sys.stderr)
            continue
        meta = {"run_name": point.run_name, **point.params}
        df = df.drop(columns=[c for c in meta if c in df.columns])
        for i, (name, value) in enumerate(meta.items()):
            df.insert(i, name, [value] * len(df))
        frames.append(df)
    if not frames:
        return 0
    merged = pd.concat(frames, ignore_index=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        merged.to_csv(tmp, index=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return len(merged)


# ---------------------------------------------------------------------------------------------- main

def print_summary(outcomes: list[Outcome]) -> None:
    count = {s: sum(o.status == s for o in outcomes) for s in (DONE, SKIP_DONE, SKIP_RUNNING, FAILED)}
    print("\nsummary")
    print(f"  {'done':<10}{count[DONE]:>4}")
    print(f"  {'skipped':<10}{count[SKIP_DONE] + count[SKIP_RUNNING]:>4}"
          f"   ({count[SKIP_DONE]} done before, {count[SKIP_RUNNING]} running elsewhere)")
    print(f"  {'failed':<10}{count[FAILED]:>4}")
    elsewhere = [o for o in outcomes if o.status == SKIP_RUNNING]
    if elsewhere:
        print("running elsewhere (delete the lock if its pid is not really a sweep)")
        for o in elsewhere:
            print(f"  {o.point.run_name}: {o.path}")
    failures = [o for o in outcomes if o.status == FAILED]
    if failures:
        print("failures")
        for o in failures:
            print(f"  {o.point.run_name}: {o.error}")
            print(f"    notebook: {o.path}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        notebook = args.notebook.expanduser().resolve()
        if notebook.suffix != ".ipynb" or not notebook.is_file():
            raise UsageError(f"no such notebook: {args.notebook}")
        declared = notebook_parameters(notebook)
        if missing := [n for n in RESERVED if n not in declared]:
            raise UsageError(f"{args.notebook} does not declare {', '.join(missing)} in its parameters cell; "
                             f"the sweep sets {', '.join(RESERVED)}")
        axes = parse_grid_axes(args.param, declared)
        points = build_grid(notebook.stem, axes)
    except UsageError as exc:
        print(f"tdpm-sweep: error: {exc}", file=sys.stderr)
        return 2

    results_dir = args.results_dir.expanduser().resolve()
    sweeps_dir = results_dir / args.profile / "sweeps"
    out_dir = (args.out_dir.expanduser().resolve() if args.out_dir else sweeps_dir / notebook.stem)
    print(f"sweep {notebook.name}: {len(points)} point(s), profile={args.profile}\n"
          f"  results  {results_dir / args.profile}\n  notebooks {out_dir}", flush=True)

    if args.dry_run:
        for i, point in enumerate(points, 1):
            would = SKIP_DONE if not args.force and has_results(results_dir, args.profile, point.run_name) else PENDING
            print(f"[{i}/{len(points)}] {point.run_name}  {point.params}  -> {would}")
        return 0

    outcomes = []
    for i, point in enumerate(points, 1):
        print(f"[{i}/{len(points)}] {point.run_name} ...", end=" ", flush=True)
        outcome = run_point(notebook, point, profile=args.profile, results_dir=results_dir, out_dir=out_dir,
                            kernel=args.kernel, timeout=args.timeout, force=args.force)
        if outcome.status == DONE:
            print(f"done ({outcome.seconds:.1f}s)", flush=True)
        elif outcome.status == FAILED:
            print(f"FAILED ({outcome.seconds:.1f}s): {outcome.error}", flush=True)
        else:
            print(outcome.status, flush=True)
        outcomes.append(outcome)

    dest = sweeps_dir / f"{notebook.stem}.csv"
    rows = merge_results(points, results_dir=results_dir, profile=args.profile, dest=dest)
    print_summary(outcomes)
    print(f"merged {rows} row(s) into {dest}" if rows else "no results to merge")
    return 1 if any(o.status == FAILED for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
