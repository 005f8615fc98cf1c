"""Notebook 03's denoising protocol: TDPM-DIP and its baselines on noisy observations.

``run_denoising`` observes each clean image x_0 at each setting's level t, y = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps (``tdpm.observe``), runs the methods of ``tdpmlib.studies.denoising_methods`` through its
runner (``run_methods``, the one the sigma study uses too) and scores each estimate against the clean image: one
row per (setting, method, image). The corrected-protocol methods (``METHODS``) are handed only a context and the
observation; the oracle and the report-protocol rows (``WITH_CLEAN``) are also handed the clean image. ``summarise`` turns the rows into
mean ± std per group. A method's cost is its network evaluations (``nfe``) and DIP iterations; its seconds per
image come from chapter 08's timing benchmark (``tdpmlib.studies.timing``), not from these rows. ``dip_batch_limit``,
``chunks`` and ``check_sigmas`` are shared with ``tdpmlib.studies.generation``.

Randomness: every draw comes from a CPU ``torch.Generator`` seeded from ``seed`` and a fixed offset per
purpose (``OFFSETS``, ``denoising_methods.OFFSETS``); a setting's offsets also depend on its name (CRC32), so adding
or reordering settings leaves the observations of the others unchanged.
"""

from __future__ import annotations

import math
import zlib

import pandas as pd
import torch

from ..evaluation import metrics, perceptual
from ..methods import memory, schedules, tdpm
from ..workflow import config
from .denoising_methods import Context, denoising_labels, generator, METHODS, run_methods, WITH_CLEAN

# A setting's generator offsets: OFFSETS["setting"] + 10 * (crc32(setting name) % 100_000) + purpose index.
OFFSETS = dict(setting=10_000)
SETTING_PURPOSES = ("observation", "ddpm", "mean_k", "z", "tdpm")


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive slices of at most ``size`` out of ``n``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def dip_batch_limit(preset: str, *, resolution: int, device, cap: int) -> int:
    """How many DIP networks to fit at once: ``cap`` on the CPU; on CUDA also at most what the memory model
    (``memory.dip_batch_limit``: parameters, gradients, Adam state and counted activations) fits in the free
    GPU memory. The paper-size DIP holds about 1.1 GB per network, so a T4 fits about 11 at once."""
    config.check_int("cap", cap, low=1)
    return memory.dip_batch_limit(preset, resolution=resolution, device=device, cap=cap)


def check_sigmas(name: str, value) -> tuple[int, ...]:
    """Parse a comma-separated string of pixel noise levels on the 0..255 scale ("15,25,50").

    Returns a tuple of distinct integers in 1..255 (empty for ""). Anything else raises ``ValueError``.
    """
    allowed = 'use a comma-separated string of distinct integers in 1..255, e.g. "15,25,50" ("" for none)'
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}")
    parts = [p.strip() for p in value.split(",")] if value.strip() else []
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}") from None
    if any(not 1 <= s <= 255 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}")
    return out


# --------------------------------------------------------------------------- #
# The runner
# --------------------------------------------------------------------------- #
def denoising_settings(schedulers: dict, *, t: int, sigmas=(), sigma_schedule: str = "linear") -> list[dict]:
    """Settings for ``run_denoising``: level ``t`` under every schedule in ``schedulers`` (name -> scheduler),
    then each pixel noise level sigma (0..255 scale) mapped to its level t(sigma) under ``sigma_schedule``
    (``schedules.t_for_sigma``)."""
    out = [dict(name=f"t = {t} ({s})", schedule=s, t=t, sigma255=None) for s in schedulers]
    for sig in sigmas:
        ts = schedules.t_for_sigma(schedulers[sigma_schedule], sig)
        out.append(dict(name=f"σ = {sig}/255 ({sigma_schedule}, t = {ts})", schedule=sigma_schedule, t=ts,
                        sigma255=sig))
    return out


def _setting_offset(name: str) -> int:
    return OFFSETS["setting"] + 10 * (zlib.crc32(name.encode()) % 100_000)


