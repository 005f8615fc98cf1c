"""The figure of Example 2 (notebook 05): PSNR along the DIP fits of one test image, with each rule's stop."""

from __future__ import annotations

import pandas as pd


def plot_stopping_curves(hist: pd.DataFrame, guided_hist: pd.DataFrame, rows: pd.DataFrame, image: int,
                         eswmv_hist: pd.DataFrame | None = None, *, fit_label: str = "official DIP",
                         width: float = 8.0, max_cols: int = 2, x_max: float | None = 1200):
    """PSNR against iteration for one test image at each noise level: the fit (``hist``, test rows), the
    guided fit and (when given) ES-WMV's own fit, with each rule's stop marked.

    Sized for a book page: ``width`` inches at most 8.3 (so it is shown unscaled), at most ``max_cols`` panels a
    row (more rows when needed), fonts of 9 pt or more, one legend below the panels. Each panel's title names
    the noise level (σ on 0..255, the ``sigma`` column when present, else ``sigma255``) and its level t. The
    stops are hollow markers of decreasing size, so stops at the same iteration stay visible.

    ``x_max`` (iterations; None: the longest curve) cuts the x axis, so that fits of a few hundred iterations stay
    readable beside a long one: a stop beyond it is drawn at the right edge, pointing right, with its iteration
    written beside it."""
    import math

    import matplotlib.pyplot as plt

    if x_max is not None and not float(x_max) > 0:
        raise ValueError(f"x_max={x_max!r} is not allowed; give a positive number of iterations or None")
    levels = sorted(rows.t_obs.unique())
    ncols = max(1, min(int(max_cols), len(levels)))
    nrows = math.ceil(len(levels) / ncols)
    width = min(float(width), 8.3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.4 * nrows), squeeze=False)
    rules = list(dict.fromkeys(rows.rule))
    markers = dict(zip(rules, "osD^vP*Xh<>"))
    sizes = {r: 150 - 80 * i / max(1, len(rules) - 1) for i, r in enumerate(rules)}  # largest first
    colors = dict(zip(rules, ["tab:red", "tab:purple", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                              "black"] * 3))
    handles = {}
    for ax, t in zip(axes.flat, levels):
        h = hist[(hist.t_obs == t) & (hist.image == image)]
        if "split" in h:
            h = h[h.split == "test"]
        g = guided_hist[(guided_hist.t_obs == t) & (guided_hist.image == image)]
        handles[f"{fit_label} on y/√ᾱ"], = ax.plot(h.iteration, h.psnr_ref, color="0.35", lw=1.4)
        handles["guided fit (staged targets)"], = ax.plot(g.iteration, g.psnr_ref, color="tab:orange", lw=1.4)
        if eswmv_hist is not None:
            e = eswmv_hist[(eswmv_hist.t_obs == t) & (eswmv_hist.image == image)]
            handles["ES-WMV's own fit"], = ax.plot(e.iteration, e.psnr_ref, color="tab:blue", lw=1.2, alpha=0.8)
        r = rows[(rows.t_obs == t) & (rows.image == image)]
        beyond = 0  # stops past x_max, stacked at the right edge
        for rule in rules:
            rr = r[r.rule == rule]
            if rr.empty:
                continue
            handles[f"stop: {rule}"] = ax.scatter(rr.stop.clip(upper=x_max), rr.psnr, marker=markers[rule],
                                                  s=sizes[rule], facecolors="none", edgecolors=colors[rule],
                                                  linewidths=1.6, zorder=3, clip_on=False)
            for stop, psnr in zip(rr.stop, rr.psnr):
                if x_max is not None and stop > x_max:
                    ax.annotate(f"{int(stop)} →", (x_max, psnr), xytext=(-10, 10 + 13 * beyond),
                                textcoords="offset points", ha="right", fontsize=9, color=colors[rule],
                                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1))
                    beyond += 1
        if x_max is not None:
            ax.set_xlim(0, x_max)
        ax.set_xlabel("DIP iteration", fontsize=10)
        ax.set_ylabel("PSNR vs clean (dB)", fontsize=10)
        ax.tick_params(labelsize=9)
        sigma = (f"{int(r.sigma.iloc[0])}" if "sigma" in r and len(r) else
                 f"{r.sigma255.iloc[0]:.0f}" if len(r) else "?")
        ax.set_title(f"σ = {sigma} (t = {int(t)}), test image {image}", fontsize=11)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=9, frameon=False)
    return fig
