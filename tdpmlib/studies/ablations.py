"""Chapter 06's ablations of the denoising study, at realistic noise levels (sigma = 25 and 50 by default): the
plans and the computations that produce the per-image rows.

Every ablation keeps the protocol of ``tdpmlib.studies.denoising`` (chapter 03): the same validation / test images
(``study.split_eval``), the same observation of each image at each sigma (``study.observe``: y at the level
t(sigma) of the study's schedule, so y / sqrt(abar) = x_0 + noise of variance ``v_obs``), choices made on the
validation images, scores on the test images. The choices and paired comparisons of the rows are in
``tdpmlib.book.comparison`` (the book's one vocabulary) and ``tdpmlib.studies.ablations_paired`` (chapter 06's paired tables and
the sentences on them).

The DIP is the study's validated official-protocol DIP: ``official_fit`` calls ``denoising.fit_budgets`` with the
study's own arguments, so it loads chapter 03's cached fit (``results/<profile>/cache``) instead of fitting
again; its budget k is the one with the best mean validation PSNR (``validated_budget``, as in the study).

The ablations
-------------
* ``t_trunc``: the matched TDPM-DIP (``matched_state``: the DIP output at budget k topped up with fresh noise to
  the level T_trunc expects, then read out) at T_trunc = f * t(sigma) for the plan's fractions f, plus any
  ``extra_levels`` (chapter 03's chosen level; ``levels``); T_trunc = 0 is the DIP alone. Run for both schedules, each at
  its own t(sigma) (``schedule_level``). The readout (``tdpm.READOUTS``: one ancestral chain, the posterior
  mean, the mean of n chains) turns the same state into an image; every readout of a level reads the very
  same state tensor. The one T_trunc per sigma and schedule that the later ablations use is chosen in
  ``tdpmlib.studies.ablations_choice`` (chapter 03's for the study's schedule).
* ``schedule``: linear against cosine at matched sigma. Both schedules get the *same* observation (the
  study's), handed to each DDPM at the level of its own schedule whose noise is nearest (``schedule_level``;
  the remaining mismatch, a grid effect under 1% at sigma >= 15, is reported). The DIP does not use a schedule,
  so at matched sigma it is the same fit under both; the DDPM alone (posterior mean, ancestral from t) and the
  matched TDPM-DIP (at each schedule's validated T_trunc) change.
* ``chains``: the mean of K matched TDPM-DIP chains, each from its own topped-up state, at the chosen
  T_trunc of the study's schedule.
* ``dip_iterations``: the DIP's output at every candidate budget, from the same fit (no extra cost).
* ``dip_lr``: the official DIP refit at its learning rate times the plan's factors, budget validated per rate
  (a new fit per rate: the cpu plan leaves it out).
* ``report_table3``: the report's own ablation at t = 600, kept only for chapter 07's claims: the report's
  protocol (``tdpm.tdpm_dip``, DIP target built from the clean image) and the matched TDPM-DIP on the
  observation, at the report's T_trunc values, with the report's plain DIP at its 100 iterations.

Rows (``ROW_COLUMNS``) are per image; ``split`` is "val" or "test". ``value`` is the varied factor; ``readout``
is how a handed-over state was read out ("ancestral" for every row that has no state to read out). Cost is
network evaluations (``nfe``) and DIP iterations only: seconds come from chapter 08's one benchmark.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..evaluation import metrics
from ..methods import ddpm, dip, schedules, tdpm
from . import denoising
from .ablations_choice import levels
from .ablations_plan import (  # noqa: F401 - the plan is part of the study's interface
    CHECKS, EXAMPLES, EXTRA_CHECKS, FEW, MANY, PLANS, REPORT_T, check_optional_list, settings)

STEM = "06_ablations"
ABLATIONS = ("t_trunc", "schedule", "chains", "dip_iterations", "dip_lr")
ROW_COLUMNS = ("ablation", "sigma", "schedule", "t", "method_key", "method", "readout", "value", "split", "image",
               "psnr", "ssim", "nfe", "dip_iterations", "noise_ratio")

# --------------------------------------------------------------------------------------------------------
# The observation, the DIP fit, the matched state
# --------------------------------------------------------------------------------------------------------

def generator(seed: int, *parts) -> torch.Generator:
    """A CPU generator seeded from the run's seed and a purpose (any reprs), without collisions in practice."""
    h = int(hashlib.sha256(repr((seed, *parts)).encode()).hexdigest()[:15], 16)
    return torch.Generator().manual_seed(h)


