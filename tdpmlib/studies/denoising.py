"""The denoising study: at one pixel noise level, every method, tuned on validation images, scored on test images.

This is the book's main comparison (chapters 02-07): does combining DDPM and DIP beat each alone?

Protocol
--------
* **Images.** The held-out images (never trained on) are split once into a validation set and a test set
  (``split_eval``). Every tuned choice (a DIP's iteration budget, TDPM-DIP's T_trunc and readout, Example 1's
  t_0, NLM's strength and patch) is the one with the best mean PSNR on the validation images; the test images
  are scored with it, unchanged.
* **Observation.** For pixel noise sigma (0..255 scale) the observation is the forward sample at the level
  t(sigma) of the DDPM's schedule, y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, so y / sqrt(abar_t) is x_0 plus
  Gaussian noise of std about sigma. Image i's noise is drawn from its own generator (seed, sigma, i), so it
  does not depend on how images are grouped.
* **What a method sees.** Only y (and the noise level, which every method here is given). The clean image
  enters only the scores, the rows labelled "upper bound" (a DIP's best iteration chosen per image with
  the clean image) and, on the validation images only, the calibration of the fitted-noise fraction
  ``absorbed`` (``tdpm.calibrate_absorbed``), a tuned constant per (sigma, k) like k itself.
* **Scores.** PSNR and SSIM against the clean image on [0, 1] (``metrics``). Cost is network evaluations (NFE)
  and DIP iterations per image; the study reports no seconds (wall clock comes from one benchmark, chapter 08).

Methods (``METHOD_LABELS``)
---------------------------
Floors: the noisy input y / sqrt(abar_t) (clipped), the training-mean image, non-local means with the true
sigma, its strength h = h_factor * sigma and patch size chosen on validation. DDPM alone: the one-step posterior
mean E[x_0 | y] (Tweedie), ancestral sampling from t, DDIM from t, the mean of K ancestral chains. DIP alone: the
report's plain DIP and the official Ulyanov et al. protocol (``dip.PROTOCOLS``), each at its validated budget,
and each one's oracle best iteration (upper bound).
Hybrids, built on the validated official-protocol DIP fit (the stronger DIP; ``study_hybrids``):

* ``tdpm_matched``: TDPM-DIP with a matched state (``tdpm.matched_state``): the DIP output at budget k,
  topped up with fresh noise to the level T_trunc expects (its error estimate corrected by the fraction of the
  noise the DIP has fitted, calibrated per k on validation), then T_trunc ancestral steps; (k, T_trunc) validated.
  Its (k, T_trunc) per sigma is the book's validated T_trunc (chapter 06 reads it from ``selection``);
* ``tdpm_matched_pm``: the same state read out by its posterior mean (1 NFE); its own (k, T_trunc) validated;
* ``tdpm_matched_mean``: the same state read out by the mean of n ancestral chains at ``tdpm_matched``'s
  (k, T_trunc), n validated among ``readout_chains``;
* ``sdedit``: Example 1, the DIP output at budget k re-noised to t_0 with fresh noise (SDEdit, Meng et al.
  2022; ``example1.dip_init_ddpm``), then t_0 reverse steps; (k, t_0) validated;
* ``dip_polish`` (``polish=True``): the earlier chapters' variant ``tdpm.denoise``, a DIP fit to y rescaled to
  T_trunc, then T_trunc steps, at the matched variant's validated (k, T_trunc) -- its own DIP fit.

``noise_ratio`` (TDPM-DIP rows) is the actual over the expected noise std of the state handed to the chain,
measured with the clean image (a diagnostic, ``tdpm.noise_ratio``); 1 means the state the DDPM expects. The
matched rows also carry ``absorbed`` and the ratio at T_trunc = t with and without it (``study_hybrids``).

One DIP fit per (protocol, image) to the largest candidate budget gives every budget's output (``keep``), so
the budget search costs no extra fitting.

Selection table (``SELECTION_COLUMNS``): one row per (sigma, method_key, candidate) with its mean validation
PSNR; ``chosen`` is True on exactly one row per (sigma, method_key) of a tuned method, the candidate whose
``params`` the method's rows carry; ``k`` (DIP budget) and ``level`` (T_trunc, or t_0 for ``sdedit``) are
given where the candidate has them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pandas as pd
import torch

from ..evaluation import metrics, perceptual
from ..methods import schedules, tdpm
from ..workflow import data, results
from . import denoising_fits, denoising_hybrids, denoising_methods
from .denoising_fits import dip_input, fit_budgets  # noqa: F401  (the study's DIP fit, as chapters 02 and 05 call it)

METHOD_LABELS = {
    "noisy": "noisy input (floor)",
    "train_mean": "training-mean image (floor)",
    "nlm": "non-local means (floor)",
    "tweedie": "DDPM posterior mean, 1 step",
    "ddpm": "DDPM ancestral from t",
    "ddim": "DDIM from t",
    "mean_k": "DDPM, mean of K chains",
    "dip_plain": "DIP, report's protocol",
    "dip_official": "DIP, official protocol",
    "dip_plain_oracle": "DIP, report's protocol, best iteration (upper bound)",
    "dip_official_oracle": "DIP, official protocol, best iteration (upper bound)",
    "tdpm_matched": "TDPM-DIP, matched state",
    "tdpm_matched_pm": "TDPM-DIP, matched state, posterior-mean readout",
    "tdpm_matched_mean": "TDPM-DIP, matched state, mean of n chains",
    "sdedit": "DIP then SDEdit (Example 1)",
    "dip_polish": "TDPM-DIP, earlier variant: DIP then T_trunc polishing steps",
}
FAMILY = {"noisy": "floor", "train_mean": "floor", "nlm": "floor", "tweedie": "DDPM", "ddpm": "DDPM", "ddim": "DDPM",
          "mean_k": "DDPM", "dip_plain": "DIP", "dip_official": "DIP", "dip_plain_oracle": "upper bound",
          "dip_official_oracle": "upper bound", "tdpm_matched": "hybrid", "tdpm_matched_pm": "hybrid",
          "tdpm_matched_mean": "hybrid", "sdedit": "hybrid", "dip_polish": "hybrid"}


DDPM_ALONE = ("tweedie", "ddpm", "ddim", "mean_k")  # the DDPM-alone rows, in the order they draw


def split_eval(held: torch.Tensor, *, n_val: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (validation, test) images from the held-out set, deterministic in ``seed``."""
    for name, v in (("n_val", n_val), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not allowed; use a positive integer")
    if n_val + n_test > len(held):
        raise ValueError(f"n_val + n_test = {n_val + n_test} is not allowed; the held-out set has {len(held)} images")
    perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed * 1_000_003 + 77))
    return held[perm[:n_val]], held[perm[n_val:n_val + n_test]]


