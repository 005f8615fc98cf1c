"""The benchmark cases. Each takes a ``common.Context`` and returns result rows (dicts with ``COLUMNS``).

Settings depend on the hardware and on ``--quick``:

* CUDA (full): the report's networks at 64 x 64 (dip-paper, ddpm-paper), the GPU targets.
* CPU (full): the cpu presets at 32 x 32 (dip-cpu, ddpm-cpu), plus a couple of forward passes of the report's
  DDPM network; the GPU targets are listed as "not measured (no CUDA)".
* ``--quick``: the "tiny" preset at 16 x 16 and a few iterations; proves that the suite runs, no targets.
"""

from __future__ import annotations

import copy
import gc
import math
import tempfile

import torch
import torch.nn.functional as F

from tdpmlib.methods import ddpm, ddpm_training, dip, models, schedules

from .common import forward_flops_per_image, median, PeakMemory, target_met, timed

NOT_CUDA = "not measured (no CUDA)"
FP32 = "fp32 eager"
FAST = "fast path: bf16 autocast + channels_last"
FAST_COMPILED = "fast path + torch.compile"


def settings(device: torch.device, quick: bool) -> dict:
    """What each case runs on this hardware (also written to bench.json)."""
    if quick:
        return dict(
            peak_n=1024 if device.type == "cuda" else 256,
            dip=dict(preset="tiny", resolution=16, batch=4, iterations=5),
            sampling=[dict(label="tiny preset", preset="tiny", resolution=16, batch=8, steps=3, warmup=1,
                           total_steps=1000, repeats=1)],
            training=dict(preset="tiny", resolution=16, batches=[8, 16], warmup=1, steps=2),
        )
    if device.type == "cuda":
        return dict(
            peak_n=8192,
            dip=dict(preset="dip-paper", resolution=64, batch=64, iterations=100, target=20.0, target_id="dip_gpu"),
            sampling=[dict(label="report's network", preset="ddpm-paper", resolution=64, batch=500, steps=20,
                           warmup=3, total_steps=1000, repeats=3, n_images=1000, gpu_targets=True)],
            training=dict(preset="ddpm-paper", resolution=64, batches=[32, 128], warmup=5, steps=20,
                          memory_check_batch=32),
        )
    return dict(
        peak_n=2048,
        dip=dict(preset="dip-cpu", resolution=32, batch=16, iterations=100, target=3.0, target_id="dip_cpu"),
        sampling=[dict(label="cpu preset", preset="ddpm-cpu", resolution=32, batch=64, steps=5, warmup=1,
                       total_steps=1000, repeats=3),
                  dict(label="report's network", preset="ddpm-paper", resolution=64, batch=2, steps=2, warmup=1,
                       total_steps=1000, repeats=1)],
        training=dict(preset="ddpm-cpu", resolution=32, batches=[32, 128], warmup=2, steps=5),
    )


# Targets that need the GPU; a CPU run lists them as not measured.
GPU_TARGETS = {
    "dip": [dict(row="DIP fit, dip-paper @64 px, B=64, 100 it.: batched vs fastest loop", preset="dip-paper",
                 resolution=64, batch=64, unit="images/s (100-it. fits)", target=">= 20x", target_id="dip_gpu",
                 target_value=20.0)],
    "sampling": [dict(row="1000 images x 1000 ancestral steps, ddpm-paper @64 px, batch 500", preset="ddpm-paper",
                      resolution=64, batch=500, unit="s", target="<= 90 s", target_id="sampling_gpu_1000x1000",
                      target_value=90.0),
                 dict(row="sampling speed-up: fast path vs fp32 eager, ddpm-paper @64 px, batch 500",
                      preset="ddpm-paper", resolution=64, batch=500, unit="images/s", target=">= 3x",
                      target_id="sampling_gpu_speedup", target_value=3.0),
                 dict(row="memory: sampling at batch 500 fits on the GPU", preset="ddpm-paper", resolution=64,
                      batch=500, unit="", target="peak <= GPU memory", target_id="mem_sampling_b500")],
    "training": [dict(row="memory: the report's training configuration (batch 32) fits on the GPU",
                      preset="ddpm-paper", resolution=64, batch=32, unit="", target="peak <= GPU memory",
                      target_id="mem_training_b32")],
}


