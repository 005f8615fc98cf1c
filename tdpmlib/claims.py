"""The reproduced report's claims (its Tables 1-4) as data, where each is measured in this book, and the verdict.

``CLAIMS`` lists every claim as a flat dict (``pd.DataFrame(CLAIMS)`` is the table). Two kinds:

* ``kind="value"`` -- a number the report gives for one method in one setting (e.g. TDPM-DIP's PSNR at
  t = 600). ``source`` names the results table that measures it here and ``same`` / ``corrected`` the rows
  that measure it under the report's protocol and under the corrected protocol (method keys of
  ``tdpmlib.experiments``, or the protocol of an ablation row);
* ``kind="direction"`` -- an ordering the report's numbers imply ("TDPM-DIP beats DDPM"), written as the
  signed difference of two value claims ``a - b``. The claimed value is the report's difference; the
  measurement is the measured difference, and only its sign is checked.

``measure`` looks every claim up in the results of notebooks 03 (generation, denoising) and 06 (ablations);
``comparability`` says whether an absolute number can be compared with the report's at all; ``verdict`` gives
"reproduced" / "not reproduced" / "not comparable" with a reason built from the numbers; ``assess`` does all
three for the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)

# Tolerances: for a value, how far a measurement may be from the claimed number; for a direction, how large
# a difference must be to count as one.
VALUE_TOL = dict(psnr=1.0, ssim=0.02, fid=5.0, steps=0, seconds=0, frac_copies_fit=0.5)
DIRECTION_TOL = dict(psnr=0.1, ssim=0.005, fid=1.0, seconds=0.0)
DIGITS = dict(psnr=2, ssim=3, fid=2, steps=0, seconds=2, frac_copies_fit=2)
# Where a metric lives in the results tables ("steps" is computed: nfe + dip_iterations).
COLUMN = dict(psnr="psnr_mean", ssim="ssim_mean", fid="fid", seconds="seconds_per_image",
              frac_copies_fit="frac_copies_fit")
# Metrics whose absolute value depends only on the method's definition (counts, fractions), not on the
# resolution, the networks or the data: compared under every profile.
ALWAYS_COMPARABLE = ("steps", "frac_copies_fit")
REPORT_DIP_ITERATIONS = 100
# The report's setting, as it states it: 64 x 64 Pokémon images and a 113.7 M-parameter DDPM.
REPORT_RESOLUTION = 64
REPORT_DDPM_PARAMS_M = 113.7


def _value(table, claim_id, setting, method, metric, claimed, notes, *, source, same, corrected, schedule=None,
           t=None, ablation=None, ablation_value=None):
    # The report fits every DIP for 100 iterations (T_trunc = 10 in TDPM-DIP); DDPM rows fit none.
    return dict(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, claimed=claimed,
                notes=notes, kind="value", tolerance=VALUE_TOL[metric], source=source, same=same,
                corrected=corrected, schedule=schedule, t=t, ablation=ablation, ablation_value=ablation_value,
                report_dip_iterations=REPORT_DIP_ITERATIONS if "DIP" in method else 0, a=None, b=None)


def _direction(table, claim_id, setting, method, metric, a, b, notes):
    return dict(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, claimed=None,
                notes=notes, kind="direction", tolerance=DIRECTION_TOL[metric], source=None, same=None,
                corrected=None, schedule=None, t=None, ablation=None, ablation_value=None, report_dip_iterations=None,
                a=a, b=b)


_GEN, _DEN, _ABL = "generation", "denoising", "ablations"
_T600 = dict(schedule="linear", t=600)
_T600C = dict(schedule="cosine", t=600)
_FIT = "report: DIP fit to clean dataset images; corrected: scored against images it did not fit"

CLAIMS = [
    # Table 1: generation (FID@1k).
    _value("Table 1", "T1-ddpm-fid", "generation", "DDPM", "fid", 69.05, "FID@1k, 1000 reverse steps",
           source=_GEN, same="ddpm", corrected="ddpm"),
    _value("Table 1", "T1-tdpm-fid", "generation", "TDPM-DIP", "fid", 20.12, "FID@1k; " + _FIT,
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _value("Table 1", "T1-ddpm-steps", "generation", "DDPM", "steps", 1000, "reverse steps (network evaluations)",
           source=_GEN, same="ddpm", corrected="ddpm"),
    _value("Table 1", "T1-tdpm-steps", "generation", "TDPM-DIP", "steps", 110,
           "“110 steps” = 100 DIP optimiser iterations + T_trunc = 10 network evaluations",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _value("Table 1", "T1-ddpm-seconds", "generation", "DDPM", "seconds", 38.0, "wall clock, hardware not stated",
           source=_GEN, same="ddpm", corrected="ddpm"),
    _value("Table 1", "T1-tdpm-seconds", "generation", "TDPM-DIP", "seconds", 7.0, "wall clock, hardware not stated",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _value("Table 1", "T1-tdpm-new", "generation", "TDPM-DIP", "frac_copies_fit", 0.0,
           "implied by scoring it as a generator: its samples are new images, not copies of the images the DIP "
           "was fit to (a copy is nearer a fitted image than half the distance to the nearest unfitted one)",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _direction("Table 1", "T1-dir-fid", "generation", "TDPM-DIP − DDPM", "fid", "T1-tdpm-fid", "T1-ddpm-fid",
               "TDPM-DIP has the lower FID"),
    _direction("Table 1", "T1-dir-seconds", "generation", "TDPM-DIP − DDPM", "seconds", "T1-tdpm-seconds",
               "T1-ddpm-seconds", "TDPM-DIP is faster (seconds per image on the same hardware)"),
    # Table 2: denoising at t = 600, linear schedule.
    _value("Table 2", "T2-ddpm-psnr", "denoising t = 600 (linear)", "DDPM", "psnr", 13.40, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-ssim", "denoising t = 600 (linear)", "DDPM", "ssim", 0.369, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-steps", "denoising t = 600 (linear)", "DDPM", "steps", 600, "reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-seconds", "denoising t = 600 (linear)", "DDPM", "seconds", 32.0,
           "wall clock, hardware not stated", source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-dip-psnr", "denoising t = 600 (linear)", "DIP", "psnr", 32.12,
           "100 iterations; report: DIP fit to the clean image, PSNR against its own target",
           source=_DEN, same="report_dip_clean", corrected="dip_short", **_T600),
    _value("Table 2", "T2-dip-ssim", "denoising t = 600 (linear)", "DIP", "ssim", 0.948,
           "100 iterations; report: DIP fit to the clean image, SSIM against its own target",
           source=_DEN, same="report_dip_clean", corrected="dip_short", **_T600),
    _value("Table 2", "T2-tdpm-psnr", "denoising t = 600 (linear)", "TDPM-DIP", "psnr", 32.63,
           "T_trunc = 10; report: DIP target built from the clean image", source=_DEN, same="report_tdpm_clean",
           corrected="tdpm_dip", **_T600),
    _value("Table 2", "T2-tdpm-ssim", "denoising t = 600 (linear)", "TDPM-DIP", "ssim", 0.970,
           "T_trunc = 10; report: DIP target built from the clean image", source=_DEN, same="report_tdpm_clean",
           corrected="tdpm_dip", **_T600),
    _direction("Table 2", "T2-dir-tdpm-ddpm", "denoising t = 600 (linear)", "TDPM-DIP − DDPM", "psnr",
               "T2-tdpm-psnr", "T2-ddpm-psnr", "TDPM-DIP beats DDPM"),
    _direction("Table 2", "T2-dir-tdpm-dip", "denoising t = 600 (linear)", "TDPM-DIP − DIP", "psnr",
               "T2-tdpm-psnr", "T2-dip-psnr", "TDPM-DIP beats the DIP alone"),
]

# Table 3: T_trunc ablation (denoising at t = 600, linear), from notebook 06.
for _tt, _p, _s in ((0, 32.12, 0.948), (5, 32.77, 0.970), (10, 32.63, 0.970), (50, 28.70, 0.937)):
    for _metric, _claimed in (("psnr", _p), ("ssim", _s)):
        CLAIMS.append(_value("Table 3", f"T3-{_tt}-{_metric}", "T_trunc ablation, t = 600 (linear)",
                             f"TDPM-DIP, T_trunc = {_tt}", _metric, _claimed,
                             "report: DIP target built from the clean image", source=_ABL, same="report",
                             corrected="corrected", schedule="linear", ablation="t_trunc", ablation_value=_tt))
CLAIMS += [
    _direction("Table 3", "T3-dir-5-0", "T_trunc ablation, t = 600 (linear)", "T_trunc 5 − T_trunc 0", "psnr",
               "T3-5-psnr", "T3-0-psnr", "a few reverse steps improve on the DIP alone"),
    _direction("Table 3", "T3-dir-50-10", "T_trunc ablation, t = 600 (linear)", "T_trunc 50 − T_trunc 10", "psnr",
               "T3-50-psnr", "T3-10-psnr", "a large T_trunc hurts"),
]

# Table 4: cosine schedule at t = 600, "cosine raises every method".
for _key, _label, _same, _corr, _p, _s in (("ddpm", "DDPM", "ddpm", "ddpm", 18.68, 0.659),
                                           ("dip", "DIP", "report_dip_clean", "dip_short", 34.35, 0.962),
                                           ("tdpm", "TDPM-DIP", "report_tdpm_clean", "tdpm_dip", 34.76, 0.979)):
    CLAIMS += [_value("Table 4", f"T4-{_key}-psnr", "denoising t = 600 (cosine)", _label, "psnr", _p,
                      "cosine schedule", source=_DEN, same=_same, corrected=_corr, **_T600C),
               _value("Table 4", f"T4-{_key}-ssim", "denoising t = 600 (cosine)", _label, "ssim", _s,
                      "cosine schedule", source=_DEN, same=_same, corrected=_corr, **_T600C)]
for _key, _label in (("ddpm", "DDPM"), ("dip", "DIP"), ("tdpm", "TDPM-DIP")):
    CLAIMS.append(_direction("Table 4", f"T4-dir-{_key}", "t = 600, cosine − linear", f"{_label}: cosine − linear",
                             "psnr", f"T4-{_key}-psnr", f"T2-{_key}-psnr", "cosine raises every method"))


def claimed(claim_id: str) -> float:
    """The number the report gives for one value claim, e.g. ``claimed("T2-dip-psnr") == 32.12``: notebooks
    quote the report through this, so each claimed number is typed once, in ``CLAIMS``."""
    for c in CLAIMS:
        if c["claim_id"] == claim_id and c["kind"] == "value":
            return float(c["claimed"])
    raise ValueError(f"claim_id={claim_id!r} is not a value claim; use one of "
                     f"{[c['claim_id'] for c in CLAIMS if c['kind'] == 'value']}")


def claims_table() -> pd.DataFrame:
    """``CLAIMS`` as a DataFrame, with each direction claim's claimed value (the report's a - b) filled in."""
    df = pd.DataFrame(CLAIMS)
    claimed = df.set_index("claim_id")["claimed"]
    is_dir = df["kind"] == "direction"
    df.loc[is_dir, "claimed"] = [claimed[a] - claimed[b] for a, b in zip(df.loc[is_dir, "a"], df.loc[is_dir, "b"])]
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
    """Element-wise equality that treats 5, 5.0 and "5" alike (ablation values come back from CSV as text)."""
    num = pd.to_numeric(series, errors="coerce")
    try:
        return (num - float(value)).abs() < 1e-9
    except (TypeError, ValueError):
        return series.astype(str) == str(value)


def _row(claim: dict, which: str, tables: dict) -> pd.Series | None:
    """The results row that measures a value claim under one protocol ("same" or "corrected"), or None."""
    df = tables.get(claim["source"])
    if df is None or len(df) == 0:
        return None
    key = claim[which]
    if claim["source"] == _ABL:
        mask = ((df["ablation"] == claim["ablation"]) & _same_value(df["value"], claim["ablation_value"])
                & (df["schedule"] == claim["schedule"]) & (df["protocol"] == key))
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


def measure(claims: pd.DataFrame, *, generation=None, denoising=None, ablations=None) -> pd.DataFrame:
    """Add the measurements: ``same`` (the report's protocol) and ``corrected`` for every claim, plus the
    context the comparability rule needs (``n``, ``n_reference``, ``fid_status``, ``dip_iterations``) for value
    claims.

    ``generation`` / ``denoising`` are notebook 03's generation.csv / denoising_summary.csv (rows selected by
    ``method_key``), ``ablations`` is notebook 06's ablations.csv. A missing table or row gives None."""
    tables = {_GEN: generation, _DEN: denoising, _ABL: ablations}
    out = claims.copy()
    same, corr, n, n_ref, status, its = [], [], [], [], [], []
    for claim in claims.to_dict("records"):
        if claim["kind"] != "value":
            for col in (same, corr, n, n_ref, status, its):
                col.append(None)
            continue
        r_same, r_corr = _row(claim, "same", tables), _row(claim, "corrected", tables)
        same.append(_metric(r_same, claim["metric"]))
        corr.append(_metric(r_corr, claim["metric"]))
        n.append(_num(r_corr.get("n")) if r_corr is not None else None)
        n_ref.append(_num(r_corr.get("n_reference")) if r_corr is not None else None)
        status.append(_text(r_corr.get("fid_status")) if r_corr is not None and claim["metric"] == "fid" else None)
        its.append(_num(r_corr.get("dip_iterations")) if r_corr is not None else None)
    out["same"], out["corrected"] = pd.Series(same, dtype=object), pd.Series(corr, dtype=object)
    out["n"], out["n_reference"], out["fid_status"], out["dip_iterations"] = n, n_ref, status, its
    by_id = out.set_index("claim_id")
    for i, claim in out[out["kind"] == "direction"].iterrows():
        for col in ("same", "corrected"):
            a, b = by_id.at[claim["a"], col], by_id.at[claim["b"], col]
            out.at[i, col] = None if _missing(a) or _missing(b) else a - b
    return out