@dataclass
class Observed:
    """The study's observation at one sigma, of the validation images followed by the test images."""

    sigma: int
    clean: torch.Tensor
    n_val: int
    y_scaled: torch.Tensor   # y / sqrt(abar_t) = x_0 + noise of variance v_obs
    t: int                   # the level of the observation under the study's schedule
    v_obs: float

    @property
    def split(self) -> list[str]:
        return ["val"] * self.n_val + ["test"] * (len(self.clean) - self.n_val)

    @property
    def test(self) -> slice:
        return slice(self.n_val, len(self.clean))


def observe(val: torch.Tensor, test: torch.Tensor, sigma: int, scheduler, *, seed: int) -> Observed:
    """The study's observation (``study.observe``) of the validation and test images at ``sigma``."""
    clean = torch.cat([val, test])
    y, t = denoising.observe(clean, sigma, scheduler, seed=seed)
    ab = float(schedules.alpha_bar(scheduler, t))
    return Observed(sigma=sigma, clean=clean, n_val=len(val), y_scaled=(y / ab ** 0.5).float(), t=t,
                    v_obs=schedules.noise_var(scheduler, t))


def official_fit(obs: Observed, *, budgets, seed: int, device, preset: str, lr: float | None = None, cache_dir=None):
    """The official-protocol DIP fit of ``denoising.fit_budgets``, with the study's arguments (so chapter 03's cached
    fit is loaded when it exists; ``lr`` None is the study's own)."""
    return denoising.fit_budgets(obs.y_scaled, obs.clean, protocol="official", budgets=budgets, seed=seed, sigma=obs.sigma,
                             device=device, preset=preset, lr=lr, cache_dir=cache_dir)


def validated_budget(fit: dict, obs: Observed) -> tuple[int, pd.Series]:
    """(k, mean validation PSNR per budget): the budget with the best mean validation PSNR (ties: the smaller)."""
    val = obs.clean[: obs.n_val]
    means = pd.Series({k: float(metrics.psnr(fit["outputs"][k][: obs.n_val], val).mean()) for k in sorted(fit["outputs"])})
    return int(means.idxmax()), means


def schedule_level(scheduler, v_obs: float) -> tuple[int, float]:
    """(t, ratio): the level of ``scheduler`` whose noise is nearest an observation of noise variance ``v_obs``
    (x0 units), and the observation's noise std over that level's (1 = exact)."""
    t = schedules.t_for_sigma(scheduler, 127.5 * math.sqrt(v_obs))
    return t, math.sqrt(v_obs / schedules.noise_var(scheduler, t))


def absorbed(fit: dict, k: int, obs: Observed) -> float:
    """``tdpm.calibrate_absorbed`` of the DIP output at budget k on the validation images: the fraction of the
    observation noise the fit has absorbed, as chapter 03 computes it for the same fit and budget."""
    val = slice(0, obs.n_val)
    return tdpm.calibrate_absorbed(fit["outputs"][k][val].float().cpu(), obs.y_scaled[val], obs.clean[val], obs.v_obs)


