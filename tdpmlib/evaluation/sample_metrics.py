"""Sample-quality and memorisation metrics; images as in ``metrics`` (``N x 3 x H x W`` on [-1, 1]).

* :func:`fid_kid` -- FID / KID through torchmetrics, with an Inception network (needs its weights, which are
  downloaded on first use) or an injected feature extractor; degrades to ``None`` values with a status string offline.
* :func:`swd` -- multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018,
  "Progressive Growing of GANs", Sec. 5 / App. D).
* :func:`nearest_distances`, :func:`memorisation` -- nearest-neighbour copy detection in pixel space: are samples
  closer to training images than to held-out images of the same distribution?
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .metrics import _check_batch, to_unit

# --- FID and KID -----------------------------------------------------------------------------------------
# The status of an unavailable FID / KID. The book quotes it in prose, so it is one plain
# sentence without exception text; the exception goes to the result's "status_detail".
FID_NO_WEIGHTS = (
    "unavailable: the Inception weights could not be loaded, most likely because there is no "
    "internet access to download them, so FID and KID are not computed"
)


class _CustomFeatures(nn.Module):
    """Adapter for an injected feature extractor. torchmetrics' FID needs the feature dimension of a custom module:
    it reads ``num_features`` or else probes with a random ``1 x 3 x 299 x 299`` image (wrong size for small models,
    and on the CPU). We probe once with a real image instead; the output is flattened to ``N x D``."""

    def __init__(self, extractor: nn.Module, probe: Tensor) -> None:
        super().__init__()
        self.extractor = extractor
        with torch.no_grad():
            self.num_features = int(self.forward(probe).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.extractor(x).reshape(x.shape[0], -1)


def fid_kid(real: Tensor, fake: Tensor, *, feature_extractor: nn.Module | None = None, kid_subset_size: int | None = None,
            kid_subsets: int = 100, batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """FID and KID between two image sets on ``[-1, 1]``.

    Uses ``torchmetrics.image.fid.FrechetInceptionDistance`` and
    ``torchmetrics.image.kid.KernelInceptionDistance`` with ``normalize=True``;
    images are fed as :func:`to_unit` float tensors in chunks of ``batch_size``.

    * ``feature_extractor=None``: the standard Inception-v3 pool features
      (``feature=2048``, Heusel et al. 2017). Its weights are downloaded on
      first use; if building the metrics fails with an ``OSError`` (the weights
      are unavailable: ``URLError`` when offline, an HTTP or connection error,
      a file error of the download), the result is
      ``{"fid": None, "kid_mean": None, "kid_std": None, "status": FID_NO_WEIGHTS,
      "status_detail": "<exception type>: <message>"}``; ``status`` is one
      plain sentence that starts with ``"unavailable: "`` and holds no
      exception text (the book quotes it in prose). Any other error (out of
      memory, a shape error, a damaged weights file), and every error while
      the images are fed, propagates: it is a bug or a resource to fix, not
      a missing download.
    * an injected ``nn.Module`` mapping a float ``N x 3 x H x W`` batch in
      ``[0, 1]`` to ``N x D`` features is used for both metrics
      (status ``"ok (custom feature extractor)"``); errors are not swallowed.
      On success ``status_detail`` is ``None``.
      The module is moved to ``device``.

    KID (Binkowski et al. 2018) averages the polynomial-kernel MMD over
    ``kid_subsets`` random subsets of ``min(kid_subset_size or 1000, len(real),
    len(fake))`` images (1000 is the torchmetrics / Binkowski default);
    ``seed`` makes the subset draw reproducible without touching the global RNG.
    Both sets need at least 2 images.
    """
    _check_batch(real, "real")
    _check_batch(fake, "fake")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("fid_kid needs at least 2 real and 2 fake images")
    device = torch.device(device)
    real_u = to_unit(real.detach()).float()
    fake_u = to_unit(fake.detach()).float()
    subset_size = min(kid_subset_size or 1000, len(real), len(fake))

    # Local import: these modules pull in torch-fidelity.
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    def build() -> tuple[FrechetInceptionDistance, KernelInceptionDistance]:
        if feature_extractor is None:
            feature: int | nn.Module = 2048
        else:
            feature = _CustomFeatures(feature_extractor.to(device), real_u[:1].to(device))
        fid = FrechetInceptionDistance(feature=feature, normalize=True).to(device)
        with warnings.catch_warnings():
            # KID warns that it keeps all features in memory; expected here.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(
                feature=feature, subsets=kid_subsets, subset_size=subset_size, normalize=True
            ).to(device)
        return fid, kid

    if feature_extractor is None:
        # torch.hub prints "Downloading: <url>" to stderr before it tries; keep it out of notebook outputs
        # (the status below says what happened) and pass it on only when the download succeeded
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log):
                fid_metric, kid_metric = build()  # loads (downloads on first use) the Inception weights
        except OSError as err:  # weights unavailable: urllib's URLError offline, HTTP, connection or file errors
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            if len(detail) > 300:
                detail = detail[:297] + "..."
            return {
                "fid": None,
                "kid_mean": None,
                "kid_std": None,
                "status": FID_NO_WEIGHTS,
                "status_detail": detail,
            }
        sys.stderr.write(log.getvalue())
        status = "ok"
    else:
        fid_metric, kid_metric = build()
        status = "ok (custom feature extractor)"
    with torch.no_grad():
        for images, is_real in ((real_u, True), (fake_u, False)):
            for chunk in images.split(batch_size):
                chunk = chunk.to(device)
                fid_metric.update(chunk, real=is_real)
                kid_metric.update(chunk, real=is_real)

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets with torch.randperm
        fid_value = fid_metric.compute()
        kid_mean, kid_std = kid_metric.compute()
    return {
        "fid": float(fid_value),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "status": status,
        "status_detail": None,
    }


# --- Sliced Wasserstein distance on Laplacian-pyramid patches (ProGAN) -----------------------------------
# Karras et al. 2018 (ICLR), Sec. 5 and App. D; reference code
# `metrics/sliced_wasserstein.py` of tkarras/progressive_growing_of_gans.
# Binomial 5-tap filter [1, 4, 6, 4, 1] / 16, applied separably = the 5 x 5
# Gaussian of cv2.pyrDown / pyrUp that ProGAN uses.
_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
# ProGAN stops the pyramid at 16 x 16 ("resolution_min = 16").
_SWD_MIN_RESOLUTION = 16


def _binomial_blur(x: Tensor) -> Tensor:
    """Separable 5 x 5 binomial blur with mirror padding (ProGAN: ``mode='mirror'``)."""
    channels = x.shape[1]
    taps = torch.tensor(_BINOMIAL_5, dtype=x.dtype, device=x.device) / 16.0
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")  # torch "reflect" == scipy "mirror"
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def _pyr_down(x: Tensor) -> Tensor:
    return _binomial_blur(x)[..., ::2, ::2]


def _pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-insertion upsampling to ``size`` followed by the blur (gain 4)."""
    up = x.new_zeros(*x.shape[:2], *size)
    up[..., ::2, ::2] = x
    return _binomial_blur(up) * 4.0