# ------------------------------------------------------------------------------------------------------
# Comparability and the verdict
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
            kind: str = "value", comparable: bool = True, why: str = "") -> tuple[str, str]:
    """The verdict on one claim and a reason built from the numbers.

    The verdict rests on the corrected-protocol measurement; the report-protocol one is quoted beside it.

    * ``kind="value"``: "not comparable" when the corrected measurement is missing or ``comparable`` is False
      (``why`` says why); "reproduced" when it is within ``tolerance`` of ``claimed``; else "not reproduced".
    * ``kind="direction"`` (``claimed`` and the measurements are differences a - b): "not comparable" when the
      corrected difference is missing; "reproduced" when it has the claimed sign and exceeds ``tolerance``
      in size; else "not reproduced" (no difference beyond the tolerance, or the opposite sign).
    """
    if kind not in ("value", "direction"):
        raise ValueError(f"kind={kind!r} is not allowed; use 'value' or 'direction'")
    same = None if _missing(measured_same_protocol) else float(measured_same_protocol)
    corr = None if _missing(measured_corrected) else float(measured_corrected)
    signed = kind == "direction"
    same_text = "" if same is None else f"; the report's protocol gives {_f(same, metric, signed)}"
    if kind == "value":
        claim_text = f"claimed {_f(claimed, metric)}"
        if corr is None:
            return NOT_COMPARABLE, f"no measurement under the corrected protocol ({why or 'not run'}); {claim_text}{same_text}"
        if not comparable:
            return NOT_COMPARABLE, (f"{why}; measured {_f(corr, metric)} under the corrected protocol, "
                                    f"{claim_text}{same_text}")
        off = corr - claimed
        if abs(off) <= tolerance:
            return REPRODUCED, (f"measured {_f(corr, metric)}, within ±{tolerance:g} of the {claim_text}"
                                f"{same_text}")
        return NOT_REPRODUCED, (f"measured {_f(corr, metric)}, {_f(off, metric, True)} from the {claim_text} "
                                f"(tolerance ±{tolerance:g}){same_text}")
    claim_text = f"claimed {_f(claimed, metric, True)}"
    if corr is None:
        return NOT_COMPARABLE, f"a measurement is missing ({why or 'not run'}); {claim_text}{same_text}"
    if abs(corr) <= tolerance:
        return NOT_REPRODUCED, (f"no difference beyond ±{tolerance:g}: measured {_f(corr, metric, True)}, "
                                f"{claim_text}{same_text}")
    if (corr > 0) == (claimed > 0):
        return REPRODUCED, f"the direction holds: measured {_f(corr, metric, True)}, {claim_text}{same_text}"
    return NOT_REPRODUCED, f"the direction is reversed: measured {_f(corr, metric, True)}, {claim_text}{same_text}"


