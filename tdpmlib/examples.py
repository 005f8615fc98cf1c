"""The two integration examples of the report: a DIP-initialised DDPM, and DDPM-guided early stopping of DIP.

Levels follow ``tdpmlib.schedules`` (level t in 0..T, ``abar_0 = 1``); images are on the [-1, 1] scale.
"x0 units" means an image written as ``x_0 + noise``: an observation ``y`` at level t is
``y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, so ``y / sqrt(abar_t) = x_0 + sqrt(v_t) eps`` with the
noise variance ``v_t = (1 - abar_t) / abar_t`` in x0 units.

Example 1 -- a DIP-initialised DDPM (SDEdit, Meng et al. 2022; Come-Closer-Diffuse-Faster, Chung et al. 2022)
    A DIP output is an estimate of x_0. ``dip_init_ddpm`` re-noises it to a level t0 with *fresh* noise,
    ``x_t0 = sqrt(abar_t0) x_hat + sqrt(1 - abar_t0) n``, and runs the reverse chain from t0 to 0
    (t0 network evaluations with the ancestral sampler). The better the estimate, the smaller the t0
    that suffices (CCDF's argument). Comparison starts:

    * ``from_observation``: for denoising, y *is* a sample of q(x_tobs | x_0), so the SDEdit-faithful
      start from the observation is to reverse from t_obs itself (t_obs evaluations, no DIP).
    * ``observation_x0`` + ``dip_init_ddpm``: the observation's x0 estimate y / sqrt(abar_tobs) re-noised to
      t0 < t_obs. This does **not** match the marginal the network expects at t0: the estimate already
      carries noise of variance v_obs, so x_t0 holds noise of variance abar_t0 v_obs + (1 - abar_t0) instead
      of 1 - abar_t0 (``excess_noise_ratio``). The same holds, less so, for the plain rescaling
      sqrt(abar_t0 / abar_tobs) y that ``tdpm.denoise`` fits (noise abar_t0 v_obs alone, still more than
      1 - abar_t0 for t0 < t_obs). A DIP output removes part of that excess before the re-noising.
    * ``from_noise``: pure-noise sampling, either the full ancestral chain from T or a strided DDIM chain
      with a given number of evaluations (the same NFE budget as a re-noised start).

    ``denoising_sweep`` and ``generation_sweep`` run the notebook's grids and return per-image tables.

Example 2 -- DDPM-guided early stopping of DIP
    ``guided_stages`` builds, from the observation alone, a sequence of targets that are samples of the
    DDPM *forward* chain continued from y: levels s_1 > s_2 > ... > s_n = t_obs, and in x0 units

        target_n = y / sqrt(abar_tobs),   target_j = target_{j+1} + sqrt(v_{s_j} - v_{s_{j+1}}) n_j,

    so target_j = x_0 + noise of variance exactly v_{s_j} (and sqrt(abar_{s_j}) target_j is distributed as
    q(x_{s_j} | x_0)). Stages therefore run from the most to the least corrupted target and end at the
    observation itself. Stage levels must lie *at or above* t_obs: a target less noisy than y cannot be
    made from y by adding noise. ``guided_dip`` fits one DIP through the targets; it leaves stage j when
    the residual variance mean((G(z) - target_j)^2) reaches the stage's known noise variance v_{s_j} (or
    after ``iters_per_stage_max`` iterations). In the final stage that rule is Morozov's discrepancy
    principle (residual variance <= v_obs). ``Discrepancy`` is that rule for a single-stage fit and
    ``ESWMV`` is the windowed-moving-variance rule of Wang et al. (ES-WMV); both are ``dip.fit_dip``
    monitors. ``stopping_study`` runs every rule of notebook 05 on one noise level.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import ddpm, dip, metrics, schedules

# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------


def check_int_list(name, value, *, low=None, high=None, allow_none=True):
    """Validate a list of integers (a notebook parameter); ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name}={value!r} is not allowed; use a non-empty list of integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low) or (high is not None and v > high):
            bounds = f" in {low}..{high}" if high is not None else (f" >= {low}" if low is not None else "")
            raise ValueError(f"{name}={value!r} is not allowed; use a list of integers{bounds}")
    return list(value)


def noise_var(scheduler, t) -> float:
    """Noise variance of level t in x0 units, v_t = (1 - abar_t) / abar_t."""
    ab = schedules.alpha_bar(scheduler, t)
    return float((1 - ab) / ab)


def _device_of(unet) -> torch.device:
    return next(unet.parameters()).device


def _ssim_or_nan(pred, ref):
    if min(pred.shape[-2:]) < 11:  # SSIM's Gaussian window needs 11 px
        return torch.full((len(pred),), float("nan"))
    return metrics.ssim(pred, ref).cpu()


# ----------------------------------------------------------------------------------------------------------
# Example 1: a DIP-initialised DDPM
# ----------------------------------------------------------------------------------------------------------


def observation_x0(y: torch.Tensor, t_obs: int, scheduler) -> torch.Tensor:
    """The observation's x0 estimate y / sqrt(abar_tobs) = x_0 + noise of variance v_obs."""
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    return (y / float(schedules.alpha_bar(scheduler, t_obs).sqrt())).float()