def matched_state(x_hat: torch.Tensor, y_scaled: torch.Tensor, v_obs: float, t_trunc: int, scheduler, *,
                  generator: torch.Generator, absorbed: float = 0.0) -> torch.Tensor:
    """``tdpm.matched_state`` for an observation given in x0 units (y_scaled, noise variance v_obs), so that a
    schedule other than the observation's can take it: sqrt(abar_T) (x_hat + sqrt(max(0, v_T - e_hat)) n),
    e_hat = ``tdpm.estimated_error_var`` with ``absorbed`` (``absorbed`` above). T_trunc = 0 returns x_hat."""
    tdpm.check_t_trunc(t_trunc, scheduler)
    tdpm.check_absorbed(absorbed)
    if t_trunc == 0:
        return x_hat
    x_hat = x_hat.float().cpu()
    e_hat = tdpm.estimated_error_var(x_hat, y_scaled.float().cpu(), v_obs, absorbed=absorbed)
    v_t, ab_t = schedules.noise_var(scheduler, t_trunc), float(schedules.alpha_bar(scheduler, t_trunc))
    top_up = (v_t - e_hat).clamp_min(0).sqrt().view(-1, 1, 1, 1)
    return (ab_t ** 0.5 * (x_hat + top_up * torch.randn(x_hat.shape, generator=generator))).float()


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------

def _rows(x: torch.Tensor, obs: Observed, images: slice, **common) -> list[dict]:
    clean = obs.clean[images]
    split = obs.split[images]
    p, s = metrics.psnr(x, clean), metrics.ssim_or_nan(x, clean)
    ratio = common.pop("ratio", None)
    common.setdefault("readout", "ancestral")
    return [dict(common, split=split[i], image=i + (images.start or 0), psnr=float(p[i]), ssim=float(s[i]),
                 noise_ratio=float("nan") if ratio is None else float(ratio[i])) for i in range(len(clean))]


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


def readout_key(level: int, readout: str, n_chains: int = 1) -> tuple[str, str]:
    """(method_key, method) of the matched TDPM-DIP at ``level`` read out by ``readout``: the ancestral keys are
    "t_trunc={level}" (the T_trunc curve's, which chapter 07 selects), the others name their readout."""
    if level == 0:
        return "t_trunc=0", "DIP alone"
    if readout == "ancestral":
        return f"t_trunc={level}", f"TDPM-DIP, T_trunc = {level}"
    if readout == "posterior_mean":
        return f"t_trunc={level}, posterior_mean", f"TDPM-DIP, T_trunc = {level}, posterior mean"
    return f"t_trunc={level}, mean_chains n={n_chains}", f"TDPM-DIP, T_trunc = {level}, mean of {n_chains} chains"


def t_trunc_rows(unet, scheduler, schedule: str, obs: Observed, fit: dict, k: int, fractions, *, seed: int,
                 readouts=None, n_chains: int = 1, readout_levels=None, extra_levels=(), absorbed: float = 0.0,
                 keep: dict | None = None) -> pd.DataFrame:
    """The ``t_trunc`` ablation for one schedule on the validation and test images: the matched TDPM-DIP from the
    DIP output at budget k (``matched_state`` with ``absorbed``), at each level of ``levels(t_s, fractions,
    extra_levels=...)`` with t_s the schedule's own t(sigma).

    Each level's one state is read out by every readout of ``readouts`` (None: ("ancestral",); it must hold
    "ancestral") with ``tdpm.read_out``; ``n_chains`` is n of "mean_chains". Every readout continues the
    generator from the same point after the state's draw, so "ancestral" is the same draw whatever else runs
    and the first chain of "mean_chains" is that draw. The readouts other than "ancestral" run only at the
    levels in ``readout_levels`` (None: every level > 0). Level 0 (the DIP alone) is one set of rows. ``nfe``
    is ``tdpm.readout_nfe``. ``keep`` (a dict), when given, receives ``(sigma, schedule, level) -> ancestral
    test outputs`` for every level > 0, so that ``chains_rows`` can reuse that draw as its first chain."""
    readouts = ("ancestral",) if readouts is None else tuple(readouts)
    for r in readouts:
        tdpm.check_readout(r, n_chains)
    if "ancestral" not in readouts or len(set(readouts)) != len(readouts):
        raise ValueError(f"readouts={readouts!r} is not allowed; use distinct names among {tdpm.READOUTS} "
                         "that include 'ancestral'")
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    x_hat = fit["outputs"][k]
    rows = []
    for level, frac in levels(t_s, fractions, extra_levels=extra_levels).items():
        g = generator(seed, "t_trunc", obs.sigma, schedule, level)
        state = matched_state(x_hat, obs.y_scaled, obs.v_obs, level, scheduler, generator=g, absorbed=absorbed)
        after = g.get_state()
        ratio = tdpm.noise_ratio(state, obs.clean, level, scheduler) if level > 0 else None
        for readout in readouts:
            if readout != "ancestral" and (level == 0 or (readout_levels is not None and level not in readout_levels)):
                continue
            x = tdpm.read_out(unet, scheduler, state, level, readout=readout, n_chains=n_chains,
                              generator=torch.Generator().set_state(after))
            if keep is not None and level > 0 and readout == "ancestral":
                keep[(obs.sigma, schedule, level)] = x[obs.test].detach().cpu()
            key, method = readout_key(level, readout, n_chains)
            rows += _rows(x, obs, slice(0, len(obs.clean)), ablation="t_trunc", sigma=obs.sigma, schedule=schedule,
                          t=t_s, method_key=key, method=method, readout=readout, value=frac,
                          nfe=tdpm.readout_nfe(readout, level, n_chains=n_chains), dip_iterations=k, ratio=ratio)
    return _frame(rows)


