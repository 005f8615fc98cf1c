"""One-shot check of the paper profile on a lent GPU: correctness of the CUDA paths, timings with peak memory,
and each notebook's paper-profile time extrapolated from them. Written for the workplace's device machine (15
minutes of device time in all, at most 10 per command, results back through $OUT), so it runs once, in under
8 minutes, and writes one JSON and one log:

    # here: carry the wheels the device image lacks (diffusers) and nothing else
    bash scripts/gpu_check.sh                   # there: installs .whl/*.whl, then runs this file
    PYTHON=.venv/bin/python bash scripts/gpu_check.sh --dry-run   # here, on the CPU, at tiny sizes (a test does this)

Checks: (1) the crash fixes: level lookups, q_sample and t_for_sigma after diffusers' add_noise has moved the
scheduler's tables to the GPU; (2) the fast path (bf16 autocast + channels_last) against fp32 on the report's
DDPM, relative error at most FAST_TOL; (3) the batched paper-size DIP against the per-image loop.
Timings (CUDA-synchronised, peak memory per case): 30 training steps at batch 32; 500 images sampled over 10
ancestral steps exactly as the book samples (``ddpm.sample``: batches of ``memory.sample_batch_limit``, a seeded
CPU generator, its noise drawn on the device by default, and once more with ``noise="cpu"``, the same draws on
every device, to price that option); the report's DIP at B = 16 and 64 and the official skip network at B = 64
for 5 iterations (batches of ``memory.dip_batch_limit``), each on the fast path and in fp32. The extrapolation
multiplies each notebook's dominant work (``tdpmlib.workflow.budget.workload``: training steps, network evaluations, DIP
network-iterations, by the paper profile's sizes) by the measured cost of a unit; a dry run's tiny sizes make it
meaningless, so a dry run reports none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tdpmlib.methods import ddpm, ddpm_training, dip, memory, models, schedules
from tdpmlib.workflow import budget, config  # noqa: E402

FAST_TOL = 2e-2  # bf16 operands: relative errors of 1e-3..1e-2 are expected (about 8 bits of mantissa)
SIZES = {  # (DDPM preset, DIP preset, resolution, train batch, sample batch, DIP batches, iterations)
    "full": ("ddpm-paper", "dip-paper", 64, 32, 500, (16, 64), dict(train=30, sample=10, dip=5)),
    "dry": ("tiny", "tiny", 16, 4, 8, (2, 4), dict(train=2, sample=2, dip=2)),
}


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    """(seconds, peak bytes on CUDA or None) of ``fn()``, synchronised before and after."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated(device) if cuda else None)


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def check_crash_fixes(device, res) -> dict:
    sched = schedules.make_scheduler("linear")
    x0 = torch.rand(2, 3, res, res, device=device) * 2 - 1
    noise = torch.randn_like(x0)
    sched.add_noise(x0, noise, torch.tensor([10, 20], device=device))  # moves alphas_cumprod to the device
    ab = schedules.alpha_bar(sched, torch.tensor([10, 600]))
    xt = schedules.q_sample(x0, 600, noise, sched)
    return dict(ok=bool(torch.isfinite(ab).all() and torch.isfinite(xt).all()),
                t_for_sigma_25=schedules.t_for_sigma(sched, 25))


@torch.no_grad()
def check_fast_path(unet, device, res) -> dict:
    x = torch.randn(4, 3, res, res, device=device)
    ref = ddpm.predict_eps(unet, x, 500, fast=False)
    err = rel_err(ddpm.predict_eps(unet, x, 500, fast=True), ref)
    return dict(rel_err=err, tol=FAST_TOL, ok=err <= FAST_TOL)


def check_batched_dip(preset, device, res) -> dict:
    target = torch.rand(2, 3, res, res) * 2 - 1
    z = dip.draw_input("plain", (2, res, res), torch.Generator().manual_seed(0))  # the same input for both fits
    kw = dict(iterations=2, z=z, preset=preset, seed=0, device=device, fast=False)
    batched, looped = dip.fit_dip(target, **kw), dip.fit_dip(target, batched=False, **kw)
    err = rel_err(batched.output, looped.output)
    return dict(rel_err=err, ok=err <= 1e-4)


