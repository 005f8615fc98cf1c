"""Measurement helpers: wall-clock timing, peak memory, hardware identity, peak FLOP/s and FLOP counts."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import os
import platform
import re
import statistics
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from tdpmlib.evaluation import metrics

from . import COLUMNS

NAN = float("nan")


# --- hardware -----------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def hardware_slug(device: torch.device) -> str:
    """A folder name for the hardware: ``cuda-nvidia-h200``, ``cpu-amd-epyc-2cores``."""
    if device.type == "cuda":
        return "cuda-" + slugify(torch.cuda.get_device_name(device))
    return f"cpu-{slugify(cpu_model())}-{os.cpu_count()}cores"


def device_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    return NAN


# --- timing -------------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, warmup: int = 1, repeats: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        with metrics.CudaTimer(device) as t:
            fn()
        out.append(t.seconds)
    return out


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else NAN


# --- memory -------------------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS so that reused memory counts towards the next peak."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a ``with`` block, in MiB (``mb``), and how it was measured (``method``).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only, absolute).
    CPU (Linux): the resident-set high-water mark above the resident set at the start, after resetting the
    mark through /proc/self/clear_refs and trimming the heap; it counts the block's models, optimiser state,
    activations and allocator slack. Elsewhere: not measured (NaN), never estimated.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = NAN
        self.method = "n/a"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            _malloc_trim()
            self._ok = _reset_rss_peak()
            self._start_kb = _status_kb("VmRSS") if self._ok else None
            self.method = "peak RSS above start (VmHWM)" if self._start_kb is not None else "n/a on this OS"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start_kb is not None:
            peak = _status_kb("VmHWM")
            self.mb = max(0, peak - self._start_kb) / 1024 if peak is not None else NAN


# --- FLOPs --------------------------------------------------------------------------------------------------

def forward_flops_per_image(unet, resolution: int, device: torch.device) -> float:
    """FLOPs of one forward pass for one image, counted by ``FlopCounterMode`` (a multiply-add is 2 FLOPs)."""
    x = torch.randn(1, unet.config.in_channels, resolution, resolution, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([10], device=device))
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, *, n: int, repeats: int = 3, inner: int = 5) -> dict:
    """The measured peak: best FLOP/s of an n x n x n matmul (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)

    def run():
        for _ in range(inner):
            torch.mm(a, b)

    secs = timed(run, device, warmup=1, repeats=repeats)
    best = min(secs)
    return dict(flops_per_s=2 * n**3 * inner / best, dtype=str(dtype).replace("torch.", ""), n=n,
                seconds=best, threads=torch.get_num_threads())


# --- rows ---------------------------------------------------------------------------------------------------

@dataclass
class Context:
    device: torch.device
    quick: bool
    compile: bool
    settings: dict
    hardware: str
    peak: dict | None = None
    log: object = print
    flops_cache: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def row(self, **kw) -> dict:
        """A result row with every column present (NaN / "" where a column does not apply)."""
        unknown = set(kw) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown result columns {sorted(unknown)}")
        base = {c: "" for c in COLUMNS}
        base.update({c: NAN for c in ("seconds", "throughput", "peak_mem_mb", "ratio", "target_value",
                                      "flops_per_image", "achieved_tflops", "mfu")})
        base.update(device=self.device.type, hardware=self.hardware, status="measured", target_met="")
        base.update(kw)
        return base


def target_met(value: float, target: float, kind: str):
    """True/False against a target (kind ">=" or "<="); "" when the value was not measured."""
    if value is None or not math.isfinite(value):
        return ""
    return bool(value >= target) if kind == ">=" else bool(value <= target)


def fmt_mb(mb: float) -> str:
    return "n/a" if not math.isfinite(mb) else (f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB")
