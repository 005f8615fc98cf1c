"""What a profile costs: each notebook's dominant work, its FLOP count, and the minutes that gives per GPU class.

The work of a notebook is counted in three units, by the profile's sizes (``workload``): DDPM training steps,
DDPM network evaluations (one image through the network once) and DIP network-iterations (one network, one
optimiser step), split by network, since the official protocol's skip network is about 15 times cheaper than
the report's UNet. Only the dominant terms are counted (training, sampling, DIP fits); metrics, data loading and
Python overhead are not, so the estimate is a floor for the arithmetic, not a timing.

FLOPs per unit come from counting one forward pass on the meta device (``torch.utils.flop_counter``): a network
evaluation is one forward, a training step or a DIP iteration three (forward and backward) per image. At 64 px
the report's DDPM is 31.0 GFLOP per forward and its DIP UNet 35.5, as the issues state. Minutes = FLOPs over the
sustained rate of the dtype the work really runs in on each GPU class (``run_dtype``, ``TFLOPS``): the fast
path's autocast dtype, except that training (DDPM steps, DIP fits) stays in fp32 where that dtype is fp16 (the T4),
as ``ddpm.autocast(training=True)`` does without loss scaling. ``scripts/gpu_check.py`` measures the real
per-unit times on a lent GPU.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..methods import ddpm, memory, models, skipnet, stopping
from . import config

# Sustained rates (TFLOP/s) the book sizes its profiles with, by GPU class and the dtype the work runs in. T4: about
# 20 in fp16 (the colab-profile issue's figure, 31% of the 65 TFLOP/s tensor-core peak), and 5 in fp32 (60% of its
# 8.1 TFLOP/s fp32 peak; no tensor cores), the rate its training and DIP fits run at. H200: about 400 in bf16 (half
# the ~790 TFLOP/s measured on large matrix products there, for convolutions and attention at these sizes); H100:
# 350 (the same tensor cores, less memory bandwidth). None has been timed with this code yet.
TFLOPS = {"T4": {torch.float16: 20.0, torch.float32: 5.0}, "H100": {torch.bfloat16: 350.0},
          "H200": {torch.bfloat16: 400.0}}
CAPABILITY = {"T4": (7, 5), "H100": (9, 0), "H200": (9, 0)}  # CUDA compute capability, which picks the dtype
EFFECTIVE_TFLOPS = {g: max(r.values()) for g, r in TFLOPS.items()}  # the fast path's (inference) rate
TRAINING_UNITS = ("train", "dip_official", "dip_plain")  # backpropagated work; "nfe" is inference
DDIM_STEPS = (50, 100)
REPORT_T600 = 600


def check_gpu(gpu: str) -> str:
    if gpu not in TFLOPS:
        raise ValueError(f"gpu={gpu!r} is not allowed; use one of {sorted(TFLOPS)}")
    return gpu


def run_dtype(gpu: str, *, training: bool) -> torch.dtype:
    """The dtype work runs in on ``gpu`` on the fast path: bf16 from compute capability 8.0, fp16 before (as
    ``ddpm.fast_dtype``), and fp32 for training where that is fp16 (``ddpm.autocast(training=True)``: no loss
    scaling, so no fp16 gradients)."""
    dtype = torch.bfloat16 if CAPABILITY[check_gpu(gpu)] >= (8, 0) else torch.float16
    return torch.float32 if training and dtype == torch.float16 else dtype


def rate(gpu: str, *, training: bool) -> float:
    """Sustained TFLOP/s of training (``training=True``) or inference work on ``gpu``, in the dtype it runs in."""
    return TFLOPS[check_gpu(gpu)][run_dtype(gpu, training=training)]


@functools.lru_cache(maxsize=None)
def forward_gflop(preset: str, resolution: int) -> float:
    """GFLOP of one forward pass of one image through the network of ``preset`` (counted on the meta device)."""
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        if preset in skipnet.PRESETS:
            skipnet.make_skipnet(preset, resolution=resolution, in_channels=32)(torch.empty(1, 32, resolution, resolution))
        else:
            models.make_unet(preset, resolution=resolution)(torch.empty(1, 3, resolution, resolution),
                                                             torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops() / 1e9


def workload(profile: str, *, n_train: int = 737) -> dict:
    """{notebook: {unit: count}} for ``profile``. Units: "train" (DDPM steps, both schedules), "nfe" (network
    evaluations), "dip_official" and "dip_plain" (network-iterations). ``n_train``: training images (737 in the
    local parquet, 6,621 on the hub dataset), which sets the steps of an epoch-based budget."""
    p = config.PROFILES[profile]
    steps = p["train_steps"] or p["train_epochs"] * math.ceil(n_train / p["batch_size"])
    images = p["n_val"] + p["n_test"]
    off = max(int(b) for b in p["dip_budgets_official"].split(","))
    plain = max(int(b) for b in p["dip_budgets_plain"].split(","))
    sigmas = 3  # the study's noise levels
    chain = 1000 + sum(DDIM_STEPS)  # DDPM-1000 and the two DDIM samplers, per image
    final = sum(ddpm.network_evaluations(1000, **kw) for kw in config.FINAL_SAMPLERS.values())  # 01's final samplers
    return {
        "01_ddpm_training": dict(train=2 * steps, nfe=2 * p["n_final_samples"] * final),
        "02_dip_fitting": dict(dip_official=images * off, dip_plain=images * plain),
        "03_tdpm_dip": dict(nfe=p["n_generate"] * (chain + 2 * 10) + sigmas * images * 2 * 200
                            + 2 * p["n_denoise"] * REPORT_T600,
                            dip_official=sigmas * images * off, dip_plain=2 * p["n_generate"] * p["dip_iterations"]),
        "04_example1_dip_init_ddpm": dict(dip_official=2 * images * off, nfe=2 * images * 4 * 100),
        "05_example2_guided_early_stopping": dict(dip_official=2 * images * (2 * off + stopping.eswmv_cap(profile))),
        # 06: the T_trunc sweep (2 sigmas, 2 schedules, 4 levels of up to 100 steps), then the other readouts of the
        # matched state at 2 sigmas (the posterior mean, 1 evaluation; the mean of 4 chains at T_trunc up to 29)
        "06_ablations": dict(nfe=2 * 2 * images * 4 * 100 + 2 * images * (1 + 4 * 29) + 2 * p["n_denoise"] * REPORT_T600),
    }


def unit_tflop(profile: str, *, n_train: int = 737) -> dict:
    """{notebook: {unit: TFLOP}} of ``workload`` at the profile's networks and resolution."""
    p = config.PROFILES[profile]
    res = p["resolution"]
    per = dict(train=3 * p["batch_size"] * forward_gflop(p["ddpm_preset"], res),
               nfe=forward_gflop(p["ddpm_preset"], res),
               dip_official=3 * forward_gflop(p["dip_preset_official"], res),
               dip_plain=3 * forward_gflop(p["dip_preset"], res))
    return {nb: {u: n * per[u] / 1e3 for u, n in w.items()} for nb, w in workload(profile, n_train=n_train).items()}