def renoise(x0_estimate: torch.Tensor, t0: int, scheduler, *, generator: torch.Generator) -> torch.Tensor:
    """q(x_t0 | x0_estimate) with fresh noise from ``generator`` (drawn on the CPU)."""
    schedules.check_level("t0", t0, scheduler)
    noise = torch.randn(x0_estimate.shape, generator=generator).to(x0_estimate.device)
    return schedules.q_sample(x0_estimate, t0, noise, scheduler).float()


def excess_noise_ratio(scheduler, t_obs: int, t0: int) -> float:
    """Noise variance of the re-noised observation estimate at t0 over the variance level t0 expects:
    (abar_t0 v_obs + 1 - abar_t0) / (1 - abar_t0). 1 would match the marginal; it is > 1 for t0 < t_obs."""
    schedules.check_level("t0", t0, scheduler, allow_zero=False)
    ab0 = float(schedules.alpha_bar(scheduler, t0))
    return (ab0 * noise_var(scheduler, t_obs) + 1 - ab0) / (1 - ab0)


@torch.no_grad()
def dip_init_ddpm(unet, scheduler, dip_output: torch.Tensor, t0: int, *, generator: torch.Generator,
                  method: str = "ddpm", num_steps: int | None = None, fast: bool | None = None) -> torch.Tensor:
    """Re-noise an x0 estimate (a DIP output) to level ``t0`` and reverse to 0; returns CPU x_0 in [-1, 1].

    The noise is drawn first from ``generator``, then the chain draws its own from the same generator.
    ``method="ddpm"`` takes t0 evaluations; ``"ddim"`` takes ``num_steps`` (default t0). ``t0 = 0``
    returns the estimate itself (clamped): no noise, no evaluations.
    """
    schedules.check_level("t0", t0, scheduler)
    if t0 == 0:
        return dip_output.detach().float().clamp(-1, 1).cpu()
    if method == "ddim" and num_steps is None:
        num_steps = t0
    x = renoise(dip_output.detach().float().to(_device_of(unet)), t0, scheduler, generator=generator)
    x0 = ddpm.reverse_chain(unet, scheduler, x, t0, method=method, num_steps=num_steps, generator=generator, fast=fast)
    return x0.clamp(-1, 1).cpu()


@torch.no_grad()
def from_observation(unet, scheduler, y: torch.Tensor, t_obs: int, *, generator: torch.Generator,
                     fast: bool | None = None) -> torch.Tensor:
    """SDEdit from the observation: y is a sample of q(x_tobs | x_0), so reverse from t_obs (t_obs NFE)."""
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    x0 = ddpm.reverse_chain(unet, scheduler, y.float().to(_device_of(unet)), t_obs, generator=generator, fast=fast)
    return x0.clamp(-1, 1).cpu()


@torch.no_grad()
def from_noise(unet, scheduler, *, n: int, resolution: int, generator: torch.Generator, nfe: int | None = None,
               batch_size: int = 64, fast: bool | None = None) -> torch.Tensor:
    """Pure-noise samples: the full ancestral chain from T (``nfe=None``, T evaluations) or a strided DDIM
    chain from T with ``nfe`` evaluations."""
    if nfe is not None:
        schedules.check_level("nfe", nfe, scheduler, allow_zero=False)
    method = "ddpm" if nfe is None else "ddim"
    return ddpm.sample(unet, scheduler, n=n, resolution=resolution, generator=generator, device=_device_of(unet),
                       method=method, num_steps=nfe, batch_size=batch_size, fast=fast)


