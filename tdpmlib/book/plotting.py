"""Figures: image grids, curves and error-bar plots. Every function returns a matplotlib Figure."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "nbagg")) else None
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


# The book's text column is about 836 px; the inline backend draws at 100 dpi, so a figure wider than this is
# scaled down on the page. Image figures keep each sample at >= 1 inch, i.e. >= 96 px on screen.
PAGE_WIDTH_IN = 8.2
MAX_COLS = 6


def image_grid(images: torch.Tensor, *, nrow: int = MAX_COLS, title: str | None = None, scale: float = 1.4):
    """A grid of images in [-1, 1], ``nrow`` per row, each at most ``scale`` inches and never wider than the page."""
    nrow = max(1, min(nrow, len(images)))
    grid = make_grid(((images.detach().cpu().float() + 1) / 2).clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    rows = (len(images) + nrow - 1) // nrow
    side = min(scale, PAGE_WIDTH_IN / nrow)
    fig, ax = plt.subplots(figsize=(side * nrow, side * rows))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _show(ax, img):
    ax.set_xticks([]), ax.set_yticks([])
    if img is None:
        ax.axis("off")
    else:
        ax.imshow(((img.detach().cpu().float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")


def image_rows(rows: dict[str, torch.Tensor], *, scale: float = 1.4, col_titles=None, max_cols: int = MAX_COLS,
               upright_labels: bool = True):
    """Images in [-1, 1] grouped by label, each image at most ``scale`` inches and the figure never wider than the page.

    Without ``col_titles``: each label's images in lines of at most ``max_cols``, the label above its first line.
    With ``col_titles`` (one title per column, e.g. one method each): one line per label, the label on the left,
    upright, or along the row's height (``upright_labels=False``), which leaves the images more of the width."""
    labels = list(rows)
    n = max(len(v) for v in rows.values())
    if col_titles is not None:
        margin = 0.8 if upright_labels else 0.3  # inches for the row labels on the left
        side = min(scale, (PAGE_WIDTH_IN - margin) / n)
        fig, axes = plt.subplots(len(labels), n, figsize=(side * n + margin, side * len(labels) + 0.6), squeeze=False,
                                 gridspec_kw=dict(wspace=0.04, hspace=0.04))
        for r, label in enumerate(labels):
            for c in range(n):
                _show(axes[r][c], rows[label][c] if c < len(rows[label]) else None)
            axes[r][0].set_ylabel("\n".join(textwrap.wrap(label, 12)) if upright_labels else label,
                                  rotation=0 if upright_labels else 90, ha="right" if upright_labels else "center",
                                  va="center", fontsize=9)
        for c, t in enumerate(list(col_titles)[:n]):
            axes[0][c].set_title("\n".join(textwrap.wrap(str(t), max(8, int(side * 11)))), fontsize=9)
        fig.subplots_adjust(left=margin / fig.get_figwidth(), right=0.995, bottom=0.01, top=1 - 0.55 / fig.get_figheight())
        return fig
    lines_per_label = -(-n // max_cols)  # balanced lines: 8 images in 2 lines of 4, not 6 and 2
    cols = max(1, -(-n // lines_per_label))
    lines = [(label, i) for label in labels for i in range(0, max(1, len(rows[label])), cols)]
    side = min(scale, PAGE_WIDTH_IN / cols)
    fig, axes = plt.subplots(len(lines), cols, figsize=(side * cols, (side + 0.32) * len(lines)), squeeze=False,
                             gridspec_kw=dict(hspace=0.32 / side + 0.05, wspace=0.04))
    for r, (label, start) in enumerate(lines):
        for c in range(cols):
            k = start + c
            _show(axes[r][c], rows[label][k] if k < len(rows[label]) else None)
        if start == 0:
            axes[r][0].set_title(label, loc="left", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.3 / fig.get_figheight(), bottom=0.01)
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
    at t = 600 as a dash-dot floor; right, DDIM-50 SWD over the real-vs-real floor (1 = as good as real)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 4.6))
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
    # ticks at 1, 1.2, 1.5, 2, 3, 5, 7 per decade: the ratios span less than a decade, where the default gives one
    right.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 1.2, 1.5, 2, 3, 5, 7)))
    right.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    # legends under the panels, never over the curves
    for ax in (left, right):  # 10-11 pt: the figure is shown a little narrower than it is drawn
        ax.tick_params(labelsize=10)
        ax.xaxis.label.set_size(11)
        ax.yaxis.label.set_size(11)
        ax.title.set_size(11)
    left.legend(fontsize=10, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    right.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.tight_layout()
    return fig


def paired_differences(rows, *, label: str = "b_short", xlabel: str = "difference in test PSNR (dB)",
                       title: str = ""):
    """Paired differences with their 95% intervals, one horizontal bar per row of ``rows`` (``mean_diff``,
    ``ci_low``, ``ci_high``, ``sigma`` and the comparator's name in ``label``), grouped by sigma, the zero line
    marked; right of it, the first method is better. Full page width, fonts of at least 9 pt."""
    rows = list(rows.to_dict("records")) if hasattr(rows, "to_dict") else list(rows)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 0.55 * len(rows) + 1.3))
    colors = dict(zip(dict.fromkeys(r[label] for r in rows), sns.color_palette("colorblind")))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows):
        lo, hi = r["mean_diff"] - r["ci_low"], r["ci_high"] - r["mean_diff"]
        ax.errorbar(r["mean_diff"], y, xerr=[[lo], [hi]], fmt="o", color=colors[r[label]], capsize=4, markersize=7)
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(ys, [f"σ = {int(r['sigma'])}: vs {r[label]}" for r in rows], fontsize=10)
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel(xlabel, fontsize=10)
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.4)
    fig.tight_layout()
    return fig
