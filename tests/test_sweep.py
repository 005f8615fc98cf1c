"""tdpmlib.workflow.sweep: argument checking, the grid, and real papermill runs of tests/fixtures/sweep_nb.ipynb.

The fixture notebook's parameters are profile, results_dir, run_name, a=1, b="x", seed=0; it raises
ValueError("b must not be 'bad'") if b == "bad" and otherwise writes results.csv (value = a * 2) and
config.json to <results_dir>/<profile>/<run_name or "sweep_nb">/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tdpmlib.workflow import sweep

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_nb.ipynb"
GRID = ["-p", "a", "1", "2", "-p", "b", "ok", "bad"]
OK_RUNS = ["sweep_nb__a-1__b-ok", "sweep_nb__a-2__b-ok"]
BAD_RUNS = ["sweep_nb__a-1__b-bad", "sweep_nb__a-2__b-bad"]
ERROR_LINE = "ValueError: b must not be 'bad'"


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    """A private copy of the fixture notebook (papermill runs it in its own folder)."""
    dest = tmp_path / "nb" / FIXTURE.name
    dest.parent.mkdir()
    shutil.copy(FIXTURE, dest)
    return dest


def sweep_main(nb: Path, tmp_path: Path, *args: str) -> int:
    return sweep.main([str(nb), *args, "--profile", "smoke", "--results-dir", str(tmp_path / "results")])


def executed(tmp_path: Path, run_name: str) -> Path:
    return tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb" / f"{run_name}.ipynb"


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# ------------------------------------------------------------------------------------------- no kernel

@pytest.mark.parametrize("text, expected", [
    ("1e-3", 0.001), ("5", 5), ("cosine", "cosine"), ("True", True), ("-1", -1), ("'5'", "5"), ("a b", "a b"),
])
def test_parse_value_types(text, expected):
    value = sweep.parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_build_grid_order_and_run_names():
    points = sweep.build_grid("06_ablations", [("seed", [0, 5]), ("sigmas", ["25", "a/b c"])])
    assert [p.run_name for p in points] == [
        "06_ablations__seed-0__sigmas-25", "06_ablations__seed-0__sigmas-a_b_c",
        "06_ablations__seed-5__sigmas-25", "06_ablations__seed-5__sigmas-a_b_c",
    ]
    assert points[1].params == {"seed": 0, "sigmas": "a/b c"}
    with pytest.raises(sweep.UsageError, match="share the run name"):
        sweep.build_grid("nb", [("b", ["a b", "a_b"])])


def test_unknown_parameter_exits_2_with_one_line(nb, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tdpmlib.workflow.sweep", str(nb), "-p", "nope", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "nope" in err and "a, b, seed" in err
    assert not (tmp_path / "results").exists()  # nothing ran


@pytest.mark.parametrize("args, needles", [
    (["-p", "a", "1", "x"], ["-p a", "'x'", "a number"]),      # str for an int parameter
    (["-p", "a", "True"], ["-p a", "True", "a number"]),        # a bool is not a number here
    (["-p", "b", "5"], ["-p b", "5", "a string"]),              # int for a str parameter
    (["-p", "profile", "cpu"], ["--profile"]),                  # set by the sweep
    (["-p", "a", "1", "-p", "a", "2"], ["given twice"]),
    (["-p", "a"], ["at least one value"]),
])
def test_bad_values_exit_2(nb, tmp_path, capsys, args, needles):
    assert sweep_main(nb, tmp_path, *args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not (tmp_path / "results").exists()


def test_dry_run_prints_grid_and_runs_nothing(nb, tmp_path, capsys):
    assert sweep_main(nb, tmp_path, *GRID, "--dry-run") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in OK_RUNS + BAD_RUNS)
    assert not (tmp_path / "results").exists()


# -------------------------------------------------------------------------------------- real kernels

@pytest.fixture
def first_sweep(nb, tmp_path, capsys):
    """The 2x2 sweep run once: (exit code, stdout)."""
    rc = sweep_main(nb, tmp_path, *GRID)
    return rc, capsys.readouterr().out


@pytest.mark.slow
def test_grid_sweep_records_failures_and_merges(first_sweep, tmp_path):
    rc, out = first_sweep
    assert rc == 1
    assert len(lines_with(out, "FAILED")) == 2
    for name in BAD_RUNS:  # listed in the summary with their error line
        assert f"{name}: {ERROR_LINE}" in out
    summary = out[out.index("summary"):]
    assert lines_with(summary, "done")[0].split()[:2] == ["done", "2"]
    assert lines_with(summary, "failed")[0].split()[:2] == ["failed", "2"]
    for name in OK_RUNS + BAD_RUNS:
        assert executed(tmp_path, name).is_file()  # failed runs keep their executed copy too
    assert not list((tmp_path / "results").rglob(".lock")) and not list((tmp_path / "results").rglob("*.tmp*"))

    merged = pd.read_csv(tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb.csv")
    assert list(merged.columns) == ["run_name", "a", "b", "value"]
    assert merged["run_name"].tolist() == OK_RUNS
    assert merged["a"].tolist() == [1, 2] and merged["a"].dtype.kind == "i"
    assert merged["b"].tolist() == ["ok", "ok"]
    assert merged["value"].tolist() == [2, 4]


@pytest.mark.slow
def test_rerun_skips_done_and_force_reruns_all(first_sweep, nb, tmp_path, capsys):
    mtimes = {name: executed(tmp_path, name).stat().st_mtime_ns for name in OK_RUNS + BAD_RUNS}

    assert sweep_main(nb, tmp_path, *GRID) == 1
    out = capsys.readouterr().out
    assert len(lines_with(out, "skip (done)")) == 2 and len(lines_with(out, "FAILED")) == 2
    for name in OK_RUNS:
        assert executed(tmp_path, name).stat().st_mtime_ns == mtimes[name]  # not re-executed
    for name in BAD_RUNS:
        assert executed(tmp_path, name).stat().st_mtime_ns != mtimes[name]  # re-run
    assert len(pd.read_csv(tmp_path / "results" / "smoke" / "sweeps" / "sweep_nb.csv")) == 2

    assert sweep_main(nb, tmp_path, *GRID, "--force") == 1
    out = capsys.readouterr().out
    assert not lines_with(out, "skip (")
    assert len(lines_with(out, "done (")) == 2 and len(lines_with(out, "FAILED")) == 2
    for name in OK_RUNS:
        assert executed(tmp_path, name).stat().st_mtime_ns != mtimes[name]


def write_lock(tmp_path: Path, run_name: str, pid: int) -> Path:
    lock = tmp_path / "results" / "smoke" / run_name / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{pid}\n")
    return lock


def test_lock_held_by_live_process_skips_point(nb, tmp_path, capsys):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = write_lock(tmp_path, "sweep_nb__a-3", holder.pid)
        assert sweep_main(nb, tmp_path, "-p", "a", "3") == 0
        out = capsys.readouterr().out
        assert "sweep_nb__a-3 ... skip (running elsewhere)" in out
        assert lock.read_text().strip() == str(holder.pid)  # left alone
        assert not executed(tmp_path, "sweep_nb__a-3").exists()
        assert not (lock.parent / "results.csv").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_stale_lock_is_taken_over(nb, tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = write_lock(tmp_path, "sweep_nb__a-3", dead.pid)
    assert sweep_main(nb, tmp_path, "-p", "a", "3") == 0
    assert "sweep_nb__a-3 ... done" in capsys.readouterr().out
    assert pd.read_csv(lock.parent / "results.csv")["value"].tolist() == [6]
    assert not lock.exists() and not list(lock.parent.glob(".lock*"))


def test_acquire_and_release_lock(tmp_path):
    lock = tmp_path / "run" / ".lock"
    assert sweep.acquire_lock(lock)
    assert lock.read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]  # pid host job
    assert not sweep.acquire_lock(lock)  # held by a live process (this one)
    sweep.release_lock(lock)
    assert not lock.exists()


@pytest.mark.slow
def test_two_sweeps_at_once_run_each_point_once(nb, tmp_path):
    cmd = [sys.executable, "-m", "tdpmlib.workflow.sweep", str(nb), "-p", "a", "1", "2", "3",
           "--profile", "smoke", "--results-dir", str(tmp_path / "results")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = "\n".join(outs)
    for a in (1, 2, 3):
        assert len(lines_with(both, f"sweep_nb__a-{a} ... done")) == 1, both  # never run twice
    # Whichever sweep merged last may not have seen the other's last point; a merge now sees all.
    points = sweep.build_grid("sweep_nb", [("a", [1, 2, 3])])
    dest = tmp_path / "merged.csv"
    assert sweep.merge_results(points, results_dir=tmp_path / "results", profile="smoke", dest=dest) == 3
    assert pd.read_csv(dest)["value"].tolist() == [2, 4, 6]
    assert not list((tmp_path / "results").rglob(".lock")) and not list((tmp_path / "results").rglob("*.tmp*"))
