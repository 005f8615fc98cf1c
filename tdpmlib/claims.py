"""The reproduced report's claims (its Tables 1-4) as data, their verdicts, and chapter 07's synthesis.

``CLAIMS`` lists every entry of the report's tables that this book measures, as flat dicts
(``claims_table()`` is the table). Three kinds:

* ``kind="value"`` -- a number the report gives for one method in one setting (e.g. TDPM-DIP's PSNR at
  t = 600). ``source`` names the results table that measures it here and ``same`` / ``corrected`` the rows that
  measure it under the report's protocol and under the corrected protocol. The verdict compares the corrected
  measurement with the claimed number within ``VALUE_TOL``, when the run can be compared with the report at all
  (``comparability``).
* ``kind="configuration"`` -- a setting the report states (a step count). It is not a result, so it gets no
  verdict, only the label "configuration" and this run's setting beside it.
* ``kind="direction"`` -- an ordering the report's numbers imply ("TDPM-DIP beats DDPM"), the signed difference
  of two value claims ``a - b``, checked in a ``setting``: the report's (t = 600, matched t) and, where the book
  measures it, realistic noise (sigma = 25, 50; for the schedules: matched sigma). Its verdict rests on a paired
  comparison over images (``ablate.paired``: mean difference, 95% bootstrap interval, wins), read in the book's one
  vocabulary (``ablate.outcome``: "better than" / "worse than" / "not clearly different from"): "reproduced" when
  the interval lies on the claimed side of 0, else "not reproduced". There is no fixed threshold. Set statistics
  (FID) and wall-clock times have one number per method, no per-image pairing: their direction is read from the
  sign, and the reason says so.

Per-image sources: chapter 03's ``denoising.csv`` (t = 600) and ``study_rows.csv`` (sigma), chapter 06's
``table3.csv`` (its t = 600 T_trunc table) and ``rows.csv`` (sigma; ``choices.csv`` names each schedule's
validated T_trunc). ``measure`` looks every claim up, ``assess`` adds the verdicts.

The synthesis (chapter 07): ``answer`` / ``answer_text`` read chapter 03's ``study_paired.csv`` (the best hybrid
against the best DDPM alone and the best DIP alone, chosen on validation images); ``hybrid_comparisons`` pairs
every hybrid with those two; ``speed_table`` gives seconds and network evaluations; ``example2_paired`` pairs
chapter 05's stopping rules.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import ablate

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
CONFIGURATION = "configuration"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)
WORDS = ablate.WORDS
BETTER, WORSE, UNCLEAR = WORDS["better"], WORDS["worse"], WORDS["unclear"]
HIGHER, LOWER, EQUAL = "higher than", "lower than", "equal to"  # unpaired directions (FID, seconds): sign only

# How far a value claim's measurement may be from the claimed number.
VALUE_TOL = dict(psnr=1.0, ssim=0.02, fid=5.0, steps=0, seconds=0, frac_copies_fit=0.5)
DIGITS = dict(psnr=2, ssim=3, fid=2, steps=0, seconds=2, frac_copies_fit=2)
UNITS = dict(psnr=" dB", ssim="", fid="", steps="", seconds=" s", frac_copies_fit="")
# Where a metric lives in the summary tables ("steps" is computed: nfe + dip_iterations).
COLUMN = dict(psnr="psnr_mean", ssim="ssim_mean", fid="fid", seconds="seconds_per_image",
              frac_copies_fit="frac_copies_fit")
# Metrics whose absolute value depends only on the method's definition (counts, fractions), not on the
# resolution, the networks or the data: compared under every profile.
ALWAYS_COMPARABLE = ("steps", "frac_copies_fit")
REPORT_DIP_ITERATIONS = 100
# The report's setting, as it states it: 64 x 64 Pokémon images and a 113.7 M-parameter DDPM.
REPORT_RESOLUTION = 64
REPORT_DDPM_PARAMS_M = 113.7
# The noise levels of the claims checked at realistic noise: chapter 03's study (Table 2) and chapter 06's
# ablations (Tables 3 and 4).
STUDY_SIGMAS = (15, 25, 50)
ABLATION_SIGMAS = (25, 50)
STUDY_SCHEDULE = "linear"

_GEN, _DEN, _T3 = "generation", "denoising", "table3"
_DEN_ROWS, _T3_ROWS, _STUDY_ROWS, _ABL_ROWS = "denoising_rows", "table3_rows", "study_rows", "ablation_rows"
SOURCES = (_GEN, _DEN, _T3, _DEN_ROWS, _T3_ROWS, _STUDY_ROWS, _ABL_ROWS)
HYBRID = "@hybrid"  # in a selector: the schedule's validated T_trunc > 0 (chapter 06's choices.csv)

_FIELDS = ("table", "claim_id", "setting", "method", "metric", "claimed", "notes", "kind", "tolerance", "source",
           "same", "corrected", "schedule", "t", "t_trunc", "report_dip_iterations", "a", "b", "a_label", "b_label",
           "sel_a", "sel_b", "same_a", "same_b")


def _claim(**kw) -> dict:
    return {f: kw.get(f) for f in _FIELDS}


def _value(table, claim_id, setting, method, metric, claimed, notes, *, source, same, corrected, schedule=None,
           t=None, t_trunc=None, kind="value"):
    # The report fits every DIP for 100 iterations (T_trunc = 10 in TDPM-DIP); DDPM rows fit none.
    return _claim(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, claimed=claimed,
                  notes=notes, kind=kind, tolerance=VALUE_TOL[metric], source=source, same=same, corrected=corrected,
                  schedule=schedule, t=t, t_trunc=t_trunc,
                  report_dip_iterations=REPORT_DIP_ITERATIONS if "DIP" in method else 0)


def _direction(table, claim_id, setting, method, metric, a, b, notes, *, a_label, b_label, source=_GEN, sel_a=None,
               sel_b=None, same_a=None, same_b=None):
    return _claim(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, notes=notes,
                  kind="direction", source=source, a=a, b=b, a_label=a_label, b_label=b_label, sel_a=sel_a,
                  sel_b=sel_b, same_a=same_a, same_b=same_b)


_T600 = dict(schedule="linear", t=600)
_T600C = dict(schedule="cosine", t=600)
_FIT = "report: DIP fit to clean dataset images; corrected: scored against images it did not fit"
_SET = "t = 600 (linear)"

CLAIMS = [
    # Table 1: generation (FID@1k).
    _value("Table 1", "T1-ddpm-fid", "generation", "DDPM", "fid", 69.05, "FID@1k, 1000 reverse steps",
           source=_GEN, same="ddpm", corrected="ddpm"),
    _value("Table 1", "T1-tdpm-fid", "generation", "TDPM-DIP", "fid", 20.12, "FID@1k; " + _FIT,
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _value("Table 1", "T1-ddpm-steps", "generation", "DDPM", "steps", 1000, "reverse steps (network evaluations)",
           source=_GEN, same="ddpm", corrected="ddpm", kind="configuration"),
    _value("Table 1", "T1-tdpm-steps", "generation", "TDPM-DIP", "steps", 110,
           "“110 steps” = 100 DIP optimiser iterations + T_trunc = 10 network evaluations",
           source=_GEN, same="tdpm_train", corrected="tdpm_held", kind="configuration"),
    _value("Table 1", "T1-ddpm-seconds", "generation", "DDPM", "seconds", 38.0, "wall clock, hardware not stated",
           source=_GEN, same="ddpm", corrected="ddpm"),
    _value("Table 1", "T1-tdpm-seconds", "generation", "TDPM-DIP", "seconds", 7.0, "wall clock, hardware not stated",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _value("Table 1", "T1-tdpm-new", "generation", "TDPM-DIP", "frac_copies_fit", 0.0,
           "implied by scoring it as a generator: its samples are new images, not copies of the images the DIP "
           "was fit to (a copy is nearer a fitted image than half the distance to the nearest unfitted one)",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _direction("Table 1", "T1-dir-fid", "generation", "TDPM-DIP − DDPM", "fid", "T1-tdpm-fid", "T1-ddpm-fid",
               "TDPM-DIP has the lower FID", a_label="TDPM-DIP", b_label="DDPM"),
    _direction("Table 1", "T1-dir-seconds", "generation", "TDPM-DIP − DDPM", "seconds", "T1-tdpm-seconds",
               "T1-ddpm-seconds", "TDPM-DIP is faster (seconds per image on the same hardware)",
               a_label="TDPM-DIP", b_label="DDPM"),
    # Table 2: denoising at t = 600, linear schedule.
    _value("Table 2", "T2-ddpm-psnr", _SET, "DDPM", "psnr", 13.40, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-ssim", _SET, "DDPM", "ssim", 0.369, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-steps", _SET, "DDPM", "steps", 600, "reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", kind="configuration", **_T600),
    _value("Table 2", "T2-ddpm-seconds", _SET, "DDPM", "seconds", 32.0,
           "wall clock, hardware not stated", source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-dip-psnr", _SET, "DIP", "psnr", 32.12,
           "100 iterations; report: DIP fit to the clean image, PSNR against its own target",
           source=_DEN, same="report_dip_clean", corrected="dip_short", **_T600),
    _value("Table 2", "T2-dip-ssim", _SET, "DIP", "ssim", 0.948,
           "100 iterations; report: DIP fit to the clean image, SSIM against its own target",
           source=_DEN, same="report_dip_clean", corrected="dip_short", **_T600),
    _value("Table 2", "T2-tdpm-psnr", _SET, "TDPM-DIP", "psnr", 32.63,
           "T_trunc = 10; report: DIP target built from the clean image", source=_DEN, same="report_tdpm_clean",
           corrected="tdpm_dip", **_T600),
    _value("Table 2", "T2-tdpm-ssim", _SET, "TDPM-DIP", "ssim", 0.970,
           "T_trunc = 10; report: DIP target built from the clean image", source=_DEN, same="report_tdpm_clean",
           corrected="tdpm_dip", **_T600),
]
_D600 = dict(schedule="linear", t=600)
for _other, _key, _label, _same in (("ddpm", "ddpm", "DDPM", "ddpm"), ("dip", "dip_short", "the DIP alone", "report_dip_clean")):
    CLAIMS.append(_direction(
        "Table 2", f"T2-dir-tdpm-{_other}", _SET, f"TDPM-DIP − {_label.replace('the ', '')}", "psnr", "T2-tdpm-psnr",
        f"T2-{_other}-psnr", f"TDPM-DIP beats {_label}", a_label="TDPM-DIP", b_label=_label, source=_DEN_ROWS,
        sel_a=dict(_D600, method_key="tdpm_dip"), sel_b=dict(_D600, method_key=_key),
        same_a=dict(_D600, method_key="report_tdpm_clean"), same_b=dict(_D600, method_key=_same)))
    for _s in STUDY_SIGMAS:
        _b = "ddpm" if _other == "ddpm" else "dip_official"
        CLAIMS.append(_direction(
            "Table 2", f"T2-dir-tdpm-{_other}-s{_s}", f"σ = {_s} (linear)", f"TDPM-DIP − {_label.replace('the ', '')}",
            "psnr", "T2-tdpm-psnr", f"T2-{_other}-psnr",
            f"TDPM-DIP beats {_label}, at realistic noise: the matched TDPM-DIP against "
            + ("DDPM ancestral sampling from t" if _other == "ddpm" else "the official-protocol DIP") + ", both validated",
            a_label="TDPM-DIP", b_label=_label, source=_STUDY_ROWS, sel_a=dict(sigma=_s, method_key="tdpm_matched"),
            sel_b=dict(sigma=_s, method_key=_b)))

def _frac_label(f: float) -> str:
    """0 -> "0", 0.125 -> "t/8", 1 -> "t"."""
    if f == 0:
        return "0"
    return "t" if f == 1 else f"t/{1 / f:.0f}"


# Table 3: T_trunc ablation (denoising at t = 600, linear), from notebook 06.
for _tt, _p, _s in ((0, 32.12, 0.948), (5, 32.77, 0.970), (10, 32.63, 0.970), (50, 28.70, 0.937)):
    for _metric, _claimed in (("psnr", _p), ("ssim", _s)):
        CLAIMS.append(_value("Table 3", f"T3-{_tt}-{_metric}", "T_trunc ablation, t = 600 (linear)",
                             f"TDPM-DIP, T_trunc = {_tt}", _metric, _claimed,
                             "report: DIP target built from the clean image; corrected: the matched TDPM-DIP on y",
                             source=_T3, same="report", corrected="corrected", schedule="linear", t_trunc=_tt))
for _cid, _a, _b, _note, _fa, _fb in (("5-0", 5, 0, "a few reverse steps improve on the DIP alone", ablate.FEW, 0.0),
                                      ("50-10", 50, 10, "a large T_trunc hurts", ablate.MANY, ablate.FEW)):
    CLAIMS.append(_direction(
        "Table 3", f"T3-dir-{_cid}", "T_trunc ablation, t = 600 (linear)", f"T_trunc {_a} − T_trunc {_b}", "psnr",
        f"T3-{_a}-psnr", f"T3-{_b}-psnr", _note, a_label=f"T_trunc = {_a}", b_label=f"T_trunc = {_b}", source=_T3_ROWS,
        sel_a=dict(protocol="corrected", t_trunc=_a), sel_b=dict(protocol="corrected", t_trunc=_b),
        same_a=dict(protocol="report", t_trunc=_a), same_b=dict(protocol="report", t_trunc=_b)))
    for _s in ABLATION_SIGMAS:
        _la, _lb = _frac_label(_fa), _frac_label(_fb)
        CLAIMS.append(_direction(
            "Table 3", f"T3-dir-{_cid}-s{_s}", f"σ = {_s} (linear)", f"T_trunc {_la} − T_trunc {_lb}", "psnr",
            f"T3-{_a}-psnr", f"T3-{_b}-psnr",
            f"{_note}; at realistic noise, T_trunc = {_la} against {_lb} (fractions of t(σ)) in the matched TDPM-DIP",
            a_label=f"T_trunc = {_la}", b_label=f"T_trunc = {_lb}", source=_ABL_ROWS,
            sel_a=dict(ablation="t_trunc", sigma=_s, schedule=STUDY_SCHEDULE, value=_fa),
            sel_b=dict(ablation="t_trunc", sigma=_s, schedule=STUDY_SCHEDULE, value=_fb)))

# Table 4: cosine schedule at t = 600, "cosine raises every method"; checked at matched t (t = 600, where the
# cosine schedule has added far less noise) and at matched sigma (chapter 06: the same observation for both).
for _key, _label, _same, _corr, _p, _s in (("ddpm", "DDPM", "ddpm", "ddpm", 18.68, 0.659),
                                           ("dip", "DIP", "report_dip_clean", "dip_short", 34.35, 0.962),
                                           ("tdpm", "TDPM-DIP", "report_tdpm_clean", "tdpm_dip", 34.76, 0.979)):
    CLAIMS += [_value("Table 4", f"T4-{_key}-psnr", "t = 600 (cosine)", _label, "psnr", _p,
                      "cosine schedule", source=_DEN, same=_same, corrected=_corr, **_T600C),
               _value("Table 4", f"T4-{_key}-ssim", "t = 600 (cosine)", _label, "ssim", _s,
                      "cosine schedule", source=_DEN, same=_same, corrected=_corr, **_T600C)]
_ABL_KEYS = dict(ddpm=dict(ablation="schedule", method_key="ddpm"), dip=dict(ablation="t_trunc", method_key="t_trunc=0"),
                 tdpm=dict(ablation="t_trunc", method_key=HYBRID))
for _key, _label, _same, _corr in (("ddpm", "DDPM", "ddpm", "ddpm"), ("dip", "DIP", "report_dip_clean", "dip_short"),
                                   ("tdpm", "TDPM-DIP", "report_tdpm_clean", "tdpm_dip")):
    CLAIMS.append(_direction(
        "Table 4", f"T4-dir-{_key}", "matched t: t = 600", f"{_label}: cosine − linear", "psnr", f"T4-{_key}-psnr",
        f"T2-{_key}-psnr", "cosine raises every method", a_label="cosine", b_label="linear", source=_DEN_ROWS,
        sel_a=dict(schedule="cosine", t=600, method_key=_corr), sel_b=dict(schedule="linear", t=600, method_key=_corr),
        same_a=dict(schedule="cosine", t=600, method_key=_same), same_b=dict(schedule="linear", t=600, method_key=_same)))
    for _s in ABLATION_SIGMAS:
        sel = dict(_ABL_KEYS[_key], sigma=_s)
        CLAIMS.append(_direction(
            "Table 4", f"T4-dir-{_key}-s{_s}", f"matched σ: σ = {_s}", f"{_label}: cosine − linear", "psnr",
            f"T4-{_key}-psnr", f"T2-{_key}-psnr",
            "cosine raises every method; at matched σ both schedules see the same observation"
            + (" (the DIP does not use the schedule: the same fit under both)" if _key == "dip" else "")
            + (", each TDPM-DIP at its validated T_trunc" if _key == "tdpm" else ""),
            a_label="cosine", b_label="linear", source=_ABL_ROWS, sel_a=dict(sel, schedule="cosine"),
            sel_b=dict(sel, schedule="linear")))


def claimed(claim_id: str) -> float:
    """The number the report gives for one value or configuration claim, e.g. ``claimed("T2-dip-psnr") == 32.12``:
    notebooks quote the report through this, so each claimed number is typed once, in ``CLAIMS``."""
    for c in CLAIMS:
        if c["claim_id"] == claim_id and c["kind"] in ("value", "configuration"):
            return float(c["claimed"])
    raise ValueError(f"claim_id={claim_id!r} is not a value claim; use one of "
                     f"{[c['claim_id'] for c in CLAIMS if c['kind'] in ('value', 'configuration')]}")


def claims_table() -> pd.DataFrame:
    """``CLAIMS`` as a DataFrame, with each direction claim's claimed value (the report's a - b) filled in."""
    df = pd.DataFrame(CLAIMS, columns=list(_FIELDS))
    numbers = df.set_index("claim_id")["claimed"]
    is_dir = df["kind"] == "direction"
    df.loc[is_dir, "claimed"] = [numbers[a] - numbers[b] for a, b in zip(df.loc[is_dir, "a"], df.loc[is_dir, "b"])]
    df["claimed"] = df["claimed"].astype(float)
    return df


# ------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------

def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _text(x):
    """A string, or None for a missing value."""
    return None if _missing(x) or str(x) == "" else str(x)


def _num(x):
    """A float, or None for a missing value (None, NaN, empty string)."""
    if x is None or (isinstance(x, str) and not x.strip()):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _same_value(series: pd.Series, value) -> pd.Series:
    """Element-wise equality that treats 5, 5.0 and "5" alike (values come back from CSV as numbers or text)."""
    if isinstance(value, str):
        return series.astype(str) == value
    num = pd.to_numeric(series, errors="coerce")
    return pd.Series(np.isclose(num.astype(float), float(value), rtol=1e-9, atol=1e-12), index=series.index)


def _row(claim: dict, which: str, tables: dict) -> pd.Series | None:
    """The summary row that measures a value claim under one protocol ("same" or "corrected"), or None."""
    df = tables.get(claim["source"])
    if df is None or len(df) == 0:
        return None
    key = claim[which]
    if claim["source"] == _T3:
        mask = _same_value(df["t_trunc"], claim["t_trunc"]) & (df["protocol"] == key)
    else:
        if "method_key" not in df.columns:
            raise ValueError(f"the {claim['source']} table has no method_key column (see tdpmlib.experiments)")
        mask = df["method_key"] == key
        if claim["source"] == _DEN:
            mask &= (df["schedule"] == claim["schedule"]) & _same_value(df["t"], claim["t"])
            if "sigma255_requested" in df.columns:  # a sigma setting could land on the same level
                mask &= df["sigma255_requested"].isna()
    hits = df[mask]
    return None if len(hits) == 0 else hits.iloc[0]


def _metric(row: pd.Series | None, metric: str):
    if row is None:
        return None
    if metric == "steps":
        return (_num(row.get("nfe")) or 0) + (_num(row.get("dip_iterations")) or 0)
    return _num(row.get(COLUMN[metric]))


def _resolve(sel: dict, choices: pd.DataFrame | None) -> dict | None:
    """A selector with ``HYBRID`` replaced by the schedule's validated T_trunc > 0 (None when unknown)."""
    if sel.get("method_key") != HYBRID:
        return sel
    if choices is None or len(choices) == 0:
        return None
    c = choices[(choices["ablation"] == "t_trunc (T_trunc > 0)") & _same_value(choices["sigma"], sel["sigma"])
                & (choices["schedule"] == sel["schedule"])]
    return None if c.empty else dict(sel, method_key=c["method_key"].iloc[0])


