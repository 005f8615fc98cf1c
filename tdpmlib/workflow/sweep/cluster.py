"""Sweeps as cluster jobs through submitit: a SLURM job array, or submitit's local or debug executor.

``--executor slurm`` submits the points to run as one job array (``AutoExecutor.map_array``; an
array of one is a plain job); ``--executor local`` starts each point as a job process on this
machine (submitit's LocalExecutor) and ``--executor debug`` runs them in this process
(DebugExecutor); apart from the executor class both take the code path of SLURM, which is what the
tests exercise. Every job runs :class:`PointTask`, i.e. :func:`tdpmlib.workflow.sweep.grid_point.run_point`, so the
sweep's guarantees hold on a shared filesystem: done points are skipped, failed ones rerun, the lock
stops two jobs (or a job and a sweep elsewhere) from running a point twice.

Per point the submission is recorded in ``<sweep folder>/jobs/<run_name>.json`` (executor, job id,
host, time, log folder and files); the job's logs go to ``<sweep folder>/logs/<job id>/``. Rerunning
the same command skips the points that are done, those whose recorded job is still queued or
running (SLURM: its sacct state; local: its process; a state sacct does not know yet counts as
queued for UNKNOWN_GRACE_S after the submission), and those locked by a live run, and submits the
rest: points never submitted and points whose job ended without results.

Preemption and time limits: SLURM signals a job before it is preempted or reaches ``--time``;
submitit then calls :meth:`PointTask.checkpoint` and requeues the job (``#SBATCH --requeue``), up to
MAX_TIMEOUTS times for time limits. A requeued point starts its notebook again; the notebooks
resume training from their latest checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .grid_point import (FAILED, SKIP_DONE, SKIP_RUNNING, Outcome, Point, RunSettings, UsageError, locked_elsewhere,
                          one_line, pid_alive)

EXECUTORS = ("slurm", "local", "debug")
SUBMITTED, SKIP_QUEUED = "submitted", "skip (job queued or running)"
# sacct states of a job that is not over yet (a preempted job that is requeued goes back to PENDING).
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                       "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
UNKNOWN_GRACE_S = 600.0
MAX_TIMEOUTS = 3


@dataclass(frozen=True)
class ClusterOptions:
    executor: str  # one of EXECUTORS
    time_min: int = 60
    partition: str | None = None
    gpus_per_point: int | None = None
    cpus_per_point: int | None = None
    mem_gb: float | None = None
    parallel: int | None = None  # --jobs: at most this many array tasks at once (SLURM)
    slurm_args: dict[str, object] = field(default_factory=dict)
    wait: bool = False


def import_submitit(executor: str, *, need_cluster: bool = True) -> ModuleType:
    """submitit, checked to be there (and for slurm, unless not `need_cluster`, that this is a cluster)."""
    try:
        import submitit
    except ImportError:
        raise UsageError(f"--executor {executor} needs submitit: pip install -e \".[cluster]\"") from None
    if executor == "slurm" and need_cluster and submitit.SlurmExecutor.affinity() <= 0:
        raise UsageError("--executor slurm: no SLURM here (srun is not on the PATH); "
                         "run the command on a machine of the cluster")
    return submitit


class PointTask:
    """What a job runs: one grid point through run_point (skipped there if done or locked elsewhere).

    With ``threads`` (--cpus-per-point) the kernel gets OMP_NUM_THREADS=threads. Never raises: a
    failure is a FAILED outcome. ``checkpoint`` is submitit's hook on preemption or time-out: it
    requeues the same point."""

    def __init__(self, settings: RunSettings, threads: int | None = None):
        self.settings, self.threads = settings, threads

    def __call__(self, point: Point) -> Outcome:
        if self.threads:
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
        # Before a preemption SLURM sends SIGTERM to every process of the job (submitit's handler only
        # logs it) and then USR2, on which submitit requeues the job. The kernel must outlive the
        # SIGTERM, else the point would end as failed instead of requeued: it inherits an ignored signal.
        on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if on_slurm else None
        try:
            return self.settings.run(point)
        except Exception as exc:  # run_point returns failures; this is for anything else
            return Outcome(point, FAILED, one_line(exc))
        finally:
            if on_slurm:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    def checkpoint(self, point: Point) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, point)

    __submitit_checkpoint__ = checkpoint  # submitit looks for this name first, its signal handler for `checkpoint`


# ------------------------------------------------------------------------------------------- records

def record_path(sweep_dir: Path, point: Point) -> Path:
    return sweep_dir / "jobs" / f"{point.run_name}.json"


def write_record(path: Path, executor: str, job: Any) -> dict:
    paths = job.paths
    record = {"executor": executor, "job_id": str(job.job_id), "host": socket.gethostname(),
              "submitted": time.time(), "log_folder": str(paths.folder), "stdout": str(paths.stdout),
              "stderr": str(paths.stderr), "result_pickle": str(paths.result_pickle)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return record


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and "job_id" in record else None


def slurm_states(job_ids: list[str], submitit: ModuleType) -> dict[str, str]:
    """sacct's state of each job (one sacct call for all; "UNKNOWN" where sacct has none)."""
    jobs = [submitit.SlurmJob(folder="/", job_id=job_id) for job_id in job_ids]  # registers them all
    return {job.job_id: job.state.split()[0].upper() for job in jobs}  # "CANCELLED by 123" -> "CANCELLED"