def assess(measured: pd.DataFrame, *, profile: str) -> pd.DataFrame:
    """Add ``comparable``, ``verdict`` and ``reason`` to the output of ``measure``."""
    out = measured.copy()
    by_id = out.set_index("claim_id")
    comp, verdicts, reasons = [], [], []
    for claim in out.to_dict("records"):
        if claim["kind"] == "value":
            status = _text(claim["fid_status"])
            ok, why = comparability(claim["metric"], profile=profile, fid_status=status, n=_num(claim["n"]),
                                    n_reference=_num(claim["n_reference"]), dip_iterations=_num(claim["dip_iterations"]),
                                    report_dip_iterations=_num(claim["report_dip_iterations"]))
            statuses = [status] if status else []
        else:
            ok, why = True, ""
            statuses = [_text(by_id.at[k, "fid_status"]) for k in (claim["a"], claim["b"])
                        if _text(by_id.at[k, "fid_status"])]
        if _missing(claim["corrected"]):
            ok = False
            why = (f"FID is not available in this run ({statuses[0]})" if statuses and not statuses[0].startswith("ok")
                   else "not run under this profile")
        v, reason = verdict(claim["claimed"], claim["same"], claim["corrected"], metric=claim["metric"],
                            tolerance=claim["tolerance"], kind=claim["kind"], comparable=ok, why=why)
        comp.append(ok), verdicts.append(v), reasons.append(reason)
    out["comparable"], out["verdict"], out["reason"] = comp, verdicts, reasons
    return out


