"""Running the points of a sweep on this machine: one after another, or a pool of --jobs at once.

* :func:`run_sequential` runs the points one after another in this process (--jobs 1, no --devices).
* :func:`run_pool` runs up to ``jobs`` points at once, each in a worker process of its own
  (``python -m tdpmlib.workflow.sweep.local SPEC OUTCOME``, which runs :func:`tdpmlib.workflow.sweep.grid_point.run_point`),
  so each point's kernel gets its own environment:

  - with ``devices``, every running point has one device to itself: ``CUDA_VISIBLE_DEVICES`` is the
    device, taken from the free ones in turn (round-robin), so no two running points share a device
    (``jobs`` may not exceed the number of devices; tdpmlib.workflow.sweep checks that);
  - ``OMP_NUM_THREADS`` is max(1, cores // jobs), so that the points share the CPU cores rather than
    oversubscribe them (on a machine without GPUs that is all they have).

Both print one line per point, ``[k/n] <run_name> ... <status>``, and return the outcomes in grid
order. Points already done, or locked by a live sweep, are skipped without starting a worker; the
worker checks again under the lock, so two pools on the same results folder never run a point twice.
Cluster jobs (submitit, SLURM) are in tdpmlib.workflow.sweep.cluster.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .grid_point import FAILED, locked_elsewhere, Outcome, Point, RunSettings, SKIP_DONE, SKIP_RUNNING

# Runs one point with extra environment variables; the pool's default starts a worker process.
Launch = Callable[[Point, dict[str, str]], Outcome]


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which respects cgroups and taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def point_env(device: str | None, jobs: int) -> dict[str, str]:
    """The environment a pool gives a point: its device (if any) and its share of the CPU cores."""
    env = {"OMP_NUM_THREADS": str(max(1, cpu_cores() // jobs))}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def run_sequential(points: list[Point], settings: RunSettings) -> list[Outcome]:
    outcomes = []
    for i, point in enumerate(points, 1):
        print(f"[{i}/{len(points)}] {point.run_name} ...", end=" ", flush=True)
        outcome = settings.run(point)
        print(outcome.describe(), flush=True)
        outcomes.append(outcome)
    return outcomes


# ---------------------------------------------------------------------------------------------- pool

def tail_line(path: Path) -> str:
    """The last non-empty line of a text file ("" if none)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class WorkerLauncher:
    """Runs a point in a worker process (``python -m tdpmlib.workflow.sweep.local``) with extra environment."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self._procs: set[subprocess.Popen] = set()
        self._mutex = threading.Lock()

    def __call__(self, point: Point, env: dict[str, str]) -> Outcome:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tdpm-sweep-") as tmp:
            spec, result, log = Path(tmp, "spec.pkl"), Path(tmp, "outcome.pkl"), Path(tmp, "worker.log")
            spec.write_bytes(pickle.dumps((self.settings, point)))
            with log.open("w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "tdpmlib.workflow.sweep.local", str(spec), str(result)],
                                        env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)
                with self._mutex:
                    self._procs.add(proc)
                try:
                    rc = proc.wait()
                finally:
                    with self._mutex:
                        self._procs.discard(proc)
            if result.is_file():
                return pickle.loads(result.read_bytes())
            detail = tail_line(log)
            return Outcome(point, FAILED, f"the worker exited with code {rc}" + (f": {detail}" if detail else ""),
                           time.monotonic() - t0)

    def terminate_all(self) -> None:
        with self._mutex:
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()


def run_pool(points: list[Point], settings: RunSettings, *, jobs: int, devices: list[str] | None = None,
             launch: Launch | None = None) -> list[Outcome]:
    """Run up to `jobs` points at once (see the module's docstring); `launch` replaces the worker process."""
    if jobs < 1 or (devices is not None and not 1 <= jobs <= len(devices)):
        raise ValueError(f"jobs={jobs} does not fit devices={devices}")
    launcher = WorkerLauncher(settings) if launch is None else None
    launch = launch or launcher
    free: queue.Queue[str | None] = queue.Queue()
    for device in devices if devices is not None else [None] * jobs:
        free.put(device)

    n = len(points)
    number = {point.run_name: i for i, point in enumerate(points, 1)}

    def run_one(point: Point) -> Outcome:
        device = free.get()  # one is free: no more than `jobs` of these run at once
        try:
            where = f" on CUDA_VISIBLE_DEVICES={device}" if device is not None else ""
            print(f"[{number[point.run_name]}/{n}] {point.run_name} started{where}", flush=True)
            return launch(point, point_env(device, jobs))
        finally:
            free.put(device)  # to the back of the queue: the devices are used in turn

    outcomes: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="tdpm-sweep") as pool:
        futures = {}
        for point in points:
            if settings.is_done(point):
                outcomes[point.run_name] = Outcome(point, SKIP_DONE)
            elif locked_elsewhere(settings.lock(point)):
                outcomes[point.run_name] = Outcome(point, SKIP_RUNNING, path=settings.lock(point))
            else:
                futures[pool.submit(run_one, point)] = point
                continue
            print(f"[{number[point.run_name]}/{n}] {point.run_name} ... {outcomes[point.run_name].describe()}",
                  flush=True)
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[outcome.point.run_name] = outcome
                print(f"[{number[outcome.point.run_name]}/{n}] {outcome.point.run_name} ... {outcome.describe()}",
                      flush=True)
        except BaseException:  # Ctrl-C: stop the workers, not only the threads waiting on them
            for future in futures:
                future.cancel()
            if launcher is not None:
                launcher.terminate_all()
            raise
    return [outcomes[point.run_name] for point in points]


def worker_main(argv: list[str]) -> int:
    """``python -m tdpmlib.workflow.sweep.local SPEC OUTCOME``: run the pickled (settings, point), pickle the outcome."""
    spec, result = Path(argv[0]), Path(argv[1])
    settings, point = pickle.loads(spec.read_bytes())
    outcome = settings.run(point)
    tmp = result.with_name(f".{result.name}.tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, result)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
