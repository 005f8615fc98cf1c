"""TDPM-DIP (Algorithm 3): a DIP network as the implicit generator at TDPM's truncation level.

TDPM (Zheng et al. 2023) stops the forward chain at a level T_trunc < T and replaces the missing part of
the reverse chain with an implicit generator that produces x_{T_trunc} directly; the DDPM then reverses
the remaining steps. The reproduced report (Chao 2024) uses a Deep Image Prior as that generator:

1. target  x_Ttrunc = sqrt(abar) x_0 + sqrt(1 - abar) z          (z ~ N(0, I))
2. fit     G_psi(z) to x_Ttrunc by Adam on MSE                    (the same z is the DIP's input)
3. reverse x_hat_Ttrunc = G_psi(z) to x_0 with the DDPM posterior step:
           x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 - abar_t) eps) + sigma_t z_t

(the report prints 1/sqrt(abar_t) and beta_t z_t in step 3; the author's code calls diffusers'
``DDPMScheduler.step``, which has neither misprint).

**The report's T_trunc.** The author's code (github.com/felixchao/Generative-Models-for-Visual-Signals,
``models/TDPM-DIP_model.py``) builds the target with ``add_noise(x_0, z, T_trunc)`` and runs
``for t in range(0, T_trunc + 1)[::-1]: x = scheduler.step(unet(x, t), t, x)``: T_trunc + 1 network
evaluations from diffusers timestep T_trunc. In this package's levels (``tdpmlib.methods.schedules``: level t is
diffusers timestep t - 1) that chain starts at level ``report_level(T_trunc) = T_trunc + 1``. ``tdpm_dip``
takes the report's T_trunc in that meaning; the book's own methods (``denoise``, ``denoise_matched``,
``matched_state``) take a level, whose reverse chain is ``t_trunc`` evaluations. With the report's
T_trunc = 0 one network evaluation still runs (diffusers timestep 0).

Used for "generation", ``tdpm_dip`` needs a clean x_0 for its target, so it fits, and reproduces, the images
it is given; ``denoise`` is the variant that sees only an observation y at level t_obs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..evaluation import metrics
from . import ddpm, dip, schedules


def report_level(t_trunc: int) -> int:
    """The level at which the author's chain for the report's T_trunc starts: diffusers timestep T_trunc is
    level T_trunc + 1, and reversing from it takes T_trunc + 1 network evaluations (module doc)."""
    return t_trunc + 1


def check_t_trunc(t_trunc, scheduler) -> int:
    """T_trunc must truncate: an integer in 0..T-1 (a level below T, or the report's T_trunc, a diffusers
    timestep: its last value T-1 is the full chain)."""
    T = scheduler.config.num_train_timesteps
    if isinstance(t_trunc, bool) or not isinstance(t_trunc, int) or not 0 <= t_trunc < T:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed; use an integer in 0..{T - 1} (T_trunc < T = {T})")
    return t_trunc


@dataclass
class TDPMResult:
    x0: torch.Tensor              # final images, CPU, [-1, 1]
    dip_output: torch.Tensor      # x_hat at the start of the reverse chain
    dip: dip.DIPResult
    t_trunc: int                  # as the caller gave it (``tdpm_dip``: the report's T_trunc; else a level)
    level: int                    # the level the reverse chain starts at (= network_evaluations)
    network_evaluations: int      # DDPM network evaluations per image
    dip_iterations: int           # DIP optimiser iterations per image
    seconds: float                # wall clock of the whole call: DIP fit + reverse chain
    state: torch.Tensor | None = None        # the state handed to the reverse chain at level T_trunc
    noise_ratio: torch.Tensor | None = None  # per image: actual / expected noise std of that state (needs reference)


def noise_ratio(state: torch.Tensor, x0: torch.Tensor, t: int, scheduler) -> torch.Tensor:
    """Per image: the RMS of state / sqrt(abar_t) - x0 over the std sqrt(v_t) that level t implies
    (1 for a sample of q(x_t | x0), up to sampling error). A diagnostic: it needs the clean image."""
    ab = float(schedules.alpha_bar(scheduler, t))
    actual = (state.float() / ab ** 0.5 - x0.float()).flatten(1).pow(2).mean(1).sqrt()
    return actual / ((1 - ab) / ab) ** 0.5


def _run(unet, scheduler, target, z, *, t_trunc, dip_iterations, generator, device, reference, dip_kwargs, fast,
         to_state=None, level=None):
    """Fit the DIP to ``target``, turn its output into the state at ``level`` (default ``t_trunc``) with
    ``to_state`` (default: the output itself), reverse ``level`` steps. Everything inside the timer, DIP
    fitting included."""
    check_t_trunc(t_trunc, scheduler)
    level = t_trunc if level is None else level
    dip.check_positive_int("dip_iterations", dip_iterations, allow_zero=True)
    with metrics.CudaTimer(device) as timer:
        # the generator draws the DIP input when z is None (and any per-step draws of the DIP protocol)
        fit = dip.fit_dip(target, iterations=dip_iterations, z=z, generator=generator, device=device,
                          reference=reference, fast=fast, **dip_kwargs)
        x_hat = fit.output
        state = to_state(x_hat) if to_state is not None else x_hat
        x0 = state
        if level > 0:
            x0 = ddpm.reverse_chain(unet, scheduler, state.to(device), level, generator=generator, fast=fast).cpu()
    ratio = None
    if reference is not None and level > 0:
        ratio = noise_ratio(state, reference, level, scheduler)
    return TDPMResult(x0=x0.clamp(-1, 1), dip_output=x_hat, dip=fit, t_trunc=t_trunc, level=level,
                      network_evaluations=level, dip_iterations=dip_iterations, seconds=timer.seconds,
                      state=state, noise_ratio=ratio)


def tdpm_dip(unet, scheduler, x0: torch.Tensor, *, t_trunc: int = 10, dip_iterations: int = 100,
             generator: torch.Generator, device="cpu", z: torch.Tensor | None = None, fast: bool | None = None,
             **dip_kwargs) -> TDPMResult:
    """Algorithm 3 as the author's code runs it: the DIP target is built from clean images ``x0``.

    ``t_trunc`` is the report's T_trunc (module doc): the target is diffusers' ``add_noise(x0, z, t_trunc)``
    and the chain runs t_trunc + 1 network evaluations from diffusers timestep t_trunc, on the DIP output with
    no noise added. ``z`` (the target's noise and the DIP's input) is drawn from ``generator`` unless given.
    ``dip_kwargs`` go to ``dip.fit_dip`` (preset, lr, seed, record_every, ...); the default plain protocol is
    the author's DIP (Adam at lr 1e-4, timestep 0). ``tests/test_tdpm.py`` checks the whole call against a
    transcription of the author's loop.
    """
    check_t_trunc(t_trunc, scheduler)
    if z is None:
        z = torch.randn(x0.shape, generator=generator)
    timesteps = torch.full((len(x0),), t_trunc, dtype=torch.long)
    target = scheduler.add_noise(x0.float(), z.float(), timesteps)
    return _run(unet, scheduler, target, z, t_trunc=t_trunc, dip_iterations=dip_iterations, generator=generator,
                device=device, reference=x0, dip_kwargs=dip_kwargs, fast=fast, level=report_level(t_trunc))


def denoise(unet, scheduler, y: torch.Tensor, t_obs: int, *, t_trunc: int, dip_iterations: int = 100,
            generator: torch.Generator, device="cpu", reference: torch.Tensor | None = None,
            z: torch.Tensor | None = None, fast: bool | None = None, **dip_kwargs) -> TDPMResult:
    """"DIP + T_trunc polishing steps": it sees only the observation y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

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


