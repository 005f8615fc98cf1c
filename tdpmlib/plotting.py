"""Figures: image grids, curves and error-bar plots. Every function returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "nbagg")) else None
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def image_grid(images: torch.Tensor, *, nrow: int = 8, title: str | None = None, scale: float = 1.6):
    """A grid of images in [-1, 1]."""
    grid = make_grid(((images.detach().cpu().float() + 1) / 2).clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    rows = (len(images) + nrow - 1) // nrow
    fig, ax = plt.subplots(figsize=(scale * min(nrow, len(images)), scale * rows))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def image_rows(rows: dict[str, torch.Tensor], *, scale: float = 1.4, col_titles=None):
    """One row of images per label (same count per row), labels on the left."""
    labels = list(rows)
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(labels), n, figsize=(scale * n, scale * len(labels)), squeeze=False)
    for r, label in enumerate(labels):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(rows[label]):
                img = ((rows[label][c].detach().cpu().float() + 1) / 2).clamp(0, 1)
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=9)
    fig.tight_layout()
    return fig


def curves(df, *, x: str, ys: list[str], hue: str | None = None, logx: bool = False, title: str | None = None,
           ylabels: list[str] | None = None, errorbar=("ci", 95)):
    """Side-by-side line plots of several columns against ``x`` (mean with a band over other rows:
    a 95% bootstrap interval by default, ``errorbar="sd"`` for mean ± standard deviation)."""
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.4), squeeze=False)
    for ax, y, lab in zip(axes[0], ys, ylabels or ys):
        many = len(df) > len(df[[x] + ([hue] if hue else [])].drop_duplicates())
        sns.lineplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=errorbar if many else None)
        ax.set_ylabel(lab)
        if logx:
            ax.set_xscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curves(logs: dict, *, window: int = 1, x: str = "step", y: str = "loss", logy: bool = True,
                title: str | None = None):
    """Training losses, one colour per label of ``logs`` (label -> DataFrame with columns ``x`` and ``y``):
    the raw values faint, their rolling mean over ``window`` rows solid."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (label, log) in enumerate(logs.items()):
        color = sns.color_palette()[i % 10]
        ax.plot(log[x], log[y], color=color, alpha=0.25, linewidth=0.8)
        smooth = log[y].rolling(max(1, int(window)), min_periods=1).mean()
        ax.plot(log[x], smooth, color=color, linewidth=1.8, label=f"{label} (rolling mean, {max(1, int(window))} steps)")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def errorbars(df, *, x: str, y: str, hue: str | None = None, title: str | None = None, logx: bool = False,
              kind: str = "point"):
    """Mean ± standard deviation of ``y`` over the rows at each ``x`` (seaborn), for ablations."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if kind == "bar":
        sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax)
    else:
        sns.pointplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax, dodge=0.2 if hue else False,
                      native_scale=logx)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def training_quality(quality: dict, *, floor_col: str = "psnr_training_mean"):
    """Held-out quality against training steps, one colour per schedule (label -> ``train.quality`` rows):
    left, PSNR of the one-step posterior mean at each recorded level with the training-mean image's PSNR
    at t = 600 as a dashed floor; right, DDIM-50 SWD over the real-vs-real floor (1 = as good as real)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    levels = [("psnr_posterior_mean_sigma25", "-", "σ = 25"), ("psnr_posterior_mean_sigma50", "--", "σ = 50"),
              ("psnr_posterior_mean_t600", ":", "t = 600")]
    for i, (label, q) in enumerate(quality.items()):
        color = sns.color_palette()[i % 10]
        for col, style, name in levels:
            if col in q:
                left.plot(q["step"], q[col], style, color=color, marker="o", markersize=3, label=f"{label}, {name}")
        right.plot(q["step"], q["swd_ratio_ddim50"], color=color, marker="o", markersize=3, label=label)
    floor = next(iter(quality.values()))[floor_col]
    left.axhline(float(floor.iloc[-1]), color="grey", linestyle="-.", linewidth=1, label="training-mean image")
    right.axhline(1.0, color="grey", linestyle="-.", linewidth=1, label="real images (floor)")
    left.set(xlabel="training step", ylabel="PSNR (dB), held-out", title="one-step posterior mean")
    right.set(xlabel="training step", ylabel="SWD / real-vs-real SWD", title="DDIM-50 samples (raw ε step)", yscale="log")
    left.legend(fontsize=7, ncol=2, loc="lower right")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