def observe(clean: torch.Tensor, sigma: int, scheduler, *, seed: int) -> tuple[torch.Tensor, int]:
    """(y, t): the observation at level t(sigma), image i's noise from its own generator."""
    t = schedules.t_for_sigma(scheduler, sigma)
    noise = torch.stack([torch.randn(clean.shape[1:], generator=g)
                         for g in denoising_fits.image_generators(seed, sigma, len(clean), 1)])
    return schedules.q_sample(clean, t, noise, scheduler).float(), t


def score(x: torch.Tensor, clean: torch.Tensor) -> dict:
    """Per-image PSNR, SSIM and LPIPS (NaN where LPIPS's weights cannot be had: ``perceptual.lpips_status``)."""
    return dict(psnr=metrics.psnr(x, clean), ssim=metrics.ssim_or_nan(x, clean), lpips=perceptual.lpips_or_nan(x, clean))


# per-image diagnostics of the matched methods (NaN elsewhere): the state's noise ratio at the method's level,
# the absorbed fraction used, and the ratio of a state matched at T_trunc = t with and without that correction
DIAGNOSTICS = ("noise_ratio", "absorbed", "noise_ratio_at_t", "noise_ratio_at_t_uncalibrated")
SELECTION_COLUMNS = ["sigma", "t", "method_key", "params", "val_psnr", "chosen", "k", "level", "absorbed"]


def _rows(key, x, clean, *, split, nfe, its, params="", diag=None):
    s = score(x, clean)
    diag = diag or {}
    return [dict(method_key=key, method=METHOD_LABELS[key], family=FAMILY[key], split=split, image=i,
                 psnr=float(s["psnr"][i]), ssim=float(s["ssim"][i]), lpips=float(s["lpips"][i]), nfe=nfe,
                 dip_iterations=its, params=params,
                 **{d: float("nan") if diag.get(d) is None else float(diag[d][i]) for d in DIAGNOSTICS})
            for i in range(len(clean))]


def _check_grid(name, values, *, integer: bool) -> tuple:
    values = tuple(values) if isinstance(values, (tuple, list)) else ()
    ok = values and all(not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and 0 < v < math.inf
                        for v in values)
    if not ok:
        raise ValueError(f"{name}={values!r} is not allowed; use a non-empty tuple of positive "
                         f"{'integers' if integer else 'numbers'}")
    return values