def default_t0s(t_obs: int, divisors=(8, 4, 2)) -> list[int]:
    """Re-noising levels t_obs // d for each divisor, at least 1, distinct and increasing."""
    return sorted({max(1, t_obs // d) for d in divisors})


def _dip_label(preset: str, k: int) -> str:
    return f"DIP {preset}, k={k}"


def denoising_sweep(unet, scheduler, clean: torch.Tensor, y: torch.Tensor, t_obs: int, *, ks, t0s, presets,
                    lr: float, seed: int, device, generator: torch.Generator, fast: bool | None = None):
    """Example 1, denoising, one observation level. Returns (per-image DataFrame, dict of outputs).

    For each DIP preset one fit on y / sqrt(abar_tobs) keeps the outputs at every k in ``ks``; each is
    used as is (t0 = 0) and re-noised to every t0 in ``t0s`` and reversed. Comparison starts: the
    observation reversed from t_obs, and the observation estimate re-noised to each t0. ``clean`` is used
    for the metrics only. All presets share one DIP input z; the reverse chains of one t0 run as one batch.
    Seconds are wall clock per image: the DIP fit's time prorated to k iterations and divided over the
    images, plus the batch's reverse-chain time divided over its images.
    """
    ks = sorted(set(ks))
    presets = list(dict.fromkeys(presets))
    n = len(y)
    target = observation_x0(y, t_obs, scheduler)
    z = torch.randn(y.shape, generator=generator)
    fits = {}
    for p in presets:
        fits[p] = dip.fit_dip(target, iterations=max(ks), z=z, preset=p, lr=lr, seed=seed, device=device,
                              keep=ks, record_every=max(ks), fast=fast)
    starts = {}  # label -> (x0 estimate, preset, k, dip seconds per image)
    for p in presets:
        for k in ks:
            starts[_dip_label(p, k)] = (fits[p].outputs[k], p, k, fits[p].seconds * k / max(ks) / n)
    starts["observation y/√ᾱ, re-noised"] = (target, "", 0, 0.0)
    rows, outputs = [], {}
    sigma255 = float(schedules.sigma_at(scheduler, t_obs))

    def add(label, x0, preset, k, t0, nfe, seconds, start):
        outputs[(label, t0)] = x0
        p, s = metrics.psnr(x0, clean).cpu(), _ssim_or_nan(x0, clean)
        for i in range(n):
            rows.append(dict(task="denoise", t_obs=t_obs, sigma255=sigma255, start=start, label=label,
                             dip_preset=preset, k=k, t0=t0, nfe=nfe, dip_iterations=k, image=i,
                             psnr=float(p[i]), ssim=float(s[i]), seconds=seconds))

    for label, (x_hat, p, k, dip_s) in starts.items():  # t0 = 0: the estimate itself, no evaluations
        add(label, x_hat.clamp(-1, 1), p, k, 0, 0, dip_s, "DIP only" if k > 0 else "observation as is")
    labels = list(starts)
    batch = torch.cat([starts[lab][0] for lab in labels])
    for t0 in t0s:
        with metrics.CudaTimer(device) as timer:
            out = dip_init_ddpm(unet, scheduler, batch, t0, generator=generator, fast=fast)
        per_image = timer.seconds / len(batch)
        for j, lab in enumerate(labels):
            x_hat, p, k, dip_s = starts[lab]
            start = "DIP, re-noised" if k > 0 else "observation, re-noised"
            add(lab, out[j * n:(j + 1) * n], p, k, t0, t0, dip_s + per_image, start)
    with metrics.CudaTimer(device) as timer:
        out = from_observation(unet, scheduler, y, t_obs, generator=generator, fast=fast)
    add("observation, reverse from t_obs", out, "", 0, t_obs, t_obs, timer.seconds / n, "observation, reverse from t_obs")
    return pd.DataFrame(rows), outputs


def summarise(df: pd.DataFrame, by: list[str], cols: list[str], digits: int = 2) -> pd.DataFrame:
    """Mean, std and a 'mean ± std' string per group for each column (NaN columns are skipped)."""
    out = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n_images"] = len(g)
        for c in cols:
            vals = g[c].dropna()
            if len(vals):
                m, s = metrics.mean_std(vals.tolist())
                row[f"{c}_mean"], row[f"{c}_std"], row[c] = m, s, f"{m:.{digits}f} ± {s:.{digits}f}"
            else:
                row[f"{c}_mean"], row[f"{c}_std"], row[c] = float("nan"), float("nan"), "n/a"
        out.append(row)
    return pd.DataFrame(out)


def plot_quality_vs_nfe(df: pd.DataFrame):
    """PSNR and SSIM against NFE, one column per observation level, mean ± std over images (seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    levels = sorted(df.t_obs.unique())
    metrics_ = [m for m in ("psnr", "ssim") if df[m].notna().any()]
    fig, axes = plt.subplots(len(metrics_), len(levels), figsize=(5.4 * len(levels), 3.6 * len(metrics_)),
                             squeeze=False)
    for c, t in enumerate(levels):
        d = df[df.t_obs == t]
        for r, m in enumerate(metrics_):
            ax = axes[r][c]
            sns.lineplot(data=d, x="nfe", y=m, hue="label", marker="o", errorbar="sd", err_style="bars", ax=ax,
                         legend=(r == 0 and c == len(levels) - 1))
            ax.set_title(f"t_obs = {t} (σ ≈ {d.sigma255.iloc[0]:.0f}/255)")
            ax.set_xlabel("network evaluations (NFE)")
            ax.set_ylabel(m.upper())
    leg = axes[0][-1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title=None)
    fig.tight_layout()
    return fig


def generation_sweep(unet, scheduler, *, fit_sets: dict, train: torch.Tensor, held: torch.Tensor,
                     reference: torch.Tensor, t0s, dip_iterations: int, preset: str, lr: float, seed: int, device,
                     generator: torch.Generator, full_n: int, batch_size: int = 64, fid: bool = True,
                     fast: bool | None = None):
    """Example 1, generation. A DIP produces an image only by fitting one: each set in ``fit_sets``
    (label -> images) is fitted (one batched fit), re-noised to every t0 (0 = the DIP output itself) and
    reversed. Baselines: pure noise with a strided DDIM chain of t0 evaluations, and the full ancestral
    chain (``full_n`` images). Metrics: SWD against ``reference`` (images no method fitted), FID/KID when
    ``fid`` (status recorded; skipped after the first failure), memorisation against (train, held), and the
    distance of each output to its own DIP target (``d_fit``, RMS on [-1, 1]).

    Returns (per-image DataFrame, per-start summary DataFrame, dict label -> images, the DIP fit).
    """
    labels = list(fit_sets)
    targets = torch.cat([fit_sets[lab] for lab in labels])
    counts = [len(fit_sets[lab]) for lab in labels]
    n_gen = counts[0]
    resolution = targets.shape[-1]
    z = torch.randn(targets.shape, generator=generator)
    fit = dip.fit_dip(targets, iterations=dip_iterations, z=z, preset=preset, lr=lr, seed=seed, device=device,
                      reference=targets, record_every=dip_iterations, fast=fast)
    dip_per_image = fit.seconds / len(targets)
    samples, meta = {}, {}
    for t0 in [0] + sorted(t0s):
        with metrics.CudaTimer(device) as timer:
            out = dip_init_ddpm(unet, scheduler, fit.output, t0, generator=generator, fast=fast)
        per = timer.seconds / len(targets)
        for lab, part, fitted in zip(labels, out.split(counts), targets.split(counts)):
            name = f"DIP fit to {lab}, t0={t0}"
            samples[name] = part
            meta[name] = dict(start=f"DIP fit to {lab}", dip_preset=preset, k=dip_iterations, t0=t0, nfe=t0,
                              dip_iterations=dip_iterations, seconds=dip_per_image + per, fitted=fitted)
    T = scheduler.config.num_train_timesteps
    for nfe in sorted(t0s):
        with metrics.CudaTimer(device) as timer:
            out = from_noise(unet, scheduler, n=n_gen, resolution=resolution, generator=generator, nfe=nfe,
                             batch_size=batch_size, fast=fast)
        name = f"pure noise, DDIM {nfe} steps"
        samples[name] = out
        meta[name] = dict(start="pure noise (DDIM)", dip_preset="", k=0, t0=T, nfe=nfe, dip_iterations=0,
                          seconds=timer.seconds / n_gen, fitted=None)
    with metrics.CudaTimer(device) as timer:
        out = from_noise(unet, scheduler, n=full_n, resolution=resolution, generator=generator,
                         batch_size=batch_size, fast=fast)
    samples[f"pure noise, DDPM {T} steps"] = out
    meta[f"pure noise, DDPM {T} steps"] = dict(start="pure noise (DDPM)", dip_preset="", k=0, t0=T, nfe=T,
                                              dip_iterations=0, seconds=timer.seconds / full_n, fitted=None)
    rows, summary = [], []
    fid_status = None
    for name, x in samples.items():
        m = meta[name]
        mem = metrics.memorisation(x, train, held)
        d_train, idx = metrics.nearest_distances(x, train)
        d_fit = (torch.full((len(x),), float("nan")) if m["fitted"] is None
                 else ((x - m["fitted"]) ** 2).mean(dim=(1, 2, 3)).sqrt())
        base = {k: v for k, v in m.items() if k != "fitted"}
        for i in range(len(x)):
            rows.append(dict(task="generate", label=name, **base, image=i, mem_ratio=float(mem["ratio"][i]),
                             d_train=float(d_train[i]), nearest_train=int(idx[i]), d_fit=float(d_fit[i])))
        s = dict(task="generate", label=name, **base, n_images=len(x),
                 swd=metrics.swd(reference, x, seed=seed)["swd_mean"], mem_ratio_median=mem["ratio_median"],
                 frac_copies=mem["frac_copies"], d_train_mean=mem["d_train_mean"], d_held_mean=mem["d_held_mean"])
        dm, ds = (metrics.mean_std(d_fit) if m["fitted"] is not None else (float("nan"), float("nan")))
        s.update(d_fit_mean=dm, d_fit_std=ds)
        if fid and (fid_status is None or fid_status.startswith("ok")) and len(x) >= 2 and len(reference) >= 2:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's download notice when offline
                r = metrics.fid_kid(reference, x, seed=seed, device=device)
            fid_status = r["status"]
            s.update(fid=r["fid"], kid_mean=r["kid_mean"], kid_std=r["kid_std"])
        else:
            s.update(fid=None, kid_mean=None, kid_std=None)
        s["fid_status"] = fid_status if fid else "not computed"
        summary.append(s)
    return pd.DataFrame(rows), pd.DataFrame(summary), samples, fit


def example1_settings(cfg, scheduler) -> dict:
    """Notebook 04's sizes: the notebook's parameters where given (``cfg.extra``), else the profile's defaults.

    denoise_levels: the paper profile uses the protocol's pair, sigma = 50/255 and t = 600; the cpu and smoke
    profiles use the cheaper pair sigma = 25/255 and 50/255 (600-step chains do not fit their budget).
    dip_ks: dip_iterations x (1/4, 1/2, 1), plus 2 x on the paper profile. gen_t0s: (100, 250, 500, 750)
    on the paper profile, else (25, 100, 200). full_ddpm_n: every generated image on the paper profile,
    else at most 8 (a T-step chain per image). n_generate: min(n_generate, 32), at most half the held-out set
    (the other half is the reference no method fitted).
    """
    x, paper = cfg.extra, cfg.profile == "paper"
    d = cfg.dip_iterations
    levels = [schedules.t_for_sigma(scheduler, 50.0), 600] if paper else \
        [schedules.t_for_sigma(scheduler, 25.0), schedules.t_for_sigma(scheduler, 50.0)]
    n_gen = min(cfg.n_generate, 32)
    return dict(
        denoise_levels=x.get("denoise_levels") or levels,
        dip_ks=x.get("dip_ks") or sorted({max(1, d // 4), max(1, d // 2), d} | ({2 * d} if paper else set())),
        t0_divisors=x.get("t0_divisors") or [8, 4, 2],
        gen_t0s=x.get("gen_t0s") or ([100, 250, 500, 750] if paper else [25, 100, 200]),
        gen_dip_iterations=x.get("gen_dip_iterations") or d,
        n_generate=n_gen,
        full_ddpm_n=x.get("full_ddpm_n") or (n_gen if paper else min(n_gen, 8)),
    )


# ----------------------------------------------------------------------------------------------------------
# Example 2: DDPM-guided early stopping of DIP
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    level: int                 # DDPM level s_j >= t_obs
    target: torch.Tensor       # x0 units: x_0 + noise of variance noise_var
    noise_var: float           # v_{s_j} = (1 - abar) / abar, the known noise variance of the target

    def __iter__(self):  # unpacks as (level, target, noise_var)
        return iter((self.level, self.target, self.noise_var))


def stage_levels(scheduler, t_obs: int, n_stages: int, *, noise_factor: float = 2.0) -> list[int]:
    """n_stages integer levels evenly spaced from s_1 down to s_n = t_obs, where s_1 is the level whose noise
    standard deviation (x0 units) is ``noise_factor`` times the observation's (capped at T)."""
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    dip.check_positive_int("n_stages", n_stages)
    if isinstance(noise_factor, bool) or not isinstance(noise_factor, (int, float)) or not noise_factor >= 1:
        raise ValueError(f"noise_factor={noise_factor!r} is not allowed; use a number >= 1")
    if n_stages == 1:
        return [t_obs]
    T = scheduler.config.num_train_timesteps
    top = min(T, schedules.t_for_sigma(scheduler, float(noise_factor * schedules.sigma_at(scheduler, t_obs))))
    levels = sorted({int(round(v)) for v in np.linspace(top, t_obs, n_stages)}, reverse=True)
    if len(levels) < n_stages:
        raise ValueError(f"n_stages={n_stages} is not allowed here: only {len(levels)} distinct levels lie between "
                         f"t_obs={t_obs} and {top}; use fewer stages or a larger noise_factor")
    return levels


def guided_stages(y: torch.Tensor, t_obs: int, scheduler, *, n_stages: int, generator: torch.Generator,
                  noise_factor: float = 2.0, levels: list[int] | None = None) -> list[Stage]:
    """Stage targets from the observation y at level t_obs, from the most to the least corrupted.

    Levels s_1 > ... > s_n = t_obs (``stage_levels``, or ``levels`` given). The targets are one sample path
    of the DDPM forward chain continued from y, in x0 units: target_n = y / sqrt(abar_tobs) and
    target_j = target_{j+1} + sqrt(v_{s_j} - v_{s_{j+1}}) n_j with fresh standard normal n_j, so target_j
    = x_0 + noise of variance v_{s_j} exactly. ``y`` alone is used; x_0 never is.
    """
    if levels is None:
        levels = stage_levels(scheduler, t_obs, n_stages, noise_factor=noise_factor)
    else:
        levels = [schedules.check_level("levels", int(s), scheduler) for s in levels]
        if levels[-1] != t_obs or any(a <= b for a, b in zip(levels[:-1], levels[1:])):
            raise ValueError(f"levels={levels!r} is not allowed; use strictly decreasing levels ending at t_obs={t_obs}")
    variances = [noise_var(scheduler, s) for s in levels]
    target = observation_x0(y, t_obs, scheduler)
    stages = [Stage(levels[-1], target, variances[-1])]
    for j in range(len(levels) - 2, -1, -1):
        extra = math.sqrt(max(variances[j] - variances[j + 1], 0.0))
        target = target + extra * torch.randn(y.shape, generator=generator)
        stages.append(Stage(levels[j], target, variances[j]))
    return stages[::-1]


@dataclass
class GuidedResult:
    output: torch.Tensor               # B x 3 x H x W at each image's stop (CPU)
    stop_iteration: torch.Tensor       # B, the iteration the final stage ended
    stage_ends: torch.Tensor           # B x n_stages, the iteration each stage ended
    fired: torch.Tensor                # B x n_stages, True where the residual rule (not the cap) ended the stage
    stages: list                       # the Stage list (targets on the CPU)
    history: pd.DataFrame              # image, iteration, stage (index; n_stages after the stop), residual_var, noise_var[, psnr_ref]
    seconds: float = 0.0
    iterations: int = 0                # Adam updates run
    best_iteration: torch.Tensor | None = None   # oracle over the run (evaluation only)
    best_psnr: torch.Tensor | None = None


def guided_dip(y: torch.Tensor, t_obs: int, scheduler, *, n_stages: int, iters_per_stage_max: int,
               preset: str = "dip-cpu", lr: float = 1e-3, seed: int = 0, device="cpu",
               generator: torch.Generator, reference: torch.Tensor | None = None, z: torch.Tensor | None = None,
               noise_factor: float = 2.0, levels: list[int] | None = None, continue_to: int | None = None,
               fast: bool | None = None) -> GuidedResult:
    """Fit ONE DIP per image through the stage targets of ``guided_stages`` in order.

    Stage j ends at the first iteration whose output has residual variance mean((G(z) - target_j)^2)
    <= v_{s_j} (the stage's known noise variance), or after ``iters_per_stage_max`` iterations in the
    stage; the end of the last stage (v = v_obs: the discrepancy principle) is the stop. Each image moves
    through the stages on its own. The output recorded is G(z) at the stop. Iteration k's output is the
    one after k updates; the update made at the iteration where a stage ends is still towards that stage's
    target. The run ends when every image has stopped, or, with ``continue_to``, after that many updates
    (images that stopped keep fitting the observation: evaluation curves only; their stop is unchanged).
    ``reference`` (clean images) is used only for the recorded PSNR, never by the rule.
    The stage noise is drawn from ``generator`` first, then z (when not given).
    """
    dip.check_positive_int("iters_per_stage_max", iters_per_stage_max)
    stages = guided_stages(y, t_obs, scheduler, n_stages=n_stages, generator=generator, noise_factor=noise_factor,
                           levels=levels)
    S, B = len(stages), len(y)
    if z is None:
        z = torch.randn(y.shape, generator=generator)
    cap = S * iters_per_stage_max
    total = cap if continue_to is None else dip.check_positive_int("continue_to", continue_to)
    fitter = dip.DIPFitter(z, preset=preset, lr=lr, seed=seed, device=device, fast=fast)
    dev = fitter.device
    targets = torch.stack([s.target for s in stages]).to(dev)          # S x B x 3 x H x W
    v = torch.tensor([s.noise_var for s in stages], dtype=torch.float64)
    ref = reference.to(dev) if reference is not None else None
    stage = torch.zeros(B, dtype=torch.long)
    stage_start = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    stop_it = torch.full((B,), -1, dtype=torch.long)
    stage_ends = torch.full((B, S), -1, dtype=torch.long)
    fired = torch.zeros((B, S), dtype=torch.bool)
    out_stop = torch.zeros(y.shape)
    best_psnr = torch.full((B,), -float("inf"))
    best_it = torch.zeros(B, dtype=torch.long)
    cols = {c: [] for c in ("image", "iteration", "stage", "residual_var", "noise_var")}
    if ref is not None:
        cols["psnr_ref"] = []
    idx = torch.arange(B)
    with metrics.CudaTimer(dev) as timer:
        for k in range(total + 1):
            cur = targets[stage.clamp(max=S - 1).to(dev), idx.to(dev)]
            if k < total:
                out, loss = fitter.step(cur)
            else:
                out = fitter.output()
                loss = ((out - cur) ** 2).mean(dim=(1, 2, 3))
            loss = loss.double().cpu()
            cols["image"].append(idx.clone())
            cols["iteration"].append(torch.full((B,), k))
            cols["stage"].append(torch.where(done, torch.full_like(stage, S), stage))
            cols["residual_var"].append(loss)
            cols["noise_var"].append(v[stage.clamp(max=S - 1)])
            if ref is not None:
                p = metrics.psnr(out, ref).cpu()
                cols["psnr_ref"].append(p)
                better = p > best_psnr
                best_psnr = torch.where(better, p, best_psnr)
                best_it = torch.where(better, torch.full_like(best_it, k), best_it)
            active = ~done
            hit = active & (loss <= v[stage.clamp(max=S - 1)])
            end = hit | (active & (k - stage_start >= iters_per_stage_max)) | (active & (k == total))
            if end.any():
                for i in torch.nonzero(end).flatten().tolist():
                    j = int(stage[i])
                    stage_ends[i, j], fired[i, j] = k, bool(hit[i])
                    if j == S - 1 or k == total:
                        done[i], stop_it[i] = True, k
                        out_stop[i] = out[i].detach().cpu()
                        stage_ends[i, j + 1:] = k
                    else:
                        stage[i], stage_start[i] = j + 1, k
            if done.all() and continue_to is None:
                break
    hist = pd.DataFrame({c: torch.cat(vals).numpy() for c, vals in cols.items()})
    return GuidedResult(output=out_stop, stop_iteration=stop_it, stage_ends=stage_ends, fired=fired,
                        stages=[Stage(s.level, s.target.cpu(), s.noise_var) for s in stages], history=hist,
                        seconds=timer.seconds, iterations=fitter.iteration,
                        best_iteration=best_it if ref is not None else None,
                        best_psnr=best_psnr if ref is not None else None)


class Discrepancy:
    """Morozov's discrepancy principle as a ``dip.fit_dip`` monitor: image i stops at the first iteration
    whose residual variance (the fit's per-image MSE loss) is <= ``noise_var`` (a number or one per image,
    in the target's units). An image for which it never fires keeps the last iteration seen (``fired`` False)."""

    def __init__(self, noise_var):
        self.noise_var = torch.as_tensor(noise_var, dtype=torch.float64)
        self.fired = None
        self._stop = None
        self._out = None
        self._last_k, self._last_out = -1, None

    def update(self, k, out, loss):
        loss = loss.detach().double().cpu()
        if self.fired is None:
            B = len(loss)
            self.fired = torch.zeros(B, dtype=torch.bool)
            self._stop = torch.full((B,), -1, dtype=torch.long)
            self._out = torch.zeros(out.shape)
        hit = ~self.fired & (loss <= self.noise_var)
        if hit.any():
            self._stop[hit] = k
            self._out[hit] = out.detach().float().cpu()[hit]
            self.fired |= hit
        self._last_k, self._last_out = k, out

    @property
    def stop_iteration(self) -> torch.Tensor:
        return torch.where(self.fired, self._stop, torch.full_like(self._stop, self._last_k))

    @property
    def output(self) -> torch.Tensor:
        last = self._last_out.detach().float().cpu()
        return torch.where(self.fired[:, None, None, None], self._out, last)


class ESWMV:
    """ES-WMV (Wang et al., "Early Stopping for Deep Image Prior", TMLR 2023): windowed moving variance.

    After each iteration k the variance of the last ``window`` outputs x_{k-W+1..k} is
    VAR_k = mean over pixels of the per-pixel variance across the window (the paper's
    (1/W) sum_w ||x_w - mean||_F^2 divided by the pixel count: the same argmin). Image i's detected
    iteration is the k with the smallest VAR_k seen so far, and its output is x_k there; the rule stops
    image i once VAR has not reached a new minimum for ``patience`` iterations, freezing the detection.
    Defaults W = 100, P = 1000 are the paper's. A fit shorter than the patience never stops: the detection
    is then the argmin over every full window seen. With no full window at all, the last iteration is
    returned (``valid`` False). Per-image throughout, so it serves batched fits; ``fit_dip`` still runs its
    full length (the monitor records where the rule stops).
    """

    def __init__(self, *, window: int = 100, patience: int = 1000):
        self.window = dip.check_positive_int("window", window)
        self.patience = dip.check_positive_int("patience", patience)
        self._buf = deque()
        self._s1 = self._s2 = None
        self.variances: list[tuple[int, torch.Tensor]] = []
        self.best_var = self.best_k = self.best_out = self.stopped = self.stop_k = None
        self._last_k, self._last_out = -1, None

    def update(self, k, out, loss=None):
        x = out.detach()
        xd = x.double()
        if self._s1 is None:
            B = len(x)
            self._s1, self._s2 = torch.zeros_like(xd), torch.zeros_like(xd)
            self.best_var = torch.full((B,), float("inf"), dtype=torch.float64)
            self.best_k = torch.full((B,), -1, dtype=torch.long)
            self.best_out = torch.zeros(x.shape)
            self.stopped = torch.zeros(B, dtype=torch.bool)
            self.stop_k = torch.full((B,), -1, dtype=torch.long)
        self._buf.append(x)
        self._s1 += xd
        self._s2 += xd * xd
        if len(self._buf) > self.window:
            old = self._buf.popleft().double()
            self._s1 -= old
            self._s2 -= old * old
        self._last_k, self._last_out = k, x
        if len(self._buf) < self.window:
            return
        mean = self._s1 / self.window
        var = (self._s2 / self.window - mean * mean).clamp_min(0).mean(dim=(1, 2, 3)).cpu()
        self.variances.append((k, var.float()))
        improved = ~self.stopped & (var < self.best_var)
        if improved.any():
            self.best_var = torch.where(improved, var, self.best_var)
            self.best_k[improved] = k
            self.best_out[improved] = x.float().cpu()[improved]
        newly = ~self.stopped & (self.best_k >= 0) & (k - self.best_k >= self.patience)
        self.stopped |= newly
        self.stop_k[newly] = k

    @property
    def valid(self) -> torch.Tensor:
        return self.best_k >= 0

    @property
    def detected(self) -> torch.Tensor:
        """Per image: the iteration of the minimal windowed variance (the last seen when no full window)."""
        return torch.where(self.valid, self.best_k, torch.full_like(self.best_k, self._last_k))

    @property
    def output(self) -> torch.Tensor:
        last = self._last_out.float().cpu()
        return torch.where(self.valid[:, None, None, None], self.best_out, last)

    def variance_frame(self) -> pd.DataFrame:
        """Long table (image, iteration, wmv) of the windowed variances seen."""
        if not self.variances:
            return pd.DataFrame(columns=["image", "iteration", "wmv"])
        ks = [k for k, _ in self.variances]
        v = torch.stack([v for _, v in self.variances])  # K x B
        B = v.shape[1]
        return pd.DataFrame(dict(image=np.tile(np.arange(B), len(ks)), iteration=np.repeat(ks, B),
                                 wmv=v.flatten().numpy()))


def stopping_study(clean: torch.Tensor, y: torch.Tensor, t_obs: int, scheduler, *, fixed, iterations: int,
                   n_stages: int, iters_per_stage_max: int, preset: str, lr: float, seed: int, device,
                   generator: torch.Generator, window: int = 100, patience: int = 1000, noise_factor: float = 2.0,
                   fast: bool | None = None):
    """Example 2, one noise level: every stopping rule of notebook 05 on the same images.

    One plain DIP fit per image on y / sqrt(abar_tobs) for ``iterations`` (>= max(fixed)) gives the fixed
    counts, ES-WMV, the single-stage discrepancy rule and the oracle (best PSNR against ``clean``: an upper
    bound no rule can know); ``guided_dip`` (same z and initial weights) gives the guided rule. Returns
    (per-image rows DataFrame, plain-fit history DataFrame, GuidedResult, ESWMV monitor).
    ``oracle_gap`` is |stop - oracle iteration of the plain fit|; for the guided rule, whose trajectory
    differs, it is measured against the same plain-fit oracle.
    """
    fixed = sorted(set(fixed))
    if iterations < max(fixed):
        raise ValueError(f"iterations={iterations} is not allowed; use at least max(fixed)={max(fixed)}")
    target = observation_x0(y, t_obs, scheduler)
    v_obs = noise_var(scheduler, t_obs)
    z = torch.randn(y.shape, generator=generator)
    wmv = ESWMV(window=window, patience=patience)
    disc = Discrepancy(v_obs)
    fit = dip.fit_dip(target, iterations=iterations, z=z, preset=preset, lr=lr, seed=seed, device=device,
                      reference=clean, keep=fixed, monitors=[wmv, disc], record_every=1, fast=fast)
    guided = guided_dip(y, t_obs, scheduler, n_stages=n_stages, iters_per_stage_max=iters_per_stage_max,
                        preset=preset, lr=lr, seed=seed, device=device, generator=generator, reference=clean, z=z,
                        noise_factor=noise_factor, fast=fast)
    oracle = fit.best_iteration
    sigma255 = float(schedules.sigma_at(scheduler, t_obs))
    rules = {f"fixed {k}": (fit.outputs[k], torch.full_like(oracle, k), None) for k in fixed}
    rules["ES-WMV"] = (wmv.output, wmv.detected, wmv.valid)
    rules["discrepancy (single stage)"] = (disc.output, disc.stop_iteration, disc.fired)
    rules[f"guided ({len(guided.stages)} stages)"] = (guided.output, guided.stop_iteration, guided.fired[:, -1])
    rules["oracle (best PSNR)"] = (fit.best_output, oracle, None)
    rows = []
    for rule, (out, stop, flag) in rules.items():
        p = metrics.psnr(out, clean).cpu()
        s = _ssim_or_nan(out, clean)
        for i in range(len(y)):
            rows.append(dict(t_obs=t_obs, sigma255=sigma255, rule=rule, image=i, stop=int(stop[i]),
                             oracle=int(oracle[i]), oracle_gap=abs(int(stop[i]) - int(oracle[i])),
                             psnr=float(p[i]), ssim=float(s[i]),
                             rule_fired=(None if flag is None else bool(flag[i]))))
    hist = fit.history.assign(t_obs=t_obs, sigma255=sigma255)
    guided.history = guided.history.assign(t_obs=t_obs, sigma255=sigma255)
    return pd.DataFrame(rows), hist, guided, wmv


def example2_settings(cfg) -> dict:
    """Notebook 05's sizes: the notebook's parameters where given (``cfg.extra``), else the profile's defaults.

    n_images: n_denoise on the paper profile (>= 20), else min(2 n_denoise, 16). fixed: 100, 500 and
    dip_iterations_long (smoke: dip_iterations and dip_iterations_long, to stay fast); the plain fit runs
    max(fixed) iterations. iters_per_stage_max: that length / n_stages,
    so the guided fit never runs longer than the plain one.
    """
    x = cfg.extra
    n = x.get("n_images") or (cfg.n_denoise if cfg.profile == "paper" else min(2 * cfg.n_denoise, 16))
    protocol = [100, 500, cfg.dip_iterations_long] if cfg.profile != "smoke" else [cfg.dip_iterations, cfg.dip_iterations_long]
    fixed = sorted(set(x.get("fixed_iterations") or protocol))
    n_stages = x.get("n_stages") or 4
    return dict(n_images=n, sigmas=x.get("sigmas") or [25, 50], fixed=fixed, iterations=max(fixed), n_stages=n_stages,
                iters_per_stage_max=x.get("iters_per_stage_max") or max(1, max(fixed) // n_stages),
                noise_factor=x.get("stage_noise_factor") or 2.0, window=x.get("eswmv_window") or 100,
                patience=x.get("eswmv_patience") or 1000)


def plot_stopping_curves(hist: pd.DataFrame, guided_hist: pd.DataFrame, rows: pd.DataFrame, image: int):
    """PSNR against iteration for one image: the plain fit and the guided fit, with each rule's stop marked."""
    import matplotlib.pyplot as plt

    levels = sorted(rows.t_obs.unique())
    fig, axes = plt.subplots(1, len(levels), figsize=(6.0 * len(levels), 3.8), squeeze=False)
    markers = dict(zip(sorted(rows.rule.unique()), "os^vDP*Xh<>"))
    for ax, t in zip(axes[0], levels):
        h = hist[(hist.t_obs == t) & (hist.image == image)]
        g = guided_hist[(guided_hist.t_obs == t) & (guided_hist.image == image)]
        ax.plot(h.iteration, h.psnr_ref, color="0.35", lw=1.2, label="plain DIP on y/√ᾱ")
        ax.plot(g.iteration, g.psnr_ref, color="tab:orange", lw=1.2, label="guided DIP (staged targets)")
        r = rows[(rows.t_obs == t) & (rows.image == image)]
        for _, row in r.iterrows():
            ax.scatter([row.stop], [row.psnr], marker=markers[row.rule], s=55, zorder=3, label=row.rule)
        ax.set_xlabel("DIP iteration")
        ax.set_ylabel("PSNR vs clean (dB)")
        ax.set_title(f"image {image}, t_obs = {t} (σ ≈ {r.sigma255.iloc[0]:.0f}/255)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig
