"""Noise schedules, the forward process q(x_t | x_0), the reverse steps, and t(sigma).

Time convention used throughout tdpmlib (the DDPM paper's, Ho et al. 2020): a *level* t runs over
0..T, x_0 is the clean image and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with abar_0 = 1.
Reversing from level t to 0 takes exactly t network evaluations. diffusers indexes its arrays and
timesteps from 0, so level t is diffusers timestep t - 1 (``alphas_cumprod[t - 1]``).

Images live in [-1, 1]; a pixel noise sigma on the 0..255 scale is 2 * sigma / 255 on that scale.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, DDPMScheduler

SCHEDULES = {
    # Ho et al. 2020, Sec. 4: beta linear from 1e-4 to 0.02 over T = 1000.
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    # Nichol & Dhariwal 2021, Eq. 17 (diffusers' "squaredcos_cap_v2", beta capped at 0.999).
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not allowed; use one of {sorted(SCHEDULES)}")
    return schedule


def make_scheduler(schedule: str = "linear", *, num_train_timesteps: int = 1000, clip_sample: bool = True) -> DDPMScheduler:
    """The DDPM scheduler for a named schedule (fixed_small variance, epsilon prediction).

    ``clip_sample`` clips the predicted x_0 to [-1, 1] at every step, as Ho et al.'s sampler does.
    """
    check_schedule(schedule)
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} is not allowed; use an integer >= 2")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, clip_sample=clip_sample, **SCHEDULES[schedule])


def make_ddim_scheduler(scheduler: DDPMScheduler) -> DDIMScheduler:
    """The DDIM scheduler (Song et al. 2021) with the same betas as ``scheduler``."""
    return DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True)


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    """abar at level t (0..T), with abar_0 = 1. Accepts an int or an integer tensor; returns float64."""
    # Rebuilt on the CPU from the betas, exactly as diffusers builds ``alphas_cumprod`` (cumprod of 1 - beta in
    # float32): its ``add_noise`` moves ``alphas_cumprod`` to the images' device, and that copy must not
    # meet a CPU index or a CPU table here (the CUDA crash after the first training step).
    ac = torch.cumprod(1.0 - scheduler.betas.detach().cpu(), dim=0).to(torch.float64)
    ac = torch.cat([torch.ones(1, dtype=torch.float64), ac])
    t = torch.as_tensor(t).cpu()
    if t.min() < 0 or t.max() > len(ac) - 1:
        raise ValueError(f"t={t.tolist()!r} is out of range; allowed levels are 0..{len(ac) - 1}")
    return ac[t.long()]


def check_level(name: str, t, scheduler, *, allow_zero: bool = True) -> int:
    """Validate an integer level 0..T (or 1..T) and return it."""
    T = scheduler.config.num_train_timesteps
    low = 0 if allow_zero else 1
    if isinstance(t, bool) or not isinstance(t, int) or not low <= t <= T:
        raise ValueError(f"{name}={t!r} is not allowed; use an integer in {low}..{T}")
    return t


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, scheduler) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) at level(s) t (Ho et al. 2020, Eq. 4)."""
    ab = alpha_bar(scheduler, t)
    return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * noise


