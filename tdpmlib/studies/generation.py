"""Notebook 03's generation protocol: DDPM, DDIM and TDPM-DIP samples scored against images they did not fit.

``run_generation`` samples images with DDPM (ancestral), DDIM and TDPM-DIP (Algorithm 3, ``tdpm.tdpm_dip``)
and scores them against a reference set *the method did not fit*, with SWD, FID/KID (when Inception weights
are available) and the memorisation test. TDPM-DIP needs clean images to build its DIP target, so it is run
twice: on training images, as the report did, and on held-out images. ``copy_verdict`` gives a TDPM-DIP row's verdict phrase
and ``nearest_rows`` lays out generated images beside their nearest training and held-out images.

Method labels live in ``GENERATION_METHODS`` (stable key -> label); the table carries both the label
(``method``) and the key (``method_key``). Randomness: every draw comes from ``generator_fn(offset)`` with a
fixed offset per purpose (``OFFSETS``). The table gives each method's cost as network evaluations and DIP
iterations; its seconds per image come from chapter 08's timing benchmark (``tdpmlib.studies.timing``), not from here.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
import torch

from ..evaluation import sample_metrics
from ..methods import ddpm, tdpm
from ..workflow import config
from .report_protocol import chunks, dip_batch_limit

GENERATION_METHODS = {
    "ddpm": "DDPM (1000 steps)",
    "ddim50": "DDIM (50 steps)",
    "ddim100": "DDIM (100 steps)",
    "tdpm_train": "TDPM-DIP, fit to training images (report)",
    "tdpm_held": "TDPM-DIP, fit to held-out images",
    "real": "Real training images (reference floor)",
}

# Generator offsets, one per purpose (``generator_fn(offset)``).
OFFSETS = dict(gen_shuffle=3000, gen_ddpm=3001, gen_ddim50=3002, gen_ddim100=3003, gen_tdpm_train=3004,
               gen_tdpm_held=3005)


def _fit_tdpm_batches(unet, scheduler, images, *, t_trunc, dip_iterations, generator, device, dip_preset, dip_lr,
                      seed, sample_batch):
    """tdpm.tdpm_dip on ``images`` in batches of at most ``sample_batch`` images (one DIP network per image;
    on CUDA also at most ``dip_batch_limit`` networks)."""
    size = dip_batch_limit(dip_preset, resolution=images.shape[-1], device=device, cap=sample_batch)
    outs = []
    for c, (a, b) in enumerate(chunks(len(images), size)):
        res = tdpm.tdpm_dip(unet, scheduler, images[a:b], t_trunc=t_trunc, dip_iterations=dip_iterations,
                            generator=generator, device=device, preset=dip_preset, lr=dip_lr,
                            seed=seed * 1_000 + c, record_every=max(1, dip_iterations))
        outs.append(res.x0)
    return torch.cat(outs)


def generation_size(n_generate: int, n_train: int) -> int:
    """How many images the generation study draws: ``n_generate``, capped at the training set with a warning,
    since TDPM-DIP fits one training image per sample (the paper profile asks for the report's 1000; the
    819-image parquet leaves about 740 for training)."""
    config.check_int("n_generate", n_generate, low=2)
    if n_train < 2:
        raise ValueError(f"the training set has {n_train} images; generation needs at least 2")
    if n_generate > n_train:
        warnings.warn(f"n_generate={n_generate} is more than the {n_train} training images TDPM-DIP can fit; "
                      f"drawing {n_train} per method", stacklevel=2)
    return min(n_generate, n_train)


def run_generation(unet, scheduler, *, train: torch.Tensor, held: torch.Tensor, n: int, resolution: int, device,
                   generator_fn, dip_preset: str, dip_lr: float, dip_iterations: int = 100, t_trunc: int = 10,
                   sample_batch: int, seed: int, feature_extractor=None, methods=None):
    """Generate with every method and score the samples; returns ``(table, samples)``.

    Methods (keys of ``GENERATION_METHODS``; ``methods`` selects a subset, the floor row is always added):

    * ``ddpm`` -- ancestral sampling from pure noise, T (= 1000) network evaluations per image;
    * ``ddim50``, ``ddim100`` -- deterministic DDIM over 50 / 100 levels;
    * ``tdpm_train`` -- TDPM-DIP as the report ran it: the DIP target is built from ``n`` training images
      (the first ``n`` of ``train`` after a shuffle seeded by ``generator_fn``), ``t_trunc`` is the report's T_trunc (``tdpm.tdpm_dip``: t_trunc + 1 reverse steps);
    * ``tdpm_held`` -- the same on held-out images; ``n`` is capped by ``len(held)`` (see the ``note``);
    * ``real`` -- no method: the ``n`` training images the train-fit TDPM-DIP used, scored against the
      held-out set like a method's samples. It gives each metric's value for real images ("floor").

    Reference set (``reference_set`` column): the images a method did not fit. The DDPM was trained on
    ``train``, so DDPM, DDIM, the train-fit TDPM-DIP and the floor are scored against ``held``; the
    held-out-fit TDPM-DIP is scored against as many training images (the last of the shuffle: disjoint from
    the train-fit inputs whenever ``len(train) >= n + len(held)``).

    Columns: method, method_key, n, reference_set, n_reference, nfe (DDPM network evaluations per image),
    dip_iterations (per image), fid, kid_mean, kid_std, fid_status, swd (``sample_metrics.swd(...)["swd_mean"]``),
    ratio_median, frac_copies, d_train_mean, d_held_mean (``sample_metrics.memorisation(samples, train, held)``),
    and for TDPM-DIP: ratio_median_fit / frac_copies_fit (``sample_metrics.memorisation(samples, fitted images,
    reference set)``) and d_fit_mean (mean RMS distance of each sample to the image it was fit to),
    and a free-text note. ``samples`` maps each label to its images (CPU, [-1, 1]).

    FID/KID: when Inception weights are unavailable (offline), the first ``sample_metrics.fid_kid`` call says so and
    the remaining rows reuse that status with None values instead of retrying.
    """
    config.check_int("n", n, low=2)
    config.check_int("sample_batch", sample_batch, low=1)
    config.check_int("dip_iterations", dip_iterations, low=0)
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
    fid_cache, swd_cache = {}, {}  # swd_cache: per reference set, its sorted SWD projections (sample_metrics.swd)

    def score(key, fake, *, reference, reference_set, nfe, dip_its, fitted=None, note=""):
        label = GENERATION_METHODS[key]
        samples[label] = fake
        if feature_extractor is None and "unavailable" in fid_cache:
            fk = dict(fid=None, kid_mean=None, kid_std=None, status=fid_cache["unavailable"])
        else:
            fk = sample_metrics.fid_kid(reference, fake, feature_extractor=feature_extractor, device=device, seed=seed)
            if fk["status"].startswith("unavailable"):
                fid_cache["unavailable"] = fk["status"]
        mem = sample_metrics.memorisation(fake, train, held)
        swd = sample_metrics.swd(reference, fake, seed=seed, real_cache=swd_cache.setdefault(reference_set, {}))["swd_mean"]
        row = dict(method=label, method_key=key, n=len(fake), reference_set=reference_set,
                   n_reference=len(reference), nfe=nfe, dip_iterations=dip_its, fid=fk["fid"], kid_mean=fk["kid_mean"], kid_std=fk["kid_std"],
                   fid_status=fk["status"], swd=swd,
                   ratio_median=mem["ratio_median"], frac_copies=mem["frac_copies"],
                   d_train_mean=mem["d_train_mean"], d_held_mean=mem["d_held_mean"],
                   ratio_median_fit=None, frac_copies_fit=None, d_fit_mean=None, note=note)
        if fitted is not None:
            mem_fit = sample_metrics.memorisation(fake, fitted, reference)
            d_fit = ((fake - fitted).flatten(1).norm(dim=1) / math.sqrt(fake[0].numel())).mean()
            row.update(ratio_median_fit=mem_fit["ratio_median"], frac_copies_fit=mem_fit["frac_copies"],
                       d_fit_mean=float(d_fit))
        rows.append(row)

    held_name = f"held-out images ({len(held)})"
    for key, method, steps in (("ddpm", "ddpm", None), ("ddim50", "ddim", 50), ("ddim100", "ddim", 100)):
        if key not in methods:
            continue
        fake = ddpm.sample(unet, scheduler, n=n, resolution=resolution, device=device, method=method,
                           num_steps=steps, batch_size=sample_batch, generator=generator_fn(OFFSETS[f"gen_{key}"]))
        score(key, fake, reference=held, reference_set=held_name,
              nfe=ddpm.network_evaluations(T, method=method, num_steps=steps), dip_its=0)

    tdpm_kw = dict(t_trunc=t_trunc, dip_iterations=dip_iterations, device=device, dip_preset=dip_preset,
                   dip_lr=dip_lr, sample_batch=sample_batch)
    if "tdpm_train" in methods:
        fake = _fit_tdpm_batches(unet, scheduler, train_fit, generator=generator_fn(OFFSETS["gen_tdpm_train"]),
                                 seed=seed, **tdpm_kw)
        score("tdpm_train", fake, reference=held, reference_set=held_name, nfe=tdpm.report_level(t_trunc),
              dip_its=dip_iterations, fitted=train_fit, note=f"fit to {n} training images")
    if "tdpm_held" in methods:
        fake = _fit_tdpm_batches(unet, scheduler, held_fit, generator=generator_fn(OFFSETS["gen_tdpm_held"]),
                                 seed=seed + 1, **tdpm_kw)
        note = f"fit to {n_held} held-out images"
        if n_held < n:
            note += f" (n capped by the {len(held)} held-out images)"
        score("tdpm_held", fake, reference=train_ref, reference_set=f"training images it did not fit ({n_held})",
              nfe=tdpm.report_level(t_trunc), dip_its=dip_iterations, fitted=held_fit, note=note)
    score("real", train_fit, reference=held, reference_set=held_name, nfe=0, dip_its=0,
          note=f"{n} real training images scored as if generated: the metrics' value for real data "
               "(memorisation columns: they are training images)")
    return pd.DataFrame(rows), samples


COPIES, NO_COPIES = "copies the images it was fit to", "does not copy the images it was fit to"


def copy_verdict(row, *, copy_fraction: float = 0.5, ratio: float = 0.5) -> str:
    """A short verdict phrase for a TDPM-DIP generation row: does it copy the images it was fit to?

    "copies the images it was fit to" when at least ``copy_fraction`` of the samples are copies of a fitted
    image (``frac_copies_fit``: nearer to it than half the distance to the nearest unfitted image) or the
    median distance ratio ``ratio_median_fit`` is below ``ratio``; otherwise "does not copy the images it was
    fit to" (which says nothing about their quality: an under-fitted DIP gives noise, not new images). The
    phrase completes a sentence that names the method ("Fit to training images, TDPM-DIP ...").
    """
    if row["frac_copies_fit"] >= copy_fraction or row["ratio_median_fit"] < ratio:
        return COPIES
    return NO_COPIES


def nearest_rows(generated: torch.Tensor, train: torch.Tensor, held: torch.Tensor, *, k: int = 8,
                 prefix: str = "") -> dict:
    """Rows for ``plotting.image_rows``: the first ``k`` generated images, their nearest training image and
    their nearest held-out image (``sample_metrics.nearest_distances``, RMS on [-1, 1]), distances in the labels."""
    g = generated[:k]
    d_tr, i_tr = sample_metrics.nearest_distances(g, train)
    d_he, i_he = sample_metrics.nearest_distances(g, held)
    return {f"{prefix}generated": g,
            f"{prefix}nearest training\nimage (mean RMS {d_tr.mean():.3f})": train[i_tr],
            f"{prefix}nearest held-out\nimage (mean RMS {d_he.mean():.3f})": held[i_he]}
