"""Chapter 06's T_trunc grid and its one choice of T_trunc per sigma and schedule.

Chapters 03 and 06 used to validate T_trunc separately and could pick different levels at the same sigma (a
near-tie decided by the noise draw). Now each (sigma, schedule) has one validated T_trunc, chosen once:

* the study's schedule: chapter 03's chosen candidate (``study_choice``, read from its ``study_selection.csv``
  or ``study_rows.csv``, not validated again), which the T_trunc grid of chapter 06 contains (``levels`` with
  ``extra_levels``);
* the other schedule, which chapter 03 does not run: chapter 06's own validation over its levels
  (``comparison.validated`` of the ancestral T_trunc > 0 rows).

``t_trunc_choices`` returns those choices, which every later use in chapter 06 (the schedule comparison, the
chains ablation, the hybrid rows of chapter 07) reads. ``study_n_chains`` reads n of chapter 03's validated
mean-of-n-chains readout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..book.comparison import validated

CHOICE_COLUMNS = ("sigma", "schedule", "t_trunc", "k", "chosen_by", "method_key", "value", "nfe", "val_psnr")


def levels(t: int, fractions, *, extra_levels=()) -> dict[int, float]:
    """T_trunc level -> fraction of t, in level order: 0 for the fraction 0, else round(f * t) (at least 1); the
    first fraction that lands on a level keeps it. ``extra_levels`` (e.g. chapter 03's chosen level) are added
    with the fraction level / t when the fractions do not already give them."""
    out = {}
    for f in sorted(fractions):
        level = 0 if f == 0 else max(1, round(f * t))
        out.setdefault(level, f)
    extra_levels = tuple(extra_levels)
    for level in extra_levels:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= t:
            raise ValueError(f"extra_levels={extra_levels!r} is not allowed; use integers in 0..t = {t}")
        out.setdefault(level, level / t)
    return dict(sorted(out.items()))


def _frame(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, (str, Path)):
        return pd.read_csv(source)
    raise ValueError(f"source={source!r} is not allowed; use a DataFrame or the path of chapter 03's "
                     "study_selection.csv or study_rows.csv")


def _params(text: str) -> dict[str, int]:
    """"k=300, T_trunc=29" -> {"k": 300, "T_trunc": 29}."""
    return {m[1]: int(m[2]) for m in re.finditer(r"([A-Za-z_]+)\s*=\s*(\d+)", str(text))}


def _at_sigma(df: pd.DataFrame, sigma, method_key: str) -> pd.DataFrame:
    need = {"sigma", "method_key", "params"} - set(df.columns)
    if need:
        raise ValueError(f"source has no column(s) {sorted(need)}; use chapter 03's study_selection.csv or study_rows.csv")
    return df[(df["sigma"].astype(float) == float(sigma)) & (df["method_key"] == method_key)]


def study_choice(source, *, sigma, method_key: str = "tdpm_matched") -> tuple[int, int]:
    """(k, T_trunc) of chapter 03's chosen candidate of ``method_key`` at ``sigma``.

    ``source``: chapter 03's ``study_selection.csv`` (every candidate's mean validation PSNR: the row marked
    ``chosen``, or where that column is missing the best ``val_psnr``, the first listed on ties, the rule of
    ``study._best``) or its ``study_rows.csv`` (whose rows of a tuned method carry the chosen ``params``), as a
    path or a DataFrame. Raises ValueError when the source has no such candidate or no single choice."""
    df = _frame(source)
    rows = _at_sigma(df, sigma, method_key)
    if rows.empty:
        raise ValueError(f"sigma={sigma!r}, method_key={method_key!r}: chapter 03's results have no such rows")
    if "val_psnr" in df.columns:  # the selection: one row per candidate
        if "chosen" in rows.columns:
            rows = rows[rows["chosen"].astype(str).str.lower().isin(["true", "1"])]
            if len(rows) != 1:
                raise ValueError(f"sigma={sigma!r}, method_key={method_key!r}: {len(rows)} candidates are marked "
                                 "chosen in chapter 03's selection; expected 1")
            params = rows["params"].iloc[0]
        else:
            params = rows.loc[rows["val_psnr"].astype(float).idxmax(), "params"]
    else:  # per-image rows: every row of the method carries the chosen params
        found = rows["params"].dropna().unique()
        if len(found) != 1:
            raise ValueError(f"sigma={sigma!r}, method_key={method_key!r}: chapter 03's rows carry params "
                             f"{list(found)}; expected one")
        params = found[0]
    p = _params(params)
    if "k" not in p or "T_trunc" not in p:
        raise ValueError(f"sigma={sigma!r}, method_key={method_key!r}: params {params!r} name no k and T_trunc")
    return p["k"], p["T_trunc"]


def study_n_chains(source, *, sigma=None, method_key: str = "tdpm_matched_mean") -> int | None:
    """n of chapter 03's validated mean-of-n-chains readout (the ``n=`` of ``method_key``'s params in its
    ``study_rows.csv`` or ``study_selection.csv``; at ``sigma``, or the one n of every sigma when None); None
    when the source has no such method, so that the caller falls back to its own n."""
    try:
        df = _frame(source)
    except (OSError, pd.errors.EmptyDataError):
        return None
    if not {"method_key", "params"} <= set(df.columns):
        return None
    rows = df[df["method_key"] == method_key]
    if sigma is not None:
        rows = rows[rows["sigma"].astype(float) == float(sigma)]
    if "val_psnr" in rows.columns and len(rows):  # a selection: the chosen candidate's n
        if "chosen" in rows.columns:
            rows = rows[rows["chosen"].astype(str).str.lower().isin(["true", "1"])]
        else:
            rows = rows.loc[rows.groupby("sigma", sort=False)["val_psnr"].idxmax()]
    found = {_params(p).get("n") for p in rows["params"].dropna().unique()} - {None}
    if len(found) > 1:
        raise ValueError(f"sigma={sigma!r}: chapter 03's {method_key} rows give n = {sorted(found)}; pass sigma")
    return found.pop() if found else None


def t_trunc_choices(rows: pd.DataFrame, study_choice_by_sigma: dict, *, schedule: str,
                    main_schedule: str) -> pd.DataFrame:
    """The one T_trunc > 0 per sigma for ``schedule``, from chapter 06's ``t_trunc`` rows (``ablate.t_trunc_rows``):
    for the study's schedule (``main_schedule``) chapter 03's choice, ``study_choice_by_sigma[sigma] = (k,
    T_trunc)`` (``chosen_by`` "03"; its level must be among the rows: pass it as ``extra_levels``); for the other
    schedule the ancestral T_trunc > 0 with the best mean validation PSNR (``chosen_by`` "06"). Columns
    ``CHOICE_COLUMNS``: ``method_key``, ``value`` (fraction of t) and ``nfe`` (= T_trunc) name the ancestral rows
    at that level, ``val_psnr`` is their mean on chapter 06's validation images."""
    r = rows[(rows["ablation"] == "t_trunc") & (rows["schedule"] == schedule)]
    if "readout" in r.columns:
        r = r[r["readout"] == "ancestral"]
    if r.empty:
        raise ValueError(f"schedule={schedule!r}: the rows have no ancestral t_trunc rows of that schedule")
    val = r[r["split"] == "val"]
    means = val.groupby(["sigma", "method_key"], sort=False)["psnr"].mean()
    out = []
    if schedule == main_schedule:
        for sigma in sorted(r["sigma"].unique()):
            if sigma not in study_choice_by_sigma:
                raise ValueError(f"study_choice_by_sigma has no sigma = {sigma}; give chapter 03's (k, T_trunc) "
                                 "for every sigma of the rows")
            k, level = study_choice_by_sigma[sigma]
            key = f"t_trunc={level}"
            at = r[(r["sigma"] == sigma) & (r["method_key"] == key)]
            if at.empty or level == 0:
                raise ValueError(f"sigma={sigma}: chapter 03's T_trunc = {level} is not among the rows' levels > 0; "
                                 "pass it to t_trunc_rows as extra_levels")
            out.append(dict(sigma=sigma, schedule=schedule, t_trunc=int(level), k=int(k), chosen_by="03",
                            method_key=key, value=float(at["value"].iloc[0]), nfe=int(level),
                            val_psnr=float(means.get((sigma, key), float("nan")))))
    else:
        for c in validated(r, by=("sigma",), exclude=["t_trunc=0"]).to_dict("records"):
            out.append(dict(sigma=c["sigma"], schedule=schedule, t_trunc=int(c["nfe"]), k=int(c["dip_iterations"]),
                            chosen_by="06", method_key=c["method_key"], value=float(c["value"]), nfe=int(c["nfe"]),
                            val_psnr=float(c["val_psnr"])))
    return pd.DataFrame(out, columns=list(CHOICE_COLUMNS)).sort_values("sigma", kind="stable").reset_index(drop=True)