def run(unet, scheduler, *, val: torch.Tensor, test: torch.Tensor, train_mean: torch.Tensor, sigma: int, seed: int,
        device, budgets_plain, budgets_official, t_truncs, t0s, n_chains: int = 3, readout_chains=(1, 4, 8),
        nlm_h_factors=(0.4, 0.6, 0.8, 1.0, 1.2), nlm_patch_sizes=(3, 5), fits: dict | None = None,
        dip_presets: dict | None = None, cache_dir=None, polish: bool = True):
    """Run the study at one noise level; returns ``(rows, selection, outputs, fits)``.

    ``rows``: one row per (method, split, image) with psnr, ssim, lpips, nfe, dip_iterations, the chosen
    ``params`` and the diagnostics ``DIAGNOSTICS``; validation rows of tuned methods are their chosen
    candidate's. No seconds: cost is NFE and DIP iterations (wall clock comes from one benchmark, chapter 08).
    ``selection`` (``SELECTION_COLUMNS``): every candidate's mean validation PSNR, ``chosen`` marking the one
    used, with its DIP budget ``k`` and ``level`` (T_trunc or t_0) where it has them.
    ``outputs``: the test images' estimates per method (for figures).
    ``t_truncs`` / ``t0s`` are fractions of t(sigma) (rounded, at least 1); ``readout_chains`` the candidate
    numbers of chains of ``tdpm_matched_mean``; ``nlm_h_factors`` x ``nlm_patch_sizes`` the NLM grid.
    ``fits`` may hold precomputed ``fit_budgets`` results per protocol (they depend only on the images, sigma and
    seed); ``fits`` returned holds both protocols' fits, for reuse by the chapters on the examples.
    ``dip_presets`` maps a protocol to its network preset (default: the protocol's own, ``dip.PROTOCOLS``).
    """
    readout_chains = _check_grid("readout_chains", readout_chains, integer=True)
    nlm_h_factors = _check_grid("nlm_h_factors", nlm_h_factors, integer=False)
    nlm_patch_sizes = _check_grid("nlm_patch_sizes", nlm_patch_sizes, integer=True)
    clean = torch.cat([val, test])
    n_val = len(val)
    y, t = observe(clean, sigma, scheduler, seed=seed)
    # one context for every image: the DDPM-alone chains draw from one generator (the ancestral chain, then the
    # mean of K chains), the DIP fits use the study's seeding and cache (``Context.dip_fit``)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 5000 + sigma)
    ctx = denoising_methods.Context(unet=unet, scheduler=scheduler, t=t, device=device, n_chains=n_chains,
                                    generators=dict(ddpm=gen, mean_k=gen), seed=seed, dip_seed=seed, sigma=sigma,
                                    dip_budgets={"plain": budgets_plain, "official": budgets_official},
                                    dip_presets=dict(dip_presets or {}), cache_dir=cache_dir, fits=dict(fits or {}))
    v_obs = (1 - ctx.abar) / ctx.abar
    y_scaled = ctx.y_scaled(y).float()
    parts = {"val": slice(0, n_val), "test": slice(n_val, len(clean))}
    rows, outputs, selection = [], {}, []

    def add(key, x, *, nfe=0, its=0, params="", diag=None):
        for name, sl in parts.items():
            rows.extend(_rows(key, x[sl], clean[sl], split=name, nfe=nfe, its=its, params=params,
                              diag={d: None if v is None else v[sl] for d, v in (diag or {}).items()}))
        outputs[key] = x[parts["test"]]

    def choose(key, candidates: dict, fields=None) -> str:
        """The candidate (params -> validation estimate, in listed order) with the best mean validation PSNR
        (ties: the first listed, the cheapest); every candidate goes into ``selection``."""
        means = {p: float(metrics.psnr(x, val).double().mean()) for p, x in candidates.items()}
        best = max(means, key=means.get)
        selection.extend(dict(method_key=key, params=p, val_psnr=v, chosen=p == best, **(fields or {}).get(p, {}))
                         for p, v in means.items())
        return best

    def run_one(key, c=ctx, images=slice(None)):
        return denoising_methods.run_methods(c, y[images], [key])[key]

    # floors; non-local means (the method table's) with the true sigma, its strength and patch size chosen on
    # validation
    add("noisy", y_scaled.clamp(-1, 1))
    add("train_mean", train_mean.expand_as(clean))
    grid = {f"h={h:g}*sigma, patch={p}": dataclasses.replace(ctx, nlm_h_factor=h, nlm_patch_size=p)
            for h, p in itertools.product(nlm_h_factors, nlm_patch_sizes)}
    on_val = {name: run_one("nlm", c, parts["val"]).x0 for name, c in grid.items()}
    best = choose("nlm", on_val)
    add("nlm", torch.cat([on_val[best], run_one("nlm", grid[best], parts["test"]).x0]), params=best)

    # DDPM alone, on every image at once, in this order (``DDPM_ALONE``)
    for key, est in denoising_methods.run_methods(ctx, y, DDPM_ALONE).items():
        add(key, est.x0, nfe=est.nfe, params=f"K={n_chains}" if key == "mean_k" else "")

    # DIP alone: one fit per protocol to the largest budget (the oracles' clean image comes with it), the budget
    # chosen on validation
    dips = denoising_methods.run_methods(ctx, y, ("dip_oracle", "dip_official_oracle", "dip_plain", "dip_official"),
                                         clean=clean)
    for protocol, oracle in (("plain", "dip_oracle"), ("official", "dip_official_oracle")):
        cands = dips[f"dip_{protocol}"]
        best = choose(f"dip_{protocol}", {n: e.x0[parts["val"]] for n, e in cands.items()},
                      {n: dict(k=e.dip_iterations) for n, e in cands.items()})
        add(f"dip_{protocol}", cands[best].x0, its=cands[best].dip_iterations, params=best)
        add(f"dip_{protocol}_oracle", dips[oracle].x0, its=dips[oracle].dip_iterations, params="per image")

    # hybrids on the official-protocol fit
    chosen = denoising_hybrids.run_hybrids(
        unet, scheduler, fit=ctx.fits["official"], y=y, y_scaled=y_scaled, clean=clean, n_val=n_val, t=t,
        v_obs=v_obs, sigma=sigma, seed=seed, t_truncs=t_truncs, t0s=t0s, readout_chains=readout_chains, add=add,
        choose=choose)

    if polish:
        # the earlier chapters' variant, "DIP + T_trunc polishing steps" (the table's ``tdpm_dip``), at the matched
        # variant's validated (k, T_trunc): its own DIP fit (the target is y rescaled to T_trunc), then T_trunc steps
        k, level = chosen["tdpm_matched"]
        polish_ctx = dataclasses.replace(
            ctx, tdpm_level=level, dip_iterations=k, z=dip_input("official", len(clean), clean.shape[-1], seed=seed,
                                                                 sigma=sigma),
            generators=dict(tdpm=torch.Generator().manual_seed(seed * 1_000_003 + 7000 + sigma)),
            dip_kw=dict(protocol="official", preset=ctx.dip_presets.get("official"), device=device))
        est = run_one("tdpm_dip", polish_ctx)
        add("dip_polish", est.x0, nfe=est.nfe, its=k, params=f"k={k}, T_trunc={level}",
            diag=dict(noise_ratio=tdpm.noise_ratio(est.state, clean, level, scheduler)))

    df = pd.DataFrame(rows)
    df.insert(0, "sigma", sigma)
    df.insert(1, "t", t)
    sel = pd.DataFrame(selection).reindex(columns=SELECTION_COLUMNS[2:]).astype(dict(k="Int64", level="Int64"))
    sel.insert(0, "sigma", sigma)
    sel.insert(1, "t", t)
    return df, sel, dict(outputs, clean=clean[parts["test"]], y_scaled=y_scaled[parts["test"]]), ctx.fits


