"""One grid point of a sweep (tdpmlib.workflow.sweep): its folders, its lock, and one papermill run of it.

Every executor (tdpmlib.workflow.sweep.local: one after another, a pool on this machine, submitit/SLURM) runs a
point through :func:`run_point`, so the guarantees are the same everywhere:

* a point whose ``results.csv`` exists is skipped unless ``force``;
* a point is guarded by the lock file ``<results-dir>/<profile>/<run_name>/.lock``, created with
  O_EXCL and holding ``<pid> <host> <job>`` (job: the SLURM or submitit job id, ``-`` outside a job).
  A point whose lock is live is skipped ("skip (running elsewhere)"); a stale one is taken over. A lock
  made on this host is live while its pid is; one made on another host (a shared filesystem) is live
  while its holder keeps touching it (every HEARTBEAT_S) and stale after FOREIGN_LOCK_STALE_S without.
  A lock left on another host by an earlier run of our own job (a SLURM requeue keeps the job id)
  is stale at once;
* a failed run is returned as an Outcome, never raised.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import papermill as pm

DONE, SKIP_DONE, SKIP_RUNNING, FAILED, PENDING = "done", "skip (done)", "skip (running elsewhere)", "failed", "run"
# A lock file with no pid in it yet is taken to be held for this long (its owner is between
# creating it and writing its pid); after that it counts as stale.
EMPTY_LOCK_GRACE_S = 30.0
# The holder of a lock touches it this often; a lock from another host untouched for
# FOREIGN_LOCK_STALE_S is stale (its holder died or lost its node).
HEARTBEAT_S = 60.0
FOREIGN_LOCK_STALE_S = 600.0


class UsageError(Exception):
    """Bad command-line input: reported on stderr as one line, exit code 2."""


@dataclass
class Point:
    run_name: str
    params: dict[str, object]


@dataclass
class Outcome:
    point: Point
    status: str
    error: str = ""
    seconds: float = 0.0
    path: Path | None = None  # the executed notebook; for a point locked elsewhere, the lock file; for a job, its log
    note: str = ""  # e.g. the job a point was submitted as

    def describe(self) -> str:
        """The status as printed after the point's name."""
        if self.status == DONE:
            return f"done ({self.seconds:.1f}s)"
        if self.status == FAILED:
            return f"FAILED ({self.seconds:.1f}s): {self.error}"
        return f"{self.status}: {self.note}" if self.note else self.status


@dataclass(frozen=True)
class RunSettings:
    """What the points of one sweep share; picklable, for pool workers and cluster jobs."""
    notebook: Path
    profile: str
    results_dir: Path
    out_dir: Path
    kernel: str = "python3"
    timeout: float | None = None
    force: bool = False

    def run(self, point: Point) -> Outcome:
        return run_point(self.notebook, point, profile=self.profile, results_dir=self.results_dir,
                         out_dir=self.out_dir, kernel=self.kernel, timeout=self.timeout, force=self.force)

    def is_done(self, point: Point) -> bool:
        """Whether the point is to be skipped as done (never under --force)."""
        return not self.force and has_results(self.results_dir, self.profile, point.run_name)

    def lock(self, point: Point) -> Path:
        return run_dir(self.results_dir, self.profile, point.run_name) / ".lock"


def run_dir(results_dir: Path, profile: str, run_name: str) -> Path:
    return results_dir / profile / run_name


def has_results(results_dir: Path, profile: str, run_name: str) -> bool:
    return (run_dir(results_dir, profile, run_name) / "results.csv").is_file()


def one_line(exc: BaseException) -> str:
    """`ename: evalue` on one line, for a papermill error or any other exception."""
    if isinstance(exc, pm.PapermillExecutionError):
        text = f"{exc.ename}: {exc.evalue}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------- locks

@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    job: str  # "-" outside a job


def current_job_id() -> str:
    """The id of the cluster job this process runs in (SLURM array task or job, submitit local), else "-"."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or "-"


def me() -> Holder:
    return Holder(os.getpid(), socket.gethostname(), current_job_id())


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


def read_lock(lock: Path) -> Holder | None:
    """Who holds a lock; None if it names nobody (yet). Raises FileNotFoundError if it is gone.

    A lock holding only a pid (written by an older tdpm-sweep) is taken to be from this host."""
    fields = lock.read_text().split()
    if not fields or not fields[0].isdigit():
        return None
    host = fields[1] if len(fields) > 1 else socket.gethostname()
    return Holder(int(fields[0]), host, fields[2] if len(fields) > 2 else "-")


def lock_is_live(lock: Path, holder: Holder | None) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if holder is None:  # just created by its owner, or left empty by a crash long ago
        return age < EMPTY_LOCK_GRACE_S
    mine = me()
    if holder.host == mine.host:
        return pid_alive(holder.pid)
    if holder.job != "-" and holder.job == mine.job:
        return False  # an earlier run of this very job on another node (requeued after a preemption)
    return age < FOREIGN_LOCK_STALE_S


def break_stale_lock(lock: Path, stale: Holder | None) -> None:
    """Remove `lock` if it still is the stale one we looked at.

    It is renamed away first (atomic: of two sweeps breaking it at once only one succeeds), and if
    what was renamed turns out to be a fresh lock that another sweep took in the meantime, it is
    linked back (os.link never overwrites).
    """
    aside = lock.with_name(f"{lock.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else broke it
    try:
        if read_lock(aside) != stale:
            try:
                os.link(aside, lock)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def acquire_lock(lock: Path) -> bool:
    """Take the lock (a file created with O_EXCL, naming us); False if a live holder has it."""
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
        mine = me()
        with os.fdopen(fd, "w") as f:
            f.write(f"{mine.pid} {mine.host} {mine.job}\n")
        return True
    return False  # lost every race: let the other sweep have it


def locked_elsewhere(lock: Path) -> bool:
    """Whether a live holder has the lock (a cheap check before starting a point; the lock decides)."""
    try:
        return lock_is_live(lock, read_lock(lock))
    except FileNotFoundError:
        return False


def release_lock(lock: Path) -> None:
    try:
        if read_lock(lock) == me():
            lock.unlink()
    except FileNotFoundError:
        pass


class Heartbeat:
    """Touches a lock every HEARTBEAT_S while a point runs, so that sweeps on other hosts see it live."""

    def __init__(self, lock: Path, every_s: float = HEARTBEAT_S):
        self.lock, self.every_s, self._stop = lock, every_s, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {lock.parent.name}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                os.utime(self.lock)
            except OSError:
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------------------------- run

def file_version(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None if there is none: changes when the file is rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_point(notebook: Path, point: Point, *, profile: str, results_dir: Path, out_dir: Path,
              kernel: str = "python3", timeout: float | None = None, force: bool = False) -> Outcome:
    """Run one grid point (unless it is done or locked elsewhere); never raises for a failed run.

    The kernel inherits this process's environment (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...)."""
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
            with Heartbeat(lock):
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