def active_jobs(records: dict[str, dict], submitit: ModuleType, states=slurm_states) -> dict[str, str]:
    """Of the recorded jobs (run_name -> record), those still queued or running: run_name -> description."""
    here = socket.gethostname()
    slurm = [r["job_id"] for r in records.values() if r.get("executor") == "slurm"
             and not Path(r.get("result_pickle", "")).is_file()]
    state = states(slurm, submitit) if slurm else {}
    active = {}
    for run_name, record in records.items():
        job_id, executor = record["job_id"], record.get("executor")
        if Path(record.get("result_pickle", "")).is_file():
            continue  # the job is over (it wrote its result)
        if executor == "slurm":
            s = state.get(job_id, "UNKNOWN")
            recent = time.time() - float(record.get("submitted", 0)) < UNKNOWN_GRACE_S
            if s in ACTIVE_SLURM_STATES or (s == "UNKNOWN" and recent):
                active[run_name] = f"job {job_id} ({s})"
        elif executor == "local" and record.get("host") == here and job_id.isdigit() and pid_alive(int(job_id)):
            active[run_name] = f"local job {job_id} (running)"
    return active


# ----------------------------------------------------------------------------------------------- run

def make_executor(submitit: ModuleType, opts: ClusterOptions, log_root: Path, name: str) -> Any:
    try:
        executor = submitit.AutoExecutor(folder=log_root / "%j", cluster=opts.executor,
                                         slurm_max_num_timeout=MAX_TIMEOUTS)
        params: dict[str, object] = {"name": name, "timeout_min": opts.time_min}
        for key, value in (("gpus_per_node", opts.gpus_per_point), ("cpus_per_task", opts.cpus_per_point),
                           ("mem_gb", opts.mem_gb), ("slurm_partition", opts.partition),
                           ("slurm_array_parallelism", opts.parallel)):
            if value is not None:
                params[key] = value
        params["slurm_additional_parameters"] = {"requeue": True, **opts.slurm_args}
        executor.update_parameters(**params)
    except (RuntimeError, ValueError, NameError, AssertionError) as exc:  # no srun, a bad --slurm-arg, ...
        raise UsageError(f"--executor {opts.executor}: {one_line(exc)}") from None
    return executor


def job_error(exc: BaseException) -> str:
    """One line for a job that raised or never finished: the last line of its trace, else its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "-" * 22 in lines:
        start = lines.index("-" * 22) + 1
        trace = lines[start:lines.index("-" * 22, start)] if "-" * 22 in lines[start:] else lines[start:]
        if trace:
            return f"{type(exc).__name__}: {trace[-1]}"
    return " ".join([type(exc).__name__ + ":", *lines[:2]])


def job_outcome(job: Any, point: Point) -> Outcome:
    try:
        outcome = job.result()
    except Exception as exc:  # FailedJobError, UncompletedJobError (cancelled, out of memory, ...)
        return Outcome(point, FAILED, job_error(exc), path=Path(job.paths.stdout))
    if not isinstance(outcome, Outcome):
        return Outcome(point, FAILED, f"the job returned {outcome!r}", path=Path(job.paths.stdout))
    return outcome


def run_cluster(points: list[Point], settings: RunSettings, opts: ClusterOptions, sweep_dir: Path,
                submitit: ModuleType) -> list[Outcome]:
    """Submit the points that need it, and with --wait (always for debug) wait for them.

    Returns every point's outcome in grid order: SUBMITTED for a job not waited for."""
    n = len(points)
    number = {p.run_name: i for i, p in enumerate(points, 1)}
    records = {p.run_name: r for p in points if (r := read_record(record_path(sweep_dir, p))) is not None}
    candidates = [p for p in points if not settings.is_done(p)]
    active = active_jobs({p.run_name: records[p.run_name] for p in candidates if p.run_name in records}, submitit)
    outcomes: dict[str, Outcome] = {}
    todo: list[Point] = []
    for point in points:
        lock = settings.lock(point)
        if settings.is_done(point):
            outcomes[point.run_name] = Outcome(point, SKIP_DONE)
        elif point.run_name in active:
            outcomes[point.run_name] = Outcome(point, SKIP_QUEUED, note=active[point.run_name])
        elif locked_elsewhere(lock):
            outcomes[point.run_name] = Outcome(point, SKIP_RUNNING, path=lock)
        else:
            todo.append(point)
            continue
        print(f"[{number[point.run_name]}/{n}] {point.run_name} ... {outcomes[point.run_name].describe()}", flush=True)
    if not todo:
        return [outcomes[p.run_name] for p in points]

    executor = make_executor(submitit, opts, sweep_dir / "logs", f"tdpm-{settings.notebook.stem}")
    try:
        jobs = executor.map_array(PointTask(settings, opts.cpus_per_point), todo)
    except Exception as exc:  # sbatch refused (bad partition, over a limit, ...)
        print(f"submission failed: {one_line(exc)}", flush=True)
        return [outcomes.get(p.run_name) or Outcome(p, FAILED, f"not submitted: {one_line(exc)}") for p in points]
    for point, job in zip(todo, jobs):
        before = records.get(point.run_name)
        write_record(record_path(sweep_dir, point), opts.executor, job)
        again = f" (again: job {before['job_id']} ended without results)" if before else ""
        print(f"[{number[point.run_name]}/{n}] {point.run_name} -> job {job.job_id}{again}\n"
              f"    logs {job.paths.folder}", flush=True)

    if not (opts.wait or opts.executor == "debug"):  # debug jobs run only when waited for
        for point, job in zip(todo, jobs):
            outcomes[point.run_name] = Outcome(point, SUBMITTED, path=Path(job.paths.folder), note=f"job {job.job_id}")
        return [outcomes[p.run_name] for p in points]

    by_job = {id(job): point for point, job in zip(todo, jobs)}
    poll = 30.0 if opts.executor == "slurm" else 0.5
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
        point = by_job[id(job)]
        outcome = outcomes[point.run_name] = job_outcome(job, point)
        print(f"[{number[point.run_name]}/{n}] {point.run_name} ... {outcome.describe()}", flush=True)
    return [outcomes[p.run_name] for p in points]
