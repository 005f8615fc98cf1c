"""The book's one timing protocol: every second per image comes from one dedicated benchmark (chapter 08).

Every per-image cost in the book is given in machine-independent units, network evaluations (NFE) and DIP
iterations, and in seconds only from this benchmark. ``run`` times each ``Case`` alone, one after another, at its
own validated budget (``tdpmlib.studies.timing_cases`` builds the cases from the chapters' committed results), on the same
batch for every case, CUDA-synchronised (``metrics.CudaTimer``). It records whether the cores were quiet: the
one-minute load average before and after each case (``os.getloadavg``) and the share of the machine's CPU time
that *other* processes used while the case ran (``CpuProbe``: the busy time of /proc/stat minus this process's own
CPU time; missing where /proc is absent), and ``quiet`` (that share below ``QUIET_SHARE``).

Chapter 08 writes the frame to ``results/<profile>/08_performance/timings.csv`` (``write``); every other chapter
that shows seconds reads that file (``read``, ``seconds_for``; ``study_key`` names a study method's case). No
second anywhere is derived from a fraction of a longer fit. ``generation_speedup`` is the book's one generation
speed-up; ``audit`` lists committed results files that still carry seconds of their own.
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from ..evaluation import metrics
from ..workflow import results

FILE = "timings.csv"
PRODUCER = "08_performance"
QUIET_SHARE = 0.10  # the cores count as quiet when other processes used less than this share of the CPU time
# /proc/stat counts CPU time in clock ticks (10 ms on Linux): over a shorter span than this the share is a count of
# one or two ticks (a 3 ms case read 72%), so it is not measured
MIN_PROBE_SECONDS = 0.1
# The generation speed-up: the full DDPM chain against the report's TDPM-DIP (T_trunc + 1 network evaluations after
# a 100-iteration DIP at lr 1e-4, ``tdpm.tdpm_dip``), both timed here.
GEN_DDPM, GEN_TDPM = "gen_ddpm", "gen_tdpm_report"
COLUMNS = ["key", "method", "group", "params", "source", "nfe", "dip_iterations", "batch", "repeats", "warmup",
           "seconds_per_image", "seconds_min", "seconds_max", "loadavg_before", "loadavg_after", "others_cpu_share",
           "quiet", "device", "threads"]


@dataclass(frozen=True)
class Case:
    """One method at one budget. ``fn(inputs)`` runs it once on a batch; ``setup(batch)`` (untimed) makes those
    inputs (default: the batch size itself); ``warm(inputs)`` is the untimed warm-up call (default ``fn``: give a
    cheaper call of the same code, e.g. two DIP iterations). ``nfe`` and ``dip_iterations`` are per image."""
    key: str
    method: str
    nfe: int
    dip_iterations: int
    fn: Callable[[Any], object]
    setup: Callable[[int], Any] | None = None
    warm: Callable[[Any], object] | None = None
    group: str = ""
    params: str = ""
    source: str = ""


def study_key(sigma, method_key: str) -> str:
    """The case key of a denoising method at a pixel noise level: ``study_key(25, "dip_official") == "s25_dip_official"``."""
    return f"s{int(round(float(sigma)))}_{method_key}"


# ------------------------------------------------------------------------------------------------------
# Were the cores quiet?
# ------------------------------------------------------------------------------------------------------

class CpuProbe:
    """The share of the machine's CPU time that other processes used between ``start`` and ``stop``.

    From the aggregate ``cpu`` line of ``stat_path`` (Linux's /proc/stat, in clock ticks): busy = all time but
    idle and iowait, total = all of it; others = (busy - this process's CPU time) / total, clipped at 0. This
    process's time comes from ``own_cpu`` (default ``time.process_time``: every thread of it). ``stop`` returns
    None where the file cannot be read (no /proc), no tick passed, or less than ``min_seconds`` of wall time."""

    def __init__(self, stat_path="/proc/stat", *, own_cpu: Callable[[], float] = time.process_time,
                 clock_ticks: int | None = None, min_seconds: float = MIN_PROBE_SECONDS):
        self.stat_path = Path(stat_path)
        self.own_cpu = own_cpu
        self.clock_ticks = clock_ticks or _clock_ticks()
        self.min_seconds = min_seconds
        self._start = None

    def _read(self) -> tuple[int, int] | None:
        try:
            line = next(ln for ln in self.stat_path.read_text().splitlines() if ln.startswith("cpu "))
        except (OSError, StopIteration):
            return None
        fields = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
        fields += [0] * (8 - len(fields))
        total = sum(fields)
        return total - fields[3] - fields[4], total

    def start(self) -> None:
        self._start = (self._read(), self.own_cpu(), time.perf_counter())

    def stop(self) -> float | None:
        if self._start is None:
            raise RuntimeError("CpuProbe.stop() before start()")
        (before, own0, t0), after = self._start, self._read()
        self._start = None
        if before is None or after is None or after[1] <= before[1] or time.perf_counter() - t0 < self.min_seconds:
            return None
        own = (self.own_cpu() - own0) * self.clock_ticks
        return max(0.0, (after[0] - before[0] - own) / (after[1] - before[1]))


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


def loadavg() -> float | None:
    """The one-minute load average, or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------

def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed; use an integer >= {low}")
    return value


def run(cases, *, batch: int, repeats: int = 1, warmup: int = 1, device="cpu", probe: CpuProbe | None = None,
        quiet_share: float = QUIET_SHARE, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Time every case alone, one after another: ``warmup`` untimed calls, then ``repeats`` timed calls of
    ``case.fn`` on a batch of ``batch`` images (the same batch for every case), each synchronised on CUDA.

    One row per case (``COLUMNS``): seconds_per_image is the median call's seconds / batch (seconds_min,
    seconds_max the fastest and slowest); loadavg_before / loadavg_after the one-minute load average around the
    case; others_cpu_share the share of the machine's CPU time other processes used during its timed calls
    (``CpuProbe``; NaN without /proc) and ``quiet`` whether it was below ``quiet_share`` (None when unknown)."""
    cases = list(cases)
    _check_int("batch", batch, 1)
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    keys = [c.key for c in cases]
    if len(set(keys)) != len(keys):
        raise ValueError(f"cases={sorted({k for k in keys if keys.count(k) > 1})} appear twice; keys must be unique")
    device = torch.device(device)
    probe = probe or CpuProbe()
    rows = []
    for case in cases:
        inputs = case.setup(batch) if case.setup is not None else batch
        for _ in range(warmup):
            (case.warm or case.fn)(inputs)
        gc.collect()
        before = loadavg()
        probe.start()
        secs = []
        for _ in range(repeats):
            with metrics.CudaTimer(device) as timer:
                case.fn(inputs)
            secs.append(timer.seconds)
        share = probe.stop()
        per = [s / batch for s in secs]
        rows.append(dict(key=case.key, method=case.method, group=case.group, params=case.params, source=case.source,
                         nfe=int(case.nfe), dip_iterations=int(case.dip_iterations), batch=batch, repeats=repeats,
                         warmup=warmup, seconds_per_image=float(statistics.median(per)), seconds_min=min(per),
                         seconds_max=max(per), loadavg_before=before, loadavg_after=loadavg(),
                         others_cpu_share=float("nan") if share is None else share,
                         quiet=None if share is None else bool(share < quiet_share), device=device.type,
                         threads=torch.get_num_threads()))
        if log:
            r = rows[-1]
            log(f"[timing] {case.key}: {r['seconds_per_image']:.3g} s / image (others' CPU share "
                f"{r['others_cpu_share']:.0%})")
        del inputs
    return pd.DataFrame(rows, columns=COLUMNS)


def measurable(frame: pd.DataFrame) -> pd.Series:
    """Which cases' timed calls lasted ``MIN_PROBE_SECONDS`` or more (about: the median call times the repeats),
    long enough for their CPU share to mean something; for files written before ``CpuProbe`` refused shorter
    spans."""
    return frame["seconds_per_image"] * frame["batch"] * frame["repeats"] >= MIN_PROBE_SECONDS


def quiet(frame: pd.DataFrame) -> bool | None:
    """True when every case long enough to measure (``measurable``) ran on quiet cores, False when one did not,
    None when it is unknown for all."""
    q = frame.loc[measurable(frame), "quiet"].dropna()
    if q.empty:
        return None
    return bool(q.astype(str).str.lower().isin(["true", "1", "1.0"]).all())


# ------------------------------------------------------------------------------------------------------
# The file and what the book reads from it
# ------------------------------------------------------------------------------------------------------

def path_for(results_dir, profile: str) -> Path:
    """``<results_dir>/<profile>/08_performance/timings.csv``."""
    return Path(results_dir) / profile / PRODUCER / FILE


def write(frame: pd.DataFrame, path) -> Path:
    """Write the frame of ``run`` (atomically). Raises ValueError naming missing columns."""
    _check_columns(frame, "frame")
    return results.write_csv(path, frame[COLUMNS])


def read(path) -> pd.DataFrame:
    """The frame ``write`` wrote. FileNotFoundError names chapter 08 when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebooks/{PRODUCER}.ipynb (its timing benchmark) first")
    frame = pd.read_csv(path)
    _check_columns(frame, str(path))
    return frame


def _check_columns(frame: pd.DataFrame, what: str) -> None:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is not a timing table: it lacks the columns {missing}")


def seconds_for(frame: pd.DataFrame, key: str) -> float:
    """Seconds per image of one case. Raises ValueError naming the key and the cases there are."""
    hit = frame.loc[frame["key"] == key, "seconds_per_image"]
    if hit.empty:
        raise ValueError(f"key={key!r} is not in the timing table; it has {list(frame['key'])}")
    return float(hit.iloc[0])


def seconds_or_none(frame: pd.DataFrame | None, key: str) -> float | None:
    """``seconds_for``, or None when there is no table or no such case (a table shows a dash)."""
    if frame is None or key not in set(frame["key"]):
        return None
    return seconds_for(frame, key)


def generation_speedup(frame: pd.DataFrame) -> float:
    """The book's one generation speed-up: seconds per image of the full DDPM chain over those of the report's
    TDPM-DIP generation (T_trunc + 1 network evaluations after a 100-iteration DIP), both from the benchmark."""
    return seconds_for(frame, GEN_DDPM) / seconds_for(frame, GEN_TDPM)


# ------------------------------------------------------------------------------------------------------
# The audit: which committed results still carry seconds of their own?
# ------------------------------------------------------------------------------------------------------

# A column holding a method's wall clock per image (or a ratio of two): "seconds", "seconds_per_image",
# "s / image", "s per image", "s/image σ=25", "time_ratio".
SECONDS_COLUMN = re.compile(r"^(seconds|seconds_per_image|time_ratio)$|\bs ?(/|per) ?image\b", re.IGNORECASE)
# Not per-image method costs: training wall clock (chapter 04b, the models' logs, the pilot) and the
# benchmark's own file.
AUDIT_SKIP = ("04b_example1_training", "models", "pilot", "cache")


def audit(results_root, *, skip=AUDIT_SKIP) -> pd.DataFrame:
    """Results files under ``results_root`` (a profile's folder, e.g. ``results/cpu``), other than ``timings.csv``
    and the folders in ``skip``, whose header has a seconds column for per-image method costs
    (``SECONDS_COLUMN``). Columns: path (relative to the root), columns (the offending ones, comma-separated)."""
    root = Path(results_root)
    if not root.is_dir():
        raise ValueError(f"results_root={str(results_root)!r} is not a folder")
    rows = []
    for path in sorted(root.rglob("*.csv")):
        rel = path.relative_to(root)
        if path.name == FILE or any(part in skip for part in rel.parts[:-1]):
            continue
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            continue
        bad = [str(c) for c in header if SECONDS_COLUMN.search(str(c))]
        if bad:
            rows.append(dict(path=str(rel), columns=", ".join(bad)))
    return pd.DataFrame(rows, columns=["path", "columns"])
