"""The book's summary tables (the intro and chapter 07): each approach once per noise level, with its cost.

``best_by_family`` is chapter 03's choice of the best DDPM alone, DIP alone and hybrid on the validation images;
``summary_table`` lists the approaches the book compares and ``speed_table`` the best of each family with every
hybrid. A method's cost is always its network evaluations (``nfe``) and DIP iterations, read from the rows; its
seconds per image come only from chapter 08's timing benchmark (``timings``: ``tdpmlib.studies.timing.read``), never from
the rows themselves, and are missing (NaN) where the benchmark has no case for it. ``generation_summary`` is the
one sentence on TDPM-DIP as a generator, with the one generation speed-up (``timing.generation_speedup``).
"""

from __future__ import annotations

import math

import pandas as pd

from .timing import seconds_or_none, study_key

FAMILIES = ("DDPM", "DIP", "hybrid")
NAN = float("nan")


def best_by_family(study_rows: pd.DataFrame) -> pd.DataFrame:
    """Per (sigma, family) of chapter 03's study rows: the method with the best mean validation PSNR (the choice
    chapter 03 makes before it scores the test images). Columns: sigma, family, method_key, val_psnr."""
    v = study_rows[(study_rows["split"] == "val") & study_rows["family"].isin(FAMILIES)]
    m = v.groupby(["sigma", "family", "method_key"], sort=False)["psnr"].mean().rename("val_psnr").reset_index()
    return m.loc[m.groupby(["sigma", "family"], sort=False)["val_psnr"].idxmax()].reset_index(drop=True)


def seconds(timings: pd.DataFrame | None, sigma, method_key: str) -> float:
    """Seconds per image of a study method at sigma from the timing benchmark; NaN when it has no such case."""
    s = seconds_or_none(timings, study_key(sigma, method_key))
    return NAN if s is None else s