def not_measured_rows(ctx, case: str) -> list[dict]:
    if ctx.cuda or ctx.quick:
        return []
    return [ctx.row(case=case, variant="", status=NOT_CUDA, **t) for t in GPU_TARGETS.get(case, [])]


# --- helpers ------------------------------------------------------------------------------------------------

def images(n: int, resolution: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1] (timing does not depend on the content)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(base, size=resolution, mode="bilinear", align_corners=False)


def seeded_unet(preset: str, resolution: int, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.make_unet(preset, resolution=resolution)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flops_fwd(ctx, preset: str, resolution: int) -> float:
    key = (preset, resolution)
    if key not in ctx.flops_cache:
        ctx.flops_cache[key] = forward_flops_per_image(seeded_unet(preset, resolution).to(ctx.device), resolution,
                                                       ctx.device)
        free(ctx.device)
    return ctx.flops_cache[key]


# --- DIP fitting --------------------------------------------------------------------------------------------

def dip_case(ctx) -> list[dict]:
    """Fit B images for N iterations: batched (vmap over stacked parameters) against two Python loops.

    Loops: ``batched=False`` (the same fitter, the B networks stepped in lockstep by a Python loop) and the
    naive loop of B separate ``fit_dip(batched=False)`` calls on one image each (a plain module per image). The baseline is the faster of the two in
    this run: the strongest unbatched implementation available, so the ratio is not inflated by a weak
    baseline. All three go through ``fit_dip`` with the same bookkeeping (history every N iterations), and
    include building the networks. Each is timed once in full after a 1-iteration warm-up (never extrapolated).
    """
    s = ctx.settings["dip"]
    B, r, n_it, preset = s["batch"], s["resolution"], s["iterations"], s["preset"]
    tgt = images(B, r, seed=1)
    z = torch.randn(tgt.shape, generator=torch.Generator().manual_seed(2))
    kw = dict(preset=preset, lr=1e-3, device=ctx.device)

    def batched(iterations):
        dip.fit_dip(tgt, z=z, iterations=iterations, record_every=max(iterations, 1), batched=True, **kw)

    def lockstep(iterations):
        dip.fit_dip(tgt, z=z, iterations=iterations, record_every=max(iterations, 1), batched=False, **kw)

    def separate(iterations):
        for i in range(B if iterations == n_it else 1):
            dip.fit_dip(tgt[i:i + 1], z=z[i:i + 1], iterations=iterations, record_every=max(iterations, 1),
                        indices=[i], batched=False, **kw)  # network i of the batch, alone: no vmap overhead

    variants = [("batched (vmap over stacked parameters)", batched),
                ("loop: batched=False (lockstep Python loop)", lockstep),
                ("loop: B separate fit_dip calls", separate)]
    measured = {}
    for name, fn in variants:
        with PeakMemory(ctx.device) as mem:
            fn(1)  # warm-up
            secs = timed(lambda: fn(n_it), ctx.device, warmup=0, repeats=1)[0]
        measured[name] = (secs, mem)
        ctx.log(f"[dip] {name}: {secs:.2f} s for {B} x {n_it} it.")
        free(ctx.device)

    loops = [n for n, _ in variants[1:]]
    base = min(loops, key=lambda n: measured[n][0])
    base_s = measured[base][0]
    label = f"DIP fit, {preset} @{r} px, B={B}, {n_it} it."
    target = s.get("target")
    rows = []
    for name, _ in variants:
        secs, mem = measured[name]
        ratio = base_s / secs
        row = ctx.row(case="dip", row=label, variant=name, preset=preset, resolution=r, batch=B, seconds=secs,
                      seconds_per=f"fit of {B} images", repeats=1, throughput=B / secs, unit="images/s (100-it. fits)" if n_it == 100 else
                      f"images/s ({n_it}-it. fits)", peak_mem_mb=mem.mb, mem_method=mem.method,
                      baseline=f"fastest loop in this run: {base}", ratio=ratio, dip_iterations=n_it)
        if name.startswith("batched"):
            other = [n for n in loops if n != base][0]
            row["note"] = f"vs the other loop ({other}): {measured[other][0] / secs:.2f}x"
            if target is not None:
                row.update(target=f">= {target:g}x", target_id=s["target_id"], target_value=target,
                           target_met=target_met(ratio, target, ">="))
        rows.append(row)
    return rows + not_measured_rows(ctx, "dip")


# --- DDPM sampling ------------------------------------------------------------------------------------------

def sampling_case(ctx) -> list[dict]:
    """Ancestral sampling (``ddpm.reverse_chain``): the fast path (and torch.compile with --compile) against
    fp32 eager at the same batch. k of the chain's N steps are timed and extrapolated linearly (every step
    costs the same: one network evaluation and one posterior step), and the row says so."""
    rows = []
    sched = schedules.make_scheduler("linear")
    for s in ctx.settings["sampling"]:
        preset, r, B, k, N = s["preset"], s["resolution"], s["batch"], s["steps"], s["total_steps"]
        f_img = flops_fwd(ctx, preset, r)
        unet0 = seeded_unet(preset, r)
        variants = [(FP32, False, False), (FAST, True, False)]
        if ctx.compile:
            variants.append((FAST_COMPILED, True, True))
        label = f"DDPM sampling, {s['label']} ({preset} @{r} px), batch {B}, on {ctx.device.type.upper()}"
        measured = {}
        for name, fast, compiled in variants:
            with PeakMemory(ctx.device) as mem:
                net = ddpm.prepare(copy.deepcopy(unet0), ctx.device, fast).eval()
                if compiled:
                    net = torch.compile(net, dynamic=False)
                x = torch.randn(B, 3, r, r, generator=torch.Generator().manual_seed(3)).to(ctx.device)
                gen = torch.Generator().manual_seed(4)

                def chain(steps, net=net, x=x, gen=gen, fast=fast):
                    ddpm.reverse_chain(net, sched, x, steps, generator=gen, fast=fast)

                warm = timed(lambda: chain(s["warmup"]), ctx.device, warmup=0, repeats=1)[0]
                secs = timed(lambda: chain(k), ctx.device, warmup=0, repeats=s["repeats"])
            del net, x
            free(ctx.device)
            measured[name] = (median(secs), mem, warm)
            ctx.log(f"[sampling] {label}, {name}: {median(secs) / k * 1e3:.1f} ms/step")
        base_step = measured[FP32][0] / k
        for name, fast, compiled in variants:
            t_k, mem, warm = measured[name]
            per_step = t_k / k
            ratio = base_step / per_step
            notes = []
            if fast and not ddpm.use_fast(ctx.device, True):
                notes.append("the fast path is a no-op on CPU (bf16 autocast and channels_last apply on CUDA "
                             "only), so a ratio ~1 is expected")
            if compiled:
                notes.append(f"first call incl. compilation {warm:.1f} s (not in the timing)")
            notes.append(f"{per_step * 1e3:.1f} ms per step at batch {B}")
            row = ctx.row(case="sampling", row=label, variant=name, preset=preset, resolution=r, batch=B,
                          seconds=per_step * N, seconds_per=f"{N}-step chain of one batch", repeats=len(secs), throughput=B / (per_step * N),
                          unit=f"images/s ({N}-step chains)", peak_mem_mb=mem.mb, mem_method=mem.method,
                          baseline=FP32, ratio=ratio, nfe=N, flops_per_image=f_img,
                          achieved_tflops=f_img * B / per_step / 1e12,
                          extrapolation=f"extrapolated from {k} of {N} steps" if k < N else "",
                          note="; ".join(notes))
            if s.get("gpu_targets") and fast:
                row.update(target=">= 3x", target_id="sampling_gpu_speedup", target_value=3.0,
                           target_met=target_met(ratio, 3.0, ">="))
            rows.append(row)
        if s.get("gpu_targets"):
            fast_names = [n for n, f, _ in variants if f]
            best = min(fast_names, key=lambda n: measured[n][0])
            per_step = measured[best][0] / k
            n_img = s["n_images"]
            total = math.ceil(n_img / B) * N * per_step
            rows.append(ctx.row(case="sampling", row=f"{n_img} images x {N} ancestral steps, {preset} @{r} px, "
                                f"batch {B}", variant=best, preset=preset, resolution=r, batch=B, seconds=total,
                                seconds_per=f"{n_img} images",
                                repeats=s["repeats"], throughput=n_img / total, unit="images/s",
                                peak_mem_mb=measured[best][1].mb, mem_method=measured[best][1].method,
                                nfe=N, target="<= 90 s", target_id="sampling_gpu_1000x1000", target_value=90.0,
                                target_met=target_met(total, 90.0, "<="),
                                extrapolation=f"extrapolated from {k} of {N} steps" if k < N else "",
                                note=f"seconds = {math.ceil(n_img / B)} batches x {N} steps x "
                                     f"{per_step * 1e3:.1f} ms per step"))
            rows.append(memory_check_row(ctx, "sampling", "memory: sampling at batch 500 fits on the GPU", "mem_sampling_b500",
                                         preset, r, B, measured[FAST][1]))
        del unet0
        free(ctx.device)
    return rows + not_measured_rows(ctx, "sampling")


def memory_check_row(ctx, case: str, row: str, target_id: str, preset: str, resolution: int, batch: int,
                     mem) -> dict:
    total = torch.cuda.get_device_properties(ctx.device).total_memory / 2**20
    return ctx.row(case=case, row=row, variant=FAST, preset=preset, resolution=resolution, batch=batch,
                   peak_mem_mb=mem.mb, mem_method=mem.method, target="peak <= GPU memory", target_id=target_id,
                   target_value=total, target_met=target_met(mem.mb, total, "<="),
                   note=f"peak {mem.mb / 1024:.1f} GiB of {total / 1024:.1f} GiB")


# --- DDPM training ------------------------------------------------------------------------------------------

def training_case(ctx) -> list[dict]:
    """``ddpm_training.train_ddpm`` itself (AdamW, clipping, EMA, data indexing, one loss.item() per step) on random
    images; the throughput is over the steps after the warm-up, from the training log's clock. Model FLOP
    utilisation = 3 x (forward FLOPs per image) x images/s / the measured matmul peak."""
    s = ctx.settings["training"]
    preset, r = s["preset"], s["resolution"]
    sched = schedules.make_scheduler("linear")
    f_img = flops_fwd(ctx, preset, r)
    fast_on = ddpm.use_fast(ctx.device, True)
    variants = [(FAST + " (default)", True), (FP32, False)] if fast_on else [("default (fp32: the fast path is "
                                                                             "CUDA-only)", None)]
    rows = []
    for B in s["batches"]:
        data = images(2 * B, r, seed=5)
        label = f"DDPM training, {preset} @{r} px, batch {B}, on {ctx.device.type.upper()}"
        measured = {}
        for name, fast in variants:
            with tempfile.TemporaryDirectory() as tmp, PeakMemory(ctx.device) as mem:
                out = ddpm_training.train_ddpm(seeded_unet(preset, r), data, sched, out_dir=tmp,
                                      steps=s["warmup"] + s["steps"], batch_size=B, warmup_steps=0,
                                      checkpoint_every=10**9, device=ctx.device, fast=fast, progress=False)
            log = out["log"]
            secs = float(log.seconds.iloc[-1] - log.seconds.iloc[s["warmup"] - 1])
            measured[name] = (secs, mem)
            ctx.log(f"[training] {label}, {name}: {secs / s['steps'] * 1e3:.0f} ms/step")
            del out
            free(ctx.device)
        base = variants[-1][0]
        for name, fast in variants:
            secs, mem = measured[name]
            ips = s["steps"] * B / secs
            rows.append(ctx.row(case="training", row=label, variant=name, preset=preset, resolution=r, batch=B,
                                seconds=secs / s["steps"], seconds_per="training step", repeats=s["steps"], throughput=ips, unit="images/s",
                                peak_mem_mb=mem.mb, mem_method=mem.method, baseline=base,
                                ratio=measured[base][0] / secs, flops_per_image=3 * f_img,
                                achieved_tflops=3 * f_img * ips / 1e12,
                                note=f"seconds = per step, mean over {s['steps']} steps after {s['warmup']} "
                                     f"warm-up steps; FLOPs/image = 3 x forward"))
        if s.get("memory_check_batch") == B and fast_on:
            rows.append(memory_check_row(ctx, "training", "memory: the report's training configuration (batch 32) fits on "
                                         "the GPU", "mem_training_b32", preset, r, B, measured[variants[0][0]][1]))
    return rows + not_measured_rows(ctx, "training")


CASE_FUNCTIONS = {"dip": dip_case, "sampling": sampling_case, "training": training_case}
