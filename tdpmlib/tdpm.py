"""TDPM-DIP (Algorithm 3): a DIP network as the implicit generator at TDPM's truncation level.

TDPM (Zheng et al. 2023) stops the forward chain at a level T_trunc < T and replaces the missing part of
the reverse chain with an implicit generator that produces x_{T_trunc} directly; the DDPM then reverses
T_trunc steps. The reproduced report uses a Deep Image Prior as that generator:

1. target  x_Ttrunc = sqrt(abar) x_0 + sqrt(1 - abar) z          (abar = abar_{T_trunc}; z ~ N(0, I))
2. fit     G_psi(z) to x_Ttrunc by Adam on MSE                    (the same z is the DIP's input)
3. reverse x_hat_Ttrunc = G_psi(z) from T_trunc to 0 with the DDPM posterior step:
           x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 - abar_t) eps) + sigma_t z_t

(the report prints 1/sqrt(abar_t) and beta_t z_t in step 3). With T_trunc = 0 no reverse step runs and the
result is the DIP output itself. Note what step 1 needs: a clean x_0. Used for "generation", the method
therefore fits, and reproduces, the images it is given; ``denoise`` is the variant that sees only an
observation y at level t_obs and fits the DIP to y rescaled to level T_trunc.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ddpm, dip, metrics, schedules


def check_t_trunc(t_trunc, scheduler) -> int:
    """T_trunc must truncate: an integer level in 0..T-1 (T_trunc = T would be the full chain)."""
    T = scheduler.config.num_train_timesteps
    if isinstance(t_trunc, bool) or not isinstance(t_trunc, int) or not 0 <= t_trunc < T:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed; use an integer in 0..{T - 1} (T_trunc < T = {T})")
    return t_trunc


@dataclass
class TDPMResult:
    x0: torch.Tensor              # final images, CPU, [-1, 1]
    dip_output: torch.Tensor      # x_hat at level T_trunc (before the reverse chain)
    dip: dip.DIPResult
    t_trunc: int
    network_evaluations: int      # DDPM network evaluations per image
    dip_iterations: int           # DIP optimiser iterations per image
    seconds: float                # wall clock of the whole call: DIP fit + reverse chain


def _run(unet, scheduler, target, z, *, t_trunc, dip_iterations, generator, device, reference, dip_kwargs, fast):
    check_t_trunc(t_trunc, scheduler)
    dip.check_positive_int("dip_iterations", dip_iterations, allow_zero=True)
    with metrics.CudaTimer(device) as timer:
        fit = dip.fit_dip(target, iterations=dip_iterations, z=z, device=device, reference=reference,
                          fast=fast, **dip_kwargs)
        x_hat = fit.output
        x0 = x_hat
        if t_trunc > 0:
            x0 = ddpm.reverse_chain(unet, scheduler, x_hat.to(device), t_trunc, generator=generator, fast=fast).cpu()
    return TDPMResult(x0=x0.clamp(-1, 1), dip_output=x_hat, dip=fit, t_trunc=t_trunc,
                      network_evaluations=t_trunc, dip_iterations=dip_iterations, seconds=timer.seconds)


def tdpm_dip(unet, scheduler, x0: torch.Tensor, *, t_trunc: int = 10, dip_iterations: int = 100,
             generator: torch.Generator, device="cpu", z: torch.Tensor | None = None, fast: bool | None = None,
             **dip_kwargs) -> TDPMResult:
    """Algorithm 3 as the report runs it: the DIP target is built from clean images ``x0``.

    ``z`` (the target's noise and the DIP's input) is drawn from ``generator`` unless given.
    ``dip_kwargs`` go to ``dip.fit_dip`` (preset, lr, seed, record_every, ...).
    """
    check_t_trunc(t_trunc, scheduler)
    if z is None:
        z = torch.randn(x0.shape, generator=generator)
    target = schedules.q_sample(x0, t_trunc, z, scheduler).float()
    return _run(unet, scheduler, target, z, t_trunc=t_trunc, dip_iterations=dip_iterations, generator=generator,
                device=device, reference=x0, dip_kwargs=dip_kwargs, fast=fast)


def denoise(unet, scheduler, y: torch.Tensor, t_obs: int, *, t_trunc: int, dip_iterations: int = 100,
            generator: torch.Generator, device="cpu", reference: torch.Tensor | None = None,
            z: torch.Tensor | None = None, fast: bool | None = None, **dip_kwargs) -> TDPMResult:
    """TDPM-DIP for denoising: it sees only the observation y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

    The DIP is fit to y rescaled to level T_trunc <= t_obs, sqrt(abar_Ttrunc / abar_tobs) * y, whose signal
    matches level T_trunc and whose noise is at least that level's (the DIP's early-stopped fit removes
    the excess); then T_trunc reverse steps. T_trunc = 0 is plain DIP on y / sqrt(abar_t); T_trunc = t_obs
    fits the DIP to y itself. ``reference`` (the clean image) is only used for the recorded curves.
    """
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    check_t_trunc(t_trunc, scheduler)
    if t_trunc > t_obs:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed; use 0..t_obs={t_obs}")
    scale = (schedules.alpha_bar(scheduler, t_trunc) / schedules.alpha_bar(scheduler, t_obs)).sqrt()
    target = (float(scale) * y).float()
    if z is None:
        z = torch.randn(y.shape, generator=generator)
    return _run(unet, scheduler, target, z, t_trunc=t_trunc, dip_iterations=dip_iterations, generator=generator,
                device=device, reference=reference, dip_kwargs=dip_kwargs, fast=fast)


def observe(x0: torch.Tensor, t: int, scheduler, *, generator: torch.Generator) -> torch.Tensor:
    """The denoising observation y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at level t."""
    schedules.check_level("t", t, scheduler, allow_zero=False)
    return schedules.q_sample(x0, t, torch.randn(x0.shape, generator=generator), scheduler).float()


def tweedie(unet, scheduler, y: torch.Tensor, t: int, *, fast: bool | None = None) -> torch.Tensor:
    """One-step posterior-mean estimate E[x_0 | y] = (y - sqrt(1 - abar_t) eps(y, t)) / sqrt(abar_t)."""
    with torch.no_grad():
        eps = ddpm.predict_eps(unet, y, t, fast=fast)
    return schedules.predict_x0(y, eps, t, scheduler).clamp(-1, 1)