def check_absorbed(absorbed) -> float:
    """``absorbed`` (the fraction of the observation noise a DIP estimate has fitted) must be a finite number."""
    if isinstance(absorbed, bool) or not isinstance(absorbed, numbers.Real) or not math.isfinite(absorbed):
        raise ValueError(f"absorbed={absorbed!r} is not allowed; use a finite number (0 = no noise fitted)")
    return float(absorbed)


def estimated_error_var(x_hat: torch.Tensor, y_scaled: torch.Tensor, v_obs: float, *,
                        absorbed: float = 0.0) -> torch.Tensor:
    """Per image, from the observation alone: E||x_hat - x0||^2 / D estimated from the residual variance
    resid = ||x_hat - y / sqrt(abar_obs)||^2 / D as resid - v_obs (1 - 2 absorbed), clamped at 0.

    If x_hat = x0 + e + a n has fitted a fraction a of the observation noise n (variance v_obs), then
    E[resid] = E||e + a n||^2 / D - 2 a v_obs + v_obs: with ``absorbed`` = a the estimate is unbiased; with
    ``absorbed`` = 0 (the default, a DIP that has fitted no noise) it is low by 2 a v_obs.
    ``calibrate_absorbed`` fits a on images whose clean version is known (validation images)."""
    absorbed = check_absorbed(absorbed)
    resid = (x_hat.float() - y_scaled.float()).flatten(1).pow(2).mean(1)
    return (resid - v_obs * (1 - 2 * absorbed)).clamp_min(0)