# Config fields that do not change the study's rows: where a run writes and under which name, the device asked for
# (the resolved one is compared), and which sigmas and T_truncs it covers (the rows are filtered by sigma instead).
_SHARED_IGNORED = {"extra", "run_name", "results_dir", "device", "sigmas", "t_truncs"}


def shared_rows(cfg, *, sigmas, keys, n_val: int, n_test: int, source: str = "03_tdpm_dip"):
    """The rows and selection that chapter ``source``'s finished run of this study computed (``study_rows.csv``,
    ``study_selection.csv``), at ``sigmas`` and for the methods ``keys``, or None when there is no such run or it
    ran with a different configuration: another value in any Config field that changes the rows (all but
    ``_SHARED_IGNORED``), other ``t0s``, data, device, or numbers of images. Each row depends only on those and on
    sigma, so a chapter that needs some of the same rows (04) reads them instead of computing them again."""
    d = Path(cfg.results_dir) / cfg.profile / source
    if not all((d / n).exists() for n in ("results.csv", "config.json", "study_rows.csv", "study_selection.csv")):
        return None
    theirs = results.read_json(d / "config.json")
    mine = json.loads(json.dumps(dict(cfg.to_dict(), data_resolved=data.resolve_source(cfg.data_source or None),
                                      device_resolved=str(cfg.torch_device)), default=str))
    fields = {f.name for f in dataclasses.fields(cfg)} - _SHARED_IGNORED | {"t0s", "data_resolved", "device_resolved"}
    if (any(theirs.get(k) != mine.get(k) for k in fields) or not set(sigmas) <= set(theirs.get("sigmas", ()))
            or (theirs.get("n_val_used"), theirs.get("n_test_used")) != (n_val, n_test)):
        return None
    rows, sel = pd.read_csv(d / "study_rows.csv"), pd.read_csv(d / "study_selection.csv")
    rows = rows[rows.sigma.isin(sigmas) & rows.method_key.isin(keys)].reset_index(drop=True)
    sel = sel[sel.sigma.isin(sigmas) & sel.method_key.isin(keys)].reset_index(drop=True)
    return rows, sel.astype(dict(k="Int64", level="Int64"))
