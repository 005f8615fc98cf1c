"""tdpmlib.workflow.sweep --jobs/--devices (tdpmlib.workflow.sweep.local) and --executor (tdpmlib.workflow.sweep.cluster).

The papermill runs use tests/fixtures/sweep_nb.ipynb (see tests/test_sweep.py), which appends one
line per run to <results>/smoke/runs.jsonl with its run name, pid, CUDA_VISIBLE_DEVICES and
OMP_NUM_THREADS: the run counter of these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tdpmlib.workflow import sweep
from tdpmlib.workflow.sweep import cluster, grid_point, local
from tdpmlib.workflow.sweep.grid_point import DONE, Outcome, Point, RunSettings

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_nb.ipynb"
GRID = ["-p", "a", "1", "2", "-p", "b", "ok", "bad"]
OK_RUNS = ["sweep_nb__a-1__b-ok", "sweep_nb__a-2__b-ok"]
BAD_RUNS = ["sweep_nb__a-1__b-bad", "sweep_nb__a-2__b-bad"]


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    dest = tmp_path / "nb" / FIXTURE.name
    dest.parent.mkdir()
    shutil.copy(FIXTURE, dest)
    return dest


def sweep_main(nb: Path, tmp_path: Path, *args: str) -> int:
    return sweep.main([str(nb), *args, "--profile", "smoke", "--results-dir", str(tmp_path / "results")])


def sweep_cmd(nb: Path, tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tdpmlib.workflow.sweep", str(nb), *args, "--profile", "smoke",
            "--results-dir", str(tmp_path / "results")]


def runs(tmp_path: Path) -> list[dict]:
    log = tmp_path / "results" / "smoke" / "runs.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def merged(tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb.csv")


def executed(tmp_path: Path, run_name: str) -> Path:
    return tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb" / f"{run_name}.ipynb"


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# ------------------------------------------------------------------------------------------- no kernel

@pytest.mark.parametrize("args, option", [
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "two"], "--jobs"),
    (["--executor", "nope"], "--executor"),
    (["--devices", "0,1", "--executor", "slurm"], "--devices"),
    (["--devices", "0,0"], "--devices"),
    (["--devices", "0,,1"], "--devices"),
    (["--jobs", "3", "--devices", "0,1"], "--jobs"),
    (["--jobs", "2", "--executor", "local"], "--jobs"),
    (["--partition", "gpu"], "--partition"),
    (["--wait"], "--wait"),
    (["--executor", "debug", "--partition", "gpu"], "--partition"),
    (["--executor", "slurm", "--mem", "lots", "--dry-run"], "--mem"),
    (["--executor", "slurm", "--time", "0", "--dry-run"], "--time"),
    (["--executor", "slurm", "--slurm-arg", "=x", "--dry-run"], "--slurm-arg"),
    (["--executor", "slurm", "--gpus-per-point", "-1", "--dry-run"], "--gpus-per-point"),
])
def test_bad_run_options_exit_2_naming_the_option(nb, tmp_path, capsys, args, option):
    assert sweep_main(nb, tmp_path, "-p", "a", "1", *args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("tdpm-sweep: error:") and option in err, err
    assert captured.out == ""  # refused before anything is printed or run
    assert not (tmp_path / "results").exists()


def test_slurm_without_a_cluster_is_one_clear_error(nb, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert sweep_main(nb, tmp_path, "-p", "a", "1", "--executor", "slurm") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--executor slurm" in err and "srun" in err, err
    assert not (tmp_path / "results").exists()


def test_memory_sizes():
    sizes = ("32G", "32GB", "500M", "1.5T", "16", "8g")
    assert [sweep.memory_gb(t) for t in sizes] == [32, 32, 500 / 1024, 1536, 16, 8]


def settings(tmp_path: Path) -> RunSettings:
    return RunSettings(tmp_path / "nb.ipynb", "smoke", tmp_path / "results", tmp_path / "out")


def test_pool_gives_each_running_point_a_device_of_its_own(tmp_path, capsys):
    """An injected launcher in place of the worker process: no kernel, no GPU."""
    holders: dict[str, str] = {}
    seen, mutex = [], threading.Lock()
    running = [0, 0]  # now, most at once

    def launch(point: Point, env: dict[str, str]) -> Outcome:
        device = env["CUDA_VISIBLE_DEVICES"]
        with mutex:
            assert device not in holders, f"{point.run_name} got device {device} held by {holders.get(device)}"
            holders[device] = point.run_name
            seen.append((point.run_name, device, env["OMP_NUM_THREADS"]))
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.05)
        with mutex:
            del holders[device]
            running[0] -= 1
        return Outcome(point, DONE)

    points = [Point(f"p{i}", {"i": i}) for i in range(7)]
    outcomes = local.run_pool(points, settings(tmp_path), jobs=2, devices=["4", "5", "6"], launch=launch)
    assert [o.point.run_name for o in outcomes] == [p.run_name for p in points]  # grid order
    assert all(o.status == DONE for o in outcomes) and len(seen) == 7
    assert running[1] == 2  # two at once, never more
    assert {d for _, d, _ in seen} == {"4", "5", "6"}  # in turn: every device is used
    assert {t for _, _, t in seen} == {str(max(1, local.cpu_cores() // 2))}
    assert len(lines_with(capsys.readouterr().out, "... done")) == 7

    with pytest.raises(ValueError):
        local.run_pool(points, settings(tmp_path), jobs=4, devices=["0", "1"], launch=launch)


def write_lock(tmp_path: Path, text: str, age_s: float = 0.0) -> Path:
    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(text)
    t = time.time() - age_s
    os.utime(lock, (t, t))
    return lock


def test_lock_from_another_host_is_live_while_touched(tmp_path, monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    lock = write_lock(tmp_path, "4242 node-elsewhere -\n")  # touched just now
    assert not grid_point.acquire_lock(lock)
    lock = write_lock(tmp_path, "4242 node-elsewhere -\n", age_s=grid_point.FOREIGN_LOCK_STALE_S + 5)
    assert grid_point.acquire_lock(lock)  # its holder stopped touching it: taken over
    assert lock.read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
    grid_point.release_lock(lock)

    # A SLURM job requeued onto another node takes over the lock its earlier run left, at once...
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    lock = write_lock(tmp_path, "4242 node-elsewhere 777\n")
    assert grid_point.acquire_lock(lock)
    assert lock.read_text().split() == [str(os.getpid()), socket.gethostname(), "777"]
    grid_point.release_lock(lock)
    # ...but on one host the pid decides, so pool workers inside one job keep each other's locks.
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = write_lock(tmp_path, f"{holder.pid} {socket.gethostname()} 777\n")
        assert not grid_point.acquire_lock(lock)
    finally:
        holder.kill()
        holder.wait()
    assert grid_point.acquire_lock(lock)  # now its pid is dead


def test_heartbeat_touches_the_lock(tmp_path):
    lock = write_lock(tmp_path, "1 h -\n", age_s=1000)
    with grid_point.Heartbeat(lock, every_s=0.02):
        time.sleep(0.2)
    assert time.time() - lock.stat().st_mtime < 5


def test_active_jobs_from_the_records(tmp_path):
    old, now = time.time() - 2 * cluster.UNKNOWN_GRACE_S, time.time()
    finished = tmp_path / "7_0_result.pkl"
    finished.write_bytes(b"")
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    records = {
        "running": {"executor": "slurm", "job_id": "1_0", "submitted": old},
        "pending": {"executor": "slurm", "job_id": "1_1", "submitted": old},
        "over": {"executor": "slurm", "job_id": "1_2", "submitted": old},
        "cancelled": {"executor": "slurm", "job_id": "1_3", "submitted": old},
        "unknown-new": {"executor": "slurm", "job_id": "2", "submitted": now},
        "unknown-old": {"executor": "slurm", "job_id": "3", "submitted": old},
        "wrote-result": {"executor": "slurm", "job_id": "7", "submitted": now, "result_pickle": str(finished)},
        "local-live": {"executor": "local", "job_id": str(os.getpid()), "host": host},
        "local-dead": {"executor": "local", "job_id": str(dead.pid), "host": host},
        "local-elsewhere": {"executor": "local", "job_id": str(os.getpid()), "host": "node-elsewhere"},
        "debug": {"executor": "debug", "job_id": "DEBUG_1"},
    }
    asked = []

    def states(job_ids, submitit):
        asked.extend(job_ids)
        return {"1_0": "RUNNING", "1_1": "PENDING", "1_2": "COMPLETED", "1_3": "CANCELLED"}

    active = cluster.active_jobs(records, None, states=states)
    assert sorted(active) == ["local-live", "pending", "running", "unknown-new"]
    assert active["running"] == "job 1_0 (RUNNING)"
    assert "7" not in asked  # a job that wrote its result is over: sacct is not asked


def test_slurm_options_reach_the_sbatch_file(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    import submitit.slurm.slurm as slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")  # pretend srun is there
    opts = cluster.ClusterOptions("slurm", time_min=90, partition="gpu", gpus_per_point=1, cpus_per_point=8,
                                        mem_gb=32.0, parallel=3, slurm_args={"account": "proj", "exclusive": True})
    executor = cluster.make_executor(submitit, opts, tmp_path / "logs", "tdpm-06_ablations")
    text = executor._executor._make_submission_file_text("python -m something", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=90",
                 "--job-name=tdpm-06_ablations", "--requeue", "--account=proj", "--exclusive", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert executor._executor.parameters["array_parallelism"] == 3
    assert executor._executor.max_num_timeout == cluster.MAX_TIMEOUTS


def test_point_task_requeues_the_same_point_on_preemption(tmp_path):
    pytest.importorskip("submitit")
    task = cluster.PointTask(settings(tmp_path), threads=4)
    point = Point("nb__a-1", {"a": 1})
    again = task.checkpoint(point)  # what submitit calls on USR2 before requeuing the job
    assert again.function is task and again.args == (point,) and not again.kwargs


class FakeSettings:
    """Stands in for RunSettings: records what a point's run would see."""

    def __init__(self):
        self.seen = {}

    def run(self, point):
        self.seen = {"sigterm": signal.getsignal(signal.SIGTERM), "threads": os.environ.get("OMP_NUM_THREADS")}
        if point.params.get("crash"):
            raise OSError("disk full")
        return Outcome(point, DONE)