def calibrate_absorbed(x_hat: torch.Tensor, y_scaled: torch.Tensor, clean: torch.Tensor, v_obs: float) -> float:
    """The fraction a of the observation noise that makes ``estimated_error_var``'s mean over these images
    unbiased: the mean over images of (||x_hat - clean||^2 / D - resid + v_obs) / (2 v_obs), resid as there
    (not clamped). It needs the clean images: compute it on validation images and use it on test images."""
    if isinstance(v_obs, bool) or not isinstance(v_obs, numbers.Real) or not 0 < v_obs < math.inf:
        raise ValueError(f"v_obs={v_obs!r} is not allowed; use a positive number (the observation's noise variance)")
    if not x_hat.shape == y_scaled.shape == clean.shape or len(x_hat) == 0:
        raise ValueError(f"x_hat, y_scaled, clean have shapes {tuple(x_hat.shape)}, {tuple(y_scaled.shape)}, "
                         f"{tuple(clean.shape)}; use the same non-empty shape")
    err = (x_hat.double() - clean.double()).flatten(1).pow(2).mean(1)
    resid = (x_hat.double() - y_scaled.double()).flatten(1).pow(2).mean(1)
    return float(((err - resid + v_obs) / (2 * v_obs)).mean())


def matched_state(x_hat: torch.Tensor, y: torch.Tensor, t_obs: int, t_trunc: int, scheduler, *,
                  generator: torch.Generator, absorbed: float = 0.0) -> torch.Tensor:
    """The state at T_trunc built from a DIP estimate ``x_hat`` of x_0 and the observation y at t_obs:
    x_T = sqrt(abar_T) (x_hat + sqrt(max(0, v_T - e_hat)) n), e_hat = ``estimated_error_var`` with ``absorbed``
    (module doc). Fresh noise n comes from ``generator``; T_trunc = 0 returns x_hat."""
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    check_t_trunc(t_trunc, scheduler)
    absorbed = check_absorbed(absorbed)
    if t_trunc > t_obs:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed; use 0..t_obs={t_obs}")
    if t_trunc == 0:
        return x_hat
    ab_obs, ab_t = float(schedules.alpha_bar(scheduler, t_obs)), float(schedules.alpha_bar(scheduler, t_trunc))
    v_obs, v_t = (1 - ab_obs) / ab_obs, (1 - ab_t) / ab_t
    x_hat = x_hat.float().cpu()
    e_hat = estimated_error_var(x_hat, (y.cpu() / ab_obs ** 0.5).float(), v_obs, absorbed=absorbed)
    top_up = (v_t - e_hat).clamp_min(0).sqrt().view(-1, 1, 1, 1)
    return (ab_t ** 0.5 * (x_hat + top_up * torch.randn(x_hat.shape, generator=generator))).float()