def _select(df: pd.DataFrame | None, sel: dict | None) -> pd.DataFrame:
    """The test rows of a per-image table that match a selector (numbers compared as numbers)."""
    if df is None or sel is None or len(df) == 0:
        return pd.DataFrame()
    mask = pd.Series(True, index=df.index)
    if "split" in df.columns:
        mask &= df["split"] == "test"
    for col, val in sel.items():
        if col not in df.columns:
            return pd.DataFrame()
        mask &= _same_value(df[col], val)
    return df[mask]


def paired_measurement(df, sel_a, sel_b, *, seed: int = 0) -> dict | None:
    """``ablate.paired`` of the rows selected by ``sel_a`` and ``sel_b`` (None when either is missing) plus the
    ``outcome`` in the book's vocabulary."""
    ra, rb = _select(df, sel_a), _select(df, sel_b)
    if ra.empty or rb.empty:
        return None
    s = ablate.paired(ra, rb, seed=seed)
    return dict(s, outcome=ablate.outcome(s))


def measure(claims: pd.DataFrame, *, generation=None, denoising=None, table3=None, denoising_rows=None,
            table3_rows=None, study_rows=None, ablation_rows=None, choices=None, seed: int = 0) -> pd.DataFrame:
    """Add the measurements to ``claims_table()``: ``same`` (the report's protocol) and ``corrected`` for every
    claim; for value claims the context of ``comparability`` (``n``, ``n_reference``, ``fid_status``,
    ``dip_iterations``); for direction claims the paired summary of the corrected measurement (``ci_low``,
    ``ci_high``, ``wins``, ``n_pairs``, ``outcome``; ``paired`` False for set statistics and times, read by sign).

    Summary tables: ``generation`` (03 generation.csv), ``denoising`` (03 denoising_summary.csv), ``table3``
    (06 table3_summary.csv). Per-image tables: ``denoising_rows`` (03 denoising.csv), ``table3_rows``
    (06 table3.csv), ``study_rows`` (03 study_rows.csv), ``ablation_rows`` (06 rows.csv) with ``choices``
    (06 choices.csv). A missing table or row gives None."""
    tables = {_GEN: generation, _DEN: denoising, _T3: table3, _DEN_ROWS: denoising_rows, _T3_ROWS: table3_rows,
              _STUDY_ROWS: study_rows, _ABL_ROWS: ablation_rows}
    out = claims.copy()
    cols = {c: [None] * len(out) for c in ("same", "corrected", "n", "n_reference", "fid_status", "dip_iterations",
                                            "ci_low", "ci_high", "wins", "n_pairs", "outcome", "paired")}
    records = out.to_dict("records")
    for i, claim in enumerate(records):
        if claim["kind"] == "direction":
            continue
        r_same, r_corr = _row(claim, "same", tables), _row(claim, "corrected", tables)
        cols["same"][i], cols["corrected"][i] = _metric(r_same, claim["metric"]), _metric(r_corr, claim["metric"])
        if r_corr is not None:
            cols["n"][i], cols["n_reference"][i] = _num(r_corr.get("n")), _num(r_corr.get("n_reference"))
            cols["dip_iterations"][i] = _num(r_corr.get("dip_iterations"))
            if claim["metric"] == "fid":
                cols["fid_status"][i] = _text(r_corr.get("fid_status"))
    ids = {c["claim_id"]: i for i, c in enumerate(records)}
    for i, claim in enumerate(records):
        if claim["kind"] != "direction":
            continue
        if claim["source"] == _GEN:  # one number per method: the difference of the two value measurements
            for col in ("same", "corrected"):
                a, b = cols[col][ids[claim["a"]]], cols[col][ids[claim["b"]]]
                cols[col][i] = None if _missing(a) or _missing(b) else a - b
            cols["paired"][i] = False
            continue
        df = tables.get(claim["source"])
        choice = choices if claim["source"] == _ABL_ROWS else None
        s = paired_measurement(df, _resolve(claim["sel_a"], choice), _resolve(claim["sel_b"], choice), seed=seed)
        cols["paired"][i] = True
        if s is not None:
            cols["corrected"][i] = s["mean_diff"]
            cols["ci_low"][i], cols["ci_high"][i], cols["wins"][i] = s["ci_low"], s["ci_high"], s["wins"]
            cols["n_pairs"][i], cols["outcome"][i] = s["n"], s["outcome"]
        if claim["same_a"] is not None:
            same = paired_measurement(df, claim["same_a"], claim["same_b"], seed=seed)
            cols["same"][i] = None if same is None else same["mean_diff"]
    for col, values in cols.items():
        out[col] = pd.Series(values, index=out.index, dtype=object)
    return out


# ------------------------------------------------------------------------------------------------------
# Comparability and the verdicts
# ------------------------------------------------------------------------------------------------------

def comparability(metric: str, *, profile: str, fid_status=None, n=None, n_reference=None, dip_iterations=None,
                  report_dip_iterations=None) -> tuple[bool, str]:
    """Can an absolute measurement of ``metric`` be compared with the report's number? Returns (ok, why not).

    Wall-clock seconds never can (the report does not state its hardware). Nothing can when the run fits the
    DIP for another number of iterations than the report. Otherwise counts and fractions (``ALWAYS_COMPARABLE``)
    always can; everything else needs the paper profile (64 px and the report's networks), and FID@1k also
    needs FID to be available, at least 1000 samples and at least 1000 reference images."""
    if metric == "seconds":
        return False, "wall-clock times depend on the hardware, which the report does not state"
    if None not in (dip_iterations, report_dip_iterations) and dip_iterations != report_dip_iterations:
        return False, (f"this run fits the DIP for {dip_iterations:.0f} iterations, the report for "
                       f"{report_dip_iterations:.0f}")
    if metric in ALWAYS_COMPARABLE:
        return True, ""
    if profile != "paper":
        return False, (f"the {profile} profile runs smaller images and networks than the report "
                       f"({REPORT_RESOLUTION} px, a {REPORT_DDPM_PARAMS_M} M-parameter DDPM)")
    if metric == "fid":
        if _text(fid_status) is not None and not str(fid_status).startswith("ok"):
            return False, f"FID is not available in this run ({fid_status})"
        if n is not None and n < 1000:
            return False, f"FID@1k needs 1000 samples; this run scored {n:.0f}"
        if n_reference is not None and n_reference < 1000:
            return False, f"the reference set has only {n_reference:.0f} images (FID is biased at small sizes)"
    return True, ""


