"""Run a notebook over a grid of parameters with papermill, then merge the results into one CSV.

    python -m tdpmlib.workflow.sweep notebooks/06_ablations.ipynb -p t_trunc 0 5 10 50 -p schedule linear cosine --profile cpu
    tdpm-sweep notebooks/06_ablations.ipynb -p seed 0 1 2 --profile smoke --dry-run
    tdpm-sweep notebooks/06_ablations.ipynb -p seed 0 1 2 3 --jobs 4 --devices 0,1,2,3
    tdpm-sweep notebooks/06_ablations.ipynb -p seed 0 1 2 --executor slurm --partition gpu --gpus-per-point 1 --wait

Every point of the grid (the Cartesian product of the -p values, in the order the flags were given)
is one run of the notebook with the run name ``<stem>__<k1>-<v1>__<k2>-<v2>``. The notebook gets the
grid values plus ``profile``, ``results_dir`` (absolute) and ``run_name``, and writes its results to
``<results-dir>/<profile>/<run_name>/results.csv``; the executed copy of the notebook goes to
``<out-dir>/<run_name>.ipynb``.

* Values are Python literals, else strings ("5" -> 5, "1e-3" -> 0.001, "True" -> True, "cosine" ->
  "cosine"). Names are checked against the notebook's ``parameters`` cell and values against the
  type of the default, and every option is checked, before anything runs (exit code 2, one line).
* A point whose results.csv exists is skipped ("skip (done)") unless --force.
* A failed point is recorded and the sweep goes on; the exit code is 1 if any point failed.
* Sweeps may run side by side into the same results folder, on one machine or on several sharing
  the filesystem: each point is guarded by a lock file ``<results-dir>/<profile>/<run_name>/.lock``
  (tdpmlib.workflow.sweep.grid_point). A point locked by a live run is skipped ("skip (running elsewhere)"); a
  stale lock is taken over.
* Where the points run: one after another here (the default); up to --jobs at once here, each with
  one of --devices as its CUDA_VISIBLE_DEVICES (tdpmlib.workflow.sweep.local); or as cluster jobs with
  --executor slurm|local|debug (tdpmlib.workflow.sweep.cluster: without --wait the command returns once the
  jobs are submitted, and rerunning it merges what has finished and submits only the points that
  are neither done nor queued nor running).
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
from pathlib import Path

import pandas as pd
import papermill as pm

from .cluster import ClusterOptions, EXECUTORS, import_submitit, run_cluster, SKIP_QUEUED, SUBMITTED
from .local import run_pool, run_sequential
# Point, Outcome, run_point and the lock functions are part of this module's API since before the split.
from .grid_point import (DONE, FAILED, PENDING, SKIP_DONE, SKIP_RUNNING, Outcome, Point, RunSettings,  # noqa: F401
                          UsageError, acquire_lock, has_results, one_line, release_lock, run_dir, run_point)

PROFILES = ("smoke", "cpu", "colab", "paper")
# Set by the sweep itself, never through -p; the notebook must declare all three.
RESERVED = ("profile", "results_dir", "run_name")
# Options that only mean something for cluster jobs.
CLUSTER_ONLY = ("partition", "gpus_per_point", "cpus_per_point", "mem", "time", "slurm_arg", "wait")


# ---------------------------------------------------------------------------------------- arguments

class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UsageError (one line on stderr, exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see tdpm-sweep --help)")


def count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a whole number, {minimum} or more")
        return value
    return parse


def device_list(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",")]
    if not all(devices) or any(re.search(r"\s", d) for d in devices):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give device ids separated by commas, e.g. 0,1,2,3")
    if len(set(devices)) < len(devices):
        raise argparse.ArgumentTypeError(f"{text!r} names a device twice")
    return devices


def memory_gb(text: str) -> float:
    """ "32G" -> 32, "500M" -> 0.48828125, "1.5T" -> 1536, "16" -> 16 (GB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", text.strip(), flags=re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a size such as 32G or 500M")
    return float(match[1]) * {"m": 1 / 1024, "g": 1, "": 1, "t": 1024}[match[2].lower()]


