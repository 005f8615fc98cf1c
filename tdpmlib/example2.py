"""Example 2 of the report: DDPM-guided early stopping of DIP, against the usual stopping rules (notebook 05).

Levels, images and "x0 units" are as in ``tdpmlib.example1``: the observation at level t_obs is
y = sqrt(abar) x_0 + sqrt(1 - abar) eps, and y / sqrt(abar) = x_0 + noise of variance v_obs = (1 - abar) / abar
(``schedules.noise_var``).

The guided rule
    ``guided_stages`` builds, from the observation alone, a sequence of targets that are samples of the
    DDPM *forward* chain continued from y: levels s_1 > s_2 > ... > s_n = t_obs, and in x0 units

        target_n = y / sqrt(abar_tobs),   target_j = target_{j+1} + sqrt(v_{s_j} - v_{s_{j+1}}) n_j,

    so target_j = x_0 + noise of variance exactly v_{s_j} (and sqrt(abar_{s_j}) target_j is distributed as
    q(x_{s_j} | x_0)). Stages therefore run from the most to the least corrupted target and end at the
    observation itself. Stage levels must lie *at or above* t_obs: a target less noisy than y cannot be
    made from y by adding noise. ``guided_dip`` fits one DIP through the targets; it leaves stage j when
    the residual variance mean((G(z) - target_j)^2) reaches the stage's known noise variance v_{s_j} (or
    after ``iters_per_stage_max`` iterations). In the final stage that rule is Morozov's discrepancy
    principle (residual variance <= v_obs).

The other rules (``tdpmlib.stopping``)
    ``Discrepancy`` is that principle for a single-stage fit and ``ESWMV`` the windowed-moving-variance rule
    of Wang et al. (ES-WMV); ``eswmv_fit`` runs ES-WMV as its authors do: on its own fit, at their learning
    rate, until the rule has stopped every image (or a cap).

The notebook's runs
    ``example2_settings`` gives the sizes per profile; ``stopping_study`` runs every rule on one noise level;
    ``plot_stopping_curves`` draws the PSNR curves with each rule's stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import dip, metrics, schedules
from .example1 import observation_x0
from .stopping import ESWMV_LR, ESWMV_MAX_ITERATIONS, ESWMV_PATIENCE, ESWMV_WINDOW, Discrepancy, eswmv_fit

# ----------------------------------------------------------------------------------------------------------
# The guided rule
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
    variances = [schedules.noise_var(scheduler, s) for s in levels]
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


# ----------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------


def stopping_study(clean: torch.Tensor, y: torch.Tensor, t_obs: int, scheduler, *, fixed, iterations: int,
                   n_stages: int, iters_per_stage_max: int, preset: str, lr: float, seed: int, device,
                   generator: torch.Generator, window: int = ESWMV_WINDOW, patience: int = ESWMV_PATIENCE,
                   noise_factor: float = 2.0, eswmv_lr: float = ESWMV_LR,
                   eswmv_max_iterations: int = ESWMV_MAX_ITERATIONS, eswmv_preset: str | None = None,
                   fast: bool | None = None):
    """Example 2, one noise level: every stopping rule of notebook 05 on the same images.

    Three fits per image on y / sqrt(abar_tobs), all from the same z and initial weights:

    * the plain fit (Adam at ``lr``, ``iterations`` >= max(fixed)) gives the fixed counts, the single-stage
      discrepancy rule and the oracle (best PSNR against ``clean``: an upper bound no rule can know);
    * ``guided_dip`` gives the guided rule;
    * ``eswmv_fit`` gives ES-WMV as its authors run it (their skip-network DIP, ``eswmv_preset``, Adam at
      ``eswmv_lr``, window ``window``, patience ``patience``), continued until the rule has stopped every image or ``eswmv_max_iterations`` updates,
      and that fit's own oracle: with another learning rate and length it is not bounded by the plain one.

    Returns (per-image rows DataFrame, plain-fit history DataFrame, GuidedResult, ESWMVRun). Row columns:
    the rule, its ``stop`` (the iteration whose output it returns; for ES-WMV the detected minimum),
    ``rule_fired`` (the rule itself ended the fit: the residual rules reached their variance, ES-WMV's
    patience ran out; None for the fixed counts and the oracle), ``fit`` (the trajectory the rule watched),
    ``oracle`` (the best-PSNR iteration of that trajectory; the plain fit's for the guided rule, whose
    trajectory differs) and ``oracle_gap`` = |stop - oracle|.
    """
    fixed = sorted(set(fixed))
    if iterations < max(fixed):
        raise ValueError(f"iterations={iterations} is not allowed; use at least max(fixed)={max(fixed)}")
    target = observation_x0(y, t_obs, scheduler)
    v_obs = schedules.noise_var(scheduler, t_obs)
    z = torch.randn(y.shape, generator=generator)
    disc = Discrepancy(v_obs)
    fit = dip.fit_dip(target, iterations=iterations, z=z, preset=preset, lr=lr, seed=seed, device=device,
                      reference=clean, keep=fixed, monitors=[disc], record_every=1, fast=fast)
    guided = guided_dip(y, t_obs, scheduler, n_stages=n_stages, iters_per_stage_max=iters_per_stage_max,
                        preset=preset, lr=lr, seed=seed, device=device, generator=generator, reference=clean, z=z,
                        noise_factor=noise_factor, fast=fast)
    eswmv = eswmv_fit(target, generator=generator, seed=seed, device=device, lr=eswmv_lr, window=window,
                      patience=patience, max_iterations=eswmv_max_iterations, reference=clean, fast=fast,
                      preset=eswmv_preset)
    oracle = fit.best_iteration
    sigma255 = float(schedules.sigma_at(scheduler, t_obs))
    plain, own = f"plain (lr {lr:g})", f"ES-WMV's own (lr {eswmv_lr:g})"
    wmv = eswmv.monitor
    # rule -> (output, stop iteration, fired or None, the trajectory watched, that trajectory's oracle iteration)
    rules = {f"fixed {k}": (fit.outputs[k], torch.full_like(oracle, k), None, plain, oracle) for k in fixed}
    rules["ES-WMV"] = (wmv.output, wmv.detected, wmv.stopped, own, eswmv.best_iteration)
    rules["discrepancy (single stage)"] = (disc.output, disc.stop_iteration, disc.fired, plain, oracle)
    rules[f"guided ({len(guided.stages)} stages)"] = (guided.output, guided.stop_iteration, guided.fired[:, -1],
                                                      "guided", oracle)
    rules["oracle (best PSNR)"] = (fit.best_output, oracle, None, plain, oracle)
    rules["oracle of ES-WMV's fit"] = (eswmv.best_output, eswmv.best_iteration, None, own, eswmv.best_iteration)
    rows = []
    for rule, (out, stop, flag, trajectory, best) in rules.items():
        p = metrics.psnr(out, clean).cpu()
        s = metrics.ssim_or_nan(out, clean)
        for i in range(len(y)):
            rows.append(dict(t_obs=t_obs, sigma255=sigma255, rule=rule, image=i, stop=int(stop[i]),
                             oracle=int(best[i]), oracle_gap=abs(int(stop[i]) - int(best[i])),
                             psnr=float(p[i]), ssim=float(s[i]),
                             rule_fired=(None if flag is None else bool(flag[i])), fit=trajectory))
    hist = fit.history.assign(t_obs=t_obs, sigma255=sigma255)
    guided.history = guided.history.assign(t_obs=t_obs, sigma255=sigma255)
    eswmv.history = eswmv.history.assign(t_obs=t_obs, sigma255=sigma255)
    return pd.DataFrame(rows), hist, guided, eswmv


def example2_settings(cfg) -> dict:
    """Notebook 05's sizes: the notebook's parameters where given (``cfg.extra``), else the profile's defaults.

    n_images: n_denoise on the paper profile (>= 20), else min(2 n_denoise, 16). fixed: 100, 500 and
    dip_iterations_long (smoke: dip_iterations and dip_iterations_long, to stay fast); the plain fit runs
    max(fixed) iterations. iters_per_stage_max: that length / n_stages, so the guided fit never runs longer
    than the plain one. ES-WMV: window 100, patience 1000 and lr 0.01 (the official code's); its fit's cap
    eswmv_max_iterations is the official 5000 on the paper profile, 3000 on the cpu one (at most about
    13 min per noise level there) and 2 x the plain fit on smoke (too short for the rule to fire).
    """
    x = cfg.extra
    n = x.get("n_images") or (cfg.n_denoise if cfg.profile == "paper" else min(2 * cfg.n_denoise, 16))
    protocol = [100, 500, cfg.dip_iterations_long] if cfg.profile != "smoke" else [cfg.dip_iterations, cfg.dip_iterations_long]
    fixed = sorted(set(x.get("fixed_iterations") or protocol))
    n_stages = x.get("n_stages") or 4
    cap = {"paper": ESWMV_MAX_ITERATIONS, "cpu": 3000}.get(cfg.profile, 2 * max(fixed))
    return dict(n_images=n, sigmas=x.get("sigmas") or [25, 50], fixed=fixed, iterations=max(fixed), n_stages=n_stages,
                iters_per_stage_max=x.get("iters_per_stage_max") or max(1, max(fixed) // n_stages),
                noise_factor=x.get("stage_noise_factor") or 2.0, window=x.get("eswmv_window") or ESWMV_WINDOW,
                patience=x.get("eswmv_patience") or ESWMV_PATIENCE, eswmv_lr=x.get("eswmv_lr") or ESWMV_LR,
                eswmv_max_iterations=x.get("eswmv_max_iterations") or cap)


def plot_stopping_curves(hist: pd.DataFrame, guided_hist: pd.DataFrame, rows: pd.DataFrame, image: int,
                         eswmv_hist: pd.DataFrame | None = None):
    """PSNR against iteration for one image: the plain fit, the guided fit and (when given) ES-WMV's own
    fit, with each rule's stop marked."""
    import matplotlib.pyplot as plt

    levels = sorted(rows.t_obs.unique())
    fig, axes = plt.subplots(1, len(levels), figsize=(6.0 * len(levels), 3.8), squeeze=False)
    markers = dict(zip(sorted(rows.rule.unique()), "os^vDP*Xh<>"))
    for ax, t in zip(axes[0], levels):
        h = hist[(hist.t_obs == t) & (hist.image == image)]
        g = guided_hist[(guided_hist.t_obs == t) & (guided_hist.image == image)]
        ax.plot(h.iteration, h.psnr_ref, color="0.35", lw=1.2, label="plain DIP on y/√ᾱ")
        ax.plot(g.iteration, g.psnr_ref, color="tab:orange", lw=1.2, label="guided DIP (staged targets)")
        if eswmv_hist is not None:
            e = eswmv_hist[(eswmv_hist.t_obs == t) & (eswmv_hist.image == image)]
            ax.plot(e.iteration, e.psnr_ref, color="tab:blue", lw=1.0, alpha=0.8, label="ES-WMV's own fit")
        r = rows[(rows.t_obs == t) & (rows.image == image)]
        for _, row in r.iterrows():
            ax.scatter([row.stop], [row.psnr], marker=markers[row.rule], s=55, zorder=3, label=row.rule)
        ax.set_xlabel("DIP iteration")
        ax.set_ylabel("PSNR vs clean (dB)")
        ax.set_title(f"image {image}, t_obs = {t} (σ ≈ {r.sigma255.iloc[0]:.0f}/255)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig
