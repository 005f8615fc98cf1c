"""Paired comparisons over images: mean difference, 95% bootstrap confidence interval and win count.

Every headline comparison in the book is paired: methods A and B are scored on the same test images
(the same observation of each), so the per-image differences d_i = score_A(i) - score_B(i) carry the
comparison. ``paired`` summarises them as

* the mean difference,
* a percentile bootstrap confidence interval of that mean (resampling images with replacement,
  Efron & Tibshirani 1993, ch. 13), by default 95% from 10,000 resamples drawn from a seeded generator,
* the number of images on which A wins (d_i > 0), loses (d_i < 0) and ties.

``verdict`` turns such a summary into words without any fixed threshold: A is "better" when the whole
interval lies above 0, "worse" when it lies below 0, and "no clear difference" when it contains 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 10_000


def bootstrap_ci(values, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (a 1-D sequence of at least one number)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"values has shape {v.shape} (or non-finite entries); use a 1-D array of finite numbers")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed; use a number in (0, 1)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples={resamples!r} is not allowed; use an integer >= 100")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired(a, b, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Summary of the per-image differences ``a - b`` (two equally long sequences, image i in both)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-D and equally long (one score per image); got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, confidence=confidence, resamples=resamples, seed=seed)
    return dict(mean_diff=float(d.mean()), ci_low=lo, ci_high=hi, wins=int((d > 0).sum()),
                losses=int((d < 0).sum()), ties=int((d == 0).sum()), n=len(d), confidence=confidence)


def verdict(summary: dict, *, better: str = "better", worse: str = "worse", unclear: str = "no clear difference") -> str:
    """"better" if the interval lies above 0, "worse" if below, else "no clear difference" (no threshold)."""
    if summary["ci_low"] > 0:
        return better
    if summary["ci_high"] < 0:
        return worse
    return unclear


def compare(df: pd.DataFrame, *, a: str, b: str, metric: str = "psnr", key: str = "method_key", image: str = "image",
            by=(), seed: int = 0) -> pd.DataFrame:
    """Paired comparisons of method ``a`` against method ``b`` in a long per-image table, per group of ``by``.

    Rows are matched on ``image`` (and the ``by`` columns); an image missing from either method is an error,
    so a comparison never silently drops images. Returns one row per group with the ``paired`` summary.
    """
    by = list(by)
    need = {key, image, metric, *by}
    if need - set(df.columns):
        raise ValueError(f"compare: columns {sorted(need - set(df.columns))} are not in the table")
    rows = []
    groups = df.groupby(by, sort=False) if by else [((), df)]
    for keys, g in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        sa = g[g[key] == a].set_index(image)[metric]
        sb = g[g[key] == b].set_index(image)[metric]
        if sa.empty or sb.empty:
            raise ValueError(f"compare: method {a if sa.empty else b!r} has no rows in group {dict(zip(by, keys))}")
        if set(sa.index) != set(sb.index) or sa.index.has_duplicates or sb.index.has_duplicates:
            raise ValueError(f"compare: {a!r} and {b!r} are not scored on the same images in group {dict(zip(by, keys))}")
        sb = sb.loc[sa.index]
        rows.append(dict(zip(by, keys), a=a, b=b, metric=metric, **paired(sa.values, sb.values, seed=seed)))
    return pd.DataFrame(rows)


def describe(summary: dict, *, unit: str = "dB", digits: int = 2) -> str:
    """"+1.23 dB [0.80, 1.70], wins 15 of 16" for prose and tables."""
    f = f"{{:+.{digits}f}}"
    return (f"{f.format(summary['mean_diff'])} {unit} [{f.format(summary['ci_low'])}, {f.format(summary['ci_high'])}], "
            f"wins {summary['wins']} of {summary['n']}")