def speed_table(study_rows: pd.DataFrame, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per sigma: the best DDPM alone, the best DIP alone (chosen on validation) and every hybrid, with their test
    PSNR, network evaluations, DIP iterations and seconds per image from the timing benchmark (NaN without one)."""
    best = best_by_family(study_rows)
    test = study_rows[study_rows["split"] == "test"]
    rows = []
    for sigma in sorted(test["sigma"].unique()):
        t = test[test["sigma"] == sigma]
        keys = [best.loc[(best["sigma"] == sigma) & (best["family"] == f), "method_key"] for f in ("DDPM", "DIP")]
        keys = [k.iloc[0] for k in keys if len(k)]
        keys += [k for k in dict.fromkeys(t.loc[t["family"] == "hybrid", "method_key"]) if k not in keys]
        for k in keys:
            r = t[t["method_key"] == k]
            rows.append(dict(sigma=sigma, method=r["method"].iloc[0], family=r["family"].iloc[0],
                             psnr=float(r["psnr"].mean()), nfe=int(r["nfe"].iloc[0]),
                             dip_iterations=int(r["dip_iterations"].iloc[0]), seconds=seconds(timings, sigma, k)))
    return pd.DataFrame(rows, columns=["sigma", "method", "family", "psnr", "nfe", "dip_iterations", "seconds"])


# (row label, chapter 03 method_key); the DDPM-alone row is the family's best on the validation images
SUMMARY_METHODS = (("DIP, official protocol", "dip_official"), ("DIP, report's protocol", "dip_plain"),
                   ("TDPM-DIP, matched state", "tdpm_matched"),
                   ("TDPM-DIP, matched state, posterior-mean readout", "tdpm_matched_pm"),
                   ("TDPM-DIP, matched state, mean of n chains", "tdpm_matched_mean"),
                   ("TDPM-DIP, earlier variant: DIP then T_trunc polishing steps", "dip_polish"),
                   ("Example 1: DIP then SDEdit", "sdedit"))
# Rule 3 of the book: every denoising table carries the trivial floors.
SUMMARY_FLOORS = (("Floor: non-local means", "nlm"), ("Floor: training-mean image", "train_mean"),
                  ("Floor: noisy input", "noisy"))
SUMMARY_COLUMNS = ["sigma", "method", "psnr", "ssim", "nfe", "dip_iterations", "seconds", "n"]


def summary_table(study_rows: pd.DataFrame, example2_rows: pd.DataFrame | None = None, *,
                  timings: pd.DataFrame | None = None, sigmas=(25, 50)) -> pd.DataFrame:
    """Per sigma (of ``sigmas`` that chapter 03 ran): the best DDPM alone (chosen on validation), both DIP
    protocols, the matched TDPM-DIP, Example 1 and, from chapter 05's test rows, Example 2's DDPM-guided stop, with
    mean test PSNR, SSIM, network evaluations, DIP iterations and seconds per image from the timing benchmark
    (``timings``; NaN where it has no case, and for the floors that compute nothing). Chapter 05 scores its own
    test images (``n`` says how many). Columns: ``SUMMARY_COLUMNS``."""
    best = best_by_family(study_rows)
    test = study_rows[study_rows["split"] == "test"]
    rows = []
    for sigma in [s for s in sigmas if s in set(test["sigma"])]:
        t = test[test["sigma"] == sigma]
        ddpm_key = best.loc[(best["sigma"] == sigma) & (best["family"] == "DDPM"), "method_key"]
        entries = [(f"DDPM alone: {t.loc[t['method_key'] == k, 'method'].iloc[0]}", k) for k in ddpm_key]
        for label, key in entries + [e for e in SUMMARY_METHODS if (t["method_key"] == e[1]).any()]:
            r = t[t["method_key"] == key]
            rows.append(dict(sigma=sigma, method=label, psnr=r["psnr"].mean(), ssim=r["ssim"].mean(),
                             nfe=int(round(r["nfe"].mean())), dip_iterations=int(round(r["dip_iterations"].mean())),
                             seconds=seconds(timings, sigma, key), n=len(r)))
        if example2_rows is not None and len(example2_rows):
            g = example2_rows[(example2_rows["rule_key"] == "guided")
                              & (example2_rows["sigma255"].round() == sigma)]
            if len(g):
                rows.append(dict(sigma=sigma, method="Example 2: DIP stopped by the DDPM schedule", psnr=g["psnr"].mean(),
                                 ssim=g["ssim"].mean(), nfe=0, dip_iterations=int(round(g["iterations"].mean())),
                                 seconds=seconds(timings, sigma, "guided"), n=len(g)))
        for label, key in [e for e in SUMMARY_FLOORS if (t["method_key"] == e[1]).any()]:
            r = t[t["method_key"] == key]
            rows.append(dict(sigma=sigma, method=label, psnr=r["psnr"].mean(), ssim=r["ssim"].mean(), nfe=0,
                             dip_iterations=0, seconds=seconds(timings, sigma, key), n=len(r)))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def generation_summary(gen: pd.DataFrame, *, speedup: float | None = None, speed_source: str = "") -> str:
    """One sentence on TDPM-DIP as a generator (chapter 03's generation.csv): its speed against DDPM-1000, the
    book's one generation speed-up ``speedup`` (``timing.generation_speedup``; with ``speed_source``, e.g. "in
    chapter 08's benchmark"; left out when None), and what its samples are (the fraction that copy the images its
    DIPs were fit to, ``frac_copies_fit``), with the SWD of both and of real images. Empty when the table lacks
    those rows."""
    g = gen.set_index("method_key")
    if not {"tdpm_train", "ddpm"} <= set(g.index):
        return ""
    t, d = g.loc["tdpm_train"], g.loc["ddpm"]
    where = f" {speed_source}" if speed_source else ""
    steps = int(d.get("nfe", 1000))
    if speedup is None or not math.isfinite(speedup):
        speed = "As a generator, TDPM-DIP as the report runs it"
        if {"nfe", "dip_iterations"} <= set(g.columns):
            speed += (f" takes {int(t['nfe'])} network evaluations after a {int(t['dip_iterations'])}-iteration DIP "
                      f"per sample against the DDPM's {steps}")
        else:
            speed += " is timed only in chapter 08"
    else:
        word, factor = ("faster", speedup) if speedup >= 1 else ("slower", 1 / speedup)
        speed = (f"As a generator, TDPM-DIP as the report runs it is {factor:.1f} times {word} per sample than the DDPM "
                 f"with {steps} steps{where}")
    text = (f"{speed}, but {t['frac_copies_fit']:.0%} of its samples are copies of the training images its DIPs were "
            f"fit to (of the DDPM's samples, {d['frac_copies']:.0%} copy a training image)")
    if "tdpm_held" in g.index:
        text += f", and {g.loc['tdpm_held', 'frac_copies_fit']:.0%} when the DIPs are fit to held-out images instead"
    swd = f"sliced Wasserstein distance to held-out images, lower is better: {t['swd']:.1f} against the DDPM's {d['swd']:.1f}"
    if "real" in g.index:
        swd += f" and real images' {g.loc['real', 'swd']:.1f}"
    return f"{text} ({swd})."