def _laplacian_pyramid(x: Tensor, n_levels: int) -> list[Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    levels = []
    current = x
    for _ in range(n_levels - 1):
        smaller = _pyr_down(current)
        levels.append(current - _pyr_up(smaller, tuple(current.shape[-2:])))
        current = smaller
    levels.append(current)
    return levels


def _default_n_levels(size: int) -> int:
    """Levels from ``size`` down to no smaller than 16 pixels (at least 1)."""
    n_levels = 1
    while (size + 1) // 2 >= _SWD_MIN_RESOLUTION:
        size = (size + 1) // 2
        n_levels += 1
    return n_levels


def _patch_positions(
    n_images: int, height: int, width: int, patch_size: int, per_image: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Uniform random top-left corners, ``n_images x per_image`` each (ProGAN ``np.random.randint``)."""
    top = torch.randint(0, height - patch_size + 1, (n_images, per_image), generator=gen)
    left = torch.randint(0, width - patch_size + 1, (n_images, per_image), generator=gen)
    return top, left


def _extract_patches(level: Tensor, top: Tensor, left: Tensor, patch_size: int) -> Tensor:
    """Patches at the given corners, one row of corners per image: ``(N * P) x C x p x p``."""
    n, per_image = top.shape
    offsets = torch.arange(patch_size)
    rows = (top.view(n, per_image, 1, 1) + offsets.view(patch_size, 1)).to(level.device)
    cols = (left.view(n, per_image, 1, 1) + offsets.view(1, patch_size)).to(level.device)
    image = torch.arange(n, device=level.device).view(n, 1, 1, 1)
    patches = level.permute(0, 2, 3, 1)[image, rows, cols]  # n x P x p x p x C
    return patches.reshape(n * per_image, patch_size, patch_size, -1).permute(0, 3, 1, 2)


def _normalise_descriptors(desc: Tensor) -> Tensor:
    """ProGAN ``finalize_descriptors``: per-channel zero mean, unit std (per set), flatten."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    # Population std as np.std; the floor only guards constant (e.g. all-black) sets.
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-8)
    return desc.reshape(desc.shape[0], -1)


def _sort_columns(x: Tensor) -> Tensor:
    """``torch.sort(x, dim=0).values``. On the CPU through NumPy's vectorised sort of the transposed (contiguous)
    columns, which returns the same values about 4 times faster on 2 cores (sorting dominates the SWD: 10^4
    descriptors x 512 directions per level)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(np.ascontiguousarray(x.numpy().T), axis=1).T)
    return torch.sort(x, dim=0).values


def _sliced_wasserstein(
    a: Tensor, b: Tensor, *, n_projections: int, n_repeats: int, gen: torch.Generator,
    cache: dict | None = None, key: tuple = ()
) -> float:
    """Mean |sorted(a @ d) - sorted(b @ d)| over random unit directions d, averaged over repeats. With ``cache``,
    the sorted projections of ``a`` are stored under ``key`` + (repeat, chunk) and read from there next time (the
    directions are still drawn, so the generator moves on exactly as without the cache)."""
    chunk = 128  # directions per matmul; bounds memory only (ProGAN: dirs_per_repeat=128)
    results = []
    for repeat in range(n_repeats):
        total = 0.0
        for start in range(0, n_projections, chunk):
            count = min(chunk, n_projections - start)
            dirs = torch.randn(a.shape[1], count, generator=gen, dtype=torch.float64)
            dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device, a.dtype)
            slot = (*key, repeat, start)
            proj_a = cache.get(slot) if cache is not None else None
            if proj_a is None:
                proj_a = _sort_columns(a @ dirs)
                if cache is not None:
                    cache[slot] = proj_a
            proj_b = _sort_columns(b @ dirs)
            total += float((proj_a - proj_b).abs().sum(dtype=torch.float64))
        results.append(total / (a.shape[0] * n_projections))
    return float(np.mean(results))


def swd(real: Tensor, fake: Tensor, *, n_levels: int | None = None, patch_size: int = 7, patches_per_image: int = 128,
        n_projections: int = 512, n_repeats: int = 4, seed: int = 0, real_cache: dict | None = None) -> dict:
    """Multi-scale sliced Wasserstein distance (Karras et al. 2018, ProGAN).

    For each level of a Laplacian pyramid (5 x 5 binomial filter; by default as
    many levels as keep the coarsest at >= 16 pixels, at least one), sample
    ``patches_per_image`` random ``3 x 7 x 7`` patches per image (ProGAN: 128
    neighbourhoods of 7 x 7; image ``i`` of both sets is cut at the same random
    corners, so identical sets score exactly 0), normalise the real and the fake descriptor set
    *each by its own* per-channel mean and std, as ProGAN does, and compute the
    sliced Wasserstein distance: project onto ``n_projections`` random unit
    directions, sort, and take the mean absolute difference of the sorted
    projections; average over ``n_repeats`` draws of directions. If the sets
    differ in size, the larger descriptor set is randomly subsampled.
    (ProGAN draws 4 x 128 directions; the defaults here are 4 x 512.)

    Returns ``{"swd_levels": [...], "swd_mean": float}``, values multiplied by
    1e3 as ProGAN reports them; levels are ordered finest (full resolution)
    first. Images are on ``[-1, 1]`` (the scale cancels in the normalisation),
    at least 8 x 8 and of equal size in both sets; any ``N >= 1``. Everything
    random comes from one ``torch.Generator`` seeded with ``seed``.

    ``real_cache``, a dict the caller keeps for one ``real`` set, holds that set's sorted projections: many fake
    sets scored against it sort the real side once per fake-set size (the same values, in about 70% of the time).
    """
    _check_batch(real, "real")
    _check_batch(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(real.shape[1:])} vs {tuple(fake.shape[1:])}")
    height, width = real.shape[-2:]
    if min(height, width) < max(8, patch_size):
        raise ValueError(f"swd needs images of at least {max(8, patch_size)} pixels, got {height} x {width}")
    if n_levels is None:
        n_levels = _default_n_levels(min(height, width))
    coarsest = min(height, width)
    for _ in range(n_levels - 1):
        coarsest = (coarsest + 1) // 2
    if n_levels < 1 or coarsest < patch_size:
        raise ValueError(f"n_levels={n_levels} leaves a {coarsest}-pixel level, smaller than the {patch_size}-pixel patch")

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        real_pyr = _laplacian_pyramid(real.detach().float(), n_levels)
        fake_pyr = _laplacian_pyramid(fake.detach().float(), n_levels)
        levels = []
        for real_level, fake_level in zip(real_pyr, fake_pyr):
            # Image i of either set is cut at the same random corners (common random
            # numbers): each set still gets uniformly placed patches, as in ProGAN,
            # but identical sets now give exactly 0 instead of a sampling-noise floor.
            top, left = _patch_positions(
                max(len(real), len(fake)), *real_level.shape[-2:], patch_size, patches_per_image, gen
            )
            a = _normalise_descriptors(
                _extract_patches(real_level, top[: len(real)], left[: len(real)], patch_size)
            )
            b = _normalise_descriptors(
                _extract_patches(fake_level, top[: len(fake)], left[: len(fake)], patch_size)
            )
            count = min(len(a), len(b))
            if len(a) > count:
                a = a[torch.randperm(len(a), generator=gen)[:count].to(a.device)]
            if len(b) > count:
                b = b[torch.randperm(len(b), generator=gen)[:count].to(b.device)]
            key = (seed, n_levels, patch_size, patches_per_image, n_projections, n_repeats, len(real), len(fake),
                   len(levels))
            value = _sliced_wasserstein(a, b, n_projections=n_projections, n_repeats=n_repeats, gen=gen,
                                        cache=real_cache, key=key)
            levels.append(value * 1e3)
    return {"swd_levels": levels, "swd_mean": float(np.mean(levels))}


# --- Memorisation: nearest neighbours in pixel space -----------------------------------------------------
def nearest_distances(queries: Tensor, references: Tensor, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Distance from each query image to its nearest reference image, and that reference's index.

    The distance is the per-pixel RMS difference on the ``[-1, 1]`` scale,
    ``||a - b||_2 / sqrt(D)`` with ``D = C * H * W``, so it does not grow with
    the resolution. The search uses ``torch.cdist`` on chunks of
    ``batch_size`` queries; the reported distance of the chosen neighbour is then
    recomputed directly (cdist's matrix-product formula loses precision near 0).
    Returns ``(dist, index)`` of shapes ``N_queries`` (float) and ``N_queries`` (long).
    """
    _check_batch(queries, "queries")
    _check_batch(references, "references")
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(
            f"image shapes differ: {tuple(queries.shape[1:])} vs {tuple(references.shape[1:])}"
        )
    if len(references) == 0:
        raise ValueError("nearest_distances needs at least one reference image")
    q = queries.detach().reshape(len(queries), -1).float()
    r = references.detach().reshape(len(references), -1).float().to(q.device)
    dim = q.shape[1]
    dists, indices = [], []
    for chunk in q.split(batch_size):
        index = torch.cdist(chunk, r).argmin(dim=1)
        dists.append((chunk - r[index]).norm(dim=1) / math.sqrt(dim))
        indices.append(index)
    if not dists:
        return q.new_zeros(0), torch.zeros(0, dtype=torch.long, device=q.device)
    return torch.cat(dists), torch.cat(indices)


def memorisation(generated: Tensor, train: Tensor, held_out: Tensor) -> dict:
    """Do generated images copy the training set? Nearest-neighbour ratio test.

    For each generated image, ``d_train`` is the distance (see
    :func:`nearest_distances`) to its nearest training image and ``d_held`` to
    its nearest held-out image (same distribution, never trained on), and
    ``ratio = d_train / d_held``:

    * ``ratio << 1``: the sample sits on a training image -- the model is
      reproducing its training data;
    * ``ratio ~ 1``: the sample is as close to the training images as to unseen
      ones -- no sign of memorisation (held-out and training sets of similar
      size assumed).

    Returns ``ratio_median``, ``ratio_mean``, ``d_train_mean``, ``d_held_mean``,
    ``frac_copies`` (floats) and the per-image ``ratio`` tensor.
    """
    d_train, _ = nearest_distances(generated, train)
    d_held, _ = nearest_distances(generated, held_out)
    # The floor keeps a sample that equals a held-out image finite (huge ratio, not inf/nan).
    ratio = d_train / d_held.clamp_min(1e-12)
    # A "copy": closer to a training image than half the distance to the nearest unseen image.
    copies = d_train < 0.5 * d_held
    return {
        "ratio_median": float(ratio.median()),
        "ratio_mean": float(ratio.mean()),
        "d_train_mean": float(d_train.mean()),
        "d_held_mean": float(d_held.mean()),
        "frac_copies": float(copies.float().mean()),
        "ratio": ratio,
    }