def notebook_tflop(profile: str, *, n_train: int = 737) -> dict:
    """{notebook: TFLOP} of ``workload`` at the profile's networks and resolution."""
    return {nb: sum(u.values()) for nb, u in unit_tflop(profile, n_train=n_train).items()}


def _minutes(units: dict, gpu: str) -> float:
    return sum(tf / rate(gpu, training=u in TRAINING_UNITS) for u, tf in units.items()) / 60


def minutes(profile: str, gpu: str, *, n_train: int = 737) -> dict:
    """{notebook: minutes} of the profile's arithmetic on ``gpu`` (a key of ``TFLOPS``), each unit at the rate of
    the dtype it runs in (``rate``), and "total"."""
    check_gpu(gpu)
    m = {nb: _minutes(u, gpu) for nb, u in unit_tflop(profile, n_train=n_train).items()}
    return m | {"total": sum(m.values())}


# Measured on this project's 2-core CPU machine: the cpu profile's training (ddpm-cpu, 32 px, batch 32) ran at 1.46 to
# 1.6 s per step on one thread, i.e. 46-50 GFLOP/s; the 1.1 M preset at batch 16 at about 40.
CPU_TFLOPS_PER_THREAD = 0.045


def training_estimate(preset: str, *, resolution: int, batch_size: int, steps: int, device) -> str:
    """An up-front estimate of a DDPM training run from its FLOP count (3 forward passes per image and step): on
    the CPU at the measured throughput per thread, on CUDA for the GPU classes of ``EFFECTIVE_TFLOPS``."""
    tf = 3 * batch_size * steps * forward_gflop(preset, resolution) / 1e3
    if torch.device(device).type == "cuda":
        per = ", ".join(f"{tf / rate(g, training=True) / 60:.1f} min on {g}" for g in TFLOPS)
        return f"{steps:,} steps, {tf:,.0f} TFLOP: about {per}"
    threads = torch.get_num_threads()
    return (f"{steps:,} steps, {tf:,.0f} TFLOP: about {tf / (CPU_TFLOPS_PER_THREAD * threads) / 60:.0f} min on "
            f"{threads} CPU thread(s)")