def denoise_matched(unet, scheduler, y: torch.Tensor, t_obs: int, *, t_trunc: int, dip_iterations: int = 100,
                    generator: torch.Generator, device="cpu", reference: torch.Tensor | None = None,
                    z: torch.Tensor | None = None, fast: bool | None = None, absorbed: float = 0.0,
                    **dip_kwargs) -> TDPMResult:
    """TDPM-DIP with a matched state: DIP on y / sqrt(abar_obs), then ``matched_state`` (topped up with fresh
    noise to the level T_trunc expects; ``absorbed`` as there), then T_trunc reverse steps. Sees only y;
    ``reference`` (the clean image) is used for the recorded curves and ``noise_ratio`` only. T_trunc = 0
    returns the DIP output."""
    schedules.check_level("t_obs", t_obs, scheduler, allow_zero=False)
    check_t_trunc(t_trunc, scheduler)
    check_absorbed(absorbed)
    if t_trunc > t_obs:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed; use 0..t_obs={t_obs}")
    y_scaled = (y / float(schedules.alpha_bar(scheduler, t_obs)) ** 0.5).float()
    return _run(unet, scheduler, y_scaled, z, t_trunc=t_trunc, dip_iterations=dip_iterations, generator=generator,
                device=device, reference=reference, dip_kwargs=dip_kwargs, fast=fast,
                to_state=lambda x_hat: matched_state(x_hat, y, t_obs, t_trunc, scheduler, generator=generator,
                                                     absorbed=absorbed))


def reverse_from_state(unet, scheduler, state: torch.Tensor, t_trunc: int, *, generator: torch.Generator,
                       fast: bool | None = None) -> torch.Tensor:
    """The T_trunc ancestral reverse steps from a handed-over state (on the network's device), clipped, on the CPU."""
    if t_trunc == 0:
        return state.clamp(-1, 1)
    device = next(unet.parameters()).device
    return ddpm.reverse_chain(unet, scheduler, state.to(device), t_trunc, generator=generator, fast=fast).clamp(-1, 1).cpu()


# How a handed-over state at a level is turned into an image (issue "Measurements v3"): the report's single
# ancestral chain, the one-step posterior mean E[x_0 | x_t] (Tweedie; Efron 2011), or the mean of n independent
# ancestral chains (a Monte-Carlo estimate of the same posterior mean, n times the cost).
READOUTS = ("ancestral", "posterior_mean", "mean_chains")


def check_readout(readout: str, n_chains: int = 1) -> str:
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r} is not allowed; use one of {', '.join(READOUTS)}")
    if isinstance(n_chains, bool) or not isinstance(n_chains, int) or n_chains < 1:
        raise ValueError(f"n_chains={n_chains!r} is not allowed; use a positive integer")
    return readout


def readout_nfe(readout: str, level: int, *, n_chains: int = 1) -> int:
    """Network evaluations per image of reading out a state at ``level`` (0 at level 0: the state is the image)."""
    check_readout(readout, n_chains)
    if level == 0:
        return 0
    return {"ancestral": level, "posterior_mean": 1, "mean_chains": n_chains * level}[readout]


def read_out(unet, scheduler, state: torch.Tensor, level: int, *, readout: str = "ancestral", n_chains: int = 1,
             generator: torch.Generator | None = None, fast: bool | None = None) -> torch.Tensor:
    """The image a state at ``level`` reads out to, clipped to [-1, 1], on the CPU (``READOUTS``). ``ancestral``
    is ``reverse_from_state``; ``mean_chains`` runs n_chains chains one after another from ``generator`` (its
    first chain is the ``ancestral`` readout with the same generator); ``posterior_mean`` draws nothing."""
    check_readout(readout, n_chains)
    if level == 0:
        return state.clamp(-1, 1).cpu()
    if readout == "posterior_mean":
        return tweedie(unet, scheduler, state.to(next(unet.parameters()).device), level, fast=fast).cpu()
    chains = 1 if readout == "ancestral" else n_chains
    return torch.stack([reverse_from_state(unet, scheduler, state, level, generator=generator, fast=fast)
                        for _ in range(chains)]).mean(0)


def observe(x0: torch.Tensor, t: int, scheduler, *, generator: torch.Generator) -> torch.Tensor:
    """The denoising observation y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at level t."""
    schedules.check_level("t", t, scheduler, allow_zero=False)
    return schedules.q_sample(x0, t, torch.randn(x0.shape, generator=generator), scheduler).float()


def tweedie(unet, scheduler, y: torch.Tensor, t: int, *, fast: bool | None = None) -> torch.Tensor:
    """One-step posterior-mean estimate E[x_0 | y] = (y - sqrt(1 - abar_t) eps(y, t)) / sqrt(abar_t)."""
    with torch.no_grad():
        eps = ddpm.predict_eps(unet, y, t, fast=fast)
    return schedules.predict_x0(y, eps, t, scheduler).clamp(-1, 1)

