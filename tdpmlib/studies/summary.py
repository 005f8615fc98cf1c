"""The book's summary tables (the intro and chapter 07): each approach once per noise level, with its cost.

``best_by_family`` is chapter 03's choice of the best DDPM alone, DIP alone and hybrid on the validation images;
``summary_table`` lists the approaches the book compares and ``speed_table`` the best of each family with every
hybrid. A method's cost is always its network evaluations (``nfe``) and DIP iterations, read from the rows; its
seconds per image come only from chapter 08's timing benchmark (``timings``: ``tdpmlib.studies.timing.read``), never from
the rows themselves, and are missing (NaN) where the benchmark has no case for it.
"""

from __future__ import annotations


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