def time_cases(unet, sched, size, device) -> list[dict]:
    ddpm_preset, dip_preset, res, train_b, sample_b, dip_bs, its = size
    skip_preset = "skip-paper" if ddpm_preset == "ddpm-paper" else "skip-tiny"
    rows = []
    for fast in (True, False):
        images = torch.rand(max(train_b, 8), 3, res, res) * 2 - 1
        with tempfile.TemporaryDirectory() as tmp:
            net = models.make_unet(ddpm_preset, resolution=res)
            s, peak = timed(device, lambda: ddpm_training.train_ddpm(net, images, sched, out_dir=tmp, steps=its["train"],
                                                            batch_size=train_b, warmup_steps=1, device=device,
                                                            checkpoint_every=10 ** 6, fast=fast,
                                                            progress=False))
        rows.append(dict(case="train", fast=fast, seconds=s, per_unit=s / its["train"], unit="training step",
                         batch=train_b, peak_bytes=peak))
        # the book's sampler over its["sample"] levels: a schedule that short runs ddpm.sample's own code path
        short = schedules.make_scheduler("linear", num_train_timesteps=its["sample"])
        batch = memory.sample_batch_limit(unet, resolution=res, device=device, cap=sample_b)  # what ddpm.sample uses
        for case, noise in (("sample", "device"), ("sample, cpu noise", "cpu")):
            if case != "sample" and not fast:
                continue  # the noise option's cost shows on the fast path alone
            s, peak = timed(device, lambda: ddpm.sample(unet, short, n=sample_b, resolution=res, device=device,
                                                        generator=torch.Generator().manual_seed(0), batch_size=sample_b,
                                                        fast=fast, noise=noise))
            rows.append(dict(case=case, fast=fast, seconds=s, per_unit=s / (its["sample"] * sample_b),
                             unit="network evaluation per image", batch=batch, peak_bytes=peak))
        for case, preset, protocol, b in [(f"dip B={b}", dip_preset, "plain", b) for b in dip_bs] + [
                ("dip skip", skip_preset, "official", dip_bs[-1])]:
            target = torch.rand(b, 3, res, res) * 2 - 1
            s, peak = timed(device, lambda: dip.fit_dip(target, iterations=its["dip"], preset=preset, seed=0,
                                                        protocol=protocol, device=device, fast=fast,
                                                        record_every=its["dip"]))
            rows.append(dict(case=case, fast=fast, seconds=s, per_unit=s / (its["dip"] * b),
                             unit="DIP network-iteration", batch=b, peak_bytes=peak))
    return rows


def extrapolate(rows: list[dict], work: dict) -> dict:
    """Minutes per notebook: ``budget.workload``'s counts times the fast path's measured seconds per unit."""
    fast = {r["case"]: r["per_unit"] for r in rows if r["fast"]}
    unit = dict(train=fast.get("train", 0.0), nfe=fast.get("sample", 0.0),
                dip_plain=min((v for k, v in fast.items() if k.startswith("dip B=")), default=0.0),
                dip_official=fast.get("dip skip", 0.0))
    minutes = {nb: sum(n * unit[k] for k, n in w.items()) / 60 for nb, w in work.items()}
    return dict(per_notebook_min=minutes, total_min=sum(minutes.values()), unit_seconds=unit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on any device (a CPU test)")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default: $OUT or .)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    import os

    out = args.out or Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    device = config.resolve_device(args.device)
    if device.type != "cuda" and not args.dry_run:
        print("gpu_check: no CUDA device; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    size = SIZES["dry" if args.dry_run else "full"]
    ddpm_preset, dip_preset, res = size[:3]
    t0 = time.perf_counter()
    unet = models.make_unet(ddpm_preset, resolution=res).to(device).eval()
    sched = schedules.make_scheduler("linear")
    report = dict(device=str(device), name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, dry_run=args.dry_run, size=dict(ddpm=ddpm_preset, dip=dip_preset, res=res))
    report["checks"] = dict(crash_fixes=check_crash_fixes(device, res), fast_path=check_fast_path(unet, device, res),
                            batched_dip=check_batched_dip(dip_preset, device, res))
    report["timings"] = time_cases(unet, sched, size, device)
    # tiny networks at tiny sizes say nothing about the paper profile's minutes: a dry run extrapolates nothing
    report["extrapolation"] = None if args.dry_run else extrapolate(report["timings"], budget.workload("paper"))
    report["memory_plan"] = memory.describe(memory.plan(
        dip_preset=dip_preset, ddpm_preset=ddpm_preset, resolution=res, budget=memory.device_budget(device),
        dip_cap=64, sample_cap=500))
    report["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    ok = all(c["ok"] for c in report["checks"].values())
    print(f"checks {'passed' if ok else 'FAILED'}: {json.dumps(report['checks'], default=str)}")
    for r in report["timings"]:
        peak = "" if r["peak_bytes"] is None else f", peak {r['peak_bytes'] / 2**30:.1f} GiB"
        print(f"{r['case']:>9} fast={r['fast']!s:5} {r['seconds']:8.2f} s ({r['per_unit']:.3g} s per {r['unit']}{peak})")
    if report["extrapolation"] is None:
        print("paper profile extrapolation: not meaningful in a dry run (tiny networks at tiny sizes)")
    else:
        print(f"paper profile extrapolated: {report['extrapolation']['total_min']:.0f} min in all")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