def _f(x, metric, signed=False) -> str:
    d = DIGITS.get(metric, 2)
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def verdict(claimed, measured_same_protocol, measured_corrected, *, metric: str, tolerance: float,
            comparable: bool = True, why: str = "") -> tuple[str, str]:
    """The verdict on one value claim and a reason built from the numbers.

    It rests on the corrected-protocol measurement; the report-protocol one is quoted beside it. "not comparable"
    when the corrected measurement is missing or ``comparable`` is False (``why`` says why); "reproduced" when it
    is within ``tolerance`` of ``claimed``; else "not reproduced"."""
    same = None if _missing(measured_same_protocol) else float(measured_same_protocol)
    corr = None if _missing(measured_corrected) else float(measured_corrected)
    same_text = "" if same is None else f"; the report's protocol gives {_f(same, metric)}"
    claim_text = f"claimed {_f(claimed, metric)}"
    if corr is None:
        return NOT_COMPARABLE, f"no measurement under the corrected protocol ({why or 'not run'}); {claim_text}{same_text}"
    if not comparable:
        return NOT_COMPARABLE, f"{why}; measured {_f(corr, metric)} under the corrected protocol, {claim_text}{same_text}"
    off = corr - claimed
    if abs(off) <= tolerance:
        return REPRODUCED, f"measured {_f(corr, metric)}, within ±{tolerance:g} of the {claim_text}{same_text}"
    return NOT_REPRODUCED, (f"measured {_f(corr, metric)}, {_f(off, metric, True)} from the {claim_text} "
                            f"(tolerance ±{tolerance:g}){same_text}")


