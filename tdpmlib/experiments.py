"""Protocol runners shared by the notebooks: TDPM-DIP and its baselines for generation and for denoising.

Two experiments, each a single call that returns tidy tables:

* ``run_generation`` -- sample images with DDPM (ancestral), DDIM and TDPM-DIP (Algorithm 3,
  ``tdpm.tdpm_dip``) and score them against a reference set *the method did not fit*, with SWD, FID/KID
  (when Inception weights are available) and the memorisation test. TDPM-DIP needs clean images to build
  its DIP target, so it is run twice: on training images, as the report did, and on held-out images.
* ``run_denoising`` -- every method sees only the observation y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
  (``tdpm.observe``) and is scored against the clean image: one row per (setting, method, image).
  Three "report protocol" rows reproduce the measurements that give the report its ~32 dB: a DIP fit to
  the clean image and scored against that same image, a DIP fit to y scored against its own target
  y / sqrt(abar_t), and TDPM-DIP whose target is built from the clean image.

``summarise`` turns the per-image denoising rows into mean ± std per group.

Method labels live in ``GENERATION_METHODS`` and ``DENOISING_METHODS`` (stable key -> label); every
table carries both the label (``method``) and the key (``method_key``), so later notebooks can select
rows by key while the tables stay readable. ``METHOD_ORDER`` is the display order of the keys.

Randomness: every draw comes from a CPU ``torch.Generator`` seeded from ``seed`` and a fixed offset per
purpose (``OFFSETS``); denoising offsets also depend on the setting's name (CRC32), so adding or
reordering settings leaves the observations of the others unchanged.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import torch

from . import ddpm, dip, metrics, models, schedules, tdpm

# --------------------------------------------------------------------------- #
# Method registry
# --------------------------------------------------------------------------- #
GENERATION_METHODS = {
    "ddpm": "DDPM (1000 steps)",
    "ddim50": "DDIM (50 steps)",
    "ddim100": "DDIM (100 steps)",
    "tdpm_train": "TDPM-DIP, fit to training images (report)",
    "tdpm_held": "TDPM-DIP, fit to held-out images",
    "real": "Real held-out images (reference floor)",
}

# Labels with {fields} are filled by ``denoising_labels`` from the run's settings.
DENOISING_METHODS = {
    "ddpm": "DDPM ancestral from t",
    "tweedie": "DDPM one-step posterior mean (Tweedie)",
    "ddim": "DDIM from t",
    "mean_k": "Mean of K = {n_chains} ancestral samples",
    "dip_short": "DIP on y/√ᾱ ({dip_iterations} it.)",
    "dip_long": "DIP on y/√ᾱ ({dip_iterations_long} it.)",
    "dip_oracle": "DIP oracle best iteration (upper bound)",
    "tdpm_dip": "TDPM-DIP (DIP fit to y, T_trunc = {t_trunc})",
    "nlm": "Non-local means (σ given)",
    "report_dip_clean": "DIP fit to the clean image (report), vs its target",
    "report_dip_y": "DIP fit to y, vs its own target y/√ᾱ (report's measurement)",
    "report_tdpm_clean": "TDPM-DIP, target built from the clean image (report)",
}

# The denoising methods whose rows follow the report's protocol (not comparable with the others).
REPORT_PROTOCOL = ("report_dip_clean", "report_dip_y", "report_tdpm_clean")

METHOD_ORDER = [*GENERATION_METHODS, *(k for k in DENOISING_METHODS if k not in GENERATION_METHODS)]

# Generator offsets, one per purpose (added to the run's seed through ``_generator``).
OFFSETS = dict(
    gen_shuffle=3000, gen_ddpm=3001, gen_ddim50=3002, gen_ddim100=3003, gen_tdpm_train=3004, gen_tdpm_held=3005,
    den_report_dip=3100, den_report_tdpm=3110,  # + schedule index
    den_setting=10_000,                         # + 10 * (crc32(setting name) % 100_000) + purpose (0..4)
)


def denoising_labels(*, dip_iterations: int, dip_iterations_long: int, n_chains: int, t_trunc: int) -> dict:
    """Key -> label of the denoising methods, with the run's iteration counts filled in."""
    fields = dict(dip_iterations=dip_iterations, dip_iterations_long=dip_iterations_long, n_chains=n_chains,
                  t_trunc=t_trunc)
    return {k: v.format(**fields) for k, v in DENOISING_METHODS.items()}