def test_point_task_on_slurm_keeps_the_kernel_through_sigterm(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fake = FakeSettings()
    assert cluster.PointTask(fake, threads=3)(Point("p", {})).status == DONE
    assert fake.seen == {"sigterm": signal.SIG_IGN, "threads": "3"}  # what the kernel inherits
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    outcome = cluster.PointTask(fake)(Point("p", {"crash": True}))
    assert outcome.status == "failed" and outcome.error == "OSError: disk full"  # never raises
    assert signal.getsignal(signal.SIGTERM) is before

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    cluster.PointTask(fake)(Point("p", {}))
    assert fake.seen["sigterm"] is before  # only on SLURM


def test_job_failures_become_one_line():
    pytest.importorskip("submitit")
    from submitit.core.utils import FailedJobError, UncompletedJobError

    dashes = "-" * 22
    failed = FailedJobError(f"Job (task=0) failed during processing with trace:\n{dashes}\nTraceback (most recent "
                            f"call last):\n  File \"x\", line 1\nMemoryError: out of memory\n{dashes}\n"
                            "You can check full logs with 'job.stderr(0)'")
    assert cluster.job_error(failed) == "FailedJobError: MemoryError: out of memory"
    lost = UncompletedJobError("Job 12_3 (task: 0) with path /x/12_3_0_result.pkl\n"
                               "has not produced any output (state: CANCELLED by 1000)\nError stream produced:")
    assert cluster.job_error(lost) == ("UncompletedJobError: Job 12_3 (task: 0) with path /x/12_3_0_result.pkl "
                                             "has not produced any output (state: CANCELLED by 1000)")


# -------------------------------------------------------------------------------------- real kernels

@pytest.mark.slow
def test_debug_executor_runs_the_cluster_path_and_rerun_skips_done(nb, tmp_path, capsys):
    pytest.importorskip("submitit")
    assert sweep_main(nb, tmp_path, *GRID, "--executor", "debug") == 1
    out = capsys.readouterr().out
    assert len(lines_with(out, "-> job DEBUG_")) == 4 and len(lines_with(out, "logs ")) == 4
    assert len(lines_with(out, "FAILED")) == 2 and len(lines_with(out, "... done (")) == 2
    assert merged(tmp_path)["run_name"].tolist() == OK_RUNS and merged(tmp_path)["value"].tolist() == [2, 4]
    jobs_dir = tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb" / "jobs"
    assert sorted(p.stem for p in jobs_dir.glob("*.json")) == sorted(OK_RUNS + BAD_RUNS)
    assert Counter(r["run_name"] for r in runs(tmp_path)) == Counter(OK_RUNS + BAD_RUNS)
    mtimes = {name: executed(tmp_path, name).stat().st_mtime_ns for name in OK_RUNS}

    assert sweep_main(nb, tmp_path, *GRID, "--executor", "debug") == 1  # failed points are resubmitted
    out = capsys.readouterr().out
    assert len(lines_with(out, "skip (done)")) == 2
    assert len(lines_with(out, "ended without results")) == 2 and len(lines_with(out, "FAILED")) == 2
    assert Counter(r["run_name"] for r in runs(tmp_path)) == Counter(OK_RUNS + BAD_RUNS * 2)  # done: not rerun
    assert {name: executed(tmp_path, name).stat().st_mtime_ns for name in OK_RUNS} == mtimes
    assert len(merged(tmp_path)) == 2
    assert not list((tmp_path / "results").rglob(".lock"))


@pytest.mark.slow
def test_local_executor_submits_returns_and_a_rerun_merges(nb, tmp_path):
    pytest.importorskip("submitit")
    grid = ["-p", "b", "ok", "bad"]
    proc = subprocess.run(sweep_cmd(nb, tmp_path, *grid, "--executor", "local"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    jobs_dir = tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb" / "jobs"
    records = [json.loads(p.read_text()) for p in sorted(jobs_dir.glob("*.json"))]
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr  # submitted: not failed (yet)
        assert len(lines_with(proc.stdout, "-> job ")) == 2 and len(lines_with(proc.stdout, "submitted")) == 1
        assert len(records) == 2 and all(Path(r["log_folder"]).is_dir() for r in records)
        deadline = time.time() + 180
        while not all(Path(r["result_pickle"]).exists() for r in records):  # the jobs end on their own
            assert time.time() < deadline, "the local jobs did not finish"
            time.sleep(0.5)
    finally:
        for r in records:  # never leave job processes behind
            if grid_point.pid_alive(int(r["job_id"])):
                time.sleep(2)
                if grid_point.pid_alive(int(r["job_id"])):
                    os.kill(int(r["job_id"]), signal.SIGTERM)

    proc = subprocess.run(sweep_cmd(nb, tmp_path, *grid, "--executor", "local", "--wait"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sweep_nb__b-ok ... skip (done)" in proc.stdout
    assert len(lines_with(proc.stdout, "ended without results")) == 1
    assert "sweep_nb__b-bad: ValueError: b must not be 'bad'" in proc.stdout
    assert Counter(r["run_name"] for r in runs(tmp_path)) == Counter(["sweep_nb__b-ok"] + ["sweep_nb__b-bad"] * 2)
    assert merged(tmp_path)["run_name"].tolist() == ["sweep_nb__b-ok"]


@pytest.mark.slow
def test_two_pools_at_once_run_each_point_once(nb, tmp_path):
    cmd = sweep_cmd(nb, tmp_path, "-p", "a", "1", "2", "3", "--jobs", "2")
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    names = [f"sweep_nb__a-{a}" for a in (1, 2, 3)]
    assert Counter(r["run_name"] for r in runs(tmp_path)) == Counter(names), outs  # never twice
    both = "\n".join(outs)
    for name in names:
        assert len(lines_with(both, f"{name} ... done")) == 1, both
    threads = str(max(1, local.cpu_cores() // 2))
    assert {r["OMP_NUM_THREADS"] for r in runs(tmp_path)} == {threads}
    assert {r["CUDA_VISIBLE_DEVICES"] for r in runs(tmp_path)} == {os.environ.get("CUDA_VISIBLE_DEVICES")}
    points = sweep.build_grid("sweep_nb", [("a", [1, 2, 3])])
    dest = tmp_path / "merged.csv"
    assert sweep.merge_results(points, results_dir=tmp_path / "results", profile="smoke", dest=dest) == 3
    assert not list((tmp_path / "results").rglob(".lock"))


@pytest.mark.slow
def test_devices_set_cuda_visible_devices_per_point(nb, tmp_path, capsys):
    assert sweep_main(nb, tmp_path, "-p", "a", "1", "2", "--devices", "5,7") == 0  # --jobs: one per device
    out = capsys.readouterr().out
    assert len(lines_with(out, "started on CUDA_VISIBLE_DEVICES=")) == 2
    assert sorted(r["CUDA_VISIBLE_DEVICES"] for r in runs(tmp_path)) == ["5", "7"]
    assert merged(tmp_path)["value"].tolist() == [2, 4]