def direction_verdict(claimed: float, summary: dict | None, *, metric: str, a_label: str, b_label: str,
                      paired: bool = True, same=None, why: str = "") -> tuple[str, str, str | None]:
    """(verdict, reason, outcome) of a direction claim ``a - b`` with the claimed sign of ``claimed``.

    ``summary``: the measured paired summary (``mean_diff``, ``ci_low``, ``ci_high``, ``wins``, ``n``), or for
    ``paired=False`` just ``mean_diff``. With a paired summary the outcome is ``ablate.outcome`` ("better than",
    "worse than", "not clearly different from": a higher or lower score, PSNR here) and the claim is "reproduced"
    when it is the claimed one; otherwise (FID, seconds: lower is the claim) the sign of the difference decides,
    the outcome is "higher than" / "lower than", and the reason says that there is no interval. Missing:
    "not comparable"."""
    same_text = "" if _missing(same) else f"; the report's protocol gives {_f(float(same), metric, True)}"
    want = BETTER if claimed > 0 else WORSE
    if summary is None or _missing(summary.get("mean_diff")):
        return NOT_COMPARABLE, f"a measurement is missing ({why or 'not run'}); claimed {_f(claimed, metric, True)}{same_text}", None
    d = float(summary["mean_diff"])
    unit = UNITS.get(metric, "")
    if paired:
        out = ablate.outcome(summary)
        detail = (f"{_f(d, metric, True)}{unit} [{_f(summary['ci_low'], metric, True)}, "
                  f"{_f(summary['ci_high'], metric, True)}], wins {int(summary['wins'])} of {int(summary['n'])}")
    else:  # a set statistic or a time: the sign, in words that do not say which way is good
        want = HIGHER if claimed > 0 else LOWER
        out = HIGHER if d > 0 else LOWER if d < 0 else EQUAL
        detail = f"{_f(d, metric, True)}{unit}, one number per method (no per-image pairing): sign only"
    text = f"{a_label} − {b_label}: {detail}; claimed {_f(claimed, metric, True)}{same_text}"
    if out == want:
        return REPRODUCED, text, out
    if out in (UNCLEAR, EQUAL):
        return NOT_REPRODUCED, f"no clear difference: {text}", out
    return NOT_REPRODUCED, f"the direction is reversed: {text}", out


