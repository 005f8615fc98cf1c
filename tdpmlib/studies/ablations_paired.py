"""Chapter 06's paired tables of the ablation rows (``tdpmlib.studies.ablations``) and the numbers the chapter's prose shows.

Each ``*_paired`` compares rows of one ablation on the test images (``comparison.compare``): every T_trunc > 0
(ancestral readout) against the DIP alone, every readout at the chosen T_trunc against the DIP alone, cosine
against linear at matched sigma, K chains against one, every DIP budget against the validated one, other
learning rates against the protocol's; ``table3_summary`` / ``table3_paired`` read the report's own Table 3 at
t = 600. The ``*_facts`` functions
return, for one sigma, the numbers and short verdict phrases (each at most 80 characters, "n/a" where the run
lacks that item) that chapter 06's prose shows; the ``*_text`` functions (deprecated, for chapters 05 and 07 until
they are converted) put them into sentences. Cost columns are network evaluations and DIP iterations, never
seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import denoising
from ..book.comparison import WORDS, compare, fmt_diff, outcome, paired


def _ancestral(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows read out by one ancestral chain (all rows when there is no ``readout`` column)."""
    return rows[rows["readout"] == "ancestral"] if "readout" in rows.columns else rows


def t_trunc_paired(rows: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Every T_trunc > 0 against T_trunc = 0 (the DIP alone), per (sigma, schedule), on the test images, with the
    median over those images of the handed-over state's ``noise_ratio`` (actual / expected noise std). Only the
    ancestral readout (``readout_paired`` compares the others)."""
    out = []
    rows = _ancestral(rows)
    r = rows[rows["ablation"] == "t_trunc"]
    for (sigma, schedule), g in r.groupby(["sigma", "schedule"], sort=True):
        base = dict(ablation="t_trunc", sigma=sigma, schedule=schedule, method_key="t_trunc=0")
        for key, gg in g[g["nfe"] > 0].groupby("method_key", sort=False):
            out.append(compare(rows, dict(base, method_key=key), base, seed=seed, sigma=sigma, schedule=schedule,
                               t=int(gg["t"].iloc[0]), level=int(gg["nfe"].iloc[0]), fraction=float(gg["value"].iloc[0]),
                               a=gg["method"].iloc[0], b="DIP alone",
                               noise_ratio=float(gg.loc[gg["split"] == "test", "noise_ratio"].median())))
    return pd.DataFrame(out).sort_values(["sigma", "schedule", "level"], kind="stable").reset_index(drop=True)


def readout_paired(rows: pd.DataFrame, choices: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per row of ``choices`` (``ablate_choice.t_trunc_choices``: sigma, schedule, the chosen T_trunc): every
    readout of the state at that T_trunc against the DIP alone on the test images, the ancestral one first.
    Columns: sigma, schedule, readout, level, fraction, n_chains (1 but for "mean_chains"), nfe, dip_iterations,
    chosen_by, then ``comparison.compare``'s summary."""
    out = []
    r = rows[rows["ablation"] == "t_trunc"]
    for c in choices.to_dict("records"):
        sigma, schedule, level = c["sigma"], c["schedule"], int(c["nfe"])
        at = r[(r["sigma"] == sigma) & (r["schedule"] == schedule) & np.isclose(r["value"], c["value"])]
        base = dict(ablation="t_trunc", sigma=sigma, schedule=schedule, method_key="t_trunc=0")
        for key, gg in sorted(at.groupby("method_key", sort=False), key=lambda kv: kv[1]["readout"].iloc[0] != "ancestral"):
            readout, nfe = gg["readout"].iloc[0], int(gg["nfe"].iloc[0])
            out.append(compare(rows, dict(base, method_key=key), base, seed=seed, sigma=sigma, schedule=schedule,
                               readout=readout, level=level, fraction=float(c["value"]),
                               n_chains=nfe // level if readout == "mean_chains" else 1, nfe=nfe,
                               dip_iterations=int(gg["dip_iterations"].iloc[0]), chosen_by=c.get("chosen_by", ""),
                               a=gg["method"].iloc[0], b="DIP alone"))
    return pd.DataFrame(out)


def schedule_paired(rows: pd.DataFrame, hybrid: pd.DataFrame, *, a: str = "cosine", b: str = "linear",
                    seed: int = 0) -> pd.DataFrame:
    """Schedule ``a`` against ``b`` at matched sigma on the test images: the DDPM's posterior mean and ancestral
    sampling (``ddpm_rows``), the DIP alone (T_trunc = 0: the same fit under both) and the matched TDPM-DIP (one
    ancestral chain) at each schedule's chosen T_trunc > 0 (``hybrid``: ``ablate_choice.t_trunc_choices`` of
    both schedules, or any frame with sigma, schedule, method_key and nfe)."""
    out = []
    h = hybrid.set_index(["sigma", "schedule"])
    for sigma in sorted(rows.loc[rows["ablation"] == "schedule", "sigma"].unique()):
        for key in ("tweedie", "ddpm"):
            sel = dict(ablation="schedule", sigma=sigma, method_key=key)
            out.append(compare(rows, dict(sel, schedule=a), dict(sel, schedule=b), seed=seed, sigma=sigma,
                               method_key=key, method=denoising.METHOD_LABELS[key], a=a, b=b))
        sel = dict(ablation="t_trunc", sigma=sigma, method_key="t_trunc=0")
        out.append(compare(rows, dict(sel, schedule=a), dict(sel, schedule=b), seed=seed, sigma=sigma,
                           method_key="dip", method="DIP alone (the same fit under both)", a=a, b=b))
        ka, kb = h.loc[(sigma, a), "method_key"], h.loc[(sigma, b), "method_key"]
        out.append(compare(rows, dict(ablation="t_trunc", sigma=sigma, schedule=a, method_key=ka),
                           dict(ablation="t_trunc", sigma=sigma, schedule=b, method_key=kb), seed=seed, sigma=sigma,
                           method_key="tdpm_matched", a=a, b=b,
                           method=f"TDPM-DIP, chosen T_trunc ({a} {int(h.loc[(sigma, a), 'nfe'])}, "
                                  f"{b} {int(h.loc[(sigma, b), 'nfe'])})"))
    return pd.DataFrame(out)


def chains_paired(rows: pd.DataFrame, *, schedule: str, seed: int = 0) -> pd.DataFrame:
    """Per sigma: the mean of K chains against one chain (K > 1) and against the DIP alone (every K)."""
    out = []
    r = rows[rows["ablation"] == "chains"]
    for sigma, g in r.groupby("sigma", sort=True):
        one = dict(ablation="chains", sigma=sigma, method_key="K=1")
        alone = dict(ablation="t_trunc", sigma=sigma, schedule=schedule, method_key="t_trunc=0")
        for key, gg in g.groupby("method_key", sort=False):
            K = int(gg["value"].iloc[0])
            lab = dict(sigma=sigma, K=K, level=int(gg["nfe"].iloc[0]) // K, a=gg["method"].iloc[0])
            if K > 1:
                out.append(compare(rows, dict(one, method_key=key), one, seed=seed, b="one chain", **lab))
            out.append(compare(rows, dict(one, method_key=key), alone, seed=seed, b="DIP alone", **lab))
    return pd.DataFrame(out)


def budget_paired(rows: pd.DataFrame, chosen: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per sigma: the DIP alone at every budget against the validated budget, on the test images."""
    out = []
    r = rows[rows["ablation"] == "dip_iterations"]
    for sigma, g in r.groupby("sigma", sort=True):
        kv = chosen.set_index("sigma").loc[sigma, "method_key"]
        base = dict(ablation="dip_iterations", sigma=sigma)
        for key, gg in g.groupby("method_key", sort=False):
            out.append(compare(rows, dict(base, method_key=key), dict(base, method_key=kv), seed=seed, sigma=sigma,
                               k=int(gg["dip_iterations"].iloc[0]), validated_k=int(kv.split("=")[1]),
                               a=gg["method"].iloc[0], b="validated budget"))
    return pd.DataFrame(out)


def lr_paired(rows: pd.DataFrame, chosen: pd.DataFrame, default_lr: float, *, seed: int = 0) -> pd.DataFrame:
    """Per sigma: the DIP at each learning rate (its own validated budget) against the default rate's."""
    out = []
    c = chosen.set_index(["sigma", "value"])
    for (sigma, lr), row in c.iterrows():
        if np.isclose(lr, default_lr):
            continue
        base = c.loc[(sigma, default_lr)]
        sel = dict(ablation="dip_lr", sigma=sigma)
        out.append(compare(rows, dict(sel, method_key=row["method_key"]), dict(sel, method_key=base["method_key"]),
                           seed=seed, sigma=sigma, lr=lr, k=int(row["dip_iterations"]), default_lr=default_lr,
                           default_k=int(base["dip_iterations"]), a=f"lr {lr:g}", b=f"lr {default_lr:g}"))
    return pd.DataFrame(out)


def table3_summary(t3: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of PSNR / SSIM per (protocol, T_trunc) of ``report_table3``'s rows (report's protocol first)."""
    t3 = t3.assign(_order=(t3["protocol"] != "report").astype(int)).sort_values(["_order", "t_trunc"], kind="stable")
    g = t3.groupby(["protocol", "t_trunc"], sort=False)
    return g.agg(psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"), ssim_mean=("ssim", "mean"),
                 ssim_std=("ssim", "std"), n=("image", "size"), nfe=("nfe", "first"),
                 dip_iterations=("dip_iterations", "first")).reset_index()


def table3_paired(t3: pd.DataFrame, a: int, b: int, *, protocol: str = "corrected", seed: int = 0) -> dict | None:
    """T_trunc a against T_trunc b at t = 600 under one protocol (None when either was not run)."""
    r = t3[t3["protocol"] == protocol]
    ra, rb = r[r["t_trunc"] == a], r[r["t_trunc"] == b]
    if ra.empty or rb.empty:
        return None
    s = paired(ra, rb, seed=seed)
    return dict(s, a_psnr=float(ra["psnr"].mean()), b_psnr=float(rb["psnr"].mean()), outcome=outcome(s))


# --------------------------------------------------------------------------------------------------------
# Facts for the prose: per sigma, numbers and short phrases (<= 80 characters), "n/a" where the run lacks an item
# --------------------------------------------------------------------------------------------------------

NA = "n/a"


def fmt_level(level: int, frac: float) -> str:
    """"7 (t/8)": a T_trunc level with its fraction of t(sigma); "0 (DIP alone)"."""
    if frac == 0:
        return "0 (DIP alone)"
    if frac == 1:
        return f"{level} (t)"
    inv = 1 / frac
    return f"{level} (t/{inv:.0f})" if abs(inv - round(inv)) < 1e-9 else f"{level} ({frac:g} t)"


def _diff_wins(r) -> str:
    """"+0.39 dB [+0.28, +0.50], wins 19 of 20"."""
    return f"{fmt_diff(r)}, wins {int(r['wins'])} of {int(r['n'])}"


def _na(keys) -> dict:
    return {k: NA for k in keys}


def t_trunc_facts(paired_t: pd.DataFrame, chosen: pd.DataFrame, *, schedule: str, sigma) -> dict:
    """For one (schedule, sigma): ``t``, the chosen T_trunc (``pick``, e.g. "14 (t/4)" or "0 (DIP alone)") and
    how it compares with the DIP alone (``pick_verdict``, ``pick_diff``; "n/a" when it is 0), the outcome counts
    of the T_trunc > 0 (``n``, ``n_better``, ``n_unclear``, ``n_worse``) and the level with the highest mean
    difference (``best``, ``best_diff``)."""
    keys = ("t", "pick", "pick_verdict", "pick_diff", "n", "n_better", "n_unclear", "n_worse", "best", "best_diff")
    g = paired_t[(paired_t["schedule"] == schedule) & (paired_t["sigma"] == sigma)]
    c = chosen[(chosen["schedule"] == schedule) & (chosen["sigma"] == sigma)]
    if g.empty or c.empty:
        return _na(keys)
    ch, best = c.iloc[0], g.loc[g["mean_diff"].idxmax()]
    level = int(ch["nfe"])
    at = g[g["level"] == level]
    counts = g["outcome"].value_counts()
    return dict(t=int(g["t"].iloc[0]), pick=fmt_level(level, float(ch["value"])),
                pick_verdict=at["outcome"].iloc[0] if len(at) else NA, pick_diff=_diff_wins(at.iloc[0]) if len(at) else NA,
                n=len(g), n_better=int(counts.get(WORDS["better"], 0)), n_unclear=int(counts.get(WORDS["unclear"], 0)),
                n_worse=int(counts.get(WORDS["worse"], 0)), best=fmt_level(int(best["level"]), float(best["fraction"])),
                best_diff=_diff_wins(best))


# The band of actual / expected noise std in which the handed-over state counts as the one the chain expects
# (the target of the experiments issue: 0.8-1.25, i.e. a noise variance within about 0.64-1.56 of the level's).
MATCHED_BAND = (0.8, 1.25)


def handover_facts(paired_t: pd.DataFrame, *, schedule: str, sigma, band: tuple[float, float] = MATCHED_BAND) -> dict:
    """For one (schedule, sigma): the median noise ratios of the handed-over state from the smallest T_trunc to
    the largest (``ratios``, "3.71, 2.53, 0.88"), the smallest T_trunc whose ratio lies in ``band`` (or, when none
    does, the one nearest 1: ``found`` says which) and how it compares with the DIP alone (``verdict``, ``diff``)."""
    lo, hi = band
    g = paired_t[(paired_t["schedule"] == schedule) & (paired_t["sigma"] == sigma)].sort_values("level")
    if g.empty:
        return _na(("ratios", "found", "level", "verdict", "diff"))
    inside = g[(g["noise_ratio"] >= lo) & (g["noise_ratio"] <= hi)]
    if inside.empty:
        row, found = g.loc[(g["noise_ratio"] - 1).abs().idxmin()], f"none lies within {lo:g}–{hi:g}; the nearest is"
    else:
        row, found = inside.iloc[0], f"the first within {lo:g}–{hi:g} is"
    return dict(ratios=", ".join(f"{r:.2f}" for r in g["noise_ratio"]), found=found,
                level=fmt_level(int(row["level"]), float(row["fraction"])), verdict=row["outcome"], diff=_diff_wins(row))


def schedule_facts(paired_s: pd.DataFrame, *, sigma) -> dict:
    """For one sigma: ``{method_key}_verdict`` and ``{method_key}_diff`` of schedule a against b (``schedule_paired``)
    for the DDPM's posterior mean (tweedie), its ancestral sampling (ddpm) and the matched TDPM-DIP."""
    out = {}
    g = paired_s[paired_s["sigma"] == sigma].set_index("method_key") if len(paired_s) else pd.DataFrame()
    for key in ("tweedie", "ddpm", "tdpm_matched"):
        ok = key in g.index
        out[f"{key}_verdict"] = g.loc[key, "outcome"] if ok else NA
        out[f"{key}_diff"] = _diff_wins(g.loc[key]) if ok else NA
    return out


def chains_facts(paired_c: pd.DataFrame, *, sigma, ks=(2, 4)) -> dict:
    """For one sigma: the T_trunc of the chains (``level``), the mean of K chains against one chain for each K of
    ``ks`` (``k{K}_verdict``, ``k{K}_diff``) and the most chains run against the DIP alone (``kmax``,
    ``kmax_verdict``, ``kmax_diff``)."""
    g = paired_c[paired_c["sigma"] == sigma] if len(paired_c) else paired_c
    out = dict(level=int(g["level"].iloc[0]) if len(g) else NA)
    one = g[g["b"] == "one chain"].set_index("K") if len(g) else pd.DataFrame()
    for K in ks:
        out[f"k{K}_verdict"] = one.loc[K, "outcome"] if K in one.index else NA
        out[f"k{K}_diff"] = _diff_wins(one.loc[K]) if K in one.index else NA
    dip = g[g["b"] == "DIP alone"].sort_values("K") if len(g) else g
    top = dip.iloc[-1] if len(dip) else None
    out.update(kmax=int(top["K"]) if top is not None else NA, kmax_verdict=top["outcome"] if top is not None else NA,
               kmax_diff=_diff_wins(top) if top is not None else NA)
    return out


def budget_facts(paired_k: pd.DataFrame, *, sigma) -> dict:
    """For one sigma: the validated budget ``k`` and its test PSNR (``psnr``), how many other budgets are better
    than it on the test images (``n_better`` of ``n_other``) and the other budget with the highest mean
    difference (``best_k``, ``best_diff``)."""
    g = paired_k[paired_k["sigma"] == sigma] if len(paired_k) else paired_k
    if g.empty:
        return _na(("k", "psnr", "n_better", "n_other", "best_k", "best_diff"))
    kv = int(g["validated_k"].iloc[0])
    own, others = g[g["k"] == kv].iloc[0], g[g["k"] != kv]
    best = others.loc[others["mean_diff"].idxmax()] if len(others) else None
    return dict(k=kv, psnr=f"{own['a_psnr']:.2f}", n_better=int((others["outcome"] == WORDS["better"]).sum()),
                n_other=len(others), best_k=int(best["k"]) if best is not None else NA,
                best_diff=fmt_diff(best) if best is not None else NA)


def table3_facts(t3: pd.DataFrame, *, seed: int = 0) -> dict:
    """The report's Table 3 at t = 600: its T_trunc values (``t_truncs``), the mean PSNR of the report's protocol
    (``report``) and of the matched TDPM-DIP (``matched``) at each, and T_trunc 5 against 0 and 50 against 10
    under the matched variant (``5v0_verdict``, ``5v0_diff``, ``50v10_verdict``, ``50v10_diff``; "n/a" when not run)."""
    s = table3_summary(t3).set_index(["protocol", "t_trunc"])["psnr_mean"]
    tts = sorted(t3["t_trunc"].unique())
    out = dict(t_truncs=", ".join(map(str, tts)),
               report=", ".join(f"{s[('report', t)]:.2f}" for t in tts if ("report", t) in s.index) or NA,
               matched=", ".join(f"{s[('corrected', t)]:.2f}" for t in tts if ("corrected", t) in s.index) or NA)
    for a, b in ((5, 0), (50, 10)):
        r = table3_paired(t3, a, b, seed=seed)
        out[f"{a}v{b}_verdict"], out[f"{a}v{b}_diff"] = (r["outcome"], fmt_diff(r)) if r else (NA, NA)
    return out