def _check_settings(settings, unets):
    names = set()
    for s in settings:
        if not isinstance(s, dict) or not {"name", "schedule", "t"} <= set(s):
            raise ValueError(f"setting {s!r} is not allowed; use dict(name=..., schedule=..., t=..., sigma255=...)")
        if s["schedule"] not in unets:
            raise ValueError(f"setting {s['name']!r}: schedule {s['schedule']!r} has no model; given {sorted(unets)}")
        schedules.check_level(f"t of setting {s['name']!r}", s["t"], unets[s["schedule"]][1], allow_zero=False)
        if s["name"] in names:
            raise ValueError(f"setting name {s['name']!r} is used twice; names must be unique")
        names.add(s["name"])


def run_denoising(unets: dict, *, clean: torch.Tensor, settings: list[dict], device, dip_preset: str, dip_lr: float,
                  dip_iterations: int = 100, dip_iterations_long: int, n_chains: int, t_trunc: int = 10, seed: int,
                  batch_size: int = 50, methods=None, return_outputs: bool = False):
    """Denoise ``clean`` images observed at each setting's level; ONE ROW PER (setting, method, image).

    ``unets`` maps a schedule name to ``(unet, scheduler)``; a setting is ``dict(name, schedule, t,
    sigma255)`` (see ``denoising_settings``). For each setting the observation is
    ``y = tdpm.observe(clean, t, scheduler, ...)``; each entry of ``METHODS`` gets ``(ctx, y)`` and each entry
    of ``WITH_CLEAN`` gets ``(ctx, y, clean)`` (see the module doc and each function's docstring), one chunk
    of at most ``batch_size`` images at a time (on CUDA at most ``dip_batch_limit`` DIP networks).
    ``methods`` selects a subset of the report's rows (default: every entry with ``in_report``, in table order:
    ``METHODS``, then ``WITH_CLEAN``); they run through ``denoising_methods.run_methods``.

    Columns: setting, schedule, t, sigma255 (the equivalent sigma of level t, ``schedules.sigma_at``),
    sigma255_requested, method, method_key, protocol, measured_against, image (index into ``clean``), psnr,
    ssim (NaN below 11 px), lpips (NaN without its weights or below 31 px), nfe, dip_iterations.
    PSNR/SSIM use ``metrics.psnr``/``metrics.ssim``: both images clipped to [-1, 1] and mapped to [0, 1].
    With ``return_outputs=True`` returns ``(df, outputs)``, ``outputs[setting name]`` a dict with
    ``y``, ``y_scaled`` (y / sqrt(abar_t)) and one entry per method key.
    """
    config.check_int("dip_iterations", dip_iterations, low=1)
    config.check_int("dip_iterations_long", dip_iterations_long, low=1)
    config.check_int("n_chains", n_chains, low=1)
    config.check_int("t_trunc", t_trunc, low=0)
    config.check_int("batch_size", batch_size, low=1)
    if dip_iterations > dip_iterations_long:
        raise ValueError(f"dip_iterations={dip_iterations!r} is not allowed; "
                         f"use at most dip_iterations_long={dip_iterations_long}")
    if clean.ndim != 4 or clean.shape[1] != 3 or len(clean) == 0:
        raise ValueError(f"clean has shape {tuple(clean.shape)}; use N x 3 x H x W with N >= 1")
    table = METHODS | WITH_CLEAN  # read at call time: an entry added to either table is run
    methods = [k for k, m in table.items() if m.in_report] if methods is None else list(methods)
    bad = [m for m in methods if m not in table or not table[m].in_report]
    if bad:
        raise ValueError(f"methods {bad} are not allowed; use keys of {[k for k, m in table.items() if m.in_report]}")
    _check_settings(settings, unets)
    labels = denoising_labels(dip_iterations=dip_iterations, dip_iterations_long=dip_iterations_long,
                              n_chains=n_chains, t_trunc=t_trunc)
    keys = [k for k in WITH_CLEAN if k in methods] + [k for k in METHODS if k in methods]  # the table's order
    size = dip_batch_limit(dip_preset, resolution=clean.shape[-1], device=device, cap=batch_size)
    dip_kw = dict(preset=dip_preset, lr=dip_lr, device=device)
    run_memo, rows, all_outputs = {}, [], {}
    for setting in settings:
        name, schedule, t = setting["name"], setting["schedule"], setting["t"]
        unet, sched = unets[schedule]
        off = _setting_offset(name)
        gens = {p: generator(seed, off + i) for i, p in enumerate(SETTING_PURPOSES)}
        y = tdpm.observe(clean, t, sched, generator=gens["observation"])
        z_all = torch.randn(clean.shape, generator=gens["z"])
        method_gens = {p: gens[p] for p in ("ddpm", "mean_k", "tdpm")}
        parts = {k: [] for k in methods}
        for c, (a, b) in enumerate(chunks(len(clean), size)):
            ctx = Context(unet=unet, scheduler=sched, schedule=schedule, schedule_index=sorted(unets).index(schedule),
                          t=t, t_trunc=t_trunc, n_chains=n_chains, dip_iterations=dip_iterations,
                          dip_iterations_long=dip_iterations_long, dip_kw=dip_kw, device=device, seed=seed,
                          dip_seed=seed * 1_000 + c, chunk=c, z=z_all[a:b], generators=method_gens, run_memo=run_memo)
            for key, est in run_methods(ctx, y[a:b], keys, clean=clean[a:b]).items():
                parts[key].append(est)
        y_scaled = y / math.sqrt(float(schedules.alpha_bar(sched, t)))
        sigma_eq = float(schedules.sigma_at(sched, t))
        outputs = {}
        for key in (k for k in table if k in methods):
            m = table[key]
            out = torch.cat([e.x0 for e in parts[key]])
            outputs[key] = out
            target = y_scaled if m.target == "y_scaled" else clean
            psnr, ssim = metrics.psnr(out, target), metrics.ssim_or_nan(out, target)
            lp = perceptual.lpips_or_nan(out, target)
            for i in range(len(clean)):
                rows.append(dict(setting=name, schedule=schedule, t=t, sigma255=sigma_eq,
                                 sigma255_requested=setting.get("sigma255"), method=labels[key], method_key=key,
                                 protocol=m.protocol, measured_against=m.measured_against, image=i,
                                 psnr=float(psnr[i]), ssim=float(ssim[i]), lpips=float(lp[i]), nfe=parts[key][0].nfe, dip_iterations=parts[key][0].dip_iterations))
        if return_outputs:
            all_outputs[name] = dict(y=y, y_scaled=y_scaled, **outputs)
    df = pd.DataFrame(rows)
    return (df, all_outputs) if return_outputs else df