def describe(profile: str, notebook: str, *, n_train: int = 737) -> str:
    """One line for a notebook's run details: its TFLOP and the minutes they take per GPU class."""
    units = unit_tflop(profile, n_train=n_train).get(notebook)
    if units is None:
        return "no network training, sampling or DIP fitting of its own"
    tf = sum(units.values())
    per = ", ".join(f"{_minutes(units, g):.1f} min on {g}" for g in TFLOPS)
    return f"{tf:,.0f} TFLOP of network arithmetic (FLOP count): about {per}"


def memory_plan(profile: str) -> int:
    """Print the memory plan (``memory.plan``: DIP networks per batch, sampling batch) of ``profile`` per GPU class."""
    p = config.PROFILES[profile]
    for gpu, gb in memory.GPU_MEMORY_GB.items():
        for dip_preset in (p["dip_preset_official"], p["dip_preset"]):  # the official DIP, the report's DIP
            pl = memory.plan(dip_preset=dip_preset, ddpm_preset=p["ddpm_preset"], resolution=p["resolution"],
                             budget=int(memory.FRACTION * gb * 1e9), dip_cap=p["sample_batch"], sample_cap=p["sample_batch"])
            print(f"{gpu:>11} ({gb} GB): {memory.describe(pl)}")
    return 0


def main(argv=None) -> int:
    """``python -m tdpmlib.workflow.budget --profile paper``: each notebook's TFLOP and minutes per GPU class
    (``--memory``: the memory plan instead)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="paper", choices=list(config.PROFILES))
    ap.add_argument("--n-train", type=int, default=737, help="training images (737 local, 6621 on the hub)")
    ap.add_argument("--memory", action="store_true", help="print the profile's memory plan per GPU class instead")
    a = ap.parse_args(argv)
    if a.memory:
        return memory_plan(a.profile)
    tf = notebook_tflop(a.profile, n_train=a.n_train)
    per_gpu = {g: minutes(a.profile, g, n_train=a.n_train) for g in TFLOPS}
    print(f"{'notebook':<36}{'TFLOP':>10}" + "".join(f"{g + ' min':>11}" for g in TFLOPS))
    for nb, t in tf.items():
        print(f"{nb:<36}{t:>10.0f}" + "".join(f"{per_gpu[g][nb]:>11.1f}" for g in TFLOPS))
    print(f"{'total':<36}{sum(tf.values()):>10.0f}" + "".join(f"{per_gpu[g]['total']:>11.1f}" for g in TFLOPS))
    print("rates (TFLOP/s): " + "; ".join(f"{g} {rate(g, training=False):g} ({str(run_dtype(g, training=False))[6:]}), "
                                          f"training {rate(g, training=True):g} ({str(run_dtype(g, training=True))[6:]})"
                                          for g in TFLOPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