def ddpm_rows(unet, scheduler, schedule: str, obs: Observed, *, seed: int, device) -> pd.DataFrame:
    """The DDPM alone on the test images under one schedule at matched sigma: the posterior mean (1 network
    evaluation) and ancestral sampling from the schedule's own t(sigma), both on the study's observation."""
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    ab = float(schedules.alpha_bar(scheduler, t_s))
    y = (ab ** 0.5 * obs.y_scaled[obs.test]).to(device)
    common = dict(ablation="schedule", sigma=obs.sigma, schedule=schedule, t=t_s, value=t_s, dip_iterations=0)
    x = tdpm.tweedie(unet, scheduler, y, t_s).cpu()
    rows = _rows(x, obs, obs.test, method_key="tweedie", method=denoising.METHOD_LABELS["tweedie"],
                 readout="posterior_mean", nfe=1, **common)
    g = generator(seed, "ddpm", obs.sigma, schedule)
    x = ddpm.reverse_chain(unet, scheduler, y, t_s, generator=g).clamp(-1, 1).cpu()
    rows += _rows(x, obs, obs.test, method_key="ddpm", method=denoising.METHOD_LABELS["ddpm"], nfe=t_s, **common)
    return _frame(rows)


def chains_rows(unet, scheduler, schedule: str, obs: Observed, fit: dict, k: int, level: int, chains, *, seed: int,
                absorbed: float = 0.0, first: torch.Tensor | None = None) -> pd.DataFrame:
    """The ``chains`` ablation on the test images: max(chains) matched TDPM-DIP chains at ``level``, each from its own
    topped-up state (one batch; ``matched_state`` with ``absorbed``), and for each K the mean of the first K.

    ``first``, when given, is the test outputs of one chain already drawn at this level (``t_trunc_rows``'s
    ``keep``): it is the first chain, so K = 1 is exactly that row of the T_trunc ablation, and only
    max(chains) - 1 chains are drawn here."""
    x_hat, kmax = fit["outputs"][k][obs.test], max(chains)
    n = len(x_hat)
    y_scaled = obs.y_scaled[obs.test]
    g = generator(seed, "chains", obs.sigma, schedule, level)
    n_new = kmax - (first is not None)
    parts = []
    if first is not None:
        if first.shape != x_hat.shape:
            raise ValueError(f"first chain has shape {tuple(first.shape)}, the test images {tuple(x_hat.shape)}")
        parts.append(first.float().cpu().unsqueeze(1))
    if n_new > 0:
        states = torch.stack([matched_state(x_hat, y_scaled, obs.v_obs, level, scheduler, generator=g,
                                            absorbed=absorbed) for _ in range(n_new)], 1)
        new = tdpm.reverse_from_state(unet, scheduler, states.flatten(0, 1), level, generator=g)
        parts.append(new.float().cpu().view(n, n_new, *x_hat.shape[1:]))
    out = torch.cat(parts, 1)
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    rows = []
    for K in sorted(chains):
        rows += _rows(out[:, :K].mean(1), obs, obs.test, ablation="chains", sigma=obs.sigma, schedule=schedule, t=t_s,
                      method_key=f"K={K}", method=f"TDPM-DIP, mean of {K} chain{'s' if K > 1 else ''}", value=K,
                      nfe=K * level, dip_iterations=k)
    return _frame(rows)