def slurm_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give KEY=VALUE (an sbatch option without --), "
                                         "e.g. account=myproject, or KEY alone for a flag")
    return key.replace("-", "_"), (value if sep else True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = Parser(
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
    here = ap.add_argument_group("several points at once on this machine")
    here.add_argument("--jobs", type=count(1), default=None, metavar="N",
                      help="run up to N points at once, each in a process of its own with OMP_NUM_THREADS = "
                           "cores // N (default: 1; with --devices, one per device). With --executor slurm: "
                           "at most N array tasks at once")
    here.add_argument("--devices", type=device_list, default=None, metavar="0,1,...",
                      help="GPUs to use: each running point gets one to itself as CUDA_VISIBLE_DEVICES, in turn; "
                           "--jobs may not exceed their number")
    cluster = ap.add_argument_group("cluster jobs (submitit; pip install -e \".[cluster]\")")
    cluster.add_argument("--executor", choices=EXECUTORS, default=None,
                         help="run each point as a job: slurm (a SLURM job array), local (job processes on this "
                              "machine) or debug (in this process, one after another)")
    cluster.add_argument("--wait", action="store_true",
                         help="wait for the jobs, then merge (without it: return once submitted; rerun the command "
                              "to merge what has finished and submit what is neither done nor queued)")
    cluster.add_argument("--partition", default=None, help="SLURM partition")
    cluster.add_argument("--gpus-per-point", type=count(0), default=None, metavar="N", help="GPUs per job")
    cluster.add_argument("--cpus-per-point", type=count(1), default=None, metavar="N",
                         help="CPU cores per job (also its OMP_NUM_THREADS)")
    cluster.add_argument("--mem", type=memory_gb, default=None, metavar="SIZE", help="memory per job, e.g. 32G")
    cluster.add_argument("--time", type=count(1), default=None, metavar="MINUTES",
                         help="time limit per job (default: 60); a job that reaches it is requeued (3 times at most)")
    cluster.add_argument("--slurm-arg", type=slurm_arg, action="append", default=[], metavar="KEY=VALUE",
                         help="another sbatch option, e.g. account=myproject, qos=long, constraint=a100; repeatable")
    return ap.parse_args(argv)


def check_run_options(args: argparse.Namespace) -> tuple[int, list[str] | None, ClusterOptions | None]:
    """(jobs, devices, cluster options) from the arguments; a UsageError names the option that does not fit."""
    given = [name for name in CLUSTER_ONLY if getattr(args, name) not in (None, False, [])]
    if args.executor is None:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag}: only for cluster jobs; add --executor slurm (or local, debug)")
        devices = args.devices
        jobs = args.jobs if args.jobs is not None else (len(devices) if devices else 1)
        if devices and jobs > len(devices):
            raise UsageError(f"--jobs {jobs}: more than the {len(devices)} device(s) in --devices "
                             f"{','.join(devices)}; each running point gets a device to itself")
        return jobs, devices, None
    if args.devices is not None:
        raise UsageError(f"--devices: only for runs on this machine, not with --executor {args.executor}; "
                         "ask for GPUs with --gpus-per-point")
    if args.executor != "slurm":
        if args.jobs is not None:
            raise UsageError(f"--jobs: not with --executor {args.executor}, which "
                             + ("starts every point at once" if args.executor == "local" else "runs them one by one"))
        if slurm_only := [n for n in ("partition", "slurm_arg") if getattr(args, n)]:
            raise UsageError(f"--{slurm_only[0].replace('_', '-')}: only with --executor slurm")
    opts = ClusterOptions(args.executor, time_min=args.time or 60, partition=args.partition,
                          gpus_per_point=args.gpus_per_point, cpus_per_point=args.cpus_per_point, mem_gb=args.mem,
                          parallel=args.jobs, slurm_args=dict(args.slurm_arg), wait=args.wait)
    return 1, None, opts


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
    count = {s: sum(o.status == s for o in outcomes)
             for s in (DONE, SKIP_DONE, SKIP_RUNNING, SKIP_QUEUED, FAILED, SUBMITTED)}
    print("\nsummary")
    print(f"  {'done':<10}{count[DONE]:>4}")
    queued = f", {count[SKIP_QUEUED]} queued or running as jobs" if count[SKIP_QUEUED] else ""
    print(f"  {'skipped':<10}{count[SKIP_DONE] + count[SKIP_RUNNING] + count[SKIP_QUEUED]:>4}"
          f"   ({count[SKIP_DONE]} done before, {count[SKIP_RUNNING]} running elsewhere{queued})")
    print(f"  {'failed':<10}{count[FAILED]:>4}")
    if count[SUBMITTED]:
        print(f"  {'submitted':<10}{count[SUBMITTED]:>4}   (rerun this command to merge them once they have "
              "finished, or add --wait)")
    elsewhere = [o for o in outcomes if o.status == SKIP_RUNNING]
    if elsewhere:
        print("running elsewhere (delete the lock if it names no live sweep)")
        for o in elsewhere:
            print(f"  {o.point.run_name}: {o.path}")
    failures = [o for o in outcomes if o.status == FAILED]
    if failures:
        print("failures")
        for o in failures:
            print(f"  {o.point.run_name}: {o.error}")
            if o.path is not None:
                print(f"    {'notebook' if o.path.suffix == '.ipynb' else 'log'}: {o.path}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        jobs, devices, cluster = check_run_options(args)
        submitit = import_submitit(cluster.executor, need_cluster=not args.dry_run) if cluster else None
        notebook = args.notebook.expanduser().resolve()
        if notebook.suffix != ".ipynb" or not notebook.is_file():
            raise UsageError(f"no such notebook: {args.notebook}")
        declared = notebook_parameters(notebook)
        if missing := [n for n in RESERVED if n not in declared]:
            raise UsageError(f"{args.notebook} does not declare {', '.join(missing)} in its parameters cell; "
                             f"the sweep sets {', '.join(RESERVED)}")
        axes = parse_grid_axes(args.param, declared)
        points = build_grid(notebook.stem, axes)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        print(f"tdpm-sweep: error: {exc}", file=sys.stderr)
        return 2

    results_dir = args.results_dir.expanduser().resolve()
    sweeps_dir = results_dir / args.profile / "sweeps"
    out_dir = (args.out_dir.expanduser().resolve() if args.out_dir else sweeps_dir / notebook.stem)
    settings = RunSettings(notebook, args.profile, results_dir, out_dir, args.kernel, args.timeout, args.force)
    where = (f"--executor {cluster.executor}" if cluster else f"{jobs} at once" if jobs > 1 or devices
             else "one after another")
    print(f"sweep {notebook.name}: {len(points)} point(s), profile={args.profile}, {where}\n"
          f"  results  {results_dir / args.profile}\n  notebooks {out_dir}", flush=True)

    if args.dry_run:
        for i, point in enumerate(points, 1):
            would = SKIP_DONE if settings.is_done(point) else PENDING
            print(f"[{i}/{len(points)}] {point.run_name}  {point.params}  -> {would}")
        return 0

    try:
        if cluster:
            outcomes = run_cluster(points, settings, cluster, sweeps_dir / notebook.stem, submitit)
        elif jobs > 1 or devices:
            outcomes = run_pool(points, settings, jobs=jobs, devices=devices)
        else:
            outcomes = run_sequential(points, settings)
    except UsageError as exc:  # the cluster refused the executor's settings
        print(f"tdpm-sweep: error: {exc}", file=sys.stderr)
        return 2

    dest = sweeps_dir / f"{notebook.stem}.csv"
    rows = merge_results(points, results_dir=results_dir, profile=args.profile, dest=dest)
    print_summary(outcomes)
    print(f"merged {rows} row(s) into {dest}" if rows else "no results to merge")
    return 1 if any(o.status == FAILED for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