# --------------------------------------------------------------------------- #
# Summaries
# --------------------------------------------------------------------------- #
def summarise(df: pd.DataFrame, by=("setting", "method")) -> pd.DataFrame:
    """Mean ± std over images per group of per-image denoising rows.

    Columns: the ``by`` columns, the group-constant descriptive columns (schedule, t, sigma255, method_key,
    protocol, measured_against, when present and constant), psnr_mean, psnr_std, ssim_mean, ssim_std (sample
    std, ``metrics.mean_std``; NaN SSIMs are left out), n, nfe, dip_iterations, and
    formatted strings psnr_pm ("32.12 ± 0.50"), ssim_pm ("0.948 ± 0.010") and pm ("32.12 ± 0.50 dB / 0.948 ±
    0.010"). Groups keep the order in which they first appear in ``df``.
    """
    by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"summarise: columns {missing} are not in the table; it has {list(df.columns)}")
    extra = [c for c in ("setting", "schedule", "t", "sigma255", "method", "method_key", "protocol", "measured_against")
             if c in df.columns and c not in by]
    rows = []
    for keys, g in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        for c in extra:
            if g[c].nunique(dropna=False) == 1:
                row[c] = g[c].iloc[0]
        pm, ps = metrics.mean_std(g["psnr"])
        sm, ss = metrics.mean_std_or_nan(g["ssim"])
        row.update(psnr_mean=pm, psnr_std=ps, ssim_mean=sm, ssim_std=ss, n=len(g), nfe=g["nfe"].iloc[0],
                   dip_iterations=g["dip_iterations"].iloc[0])
        row.update(psnr_pm=f"{pm:.2f} ± {ps:.2f}", ssim_pm=f"{sm:.3f} ± {ss:.3f}",
                   pm=f"{pm:.2f} ± {ps:.2f} dB / {sm:.3f} ± {ss:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)