def display_table(assessed: pd.DataFrame) -> pd.DataFrame:
    """The assessed claims with numbers formatted per metric, for display."""
    def fmt(x, metric, signed):
        return "—" if _missing(x) else _f(float(x), metric, signed)

    rows = []
    for c in assessed.to_dict("records"):
        signed = c["kind"] == "direction"
        rows.append({"table": c["table"], "claim": c["claim_id"], "method": c["method"], "setting": c["setting"],
                     "metric": c["metric"] + (" (difference)" if signed else ""),
                     "claimed": fmt(c["claimed"], c["metric"], signed),
                     "report's protocol": fmt(c["same"], c["metric"], signed),
                     "corrected protocol": fmt(c["corrected"], c["metric"], signed),
                     "verdict": c["verdict"], "reason": c["reason"]})
    return pd.DataFrame(rows)


def counts(assessed: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per table (rows) and verdict (columns), with a total row."""
    t = pd.crosstab(assessed["table"], assessed["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    t.loc["all"] = t.sum()
    return t


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


# ------------------------------------------------------------------------------------------------------
# Sentences
# ------------------------------------------------------------------------------------------------------

def _count_text(assessed: pd.DataFrame) -> str:
    n = assessed["verdict"].value_counts()
    return (f"{n.get(REPRODUCED, 0)} {'is' if n.get(REPRODUCED, 0) == 1 else 'are'} reproduced, "
            f"{n.get(NOT_REPRODUCED, 0)} {'is' if n.get(NOT_REPRODUCED, 0) == 1 else 'are'} not reproduced and "
            f"{n.get(NOT_COMPARABLE, 0)} cannot be compared in this run")


def table_sentence(assessed: pd.DataFrame, table: str) -> str:
    """'Of the N claims of Table k, R are reproduced, ...'."""
    t = assessed[assessed["table"] == table]
    return f"Of the {len(t)} claims taken from {table}, {_count_text(t)}."


def closing_text(assessed: pd.DataFrame) -> str:
    """The closing paragraph: the verdict counts, then what the denoising, generation and schedule claims come
    to in this run. Sentences whose numbers are missing are left out."""
    a = assessed.set_index("claim_id")

    def get(cid, col):
        x = a.at[cid, col] if cid in a.index else None
        return None if _missing(x) else float(x)

    def holds(cid):
        return cid in a.index and a.at[cid, "verdict"] == REPRODUCED

    parts = [f"Of the {len(assessed)} claims checked, {_count_text(assessed)}."]
    s_dip, s_tdpm = get("T2-dip-psnr", "same"), get("T2-tdpm-psnr", "same")
    c_dip, c_tdpm = get("T2-dip-psnr", "corrected"), get("T2-tdpm-psnr", "corrected")
    if None not in (s_dip, s_tdpm, c_dip, c_tdpm):
        gap = min(s_dip, s_tdpm) - max(c_dip, c_tdpm)
        parts.append(
            f"At t = 600 the report's protocol, which fits the DIP to the clean image, gives {s_dip:.2f} dB for the "
            f"DIP and {s_tdpm:.2f} dB for TDPM-DIP (claimed: {get('T2-dip-psnr', 'claimed'):.2f} and "
            f"{get('T2-tdpm-psnr', 'claimed'):.2f} dB). When the DIP sees only the noisy observation, as denoising "
            f"requires, they reach {c_dip:.2f} and {c_tdpm:.2f} dB"
            + (f", at least {gap:.1f} dB lower: the report's protocol overstates how well they denoise."
               if gap > VALUE_TOL["psnr"] else
               ", about as high as under the report's protocol." if gap >= -VALUE_TOL["psnr"] else
               ", higher than under the report's protocol."))
    d_ddpm, d_dip = get("T2-dir-tdpm-ddpm", "corrected"), get("T2-dir-tdpm-dip", "corrected")
    if None not in (d_ddpm, d_dip):
        parts.append(f"Under the corrected protocol TDPM-DIP {'beats' if holds('T2-dir-tdpm-ddpm') else 'does not beat'} "
                     f"the DDPM ({d_ddpm:+.2f} dB) and {'beats' if holds('T2-dir-tdpm-dip') else 'does not beat'} the "
                     f"DIP alone ({d_dip:+.2f} dB).")
    f_train, f_held = get("T1-tdpm-new", "same"), get("T1-tdpm-new", "corrected")
    if None not in (f_train, f_held):
        copies = max(f_train, f_held) > VALUE_TOL["frac_copies_fit"]
        parts.append(f"In generation, {f_train:.0%} of TDPM-DIP's samples are copies of the training images its DIP "
                     f"was fit to, and {f_held:.0%} when it is fit to held-out images: "
                     + ("it reproduces the images it is given rather than generating new ones, so its FID measures "
                        "those images, not a generative model." if copies else
                        "in this run most of its samples are not copies of the images it was fit to."))
    cos = [(k, get(f"T4-dir-{k}", "corrected")) for k in ("ddpm", "dip", "tdpm")]
    if all(v is not None for _, v in cos):
        names = dict(ddpm="DDPM", dip="DIP", tdpm="TDPM-DIP")
        raised = all(holds(f"T4-dir-{k}") for k, _ in cos)
        parts.append(f"The cosine schedule {'raises' if raised else 'does not raise'} every method's PSNR at t = 600 "
                     "under the corrected protocol ("
                     + ", ".join(f"{names[k]} {v:+.2f} dB" for k, v in cos) + ").")
    return " ".join(parts)
