"""The book's answer in numbers (the intro and chapter 07): no sentences, only values and short phrases.

``headline`` reads chapter 03's ``study_paired.csv`` (the best hybrid against the best DDPM alone and the best DIP
alone, each chosen on the validation images, paired over the test images) and adds each comparison's verdict
phrase and, from chapter 08's timing benchmark, the time ratio. ``headline_table`` is the intro's one table: each
approach once, PSNR at two noise levels side by side, with its cost. ``glue_values`` flattens both into the short
values a chapter glues (``<prefix>_<name>_s<sigma>``); the sentences around them are written in the markdown.
"""

from __future__ import annotations

import math

import pandas as pd

from ..book import comparison
from .summary import SUMMARY_FLOORS, SUMMARY_METHODS, seconds, summary_table

# Short names for the methods the headline names (chapter 03's method keys); the chapters give the long ones.
SHORT = {"tweedie": "DDPM posterior mean", "ddpm": "DDPM ancestral chain", "ddim": "DDIM", "mean_k": "mean of DDPM chains",
         "dip_official": "DIP (official protocol)", "dip_plain": "DIP (report's protocol)",
         "tdpm_matched": "TDPM-DIP, one chain", "tdpm_matched_pm": "TDPM-DIP, posterior-mean readout",
         "tdpm_matched_mean": "TDPM-DIP, mean of chains", "dip_polish": "DIP then T_trunc steps",
         "sdedit": "DIP then SDEdit (Example 1)", "guided": "DIP stopped by the DDPM (Example 2)",
         "nlm": "non-local means (floor)", "noisy": "noisy input (floor)", "train_mean": "mean image (floor)"}

# The intro table's rows, in order (at most eight): the best of each family first, then the examples and a floor.
TABLE_ROWS = ("ddpm_best", "dip_official", "tdpm_matched_pm", "tdpm_matched", "sdedit", "guided", "nlm", "noisy")


def headline(study_paired: pd.DataFrame, *, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (sigma, family of the comparator): the best hybrid ``a`` minus the best method of that family
    alone ``b``, with ``mean_diff``, ``ci_low``, ``ci_high``, ``wins``, ``n``, the verdict ``phrase``
    (``comparison.outcome``: "better than", "worse than", "not clearly different from"), short names and ``time_ratio`` (seconds of a over b in the timing
    benchmark; NaN without it)."""
    out = study_paired.copy()
    out["family"] = ["DIP" if str(b).startswith("dip") else "DDPM" for b in out["b"]]
    out["phrase"] = [comparison.outcome(r) for r in out.to_dict("records")]
    out["a_short"], out["b_short"] = out["a"].map(SHORT).fillna(out["hybrid"]), out["b"].map(SHORT).fillna(out["against"])
    out["time_ratio"] = [seconds(timings, s, a) / seconds(timings, s, b) for s, a, b in zip(out["sigma"], out["a"], out["b"])]
    return out


def headline_table(study_rows: pd.DataFrame, example2_rows: pd.DataFrame | None = None, *,
                   timings: pd.DataFrame | None = None, sigmas=(25, 50)) -> pd.DataFrame:
    """The intro's table: one row per approach of ``TABLE_ROWS`` that the run has, with test PSNR at each sigma
    (``psnr_s<sigma>``), and cost as network evaluations, DIP iterations and seconds per image (chapter 08's
    benchmark) joined over the sigmas ("14 / 29" when they differ, one value when they agree). ``best`` holds the
    row that is best at each sigma (``best_s<sigma>``: True on the highest PSNR)."""
    long = summary_table(study_rows, example2_rows, timings=timings, sigmas=sigmas)
    keys = _keys(long, study_rows)
    sig = [s for s in sigmas if s in set(long["sigma"])]
    rows = []
    for name in TABLE_ROWS:
        g = long[keys == name]
        if g.empty:
            continue
        g = g.set_index("sigma")
        label = (SHORT.get(_ddpm_key(g, study_rows), "DDPM alone") + " (best DDPM alone)" if name == "ddpm_best"
                 else SHORT.get(name, name))
        row = {"method": label}
        for s in sig:
            row[f"psnr_s{s}"] = float(g.loc[s, "psnr"]) if s in g.index else math.nan
        for col in ("nfe", "dip_iterations"):
            row[col] = _joined([g.loc[s, col] for s in sig if s in g.index], lambda v: f"{int(v):,}")
        row["seconds"] = _joined([g.loc[s, "seconds"] for s in sig if s in g.index], _seconds)
        rows.append(row)
    table = pd.DataFrame(rows)
    for s in sig:
        table[f"best_s{s}"] = table[f"psnr_s{s}"] == table[f"psnr_s{s}"].max()
    return table


def _keys(long: pd.DataFrame, study_rows: pd.DataFrame) -> pd.Series:
    """The method key of each row of ``summary_table`` (its labels are long names); "ddpm_best" for the DDPM
    alone chosen on validation."""
    by_label = {label: key for label, key in SUMMARY_METHODS + SUMMARY_FLOORS}
    by_label["Example 2: DIP stopped by the DDPM schedule"] = "guided"
    return long["method"].map(lambda m: "ddpm_best" if m.startswith("DDPM alone: ") else by_label.get(m, m))


def _ddpm_key(g: pd.DataFrame, study_rows: pd.DataFrame) -> str:
    name = str(g["method"].iloc[0]).removeprefix("DDPM alone: ")
    keys = study_rows.loc[study_rows["method"] == name, "method_key"]
    return keys.iloc[0] if len(keys) else ""


def _seconds(v) -> str:
    """Seconds per image at two significant digits (0.0028, 0.21, 1.8, 12); "–" where the benchmark has none."""
    if v is None or not math.isfinite(float(v)):
        return "–"
    return f"{float(v):.2g}" if float(v) < 10 else f"{float(v):.0f}"


def _joined(values, fmt) -> str:
    texts = [fmt(v) for v in values]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def glue_values(head: pd.DataFrame, *, prefix: str) -> dict:
    """The short values a chapter glues about the headline, per sigma s and comparator family f (ddpm, dip):
    ``<prefix>_hybrid_s<s>`` (the best hybrid's short name), ``<prefix>_<f>_s<s>`` (the comparator's short name),
    ``<prefix>_vs_<f>_s<s>`` (the verdict phrase), ``<prefix>_vs_<f>_diff_s<s>`` ("+1.32 dB [+1.20, +1.43]"),
    ``<prefix>_vs_<f>_wins_s<s>`` ("20 of 20") and ``<prefix>_vs_<f>_time_s<s>`` (the time ratio, "1.9×", or "–")."""
    out = {}
    for r in head.to_dict("records"):
        s, f = int(r["sigma"]), r["family"].lower()
        out[f"{prefix}_hybrid_s{s}"] = r["a_short"]
        out[f"{prefix}_{f}_s{s}"] = r["b_short"]
        out[f"{prefix}_vs_{f}_s{s}"] = r["phrase"]
        out[f"{prefix}_vs_{f}_diff_s{s}"] = comparison.fmt_diff(r)
        out[f"{prefix}_vs_{f}_wins_s{s}"] = f"{int(r['wins'])} of {int(r['n'])}"
        t = r["time_ratio"]
        out[f"{prefix}_vs_{f}_time_s{s}"] = comparison.fmt_ratio(t) if t is not None and math.isfinite(t) else "–"
    return out
