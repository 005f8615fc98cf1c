"""Image-quality metrics for the TDPM-DIP report (sample-quality and memorisation metrics: ``sample_metrics``).

Conventions
-----------
Unless a docstring says otherwise, images are ``torch.Tensor`` batches of shape
``N x 3 x H x W`` on the *model scale* ``[-1, 1]``. Every metric that needs the
usual ``[0, 1]`` scale converts with :func:`to_unit` first, so callers never
rescale by hand.

Contents, in reading order
--------------------------
* :func:`to_unit` -- ``[-1, 1] -> [0, 1]``.
* :func:`psnr`, :func:`ssim` -- per-image reconstruction metrics (torchmetrics);
  :func:`ssim_or_nan` -- NaN instead of an error below SSIM's 11-pixel window.
* :func:`mean_std`, :func:`mean_std_or_nan`, :func:`fmt_mean_std` -- "13.40 ± 0.52" table cells;
  :func:`summarise` -- those cells per group of a per-image table.
* :class:`CudaTimer` -- wall-clock timing that is correct for asynchronous CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "to_unit",
    "psnr",
    "ssim",
    "ssim_or_nan",
    "mean_std",
    "mean_std_or_nan",
    "fmt_mean_std",
    "summarise",
    "CudaTimer",
]


# --------------------------------------------------------------------------- #
# Scale conversion and input checks
# --------------------------------------------------------------------------- #
def to_unit(x: Tensor) -> Tensor:
    """Map an image from the model scale ``[-1, 1]`` to ``[0, 1]`` and clamp."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_batch(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be an N x C x H x W tensor, got {shape}")


def _check_pair(pred: Tensor, target: Tensor) -> None:
    _check_batch(pred, "pred")
    _check_batch(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")


# --------------------------------------------------------------------------- #
# Reconstruction metrics: PSNR and SSIM
# --------------------------------------------------------------------------- #
def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape ``N``; both inputs on ``[-1, 1]``.

    Computed on :func:`to_unit` images with ``data_range=1``, i.e.
    ``10 * log10(1 / MSE)`` with the MSE averaged over channels and pixels of
    each image. Identical images (MSE 0) give ``+inf``, as torchmetrics does.
    """
    _check_pair(pred, target)
    return peak_signal_noise_ratio(
        to_unit(pred), to_unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


# Gaussian window of the original SSIM (Wang et al. 2004, IEEE TIP 13(4), Sec. III-C):
# 11 x 11 taps, sigma 1.5. torchmetrics derives the same 11 taps from sigma
# (2 * int(3.5 * sigma + 0.5) + 1), as does scikit-image's `truncate=3.5`.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def ssim(pred: Tensor, target: Tensor, *, crop_border: bool = True) -> Tensor:
    """Per-image SSIM, shape ``N``; both inputs on ``[-1, 1]``.

    torchmetrics computes the SSIM map on :func:`to_unit` images (Gaussian
    window 11, sigma 1.5, ``data_range=1``), reflection-padding the image so the
    map has the full ``H x W`` size. With ``crop_border=True`` (the default) the
    5-pixel border of that map -- the pixels whose window reaches into the
    padding -- is dropped before averaging, as in Wang et al.'s reference
    ``ssim.m`` (``filter2(..., 'valid')``) and ``skimage.metrics.structural_similarity``;
    the result then agrees with scikit-image to float precision.
    ``crop_border=False`` returns torchmetrics' own full-map mean
    (``reduction="none"``), which on a 32 x 32 image can differ by ~0.05.

    Raises ``ValueError`` for images smaller than the 11-pixel window.
    """
    _check_pair(pred, target)
    height, width = pred.shape[-2:]
    if min(height, width) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WINDOW} x {_SSIM_WINDOW} pixels "
            f"(its Gaussian window), got {height} x {width}"
        )
    full_mean, ssim_map = structural_similarity_index_measure(
        to_unit(pred),
        to_unit(target),
        gaussian_kernel=True,
        sigma=_SSIM_SIGMA,
        kernel_size=_SSIM_WINDOW,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    if not crop_border:
        return full_mean
    pad = (_SSIM_WINDOW - 1) // 2
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


def ssim_or_nan(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image :func:`ssim` on the CPU, or NaN for images smaller than its 11-pixel window (the tests' 8 px
    images), so that tables keep an ``ssim`` column at every resolution."""
    if min(pred.shape[-2:]) < _SSIM_WINDOW:
        return torch.full((len(pred),), float("nan"))
    return ssim(pred, target).cpu()


# --------------------------------------------------------------------------- #
# Summaries for tables
# --------------------------------------------------------------------------- #
def mean_std(values: Iterable[float] | Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; ``0.0`` for one value)."""
    if isinstance(values, Tensor):
        arr = values.detach().to("cpu", torch.float64).numpy().ravel()
    else:
        arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def mean_std_or_nan(values: Iterable[float] | Tensor) -> tuple[float, float]:
    """``mean_std`` of the values that are not NaN; ``(nan, nan)`` when none is (SSIM of images below 11 px)."""
    kept = [v for v in (float(x) for x in values) if not math.isnan(v)]
    return mean_std(kept) if kept else (math.nan, math.nan)


def fmt_mean_std(values: Iterable[float] | Tensor, digits: int = 2) -> str:
    """Format values as ``"mean ± std"``, e.g. ``"13.40 ± 0.52"``."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(df: pd.DataFrame, by: list[str], cols: list[str], digits: int = 2) -> pd.DataFrame:
    """Mean ± std per group of a per-image table: one row per group of ``by`` (first-appearance order, NaN
    keys kept) with ``n_images`` and, for each column c, ``c_mean``, ``c_std`` (:func:`mean_std_or_nan`) and
    the string ``c`` = "mean ± std" with ``digits`` decimals ("n/a" when every value is NaN)."""
    out = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n_images"] = len(g)
        for c in cols:
            m, s = mean_std_or_nan(g[c])
            row[f"{c}_mean"], row[f"{c}_std"] = m, s
            row[c] = "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"
        out.append(row)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #
class CudaTimer:
    """Wall-clock timer for a ``with`` block; correct for asynchronous CUDA work.

    ``with CudaTimer(device) as t: ...`` then ``t.seconds``. On a CUDA device
    the device is synchronised before the clock starts and before it stops, so
    queued kernels are counted; on other devices it is plain
    ``time.perf_counter``. ``device`` may be a string or ``torch.device``.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: float = float("nan")
        self._start = 0.0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> CudaTimer:
        self._synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._synchronize()
        self.seconds = time.perf_counter() - self._start