def iteration_rows(fit: dict, obs: Observed, *, schedule: str, ablation: str = "dip_iterations", key: str = "k",
                   lr: float | None = None) -> pd.DataFrame:
    """The DIP alone at every budget of a fit, on the validation and test images (``value``: the budget; with
    ``lr`` given, the rows are that rate's and ``value`` is the rate)."""
    rows = []
    for k in sorted(fit["outputs"]):
        rows += _rows(fit["outputs"][k], obs, slice(0, len(obs.clean)), ablation=ablation, sigma=obs.sigma,
                      schedule=schedule, t=obs.t, method_key=f"{key}={k}" if lr is None else f"lr={lr:g}, k={k}",
                      method=f"DIP, {k} iterations" if lr is None else f"DIP, lr {lr:g}, {k} iterations",
                      value=k if lr is None else lr, nfe=0, dip_iterations=k)
    return _frame(rows)


def report_table3(unet, scheduler, clean: torch.Tensor, *, t_truncs, dip_iterations: int, preset: str, lr: float,
                  seed: int, device, t_obs: int = REPORT_T) -> pd.DataFrame:
    """The report's Table 3 at level ``t_obs`` (600) on ``clean``: per T_trunc, in the author's meaning (T_trunc + 1
    network evaluations from diffusers timestep T_trunc, ``tdpm.report_level``), the report's protocol
    (``tdpm.tdpm_dip``: the DIP target built from the clean image) and the matched TDPM-DIP on the observation
    (one DIP fit to y / sqrt(abar), ``matched_state`` at the same level, the same steps), both with the
    report's plain DIP; PSNR/SSIM against the clean image. One row per (protocol, T_trunc, image); ``nfe`` is
    T_trunc + 1. The report's setting has no validation images, so its matched state keeps ``absorbed`` = 0."""
    y = tdpm.observe(clean, t_obs, scheduler, generator=generator(seed, "table3-observation"))
    ab = float(schedules.alpha_bar(scheduler, t_obs))
    y_scaled = (y / ab ** 0.5).float()
    v_obs = schedules.noise_var(scheduler, t_obs)
    kw = dict(iterations=dip_iterations, preset=preset, lr=lr, seed=seed, device=device, record_every=dip_iterations)
    fit = dip.fit_dip(y_scaled, generator=generator(seed, "table3-dip"), **kw)
    rows = []

    def add(protocol, x, tt):
        p, s = metrics.psnr(x, clean), metrics.ssim_or_nan(x, clean)
        rows.extend(dict(protocol=protocol, t_obs=t_obs, t_trunc=tt, image=i, psnr=float(p[i]), ssim=float(s[i]),
                         nfe=tdpm.report_level(tt), dip_iterations=dip_iterations) for i in range(len(clean)))

    for tt in sorted(t_truncs):
        g = generator(seed, "table3-report", tt)
        res = tdpm.tdpm_dip(unet, scheduler, clean, t_trunc=tt, dip_iterations=dip_iterations, generator=g,
                            device=device, preset=preset, lr=lr, seed=seed, record_every=dip_iterations)
        add("report", res.x0, tt)
        g = generator(seed, "table3-matched", tt)
        level = tdpm.report_level(tt)
        state = matched_state(fit.output, y_scaled, v_obs, level, scheduler, generator=g)
        add("corrected", tdpm.reverse_from_state(unet, scheduler, state, level, generator=g), tt)
    return pd.DataFrame(rows)