def _generator(seed: int, offset: int) -> torch.Generator:
    """The same seeding as ``Config.generator``: a CPU generator from (seed, offset)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + offset)


def _check_int(name, v, low=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r} is not allowed; use an integer >= {low}")
    return v


def _chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, NaN for images smaller than SSIM's 11-pixel window (tests use 8 px)."""
    if min(pred.shape[-2:]) < 11:
        return torch.full((len(pred),), float("nan"))
    return metrics.ssim(pred, target)


def dip_batch_limit(preset: str, *, resolution: int, device, cap: int, bytes_per_param: int = 24,
                    fraction: float = 0.5) -> int:
    """How many DIP networks to fit at once. ``cap`` on the CPU; on CUDA, also at most what fits in
    ``fraction`` of the free GPU memory at ``bytes_per_param`` bytes per network parameter (weights, gradients,
    two Adam moments and an allowance for activations: a rough budget, not a measurement). The paper-size DIP
    has about 62 M parameters, so 500 of them at once would not fit on any GPU."""
    _check_int("cap", cap, low=1)
    if torch.device(device).type != "cuda":
        return cap
    with torch.device("meta"):
        n_params = models.count_parameters(models.make_unet(preset, resolution=resolution))
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, min(cap, int(fraction * free // (bytes_per_param * n_params))))


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
# Generation
# --------------------------------------------------------------------------- #
def _fit_tdpm_batches(unet, scheduler, images, *, t_trunc, dip_iterations, generator, device, dip_preset, dip_lr,
                      seed, sample_batch):
    """tdpm.tdpm_dip on ``images`` in batches of at most ``sample_batch`` images (one DIP network per image;
    on CUDA also at most ``dip_batch_limit`` networks)."""
    size = dip_batch_limit(dip_preset, resolution=images.shape[-1], device=device, cap=sample_batch)
    outs = []
    for c, (a, b) in enumerate(_chunks(len(images), size)):
        res = tdpm.tdpm_dip(unet, scheduler, images[a:b], t_trunc=t_trunc, dip_iterations=dip_iterations,
                            generator=generator, device=device, preset=dip_preset, lr=dip_lr,
                            seed=seed * 1_000 + c, record_every=max(1, dip_iterations))
        outs.append(res.x0)
    return torch.cat(outs)


def run_generation(unet, scheduler, *, train: torch.Tensor, held: torch.Tensor, n: int, resolution: int, device,
                   generator_fn, dip_preset: str, dip_lr: float, dip_iterations: int = 100, t_trunc: int = 10,
                   sample_batch: int, seed: int, feature_extractor=None, methods=None):
    """Generate with every method and score the samples; returns ``(table, samples)``.

    Methods (keys of ``GENERATION_METHODS``; ``methods`` selects a subset, the floor row is always added):

    * ``ddpm`` -- ancestral sampling from pure noise, T (= 1000) network evaluations per image;
    * ``ddim50``, ``ddim100`` -- deterministic DDIM over 50 / 100 levels;
    * ``tdpm_train`` -- TDPM-DIP as the report ran it: the DIP target is built from ``n`` training images
      (the first ``n`` of ``train`` after a shuffle seeded by ``generator_fn``), ``t_trunc`` reverse steps;
    * ``tdpm_held`` -- the same on held-out images; ``n`` is capped by ``len(held)`` (see the ``note``);
    * ``real`` -- no method: the ``n`` training images the train-fit TDPM-DIP used, scored against the
      held-out set like a method's samples. It gives each metric's value for real images ("floor").

    Reference set (``reference_set`` column): the images a method did not fit. The DDPM was trained on
    ``train``, so DDPM, DDIM, the train-fit TDPM-DIP and the floor are scored against ``held``; the
    held-out-fit TDPM-DIP is scored against as many training images (the last of the shuffle: disjoint from
    the train-fit inputs whenever ``len(train) >= n + len(held)``).

    Columns: method, method_key, n, reference_set, n_reference, seconds (wall clock of the whole method,
    CUDA-synchronised, DIP fitting included), seconds_per_image, nfe (DDPM network evaluations per image),
    dip_iterations (per image), fid, kid_mean, kid_std, fid_status, swd (``metrics.swd(...)["swd_mean"]``),
    ratio_median, frac_copies, d_train_mean, d_held_mean (``metrics.memorisation(samples, train, held)``),
    and for TDPM-DIP: ratio_median_fit / frac_copies_fit (``metrics.memorisation(samples, fitted images,
    reference set)``) and d_fit_mean (mean RMS distance of each sample to the image it was fit to),
    and a free-text note. ``samples`` maps each label to its images (CPU, [-1, 1]).

    FID/KID: when Inception weights are unavailable (offline), the first ``metrics.fid_kid`` call says so and
    the remaining rows reuse that status with None values instead of retrying.
    """
    _check_int("n", n, low=2)
    _check_int("sample_batch", sample_batch, low=1)
    _check_int("dip_iterations", dip_iterations)
    tdpm.check_t_trunc(t_trunc, scheduler)
    if len(held) < 2:
        raise ValueError(f"held has {len(held)} images; the reference set needs at least 2")
    if n > len(train):
        raise ValueError(f"n={n!r} is not allowed; the training set has only {len(train)} images")
    methods = list(GENERATION_METHODS) if methods is None else list(methods)
    bad = [m for m in methods if m not in GENERATION_METHODS]
    if bad:
        raise ValueError(f"methods {bad} are not allowed; use keys of {list(GENERATION_METHODS)}")
    T = scheduler.config.num_train_timesteps

    perm = torch.randperm(len(train), generator=generator_fn(OFFSETS["gen_shuffle"]))
    train_fit = train[perm[:n]]
    n_held = min(n, len(held))
    held_fit = held[:n_held]
    train_ref = train[perm[len(perm) - n_held:]]

    samples, rows = {}, []
    fid_cache = {}

    def score(key, fake, *, reference, reference_set, seconds, nfe, dip_its, fitted=None, note=""):
        label = GENERATION_METHODS[key]
        samples[label] = fake
        if feature_extractor is None and "unavailable" in fid_cache:
            fk = dict(fid=None, kid_mean=None, kid_std=None, status=fid_cache["unavailable"])
        else:
            fk = metrics.fid_kid(reference, fake, feature_extractor=feature_extractor, device=device, seed=seed)
            if fk["status"].startswith("unavailable"):
                fid_cache["unavailable"] = fk["status"]
        mem = metrics.memorisation(fake, train, held)
        row = dict(method=label, method_key=key, n=len(fake), reference_set=reference_set,
                   n_reference=len(reference), seconds=seconds, seconds_per_image=seconds / len(fake), nfe=nfe,
                   dip_iterations=dip_its, fid=fk["fid"], kid_mean=fk["kid_mean"], kid_std=fk["kid_std"],
                   fid_status=fk["status"], swd=metrics.swd(reference, fake, seed=seed)["swd_mean"],
                   ratio_median=mem["ratio_median"], frac_copies=mem["frac_copies"],
                   d_train_mean=mem["d_train_mean"], d_held_mean=mem["d_held_mean"],
                   ratio_median_fit=None, frac_copies_fit=None, d_fit_mean=None, note=note)
        if fitted is not None:
            mem_fit = metrics.memorisation(fake, fitted, reference)
            d_fit = ((fake - fitted).flatten(1).norm(dim=1) / math.sqrt(fake[0].numel())).mean()
            row.update(ratio_median_fit=mem_fit["ratio_median"], frac_copies_fit=mem_fit["frac_copies"],
                       d_fit_mean=float(d_fit))
        rows.append(row)

    held_name = f"held-out images ({len(held)})"
    for key, method, steps in (("ddpm", "ddpm", None), ("ddim50", "ddim", 50), ("ddim100", "ddim", 100)):
        if key not in methods:
            continue
        with metrics.CudaTimer(device) as timer:
            fake = ddpm.sample(unet, scheduler, n=n, resolution=resolution, device=device, method=method,
                               num_steps=steps, batch_size=sample_batch,
                               generator=generator_fn(OFFSETS[f"gen_{key}"]))
        score(key, fake, reference=held, reference_set=held_name, seconds=timer.seconds,
              nfe=ddpm.network_evaluations(T, method=method, num_steps=steps), dip_its=0)

    tdpm_kw = dict(t_trunc=t_trunc, dip_iterations=dip_iterations, device=device, dip_preset=dip_preset,
                   dip_lr=dip_lr, sample_batch=sample_batch)
    if "tdpm_train" in methods:
        with metrics.CudaTimer(device) as timer:
            fake = _fit_tdpm_batches(unet, scheduler, train_fit, generator=generator_fn(OFFSETS["gen_tdpm_train"]),
                                     seed=seed, **tdpm_kw)
        score("tdpm_train", fake, reference=held, reference_set=held_name, seconds=timer.seconds, nfe=t_trunc,
              dip_its=dip_iterations, fitted=train_fit, note=f"fit to {n} training images")
    if "tdpm_held" in methods:
        with metrics.CudaTimer(device) as timer:
            fake = _fit_tdpm_batches(unet, scheduler, held_fit, generator=generator_fn(OFFSETS["gen_tdpm_held"]),
                                     seed=seed + 1, **tdpm_kw)
        note = f"fit to {n_held} held-out images"
        if n_held < n:
            note += f" (n capped by the {len(held)} held-out images)"
        score("tdpm_held", fake, reference=train_ref, reference_set=f"training images it did not fit ({n_held})",
              seconds=timer.seconds, nfe=t_trunc, dip_its=dip_iterations, fitted=held_fit, note=note)
    score("real", train_fit, reference=held, reference_set=held_name, seconds=0.0, nfe=0, dip_its=0,
          note=f"{n} real training images scored as if generated: the metrics' value for real data "
               "(memorisation columns: they are training images)")
    return pd.DataFrame(rows), samples


def copy_verdict(row, *, copy_fraction: float = 0.5, ratio: float = 0.5) -> str:
    """Plain wording for a TDPM-DIP generation row: does it reproduce the images it was fit to?

    "reproduces the images it was fit to" when at least ``copy_fraction`` of the samples are copies of a
    fitted image (``frac_copies_fit``: nearer to it than half the distance to the nearest unfitted image)
    or the median distance ratio ``ratio_median_fit`` is below ``ratio``; otherwise "does not reproduce the
    images it was fit to closely enough to count as copies" (which says nothing about their quality: an
    under-fitted DIP gives noise, not new images).
    """
    if row["frac_copies_fit"] >= copy_fraction or row["ratio_median_fit"] < ratio:
        return "reproduces the images it was fit to"
    return "does not reproduce the images it was fit to closely enough to count as copies"


def nearest_rows(generated: torch.Tensor, train: torch.Tensor, held: torch.Tensor, *, k: int = 8,
                 prefix: str = "") -> dict:
    """Rows for ``plotting.image_rows``: the first ``k`` generated images, their nearest training image and
    their nearest held-out image (``metrics.nearest_distances``, RMS on [-1, 1]), distances in the labels."""
    g = generated[:k]
    d_tr, i_tr = metrics.nearest_distances(g, train)
    d_he, i_he = metrics.nearest_distances(g, held)
    return {f"{prefix}generated": g,
            f"{prefix}nearest training\nimage (mean RMS {d_tr.mean():.3f})": train[i_tr],
            f"{prefix}nearest held-out\nimage (mean RMS {d_he.mean():.3f})": held[i_he]}


# --------------------------------------------------------------------------- #
# Denoising
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
    return OFFSETS["den_setting"] + 10 * (zlib.crc32(name.encode()) % 100_000)


def _nl_means(y_scaled: torch.Tensor, sigma01: float) -> torch.Tensor:
    """skimage non-local means per image on the [0, 1] scale (not clipped), returned on [-1, 1]."""
    from skimage.restoration import denoise_nl_means

    patch = 5 if min(y_scaled.shape[-2:]) >= 24 else 3
    out = []
    for img in y_scaled:
        u = ((img.double() + 1) / 2).permute(1, 2, 0).numpy()
        d = denoise_nl_means(u, patch_size=patch, patch_distance=6, h=0.8 * sigma01, sigma=sigma01,
                             fast_mode=True, channel_axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(d)).permute(2, 0, 1).float() * 2 - 1)
    return torch.stack(out)


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
    ``y = tdpm.observe(clean, t, scheduler, ...)`` and every corrected-protocol method sees only y:

    1. ``ddpm`` -- ancestral reverse chain from level t (the report's baseline), t evaluations;
    2. ``tweedie`` -- one-step posterior mean E[x_0 | y] (``tdpm.tweedie``), 1 evaluation;
    3. ``ddim`` -- deterministic DDIM from t over min(t, 50) levels;
    4. ``mean_k`` -- the mean of ``n_chains`` independent ancestral chains from the same y, K·t evaluations;
    5. ``dip_short`` / ``dip_long`` / ``dip_oracle`` -- ONE ``dip.fit_dip`` on y / sqrt(abar_t) for
       ``dip_iterations_long`` iterations: its output after ``dip_iterations`` (kept), after all iterations,
       and the oracle best iteration against the clean image (uses the clean image: an upper bound, not a
       method). Timing: one fit costs the same per iteration, so the short row is charged
       ``dip_iterations / dip_iterations_long`` of the fit's measured wall time (a share, not a separate run);
    6. ``tdpm_dip`` -- ``tdpm.denoise``: DIP fit to y rescaled to level T_trunc = min(t_trunc, t), then
       T_trunc reverse steps. It shares the DIP's input z and initialisation with 5, so with T_trunc = 0 it
       would equal ``dip_short``;
    7. ``nlm`` -- scikit-image non-local means on y / sqrt(abar_t) on the [0, 1] scale with the true
       equivalent sigma = sqrt((1 - abar_t) / abar_t) / 2, h = 0.8 sigma, patch 5 (3 below 24 px), distance 6.

    Report-protocol rows (``protocol="report"``), to show where the report's numbers come from:

    8. ``report_dip_clean`` -- ``dip.fit_dip(clean, iterations=dip_iterations)`` scored against its target,
       the clean image (``measured_against="dip_target"``). It does not depend on y: fit once and repeated
       in every setting;
    9. ``report_dip_y`` -- the fit of 5 at ``dip_iterations`` scored against its own target y / sqrt(abar_t);
    10. ``report_tdpm_clean`` -- ``tdpm.tdpm_dip`` with the target built from the clean image, scored
        against the clean image. It does not depend on y: run once per schedule, repeated in its settings.

    Columns: setting, schedule, t, sigma255 (the equivalent sigma of level t, ``schedules.sigma_at``),
    sigma255_requested, method, method_key, protocol, measured_against, image (index into ``clean``), psnr,
    ssim (NaN below 11 px), seconds (the method's wall time / number of images), nfe, dip_iterations.
    PSNR/SSIM use ``metrics.psnr``/``metrics.ssim``: both images clipped to [-1, 1] and mapped to [0, 1].
    Images run in chunks of ``batch_size`` (on CUDA at most ``dip_batch_limit`` DIP networks). ``methods``
    selects a subset of ``DENOISING_METHODS`` keys.
    With ``return_outputs=True`` returns ``(df, outputs)``, ``outputs[setting name]`` a dict with
    ``y``, ``y_scaled`` (y / sqrt(abar_t)) and one entry per method key.
    """
    _check_int("dip_iterations", dip_iterations, low=1)
    _check_int("dip_iterations_long", dip_iterations_long, low=1)
    _check_int("n_chains", n_chains, low=1)
    _check_int("t_trunc", t_trunc)
    _check_int("batch_size", batch_size, low=1)
    if dip_iterations > dip_iterations_long:
        raise ValueError(f"dip_iterations={dip_iterations!r} is not allowed; "
                         f"use at most dip_iterations_long={dip_iterations_long}")
    if clean.ndim != 4 or clean.shape[1] != 3 or len(clean) == 0:
        raise ValueError(f"clean has shape {tuple(clean.shape)}; use N x 3 x H x W with N >= 1")
    methods = list(DENOISING_METHODS) if methods is None else list(methods)
    bad = [m for m in methods if m not in DENOISING_METHODS]
    if bad:
        raise ValueError(f"methods {bad} are not allowed; use keys of {list(DENOISING_METHODS)}")
    _check_settings(settings, unets)
    labels = denoising_labels(dip_iterations=dip_iterations, dip_iterations_long=dip_iterations_long,
                              n_chains=n_chains, t_trunc=t_trunc)
    dip_kw = dict(preset=dip_preset, lr=dip_lr, device=device)
    chunk_size = dip_batch_limit(dip_preset, resolution=clean.shape[-1], device=device, cap=batch_size)
    chunks = _chunks(len(clean), chunk_size)
    rows, all_outputs = [], {}

    # Report-protocol fits that do not depend on the observation: computed once, repeated per setting.
    report_cache = {}

    def report_dip_clean():
        if "dip" not in report_cache:
            g, outs, secs = _generator(seed, OFFSETS["den_report_dip"]), [], 0.0
            for c, (a, b) in enumerate(chunks):
                fit = dip.fit_dip(clean[a:b], iterations=dip_iterations, generator=g, seed=seed * 1_000 + 500 + c,
                                  record_every=dip_iterations, **dip_kw)
                outs.append(fit.output)
                secs += fit.seconds
            report_cache["dip"] = (torch.cat(outs), secs)
        return report_cache["dip"]

    def report_tdpm_clean(schedule):
        if ("tdpm", schedule) not in report_cache:
            unet, sched = unets[schedule]
            g = _generator(seed, OFFSETS["den_report_tdpm"] + sorted(unets).index(schedule))
            outs, secs = [], 0.0
            for c, (a, b) in enumerate(chunks):
                res = tdpm.tdpm_dip(unet, sched, clean[a:b], t_trunc=t_trunc, dip_iterations=dip_iterations,
                                    generator=g, seed=seed * 1_000 + 700 + c, record_every=dip_iterations, **dip_kw)
                outs.append(res.x0)
                secs += res.seconds
            report_cache[("tdpm", schedule)] = (torch.cat(outs), secs)
        return report_cache[("tdpm", schedule)]

    for setting in settings:
        name, schedule, t = setting["name"], setting["schedule"], setting["t"]
        unet, sched = unets[schedule]
        off = _setting_offset(name)
        g_obs, g_ddpm, g_mean, g_z, g_tdpm = (_generator(seed, off + i) for i in range(5))
        ab = float(schedules.alpha_bar(sched, t))
        s = math.sqrt(ab)
        sigma01 = math.sqrt((1 - ab) / ab) / 2
        tt = min(t_trunc, t)
        y = tdpm.observe(clean, t, sched, generator=g_obs)
        y_scaled = y / s
        z_all = torch.randn(clean.shape, generator=g_z)  # the DIP input, shared by the DIP rows and TDPM-DIP
        outs = {k: [] for k in methods}
        secs = {k: 0.0 for k in methods}
        ddim_steps = min(t, 50)

        def add(key, out, seconds):
            outs[key].append(out)
            secs[key] += seconds

        def timed(fn, timer_device=device):
            with metrics.CudaTimer(timer_device) as tm:
                out = fn()
            return out, tm.seconds

        for c, (a, b) in enumerate(chunks):
            yc, cc, zc = y[a:b], clean[a:b], z_all[a:b]
            yd = yc.to(device)
            dseed = seed * 1_000 + c
            if "ddpm" in methods:
                add("ddpm", *timed(lambda: ddpm.reverse_chain(unet, sched, yd, t, method="ddpm",
                                                              generator=g_ddpm).clamp(-1, 1).cpu()))
            if "tweedie" in methods:
                add("tweedie", *timed(lambda: tdpm.tweedie(unet, sched, yd, t).cpu()))
            if "ddim" in methods:
                add("ddim", *timed(lambda: ddpm.reverse_chain(unet, sched, yd, t, method="ddim",
                                                              num_steps=ddim_steps).clamp(-1, 1).cpu()))
            if "mean_k" in methods:
                def mean_of_chains():
                    yk = yd.repeat_interleave(n_chains, dim=0)  # image i's K copies are rows iK..iK+K-1
                    o = ddpm.reverse_chain(unet, sched, yk, t, method="ddpm", generator=g_mean).clamp(-1, 1)
                    return o.view(len(yc), n_chains, *yc.shape[1:]).mean(dim=1).cpu()
                add("mean_k", *timed(mean_of_chains))
            if {"dip_short", "dip_long", "dip_oracle", "report_dip_y"} & set(methods):
                # One fit gives the short, long and oracle rows. Every iteration costs the same, so the rows at
                # dip_iterations are charged that fraction of the fit's measured wall time (not a separate run).
                fit = dip.fit_dip(y_scaled[a:b], iterations=dip_iterations_long, z=zc, seed=dseed, reference=cc,
                                  keep=(dip_iterations,), record_every=dip_iterations_long, **dip_kw)
                short = fit.seconds * dip_iterations / dip_iterations_long
                for key, out, seconds in (("dip_short", fit.outputs[dip_iterations], short),
                                          ("dip_long", fit.output, fit.seconds),
                                          ("dip_oracle", fit.best_output, fit.seconds),
                                          ("report_dip_y", fit.outputs[dip_iterations], short)):
                    if key in methods:
                        add(key, out, seconds)
            if "tdpm_dip" in methods:
                res = tdpm.denoise(unet, sched, yc, t, t_trunc=tt, dip_iterations=dip_iterations, generator=g_tdpm,
                                   reference=cc, z=zc, seed=dseed, record_every=dip_iterations, **dip_kw)
                add("tdpm_dip", res.x0, res.seconds)
            if "nlm" in methods:
                add("nlm", *timed(lambda: _nl_means(y_scaled[a:b], sigma01), "cpu"))

        results = {k: (torch.cat(v), secs[k]) for k, v in outs.items() if v}
        if "report_dip_clean" in methods:
            results["report_dip_clean"] = report_dip_clean()
        if "report_tdpm_clean" in methods:
            results["report_tdpm_clean"] = report_tdpm_clean(schedule)

        # (network evaluations, DIP iterations) per image
        meta = dict(ddpm=(t, 0), tweedie=(1, 0),
                    ddim=(ddpm.network_evaluations(t, method="ddim", num_steps=ddim_steps), 0),
                    mean_k=(n_chains * t, 0), dip_short=(0, dip_iterations), dip_long=(0, dip_iterations_long),
                    dip_oracle=(0, dip_iterations_long), tdpm_dip=(tt, dip_iterations), nlm=(0, 0),
                    report_dip_clean=(0, dip_iterations), report_dip_y=(0, dip_iterations),
                    report_tdpm_clean=(t_trunc, dip_iterations))
        sigma_eq = float(schedules.sigma_at(sched, t))
        for key in (k for k in DENOISING_METHODS if k in results):
            out, total = results[key]
            target = y_scaled if key == "report_dip_y" else clean
            psnr = metrics.psnr(out, target)
            ssim = _ssim(out, target)
            nfe, its = meta[key]
            for i in range(len(clean)):
                rows.append(dict(setting=name, schedule=schedule, t=t, sigma255=sigma_eq,
                                 sigma255_requested=setting.get("sigma255"), method=labels[key], method_key=key,
                                 protocol="report" if key in REPORT_PROTOCOL else "corrected",
                                 measured_against=("dip_target" if key in ("report_dip_clean", "report_dip_y")
                                                   else "clean"),
                                 image=i, psnr=float(psnr[i]), ssim=float(ssim[i]), seconds=total / len(clean),
                                 nfe=nfe, dip_iterations=its))
        if return_outputs:
            all_outputs[name] = dict(y=y, y_scaled=y_scaled, **{k: v[0] for k, v in results.items()})
    df = pd.DataFrame(rows)
    return (df, all_outputs) if return_outputs else df


# --------------------------------------------------------------------------- #
# Summaries
# --------------------------------------------------------------------------- #
def summarise(df: pd.DataFrame, by=("setting", "method")) -> pd.DataFrame:
    """Mean ± std over images per group of per-image denoising rows.

    Columns: the ``by`` columns, the group-constant descriptive columns (schedule, t, sigma255, method_key,
    protocol, measured_against, when present and constant), psnr_mean, psnr_std, ssim_mean, ssim_std (sample
    std, ``metrics.mean_std``), n, seconds_per_image, nfe, dip_iterations, and formatted strings psnr_pm
    ("32.12 ± 0.50"), ssim_pm ("0.948 ± 0.010") and pm ("32.12 ± 0.50 dB / 0.948 ± 0.010"). Groups keep
    the order in which they first appear in ``df``.
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
        ssim_vals = g["ssim"].dropna()
        sm, ss = metrics.mean_std(ssim_vals) if len(ssim_vals) else (float("nan"), float("nan"))
        row.update(psnr_mean=pm, psnr_std=ps, ssim_mean=sm, ssim_std=ss, n=len(g),
                   seconds_per_image=float(g["seconds"].mean()), nfe=g["nfe"].iloc[0],
                   dip_iterations=g["dip_iterations"].iloc[0])
        row.update(psnr_pm=f"{pm:.2f} ± {ps:.2f}", ssim_pm=f"{sm:.3f} ± {ss:.3f}",
                   pm=f"{pm:.2f} ± {ps:.2f} dB / {sm:.3f} ± {ss:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)
