"""The denoising study: at one pixel noise level, every method, tuned on validation images, scored on test images.

This is the book's main comparison (chapters 02-07): does combining DDPM and DIP beat each alone?

Protocol
--------
* **Images.** The held-out images (never trained on) are split once into a validation set and a test set
  (``split_eval``). Every tuned choice (a DIP's iteration budget, TDPM-DIP's T_trunc, Example 1's t_0) is the
  one with the best mean PSNR on the validation images; the test images are scored with it, unchanged.
* **Observation.** For pixel noise sigma (0..255 scale) the observation is the forward sample at the level
  t(sigma) of the DDPM's schedule, y = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, so y / sqrt(abar_t) is x_0 plus
  Gaussian noise of std about sigma. Image i's noise is drawn from its own generator (seed, sigma, i), so it
  does not depend on how images are grouped.
* **What a method sees.** Only y (and the noise level, which every method here is given). The clean image
  enters only the scores and the rows labelled "upper bound" (a DIP's best iteration chosen per image with
  the clean image).
* **Scores.** PSNR and SSIM against the clean image on [0, 1] (``metrics``). Seconds are wall clock per image,
  DIP fitting included; network evaluations (NFE) and DIP iterations are reported separately.

Methods (``METHOD_LABELS``)
---------------------------
Floors: the noisy input y / sqrt(abar_t) (clipped), the training-mean image, non-local means with the true
sigma. DDPM alone: the one-step posterior mean E[x_0 | y] (Tweedie), ancestral sampling from t, DDIM from t,
the mean of K ancestral chains. DIP alone: the report's plain DIP and the official Ulyanov et al. protocol
(``dip.PROTOCOLS``), each at its validated budget, and each one's oracle best iteration (upper bound).
Hybrids, built on the validated official-protocol DIP fit (the stronger DIP):

* ``tdpm_matched``: TDPM-DIP with a matched state (``tdpm.matched_state``): the DIP output at budget k,
  topped up with fresh noise to the level T_trunc expects, then T_trunc reverse steps; (k, T_trunc) validated;
* ``sdedit``: Example 1, the DIP output at budget k re-noised to t_0 with fresh noise (SDEdit, Meng et al.
  2022; ``example1.dip_init_ddpm``), then t_0 reverse steps; (k, t_0) validated;
* ``dip_polish`` (``polish=True``): the earlier chapters' variant ``tdpm.denoise``, a DIP fit to y rescaled to
  T_trunc, then T_trunc steps, at the matched variant's validated (k, T_trunc) -- its own DIP fit.

``noise_ratio`` (TDPM-DIP rows) is the actual over the expected noise std of the state handed to the chain,
measured with the clean image (a diagnostic, ``tdpm.noise_ratio``); 1 means the state the DDPM expects.

One DIP fit per (protocol, image) to the largest candidate budget gives every budget's output (``keep``), so
the budget search costs no extra fitting; a budget-k row is charged k / K of the fit's measured time.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import pandas as pd
import torch

from . import ddpm, denoisers, dip, example1, metrics, perceptual, results, schedules, tdpm

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
    "sdedit": "DIP then SDEdit (Example 1)",
    "dip_polish": "TDPM-DIP, earlier variant: DIP then T_trunc polishing steps",
}
FAMILY = {"noisy": "floor", "train_mean": "floor", "nlm": "floor", "tweedie": "DDPM", "ddpm": "DDPM", "ddim": "DDPM",
          "mean_k": "DDPM", "dip_plain": "DIP", "dip_official": "DIP", "dip_plain_oracle": "upper bound",
          "dip_official_oracle": "upper bound", "tdpm_matched": "hybrid", "sdedit": "hybrid", "dip_polish": "hybrid"}


def split_eval(held: torch.Tensor, *, n_val: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (validation, test) images from the held-out set, deterministic in ``seed``."""
    for name, v in (("n_val", n_val), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not allowed; use a positive integer")
    if n_val + n_test > len(held):
        raise ValueError(f"n_val + n_test = {n_val + n_test} is not allowed; the held-out set has {len(held)} images")
    perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed * 1_000_003 + 77))
    return held[perm[:n_val]], held[perm[n_val:n_val + n_test]]


