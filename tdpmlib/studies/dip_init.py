"""Example 1 of the report: a DIP-initialised DDPM (notebook 04).

Levels follow ``tdpmlib.methods.schedules`` (level t in 0..T, ``abar_0 = 1``); images are on the [-1, 1] scale.
"x0 units" means an image written as ``x_0 + noise``: an observation ``y`` at level t is
``y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, so ``y / sqrt(abar_t) = x_0 + sqrt(v_t) eps`` with the
noise variance ``v_t = (1 - abar_t) / abar_t`` in x0 units (``schedules.noise_var``).

The method (SDEdit, Meng et al. 2022; Come-Closer-Diffuse-Faster, Chung et al. 2022)
    A DIP output is an estimate of x_0. ``dip_init_ddpm`` re-noises it to a level t0 with *fresh* noise,
    ``x_t0 = sqrt(abar_t0) x_hat + sqrt(1 - abar_t0) n``, and runs the reverse chain from t0 to 0
    (t0 network evaluations with the ancestral sampler). The better the estimate, the smaller the t0
    that suffices (CCDF's argument).

Comparison starts
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

The notebook's runs
    ``example1_settings`` gives the sizes per profile; ``denoising_sweep`` and ``generation_sweep`` run the
    grids and return per-image tables; ``plot_quality_vs_nfe`` draws the denoising one; the verdict on the
    generation sweep, ``generation_trend``, lives in ``tdpmlib.studies.dip_init_trend``.
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import torch

from ..evaluation import metrics, perceptual, sample_metrics
from ..methods import ddpm, dip, schedules
from .dip_init_trend import generation_trend  # noqa: F401  (notebook 04 and the tests read it as example1.*)

# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------


def check_int_list(name, value, *, low=None, high=None, allow_none=True):
    """Validate a list of integers (a notebook parameter of 04 and 05); ``None`` passes when ``allow_none``.
    (A parameter checker: its natural home is ``config``, next to ``config.check_int``.)"""
    if value is None and allow_none:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name}={value!r} is not allowed; use a non-empty list of integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low) or (high is not None and v > high):
            bounds = f" in {low}..{high}" if high is not None else (f" >= {low}" if low is not None else "")
            raise ValueError(f"{name}={value!r} is not allowed; use a list of integers{bounds}")
    return list(value)


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


def default_t0s(t_obs: int, divisors=(8, 4, 2)) -> list[int]:
    """Re-noising levels t_obs // d for each divisor, at least 1, distinct and increasing."""
    return sorted({max(1, t_obs // d) for d in divisors})


# ----------------------------------------------------------------------------------------------------------
# The method and its comparison starts
# ----------------------------------------------------------------------------------------------------------


def _device_of(unet) -> torch.device:
    return next(unet.parameters()).device


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
    return (ab0 * schedules.noise_var(scheduler, t_obs) + 1 - ab0) / (1 - ab0)


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


# ----------------------------------------------------------------------------------------------------------
# Denoising
# ----------------------------------------------------------------------------------------------------------


def _dip_label(preset: str, k: int) -> str:
    return f"DIP {preset}, k={k}"


def denoising_sweep(unet, scheduler, clean: torch.Tensor, y: torch.Tensor, t_obs: int, *, ks, t0s, presets,
                    lr: float, seed: int, device, generator: torch.Generator, fast: bool | None = None):
    """Example 1, denoising, one observation level. Returns (per-image DataFrame, dict of outputs).

    For each DIP preset one fit on y / sqrt(abar_tobs) keeps the outputs at every k in ``ks``; each is
    used as is (t0 = 0) and re-noised to every t0 in ``t0s`` and reversed. Comparison starts: the
    observation reversed from t_obs, and the observation estimate re-noised to each t0. ``clean`` is used
    for the metrics only. All presets share one DIP input z; the reverse chains of one t0 run as one batch.
    A row's cost is its network evaluations (``nfe``) and DIP iterations; seconds come from chapter 08's timing
    benchmark (``tdpmlib.studies.timing``), never from a fraction of this fit.
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
    starts = {}  # label -> (x0 estimate, preset, k)
    for p in presets:
        for k in ks:
            starts[_dip_label(p, k)] = (fits[p].outputs[k], p, k)
    starts["observation y/√ᾱ, re-noised"] = (target, "", 0)
    rows, outputs = [], {}
    sigma255 = float(schedules.sigma_at(scheduler, t_obs))

    def add(label, x0, preset, k, t0, nfe, start):
        outputs[(label, t0)] = x0
        p, s = metrics.psnr(x0, clean).cpu(), metrics.ssim_or_nan(x0, clean)
        lp = perceptual.lpips_or_nan(x0, clean)
        for i in range(n):
            rows.append(dict(task="denoise", t_obs=t_obs, sigma255=sigma255, start=start, label=label,
                             dip_preset=preset, k=k, t0=t0, nfe=nfe, dip_iterations=k, image=i,
                             psnr=float(p[i]), ssim=float(s[i]), lpips=float(lp[i])))

    for label, (x_hat, p, k) in starts.items():  # t0 = 0: the estimate itself, no evaluations
        add(label, x_hat.clamp(-1, 1), p, k, 0, 0, "DIP only" if k > 0 else "observation as is")
    labels = list(starts)
    batch = torch.cat([starts[lab][0] for lab in labels])
    for t0 in t0s:
        out = dip_init_ddpm(unet, scheduler, batch, t0, generator=generator, fast=fast)
        for j, lab in enumerate(labels):
            x_hat, p, k = starts[lab]
            start = "DIP, re-noised" if k > 0 else "observation, re-noised"
            add(lab, out[j * n:(j + 1) * n], p, k, t0, t0, start)
    out = from_observation(unet, scheduler, y, t_obs, generator=generator, fast=fast)
    add("observation, reverse from t_obs", out, "", 0, t_obs, t_obs, "observation, reverse from t_obs")
    return pd.DataFrame(rows), outputs


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


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------


def generation_sweep(unet, scheduler, *, fit_sets: dict, train: torch.Tensor, held: torch.Tensor,
                     reference: torch.Tensor, t0s, dip_iterations: int, preset: str, lr: float, seed: int, device,
                     generator: torch.Generator, full_n: int, batch_size: int = 64, fid: bool = True,
                     fast: bool | None = None):
    """Example 1, generation. A DIP produces an image only by fitting one: each set in ``fit_sets``
    (label -> images) is fitted (one batched fit), re-noised to every t0 (0 = the DIP output itself) and
    reversed. Baselines: pure noise with a strided DDIM chain of t0 evaluations, and the full ancestral
    chain (``full_n`` images). Metrics: SWD against ``reference`` (images no method fitted), FID/KID when
    ``fid`` (status recorded; skipped after the first failure), memorisation against (train, held), and the
    distance of each output to its own DIP target (``d_fit``, RMS on [-1, 1]). Costs are network evaluations
    (``nfe``) and DIP iterations per image; seconds come from chapter 08's timing benchmark.

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
    samples, meta = {}, {}
    for t0 in [0] + sorted(t0s):
        out = dip_init_ddpm(unet, scheduler, fit.output, t0, generator=generator, fast=fast)
        for lab, part, fitted in zip(labels, out.split(counts), targets.split(counts)):
            name = f"DIP fit to {lab}, t0={t0}"
            samples[name] = part
            meta[name] = dict(start=f"DIP fit to {lab}", dip_preset=preset, k=dip_iterations, t0=t0, nfe=t0,
                              dip_iterations=dip_iterations, fitted=fitted)
    T = scheduler.config.num_train_timesteps
    for nfe in sorted(t0s):
        out = from_noise(unet, scheduler, n=n_gen, resolution=resolution, generator=generator, nfe=nfe,
                         batch_size=batch_size, fast=fast)
        name = f"pure noise, DDIM {nfe} steps"
        samples[name] = out
        meta[name] = dict(start="pure noise (DDIM)", dip_preset="", k=0, t0=T, nfe=nfe, dip_iterations=0, fitted=None)
    out = from_noise(unet, scheduler, n=full_n, resolution=resolution, generator=generator, batch_size=batch_size,
                     fast=fast)
    samples[f"pure noise, DDPM {T} steps"] = out
    meta[f"pure noise, DDPM {T} steps"] = dict(start="pure noise (DDPM)", dip_preset="", k=0, t0=T, nfe=T,
                                              dip_iterations=0, fitted=None)
    rows, summary = [], []
    fid_status = None
    swd_cache: dict = {}  # the reference side of every SWD below, sorted once (sample_metrics.swd)
    for name, x in samples.items():
        m = meta[name]
        mem = sample_metrics.memorisation(x, train, held)
        d_train, idx = sample_metrics.nearest_distances(x, train)
        d_fit = (torch.full((len(x),), float("nan")) if m["fitted"] is None
                 else ((x - m["fitted"]) ** 2).mean(dim=(1, 2, 3)).sqrt())
        base = {k: v for k, v in m.items() if k != "fitted"}
        for i in range(len(x)):
            rows.append(dict(task="generate", label=name, **base, image=i, mem_ratio=float(mem["ratio"][i]),
                             d_train=float(d_train[i]), nearest_train=int(idx[i]), d_fit=float(d_fit[i])))
        s = dict(task="generate", label=name, **base, n_images=len(x),
                 swd=sample_metrics.swd(reference, x, seed=seed, real_cache=swd_cache)["swd_mean"], mem_ratio_median=mem["ratio_median"],
                 frac_copies=mem["frac_copies"], d_train_mean=mem["d_train_mean"], d_held_mean=mem["d_held_mean"])
        dm, ds = (metrics.mean_std(d_fit) if m["fitted"] is not None else (float("nan"), float("nan")))
        s.update(d_fit_mean=dm, d_fit_std=ds)
        if fid and (fid_status is None or fid_status.startswith("ok")) and len(x) >= 2 and len(reference) >= 2:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's download notice when offline
                r = sample_metrics.fid_kid(reference, x, seed=seed, device=device)
            fid_status = r["status"]
            s.update(fid=r["fid"], kid_mean=r["kid_mean"], kid_std=r["kid_std"])
        else:
            s.update(fid=None, kid_mean=None, kid_std=None)
        s["fid_status"] = fid_status if fid else "not computed"
        summary.append(s)
    return pd.DataFrame(rows), pd.DataFrame(summary), samples, fit