def assess(measured: pd.DataFrame, *, profile: str) -> pd.DataFrame:
    """Add ``comparable``, ``verdict`` and ``reason`` (and for directions ``outcome``) to ``measure``'s output."""
    out = measured.copy()
    by_id = out.set_index("claim_id")
    comp, verdicts, reasons, outcomes = [], [], [], []
    for claim in out.to_dict("records"):
        if claim["kind"] == "configuration":
            setting = claim["corrected"]
            comp.append(True), outcomes.append(None), verdicts.append(CONFIGURATION)
            reasons.append("a setting of the method, not a result" + (
                "" if _missing(setting) else f"; this run: {_f(float(setting), claim['metric'])}"))
            continue
        if claim["kind"] == "value":
            status = _text(claim["fid_status"])
            ok, why = comparability(claim["metric"], profile=profile, fid_status=status, n=_num(claim["n"]),
                                    n_reference=_num(claim["n_reference"]), dip_iterations=_num(claim["dip_iterations"]),
                                    report_dip_iterations=_num(claim["report_dip_iterations"]))
            if _missing(claim["corrected"]):
                ok = False
                why = (f"FID is not available in this run ({status})" if status and not status.startswith("ok")
                       else "not run under this profile")
            v, reason = verdict(claim["claimed"], claim["same"], claim["corrected"], metric=claim["metric"],
                                tolerance=claim["tolerance"], comparable=ok, why=why)
            comp.append(ok), verdicts.append(v), reasons.append(reason), outcomes.append(None)
            continue
        why = "not run under this profile"
        statuses = [_text(by_id.at[k, "fid_status"]) for k in (claim["a"], claim["b"]) if _text(by_id.at[k, "fid_status"])]
        if statuses and not statuses[0].startswith("ok"):
            why = f"FID is not available in this run ({statuses[0]})"
        summary = None if _missing(claim["corrected"]) else dict(
            mean_diff=claim["corrected"], ci_low=claim["ci_low"], ci_high=claim["ci_high"], wins=claim["wins"],
            n=claim["n_pairs"])
        v, reason, o = direction_verdict(claim["claimed"], summary, metric=claim["metric"], a_label=claim["a_label"],
                                         b_label=claim["b_label"], paired=bool(claim["paired"]), same=claim["same"],
                                         why=why)
        comp.append(v != NOT_COMPARABLE), verdicts.append(v), reasons.append(reason), outcomes.append(o)
    out["comparable"], out["verdict"], out["reason"], out["outcome"] = comp, verdicts, reasons, outcomes
    return out


def value_verdict(claim_id: str, measured, *, profile: str, same=None, dip_iterations=None) -> tuple[str, str]:
    """The verdict on one value claim from a single measurement, by the same rule as ``assess`` (for chapters
    that quote a claim beside their own number, so that they and chapter 07 say the same)."""
    c = next((c for c in CLAIMS if c["claim_id"] == claim_id and c["kind"] == "value"), None)
    if c is None:
        raise ValueError(f"claim_id={claim_id!r} is not a value claim")
    ok, why = comparability(c["metric"], profile=profile, dip_iterations=dip_iterations,
                            report_dip_iterations=c["report_dip_iterations"])
    return verdict(c["claimed"], same, measured, metric=c["metric"], tolerance=c["tolerance"], comparable=ok, why=why)


# ------------------------------------------------------------------------------------------------------
# Tables and sentences on the claims
# ------------------------------------------------------------------------------------------------------

def _cell(c: dict, col: str) -> str:
    x = c[col]
    if _missing(x):
        return "—"
    signed = c["kind"] == "direction"
    text = _f(float(x), c["metric"], signed)
    if col == "corrected" and signed and c.get("paired") and not _missing(c.get("ci_low")):
        text += f" [{_f(c['ci_low'], c['metric'], True)}, {_f(c['ci_high'], c['metric'], True)}]"
    return text


def display_table(assessed: pd.DataFrame) -> pd.DataFrame:
    """The assessed claims with numbers formatted per metric, for display (directions: mean paired difference
    and its 95% interval)."""
    rows = []
    for c in assessed.to_dict("records"):
        rows.append({"table": c["table"], "claim": c["claim_id"], "method": c["method"], "setting": c["setting"],
                     "metric": c["metric"] + (" (difference)" if c["kind"] == "direction" else ""),
                     "claimed": _cell(c, "claimed"), "report's protocol": _cell(c, "same"),
                     "corrected protocol": _cell(c, "corrected"), "verdict": c["verdict"], "reason": c["reason"]})
    return pd.DataFrame(rows)