def posterior_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor, scheduler, *,
                   clip: bool = True) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} written from the formula (Ho et al. 2020, Algorithm 2):

        x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - abar_t) * eps) + sigma_t * z,
        sigma_t^2 = beta_t * (1 - abar_{t-1}) / (1 - abar_t)   (the posterior variance, "fixed_small").

    The reproduced report prints 1/sqrt(abar_t) and beta_t * z instead; both are wrong. The sampler uses
    ``DDPMScheduler.step``; this function exists to state the formula and is tested equal to it.

    ``clip`` (as in ``ddim_step`` and Ho et al.'s sampler; diffusers' ``clip_sample``, the default of
    ``make_scheduler``) clips the x_0 estimate ``predict_x0`` to [-1, 1] and takes the posterior mean at it,

        x_{t-1} = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * clip(x0_hat) + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) * x_t
                  + sigma_t * z,

    which equals the formula above wherever the clip does not act. ``clip=False`` is the formula as printed.
    """
    ab_t, ab_prev = alpha_bar(scheduler, t), alpha_bar(scheduler, t - 1)
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    sigma_t = (beta_t * (1 - ab_prev) / (1 - ab_t)).sqrt() if t > 1 else torch.zeros((), dtype=torch.float64)
    if clip:
        x0 = predict_x0(x_t, eps, t, scheduler).clamp(-1, 1)
        mean = float(ab_prev.sqrt() * beta_t / (1 - ab_t)) * x0 + float(alpha_t.sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t
    else:
        mean = (x_t - float(beta_t / (1 - ab_t).sqrt()) * eps) / float(alpha_t.sqrt())
    return mean + float(sigma_t) * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, t, scheduler) -> torch.Tensor:
    """Tweedie / posterior-mean estimate of x_0 from x_t and the predicted noise (Ho et al. 2020, Eq. 15)."""
    ab = alpha_bar(scheduler, t)
    return (x_t - _bcast((1 - ab).sqrt(), x_t) * eps) / _bcast(ab.sqrt(), x_t)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, scheduler, *, clip: bool = True,
              clipped_eps: bool = True) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0) from level t to any lower level t_prev (Song et al. 2021, Eq. 12).

    Written here because diffusers' DDIMScheduler only steps on its own evenly spaced grid; tested equal
    to ``DDIMScheduler.step`` on that grid. ``clip`` clips the x_0 estimate. With ``clipped_eps`` (default)
    the noise is then re-derived from the clipped estimate, eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t),
    so that x0 and eps describe the same x_t (GLIDE's choice; diffusers' ``use_clipped_model_output=True``).
    ``clipped_eps=False`` is diffusers' default, which pairs the clipped x0 with the network's raw eps: the
    step then leaves the DDIM path whenever clipping bites, and more steps add more of that error (measured
    in chapter 01: its DDIM got worse from 50 to 100 steps).
    """
    x0 = predict_x0(x_t, eps, t, scheduler)
    if clip:
        x0 = x0.clamp(-1, 1)
        if clipped_eps:
            ab = alpha_bar(scheduler, t)
            eps = (x_t - float(ab.sqrt()) * x0) / float((1 - ab).sqrt())
    ab_prev = alpha_bar(scheduler, t_prev)
    return float(ab_prev.sqrt()) * x0 + float((1 - ab_prev).sqrt()) * eps


def sigma_at(scheduler, t) -> torch.Tensor:
    """Equivalent pixel noise of level t on the 0..255 scale: y / sqrt(abar_t) = x_0 + s_t * eps with
    s_t = sqrt((1 - abar_t) / abar_t) on the [-1, 1] scale, i.e. 255 * s_t / 2 on the 0..255 scale."""
    ab = alpha_bar(scheduler, t)
    return 127.5 * ((1 - ab) / ab).sqrt()


def noise_var(scheduler, t) -> float:
    """Noise variance of level t in x0 units: y / sqrt(abar_t) = x_0 + noise of variance v_t = (1 - abar_t) / abar_t."""
    ab = alpha_bar(scheduler, t)
    return float((1 - ab) / ab)


def t_for_sigma(scheduler, sigma255: float) -> int:
    """The level t whose equivalent pixel noise is closest to ``sigma255`` (0..255 scale)."""
    if not isinstance(sigma255, (int, float)) or not math.isfinite(sigma255) or sigma255 <= 0:
        raise ValueError(f"sigma={sigma255!r} is not allowed; use a positive number on the 0..255 scale")
    T = scheduler.config.num_train_timesteps
    sig = sigma_at(scheduler, torch.arange(1, T + 1))
    # sigma grows monotonically with t, so compare in log space to pick the nearest level.
    return int(torch.argmin((sig.log() - math.log(sigma255)).abs())) + 1