def _image_generators(seed: int, sigma: int, n: int, purpose: int):
    return [torch.Generator().manual_seed(seed * 1_000_003 + 100_000 * purpose + 1000 * sigma + i) for i in range(n)]


def observe(clean: torch.Tensor, sigma: int, scheduler, *, seed: int) -> tuple[torch.Tensor, int]:
    """(y, t): the observation at level t(sigma), image i's noise from its own generator."""
    t = schedules.t_for_sigma(scheduler, sigma)
    noise = torch.stack([torch.randn(clean.shape[1:], generator=g) for g in _image_generators(seed, sigma, len(clean), 1)])
    return schedules.q_sample(clean, t, noise, scheduler).float(), t


def dip_input(protocol: str, n: int, size: int, *, seed: int, sigma: int) -> torch.Tensor:
    """Per-image DIP inputs z (``dip.draw_input`` of the protocol, image i from its own generator)."""
    return torch.cat([dip.draw_input(protocol, (1, size, size), g)
                      for g in _image_generators(seed, sigma, n, 2 if protocol == "plain" else 3)])


def fit_budgets(y_scaled: torch.Tensor, clean: torch.Tensor, *, protocol: str, budgets, seed: int, sigma: int,
                device, preset: str | None = None, lr: float | None = None, record_every: int | None = None,
                cache_dir=None) -> dict:
    """One DIP fit per image to max(budgets); returns outputs at every budget, the oracle output (best iteration
    per image against ``clean``: an upper bound), seconds per image of the whole fit, and the history.

    With ``cache_dir`` the result is stored there (``results.save_checkpoint``) under a name that hashes every
    input, so chapters that need the same fit load it instead of fitting again; any change refits."""
    budgets = sorted(set(budgets))
    record_every = record_every or max(1, budgets[0] // 4)
    p = dip.check_protocol(protocol)  # hash the settings the fit really uses, so a changed default refits
    preset, lr = preset or p.preset, p.lr if lr is None else lr
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        for tensor in (y_scaled, clean):
            h.update(tensor.float().contiguous().numpy().tobytes())
        h.update(repr((protocol, budgets, seed, sigma, preset, lr, record_every, torch.device(device).type)).encode())
        path = Path(cache_dir) / f"dip_{protocol}_sigma{sigma}_{h.hexdigest()[:16]}.pt"
        if path.exists():
            saved = results.load_checkpoint(path)
            return dict(saved, history=pd.DataFrame(saved["history"]))
    z = dip_input(protocol, len(y_scaled), y_scaled.shape[-1], seed=seed, sigma=sigma)
    fit = dip.fit_dip(y_scaled, iterations=budgets[-1], z=z, protocol=protocol, preset=preset, lr=lr, seed=seed,
                      device=device, reference=clean, keep=budgets, record_every=record_every,
                      generator=torch.Generator().manual_seed(seed * 1_000_003 + 4000 + sigma))
    out = dict(outputs=fit.outputs, oracle=fit.best_output, oracle_iteration=fit.best_iteration,
               seconds=fit.seconds / len(y_scaled), iterations=budgets[-1], history=fit.history)
    if path is not None:
        results.save_checkpoint(path, dict(out, history=fit.history.to_dict(orient="list")))
    return out


def score(x: torch.Tensor, clean: torch.Tensor) -> dict:
    """Per-image PSNR, SSIM and LPIPS (NaN where LPIPS's weights cannot be had: ``perceptual.lpips_status``)."""
    return dict(psnr=metrics.psnr(x, clean), ssim=metrics.ssim_or_nan(x, clean), lpips=perceptual.lpips_or_nan(x, clean))


def _rows(key, x, clean, *, split, seconds, nfe, its, params="", ratio=None):
    s = score(x, clean)
    return [dict(method_key=key, method=METHOD_LABELS[key], family=FAMILY[key], split=split, image=i,
                 psnr=float(s["psnr"][i]), ssim=float(s["ssim"][i]), lpips=float(s["lpips"][i]), seconds=seconds, nfe=nfe, dip_iterations=its,
                 params=params, noise_ratio=float("nan") if ratio is None else float(ratio[i]))
            for i in range(len(clean))]


def _best(table: pd.DataFrame) -> tuple[str, pd.Series]:
    """(params, means): the candidate with the best mean validation PSNR (ties: the first listed, the cheapest)."""
    means = table.groupby("params", sort=False)["psnr"].mean()
    return means.idxmax(), means


def run(unet, scheduler, *, val: torch.Tensor, test: torch.Tensor, train_mean: torch.Tensor, sigma: int, seed: int,
        device, budgets_plain, budgets_official, t_truncs, t0s, n_chains: int = 3, fits: dict | None = None,
        dip_presets: dict | None = None, cache_dir=None, polish: bool = True):
    """Run the study at one noise level; returns ``(rows, selection, outputs, fits)``.

    ``rows``: one row per (method, split, image) with psnr, ssim, seconds (per image), nfe, dip_iterations and
    the chosen ``params``; validation rows of tuned methods are their chosen candidate's. ``selection``: every
    candidate's mean validation PSNR. ``outputs``: the test images' estimates per method (for figures).
    ``t_truncs`` / ``t0s`` are fractions of t(sigma) (rounded, at least 1). ``fits`` may hold precomputed
    ``fit_budgets`` results per protocol (they depend only on the images, sigma and seed); ``fits`` returned
    holds both protocols' fits, for reuse by the chapters on the examples. ``dip_presets`` maps a protocol to
    its network preset (default: the protocol's own, ``dip.PROTOCOLS``).
    """
    clean = torch.cat([val, test])
    n_val = len(val)
    y, t = observe(clean, sigma, scheduler, seed=seed)
    ab = float(schedules.alpha_bar(scheduler, t))
    y_scaled = (y / ab ** 0.5).float()
    split = ["val"] * n_val + ["test"] * len(test)
    parts = {"val": slice(0, n_val), "test": slice(n_val, len(clean))}
    rows, outputs = [], {}

    def add(key, x, *, seconds, nfe=0, its=0, params="", ratio=None):
        for name, sl in parts.items():
            rows.extend(_rows(key, x[sl], clean[sl], split=name, seconds=seconds, nfe=nfe, its=its, params=params,
                              ratio=None if ratio is None else ratio[sl]))
        outputs[key] = x[parts["test"]]

    def timed(fn):
        with metrics.CudaTimer(device) as tm:
            out = fn()
        return out, tm.seconds / len(clean)

    yd = y.to(device)
    add("noisy", y_scaled.clamp(-1, 1), seconds=0.0)
    add("train_mean", train_mean.expand_as(clean), seconds=0.0)
    sigma01 = math.sqrt((1 - ab) / ab) / 2
    x, sec = timed(lambda: denoisers.nlm_images(y_scaled, sigma01))
    add("nlm", x, seconds=sec)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 5000 + sigma)
    x, sec = timed(lambda: tdpm.tweedie(unet, scheduler, yd, t).cpu())
    add("tweedie", x, seconds=sec, nfe=1)
    x, sec = timed(lambda: ddpm.reverse_chain(unet, scheduler, yd, t, generator=gen).clamp(-1, 1).cpu())
    add("ddpm", x, seconds=sec, nfe=t)
    steps = min(t, 50)
    x, sec = timed(lambda: ddpm.reverse_chain(unet, scheduler, yd, t, method="ddim", num_steps=steps).clamp(-1, 1).cpu())
    add("ddim", x, seconds=sec, nfe=ddpm.network_evaluations(t, method="ddim", num_steps=steps))

    def mean_chains():
        yk = yd.repeat_interleave(n_chains, dim=0)
        o = ddpm.reverse_chain(unet, scheduler, yk, t, generator=gen).clamp(-1, 1)
        return o.view(len(clean), n_chains, *clean.shape[1:]).mean(1).cpu()
    x, sec = timed(mean_chains)
    add("mean_k", x, seconds=sec, nfe=n_chains * t, params=f"K={n_chains}")

    fits = dict(fits or {})
    selection = []
    for protocol, budgets in (("plain", budgets_plain), ("official", budgets_official)):
        if protocol not in fits:
            fits[protocol] = fit_budgets(y_scaled, clean, protocol=protocol, budgets=budgets, seed=seed, sigma=sigma,
                                         device=device, preset=(dip_presets or {}).get(protocol), cache_dir=cache_dir)
        f = fits[protocol]
        cand = pd.DataFrame([dict(params=f"k={k}", psnr=p) for k in sorted(f["outputs"])
                             for p in metrics.psnr(f["outputs"][k][:n_val], val).tolist()])
        best, means = _best(cand)
        selection += [dict(method_key=f"dip_{protocol}", params=p, val_psnr=v) for p, v in means.items()]
        k = int(best.split("=")[1])
        add(f"dip_{protocol}", f["outputs"][k], seconds=f["seconds"] * k / f["iterations"], its=k, params=best)
        add(f"dip_{protocol}_oracle", f["oracle"], seconds=f["seconds"], its=f["iterations"], params="per image")

    # hybrids on the official-protocol fit: every (k, level) candidate on validation, the chosen one on test
    f = fits["official"]
    chosen = {}

    def hybrid(key, k, level, images, seed_offset):
        """(estimate, seconds per image, noise ratio) of hybrid ``key`` on the images selected by ``images``."""
        x_hat, g = f["outputs"][k][images], torch.Generator().manual_seed(seed * 1_000_003 + seed_offset)
        state = None
        with metrics.CudaTimer(device) as tm:
            if key == "tdpm_matched":
                state = tdpm.matched_state(x_hat, y[images], t, level, scheduler, generator=g)
                x = tdpm.reverse_from_state(unet, scheduler, state, level, generator=g)
            else:
                x = example1.dip_init_ddpm(unet, scheduler, x_hat, level, generator=g).clamp(-1, 1).cpu()
        # diagnostic only (uses the clean image): actual / expected noise std of the handed-over state
        ratio = tdpm.noise_ratio(state, clean[images], level, scheduler) if state is not None else None
        return x, tm.seconds / len(x_hat), ratio

    # every (k, level) candidate on the validation images; the chosen one, once, on the test images
    for key, fractions in (("tdpm_matched", t_truncs), ("sdedit", t0s)):
        levels = sorted({max(1, round(fr * t)) for fr in fractions})
        offset = 6000 + 10 * sigma + (key == "sdedit")
        names = {f"k={k}, {'T_trunc' if key == 'tdpm_matched' else 't0'}={level}": (k, level)
                 for k, level in itertools.product(sorted(f["outputs"]), levels)}
        on_val = {name: hybrid(key, *kl, parts["val"], offset) for name, kl in names.items()}
        cand = pd.DataFrame([dict(params=name, psnr=p) for name, r in on_val.items()
                             for p in metrics.psnr(r[0], val).tolist()])
        best, means = _best(cand)
        selection += [dict(method_key=key, params=p, val_psnr=v) for p, v in means.items()]
        k, level = names[best]
        x_val, _, r_val = on_val[best]
        x_test, sec, r_test = hybrid(key, k, level, parts["test"], offset + 5)
        ratio = None if r_val is None else torch.cat([r_val, r_test])
        add(key, torch.cat([x_val, x_test]), seconds=f["seconds"] * k / f["iterations"] + sec, nfe=level, its=k,
            params=best, ratio=ratio)
        chosen[key] = (k, level)

    if polish:
        # the earlier chapters' variant, "DIP + T_trunc polishing steps" (tdpm.denoise), at the matched variant's
        # validated (k, T_trunc): its own DIP fit (the target is y rescaled to T_trunc), then T_trunc steps
        k, level = chosen["tdpm_matched"]
        res = tdpm.denoise(unet, scheduler, y, t, t_trunc=level, dip_iterations=k, device=device, reference=clean,
                           z=dip_input("official", len(clean), clean.shape[-1], seed=seed, sigma=sigma),
                           generator=torch.Generator().manual_seed(seed * 1_000_003 + 7000 + sigma),
                           protocol="official", preset=(dip_presets or {}).get("official"), seed=seed,
                           record_every=k)
        add("dip_polish", res.x0, seconds=res.seconds / len(clean), nfe=level, its=k,
            params=f"k={k}, T_trunc={level}", ratio=res.noise_ratio)

    df = pd.DataFrame(rows)
    df.insert(0, "sigma", sigma)
    df.insert(1, "t", t)
    sel = pd.DataFrame(selection)
    sel.insert(0, "sigma", sigma)
    return df, sel, dict(outputs, clean=clean[parts["test"]], y_scaled=y_scaled[parts["test"]]), fits