def counts(assessed: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per table (rows) and verdict (columns), with a total row; configuration entries apart."""
    cols = list(VERDICTS) + [CONFIGURATION]
    t = pd.crosstab(assessed["table"], assessed["verdict"]).reindex(columns=cols, fill_value=0)
    t.loc["all"] = t.sum()
    return t


def _count_text(assessed: pd.DataFrame) -> str:
    n = assessed["verdict"].value_counts()
    rep, nrep, nc = (int(n.get(v, 0)) for v in VERDICTS)
    return (f"{rep} {'is' if rep == 1 else 'are'} reproduced, {nrep} {'is' if nrep == 1 else 'are'} not reproduced "
            f"and {nc} cannot be compared in this run")


def table_sentence(assessed: pd.DataFrame, table: str) -> str:
    """'Of the N claims of Table k, R are reproduced, ...' (configuration entries counted apart)."""
    t = assessed[assessed["table"] == table]
    conf = int((t["verdict"] == CONFIGURATION).sum())
    t = t[t["verdict"] != CONFIGURATION]
    text = f"Of the {len(t)} claims taken from {table}, {_count_text(t)}."
    if conf:
        text += (f" {conf} further {'entry is a' if conf == 1 else 'entries are'} configuration (a step count the "
                 f"method is set to), not {'a claim' if conf == 1 else 'claims'}.")
    return text


def schedule_table(assessed: pd.DataFrame) -> pd.DataFrame:
    """The schedule claims (Table 4's directions) side by side: matched t against matched sigma, per method."""
    d = assessed[(assessed["table"] == "Table 4") & (assessed["kind"] == "direction")]
    rows = []
    for c in d.to_dict("records"):
        rows.append({"method": c["method"].split(":")[0], "setting": c["setting"],
                     "cosine − linear (dB) [95% CI]": _cell(c, "corrected"),
                     "wins": "—" if _missing(c["wins"]) else f"{int(c['wins'])} of {int(c['n_pairs'])}",
                     "cosine against linear": c["outcome"] or "—", "verdict": c["verdict"]})
    return pd.DataFrame(rows)


def schedule_text(assessed: pd.DataFrame, sigma_t600: dict | None = None) -> str:
    """'At matched t ... At matched sigma ...' for the claim that the cosine schedule raises every method;
    ``sigma_t600`` (schedule -> pixel sigma of level 600) adds how different the noise at matched t is."""
    d = assessed[(assessed["table"] == "Table 4") & (assessed["kind"] == "direction")].set_index("claim_id")
    names = dict(ddpm="DDPM", dip="the DIP", tdpm="TDPM-DIP")

    def part(suffix):
        bits = []
        for key, name in names.items():
            cid = f"T4-dir-{key}{suffix}"
            if cid in d.index and d.at[cid, "outcome"]:
                bits.append(f"{d.at[cid, 'outcome']} linear for {name} "
                            f"({_f(float(d.at[cid, 'corrected']), 'psnr', True)} dB)")
        return ablate.join_and(bits) if bits else None

    out = []
    t600 = part("")
    if t600:
        noise = ("" if not sigma_t600 else f" (where the cosine schedule has added noise of σ ≈ {sigma_t600['cosine']:.0f} "
                 f"and the linear one σ ≈ {sigma_t600['linear']:.0f}, on the 0..255 scale)")
        out.append(f"At matched t, t = 600{noise}, cosine is {t600}.")
    for s in ABLATION_SIGMAS:
        p = part(f"-s{s}")
        if p:
            out.append(f"At matched σ = {s}, cosine is {p}.")
    if not out:
        return "The schedule claims could not be measured in this run."
    held = int((d["verdict"] == REPRODUCED).sum())
    measured = int((d["verdict"] != NOT_COMPARABLE).sum())
    out.append(f"The report's “cosine raises every method” holds in {held} of the {measured} comparisons measured.")
    return " ".join(out)


def schedule_summary(assessed: pd.DataFrame) -> str:
    """'The report's “cosine raises every method” holds in a of the b comparisons at matched t and in c of the d
    at matched sigma' (comparisons that were measured)."""
    d = assessed[(assessed["table"] == "Table 4") & (assessed["kind"] == "direction")
                 & (assessed["verdict"] != NOT_COMPARABLE)]
    parts = []
    for prefix, name in (("matched t", "matched t"), ("matched σ", "matched σ")):
        g = d[d["setting"].str.startswith(prefix)]
        if len(g):
            parts.append(f"{int((g['verdict'] == REPRODUCED).sum())} of the {len(g)} comparisons at {name}")
    if not parts:
        return "The schedule claims could not be measured in this run."
    return "The report's “cosine raises every method” holds in " + " and in ".join(parts) + "."


# ------------------------------------------------------------------------------------------------------
# Standalone runs
# ------------------------------------------------------------------------------------------------------

def ensure_results(cfg, producer: str, name: str, *, notebooks_dir=".", run: bool = True) -> Path:
    """The path of ``<results_dir>/<profile>/<producer>/<name>``; if it is missing, run the producing
    notebook (``<notebooks_dir>/<producer>.ipynb``) with papermill and this run's profile, data source, seed,
    device and results folder. Raises ``FileNotFoundError`` naming the notebook to run if that is impossible
    (``run=False``, or the notebook is not there) or the file is still missing afterwards."""
    path = Path(cfg.results_dir) / cfg.profile / producer / name
    if path.is_file():
        return path
    nb = Path(notebooks_dir) / f"{producer}.ipynb"
    hint = f"{path} is missing: run notebooks/{producer}.ipynb with profile={cfg.profile!r} first"
    if not run or not nb.is_file():
        raise FileNotFoundError(hint)
    import papermill as pm

    from .ablations import captured_output  # keeps the kernel's start-up warnings out of the page

    params = dict(profile=cfg.profile, data_source=cfg.data_source, seed=cfg.seed, device=cfg.device,
                  results_dir=str(Path(cfg.results_dir).resolve()))
    with captured_output():
        pm.execute_notebook(str(nb), str(cfg.out_dir() / f"{producer}.executed.ipynb"), parameters=params,
                            cwd=str(nb.parent.resolve()), kernel_name="python3", progress_bar=False)
    if not path.is_file():
        raise FileNotFoundError(hint + f" ({nb} ran but did not write it)")
    return path


def optional_results(cfg, producer: str, name: str) -> tuple[pd.DataFrame | None, str]:
    """(table, note): an optional input read if present, never produced here; the note says plainly what is
    missing (empty when the file was read)."""
    path = Path(cfg.results_dir) / cfg.profile / producer / name
    if not path.is_file():
        return None, (f"{producer}/{name} is not in this run's results ({cfg.profile} profile): run "
                      f"notebooks/{producer}.ipynb to add it")
    return pd.read_csv(path), ""


# ------------------------------------------------------------------------------------------------------
# The synthesis (chapter 07): does combining DDPM and DIP beat each alone?
# ------------------------------------------------------------------------------------------------------

FAMILIES = ("DDPM", "DIP", "hybrid")


def best_by_family(study_rows: pd.DataFrame) -> pd.DataFrame:
    """Per (sigma, family) of chapter 03's study rows: the method with the best mean validation PSNR (the choice
    chapter 03 makes before it scores the test images). Columns: sigma, family, method_key, val_psnr."""
    v = study_rows[(study_rows["split"] == "val") & study_rows["family"].isin(FAMILIES)]
    m = v.groupby(["sigma", "family", "method_key"], sort=False)["psnr"].mean().rename("val_psnr").reset_index()
    return m.loc[m.groupby(["sigma", "family"], sort=False)["val_psnr"].idxmax()].reset_index(drop=True)


def answer(study_paired: pd.DataFrame) -> pd.DataFrame:
    """Chapter 03's study_paired.csv (the best hybrid against the best DDPM alone and the best DIP alone, per
    sigma) with each comparison's ``outcome`` and the family it was compared with."""
    out = study_paired.copy()
    out["outcome"] = [ablate.outcome(r) for r in out.to_dict("records")]
    return out


def _sigmas_text(sigmas) -> str:
    return "σ = " + ablate.join_and(ablate.fmt_sigma(s) for s in sigmas)


def _family(label: str, families: dict | None) -> str:
    if families and label in families:
        return families[label]
    return "DIP" if "DIP" in label else "DDPM"


def answer_details(ans: pd.DataFrame, *, families: dict | None = None) -> str:
    """Per sigma: the best hybrid against each method alone (outcome, paired difference, time ratio).
    ``families`` maps a compared method's label to "DDPM" or "DIP" (default: read from the label)."""
    per = []
    for sigma, g in ans.groupby("sigma", sort=True):
        parts = [f"{r['outcome']} the best {_family(r['against'], families)} alone, {r['against']} "
                 f"({ablate.fmt_diff(r)}, wins {int(r['wins'])} of {int(r['n'])}, {r['time_ratio']:.2f}× its time per "
                 f"image)" for r in g.to_dict("records")]
        per.append(f"At σ = {ablate.fmt_sigma(sigma)} the best hybrid on the validation images, {g['hybrid'].iloc[0]}, is "
                   + " and ".join(parts) + ".")
    return " ".join(per)


def answer_overall(ans: pd.DataFrame) -> str:
    """The answer to the assignment's question from ``answer``'s rows: in quality (where the paired intervals
    lie) and in speed (the time ratios, one measurement per method), per noise level."""
    quality, speed = {}, {}
    for sigma, g in ans.groupby("sigma", sort=True):
        quality[sigma] = int((g["outcome"] == BETTER).sum()), int((g["outcome"] == WORSE).sum()), len(g)
        speed[sigma] = int((g["time_ratio"] < 1).sum()), len(g)
    both = [s for s, (b, _, n) in quality.items() if b == n]
    some = [s for s, (b, _, n) in quality.items() if 0 < b < n]
    rest = [s for s in quality if s not in both and s not in some]
    worse = [s for s in rest if quality[s][1] > 0]
    q = []
    if both:
        q.append(f"beats both methods alone at {_sigmas_text(both)}")
    if some:
        q.append(f"beats one of them but not the other at {_sigmas_text(some)}")
    if rest:
        q.append(f"beats neither at {_sigmas_text(rest)}"
                 + (f" (and is worse than at least one of them at {_sigmas_text(worse)})" if worse else ""))
    fast = [s for s, (f, n) in speed.items() if f == n]
    slow = [s for s, (f, n) in speed.items() if f == 0]
    mid = [s for s in speed if s not in fast and s not in slow]
    sp = []
    if fast:
        sp.append(f"faster than both at {_sigmas_text(fast)}")
    if slow:
        sp.append(f"slower than both at {_sigmas_text(slow)}")
    if mid:
        sp.append(f"faster than one and slower than the other at {_sigmas_text(mid)}")
    return ("In quality (PSNR on the test images) the best combination of DDPM and DIP " + ablate.join_and(q)
            + ". In speed (wall clock per image, one measurement per method) it is " + ablate.join_and(sp) + ".")


def hybrid_comparisons(study_rows: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Every hybrid of chapter 03's study against the best DDPM alone and the best DIP alone (chosen on the
    validation images, ``best_by_family``), paired on the test images, with the ratio of their mean seconds per
    image."""
    best = best_by_family(study_rows).set_index(["sigma", "family"])["method_key"]
    test = study_rows[study_rows["split"] == "test"]
    out = []
    for sigma in sorted(study_rows["sigma"].unique()):
        t = test[test["sigma"] == sigma]
        for h in [k for k in dict.fromkeys(t.loc[t["family"] == "hybrid", "method_key"])]:
            for fam in ("DDPM", "DIP"):
                if (sigma, fam) not in best.index:
                    continue
                o = best[(sigma, fam)]
                ra, rb = t[t["method_key"] == h], t[t["method_key"] == o]
                s = ablate.paired(ra, rb, seed=seed)
                out.append(dict(sigma=sigma, hybrid_key=h, hybrid=ra["method"].iloc[0], family=fam, against_key=o,
                                against=rb["method"].iloc[0], **s, a_psnr=float(ra["psnr"].mean()),
                                b_psnr=float(rb["psnr"].mean()),
                                time_ratio=float(ra["seconds"].mean() / rb["seconds"].mean()),
                                outcome=ablate.outcome(s)))
    return pd.DataFrame(out)


def hybrid_text(comp: pd.DataFrame, key: str, name: str) -> str:
    """One sentence per sigma on one hybrid against the best of each family."""
    g = comp[comp["hybrid_key"] == key]
    if g.empty:
        return f"{name} is not in this run's study."
    out = []
    for sigma, gs in g.groupby("sigma", sort=True):
        out.append(f"at σ = {ablate.fmt_sigma(sigma)} it is " + " and ".join(
            f"{r['outcome']} the best {r['family']} alone ({ablate.fmt_diff(r)})" for r in gs.to_dict("records")))
    text = "; ".join(out)
    return f"{name}: {text[0].lower() + text[1:]}."


def speed_table(study_rows: pd.DataFrame) -> pd.DataFrame:
    """Per sigma: the best DDPM alone, the best DIP alone (chosen on validation) and every hybrid, with their test
    PSNR, seconds per image (DIP fitting included), network evaluations and DIP iterations."""
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
                             psnr=float(r["psnr"].mean()), seconds=float(r["seconds"].mean()),
                             nfe=int(r["nfe"].iloc[0]), dip_iterations=int(r["dip_iterations"].iloc[0])))
    return pd.DataFrame(rows)


def example2_paired(per_image: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Chapter 05's stopping rules, paired: every DDPM-guided rule (``rule_key`` or name with "guided") against every
    other rule that needs no clean image (not an oracle or upper bound), per noise level, on the test images when
    the table has a split.
    Raises ValueError naming the columns it needs when the table is not in that form."""
    need = {"rule", "image", "psnr"}
    sig_col = next((c for c in ("sigma", "sigma_nominal", "t_obs") if c in per_image.columns), None)
    if need - set(per_image.columns) or sig_col is None:
        raise ValueError(f"chapter 05's per-image table needs the columns {sorted(need)} and one of sigma, "
                         f"sigma_nominal, t_obs; it has {list(per_image.columns)}")
    df = per_image[per_image["split"] == "test"] if "split" in per_image.columns else per_image
    names = df["rule_key"].astype(str) + " " + df["rule"] if "rule_key" in df.columns else df["rule"]
    kind = {r: ("guided" if "guided" in n.lower() else
                "bound" if "oracle" in n.lower() or "upper bound" in n.lower() else "rule")
            for r, n in zip(df["rule"], names)}
    out = []
    for sigma, g in df.groupby(sig_col, sort=True):
        rules = list(dict.fromkeys(g["rule"]))
        guided = [r for r in rules if kind[r] == "guided"]
        others = [r for r in rules if kind[r] == "rule"]
        for a in guided:
            for b in others:
                s = ablate.paired(g[g["rule"] == a], g[g["rule"] == b], seed=seed)
                level = f"t = {ablate.fmt_sigma(sigma)}" if sig_col == "t_obs" else f"σ = {ablate.fmt_sigma(sigma)}"
                out.append(dict(sigma=sigma, level=level, rule=a, against=b, **s, a_psnr=float(g.loc[g["rule"] == a, "psnr"].mean()),
                                b_psnr=float(g.loc[g["rule"] == b, "psnr"].mean()), outcome=ablate.outcome(s)))
    return pd.DataFrame(out)


def example2_text(comp: pd.DataFrame) -> str:
    """Per sigma: which rules the guided rule is better than, not clearly different from, worse than."""
    if comp.empty:
        return "Chapter 05's table has no guided rule to compare."
    out = []
    for (_, rule), g in comp.groupby(["sigma", "rule"], sort=True):
        parts = []
        for w in WORDS.values():
            names = g.loc[g["outcome"] == w, "against"].tolist()
            if names:
                parts.append(f"{w} {ablate.join_and(names)}")
        text = parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; and " + parts[-1]
        out.append(f"At {g['level'].iloc[0]} the {rule} rule is {text}.")
    return " ".join(out)
