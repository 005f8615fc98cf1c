"""The reproduced report's claims (its Tables 1-4) as data, and the rules that give each one a verdict.

``CLAIMS`` lists every entry of the report's tables that this book measures, as flat dicts
(``claims_table()`` is the table; ``claimed`` quotes one number). Three kinds:

* ``kind="value"`` -- a number the report gives for one method in one setting (e.g. TDPM-DIP's PSNR at
  t = 600). ``source`` names the results table that measures it here and ``same`` / ``corrected`` the rows that
  measure it under the report's protocol and under the corrected protocol. The verdict (``verdict``) compares the
  corrected measurement with the claimed number within ``VALUE_TOL``, when the run can be compared with the
  report at all (``comparability``).
* ``kind="configuration"`` -- a setting the report states (a step count). It is not a result, so it gets no
  verdict, only the label "configuration" and this run's setting beside it.
* ``kind="direction"`` -- an ordering the report's numbers imply ("TDPM-DIP beats DDPM"), the signed difference
  of two value claims ``a - b``, checked in a ``setting``: the report's (t = 600, matched t) and, where the book
  measures it, realistic noise (sigma = 25, 50; for the schedules: matched sigma). Its verdict
  (``direction_verdict``) rests on a paired comparison over images (``comparison.paired``: mean difference, 95%
  bootstrap interval, wins), read in the book's one vocabulary (``comparison.outcome``: "better than" / "worse
  than" / "not clearly different from"): "reproduced" when the interval lies on the claimed side of 0, else "not
  reproduced". There is no fixed threshold. Set statistics (FID) and wall-clock times have one number per method,
  no per-image pairing: their direction is read from the sign, and the verdict's ``why`` says so.

Times come from one place: the seconds claims (``source="timings"``) name cases of chapter 08's timing benchmark
(``tdpmlib.studies.timing``) in ``same`` and ``corrected``, never a results table's own seconds.

Looking the claims up in this run's results and assessing them all is ``tdpmlib.studies.claims_audit``; chapter 07's
synthesis is ``tdpmlib.studies.conclusions``. ``value_verdict`` gives one value claim's verdict from a single measurement,
for the chapters that quote a claim beside their own number.
"""

from __future__ import annotations

import math

import pandas as pd

from ..book import comparison
from ..book.comparison import BETTER, UNCLEAR, WORSE
from . import ablations
from .timing import GEN_DDPM, GEN_TDPM

T600_DDPM = "t600_ddpm"  # the timing case of DDPM ancestral sampling from t = 600 (tdpmlib.studies.timing_cases)

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
CONFIGURATION = "configuration"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)
HIGHER, LOWER, EQUAL = "higher than", "lower than", "equal to"  # unpaired directions (FID, seconds): sign only

# How far a value claim's measurement may be from the claimed number.
VALUE_TOL = dict(psnr=1.0, ssim=0.02, fid=5.0, steps=0, seconds=0, frac_copies_fit=0.5)
DIGITS = dict(psnr=2, ssim=3, fid=2, steps=0, seconds=2, frac_copies_fit=2)
# Where a metric lives in the summary tables ("steps" is computed: nfe + dip_iterations; "seconds" is read from
# chapter 08's timing benchmark, source "timings").
COLUMN = dict(psnr="psnr_mean", ssim="ssim_mean", fid="fid", frac_copies_fit="frac_copies_fit")
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
_TIME = "timings"  # chapter 08's timing benchmark: ``same`` / ``corrected`` name its cases (tdpmlib.studies.timing)
SOURCES = (_GEN, _DEN, _T3, _DEN_ROWS, _T3_ROWS, _STUDY_ROWS, _ABL_ROWS, _TIME)
HYBRID = "@hybrid"  # in a selector: the schedule's validated T_trunc > 0 (chapter 06's choices.csv)

_FIELDS = ("table", "claim_id", "setting", "method", "metric", "claimed", "notes", "kind", "tolerance", "source",
           "same", "corrected", "schedule", "t", "t_trunc", "report_dip_iterations", "a", "b", "a_label", "b_label",
           "sel_a", "sel_b", "same_a", "same_b")


def _claim(**kw) -> dict:
    return {f: kw.get(f) for f in _FIELDS}


def _value(table, claim_id, setting, method, metric, claimed, notes, *, source, same, corrected, schedule=None,
           t=None, t_trunc=None, kind="value"):
    # The report fits every DIP for 100 iterations (T_trunc = 10 in TDPM-DIP: 11 network evaluations in the author's
    # code, tdpm.report_level); DDPM rows fit none.
    return _claim(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, claimed=claimed,
                  notes=notes, kind=kind, tolerance=VALUE_TOL[metric], source=source, same=same, corrected=corrected,
                  schedule=schedule, t=t, t_trunc=t_trunc,
                  report_dip_iterations=REPORT_DIP_ITERATIONS if "DIP" in method else 0)


def _direction(table, claim_id, setting, method, metric, a, b, notes, *, a_label, b_label, source=_GEN, sel_a=None,
               sel_b=None, same_a=None, same_b=None):
    return _claim(table=table, claim_id=claim_id, setting=setting, method=method, metric=metric, notes=notes,
                  kind="direction", source=source, a=a, b=b, a_label=a_label, b_label=b_label, sel_a=sel_a,
                  sel_b=sel_b, same_a=same_a, same_b=same_b)


# The author's DIP.ipynb log (github.com/felixchao/Generative-Models-for-Visual-Signals): one 64 px image (mewtwo.png)
# fitted by the 4-level UNet at Adam lr 1e-4 and scored against itself, printed every 10 iterations. Chapter 02 shows it
# beside this book's report-protocol DIP; assets/metrics.png of that repository ends near 31 dB / 0.94.
AUTHOR_DIP_LOG = pd.DataFrame(dict(
    iteration=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90],
    psnr=[7.3476, 16.2844, 20.2795, 22.2643, 23.8780, 25.1156, 26.2484, 27.4810, 28.5952, 29.6060],
    ssim=[0.0136, 0.2397, 0.5504, 0.6590, 0.7454, 0.8020, 0.8438, 0.8771, 0.8982, 0.9172],
    loss=[0.73748, 0.09572, 0.04294, 0.02542, 0.01804, 0.01360, 0.01048, 0.00803, 0.00625, 0.00494]))

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
           "“110 steps” = 100 DIP optimiser iterations + T_trunc = 10; the author's loop runs T_trunc + 1 = 11 "
           "network evaluations",
           source=_GEN, same="tdpm_train", corrected="tdpm_held", kind="configuration"),
    _value("Table 1", "T1-ddpm-seconds", "generation", "DDPM", "seconds", 38.0, "wall clock, hardware not stated",
           source=_TIME, same=GEN_DDPM, corrected=GEN_DDPM),
    _value("Table 1", "T1-tdpm-seconds", "generation", "TDPM-DIP", "seconds", 7.0,
           "wall clock, hardware not stated; fit to training or to held-out images, the same cost",
           source=_TIME, same=GEN_TDPM, corrected=GEN_TDPM),
    _value("Table 1", "T1-tdpm-new", "generation", "TDPM-DIP", "frac_copies_fit", 0.0,
           "implied by scoring it as a generator: its samples are new images, not copies of the images the DIP "
           "was fit to (a copy is nearer a fitted image than half the distance to the nearest unfitted one)",
           source=_GEN, same="tdpm_train", corrected="tdpm_held"),
    _direction("Table 1", "T1-dir-fid", "generation", "TDPM-DIP − DDPM", "fid", "T1-tdpm-fid", "T1-ddpm-fid",
               "TDPM-DIP has the lower FID", a_label="TDPM-DIP", b_label="DDPM"),
    _direction("Table 1", "T1-dir-seconds", "generation", "TDPM-DIP − DDPM", "seconds", "T1-tdpm-seconds",
               "T1-ddpm-seconds", "TDPM-DIP is faster (seconds per image on the same hardware)",
               a_label="TDPM-DIP", b_label="DDPM", source=_TIME),
    # Table 2: denoising at t = 600, linear schedule.
    _value("Table 2", "T2-ddpm-psnr", _SET, "DDPM", "psnr", 13.40, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-ssim", _SET, "DDPM", "ssim", 0.369, "600 reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", **_T600),
    _value("Table 2", "T2-ddpm-steps", _SET, "DDPM", "steps", 600, "reverse steps",
           source=_DEN, same="ddpm", corrected="ddpm", kind="configuration", **_T600),
    _value("Table 2", "T2-ddpm-seconds", _SET, "DDPM", "seconds", 32.0,
           "wall clock, hardware not stated", source=_TIME, same=T600_DDPM, corrected=T600_DDPM, **_T600),
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
            "Table 2", f"T2-dir-tdpm-{_other}-s{_s}", f"σ = {_s} (linear)",
            "TDPM-DIP, one chain − " + ("DDPM ancestral chain" if _other == "ddpm" else "DIP (official)"),
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
# T_trunc in the author's meaning (T_trunc + 1 network evaluations): the report's T_trunc = 0 still takes one step.
for _cid, _a, _b, _note, _fa, _fb in (("5-0", 5, 0, "a few reverse steps improve on one", ablations.FEW, 0.0),
                                      ("50-10", 50, 10, "a large T_trunc hurts", ablations.MANY, ablations.FEW)):
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
    # at matched sigma the DIP sees the same observation under both schedules and does not use the schedule: its
    # difference is 0 by construction, not a measurement, so it gets no claim there
    for _s in ABLATION_SIGMAS if _key != "dip" else ():
        sel = dict(_ABL_KEYS[_key], sigma=_s)
        CLAIMS.append(_direction(
            "Table 4", f"T4-dir-{_key}-s{_s}", f"matched σ: σ = {_s}", f"{_label}: cosine − linear", "psnr",
            f"T4-{_key}-psnr", f"T2-{_key}-psnr",
            "cosine raises every method; at matched σ both schedules see the same observation"
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
# Missing values and numbers
# ------------------------------------------------------------------------------------------------------

def is_missing(x) -> bool:
    """None or NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def as_text(x):
    """A string, or None for a missing value."""
    return None if is_missing(x) or str(x) == "" else str(x)


def as_number(x):
    """A float, or None for a missing value (None, NaN, empty string)."""
    if x is None or (isinstance(x, str) and not x.strip()):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def fmt_number(x, metric, signed=False) -> str:
    """``x`` with the metric's digits (``DIGITS``), with its sign when ``signed``."""
    d = DIGITS.get(metric, 2)
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


# ------------------------------------------------------------------------------------------------------
# Comparability and the verdicts
# ------------------------------------------------------------------------------------------------------

# Why a verdict is what it is: one short phrase per case, the same in every row that has it (chapter 07 explains
# each phrase once, beside the tables; the row itself shows the numbers). Short, so that the tables stay within
# the page's width (``tables.MAX_CHARS``).
WHY_HARDWARE = "hardware not stated"
WHY_BUDGET = "another DIP budget"
WHY_PROFILE = "a smaller setup"
WHY_NO_FID = "no FID in this run"
WHY_FID_SAMPLES = "under 1000 samples"
WHY_FID_REFERENCE = "under 1000 reference images"
WHY_NOT_RUN = "not run in this profile"
WHY_SETTING = "a setting, not a result"
WHY_WITHIN = "within tolerance"
WHY_OUTSIDE = "outside tolerance"
WHY_AS_CLAIMED = "as claimed"
WHY_REVERSED = "reversed"
WHY_UNCLEAR = "interval includes 0"
WHY_SIGN = ", by sign"  # appended to a direction's phrase when it has no pairs (one number per method)
WHYS = (WHY_HARDWARE, WHY_BUDGET, WHY_PROFILE, WHY_NO_FID, WHY_FID_SAMPLES, WHY_FID_REFERENCE, WHY_NOT_RUN,
        WHY_SETTING, WHY_WITHIN, WHY_OUTSIDE, WHY_AS_CLAIMED, WHY_REVERSED, WHY_UNCLEAR)


def comparability(metric: str, *, profile: str, fid_status=None, n=None, n_reference=None, dip_iterations=None,
                  report_dip_iterations=None) -> tuple[bool, str]:
    """Can an absolute measurement of ``metric`` be compared with the report's number? Returns (ok, why not),
    ``why`` one of the ``WHY_*`` phrases ("" when it can).

    Wall-clock seconds never can (the report does not state its hardware). Nothing can when the run fits the
    DIP for another number of iterations than the report. Otherwise counts and fractions (``ALWAYS_COMPARABLE``)
    always can; everything else needs the paper profile (64 px and the report's networks), and FID@1k also
    needs FID to be available, at least 1000 samples and at least 1000 reference images."""
    if metric == "seconds":
        return False, WHY_HARDWARE
    if None not in (dip_iterations, report_dip_iterations) and report_dip_iterations > 0 \
            and dip_iterations != report_dip_iterations:  # 0: the claim's method fits no DIP
        return False, WHY_BUDGET
    if metric in ALWAYS_COMPARABLE:
        return True, ""
    if profile != "paper":
        return False, WHY_PROFILE
    if metric == "fid":
        if as_text(fid_status) is not None and not str(fid_status).startswith("ok"):
            return False, WHY_NO_FID
        if n is not None and n < 1000:
            return False, WHY_FID_SAMPLES
        if n_reference is not None and n_reference < 1000:
            return False, WHY_FID_REFERENCE
    return True, ""


def verdict(claimed: float, measured_corrected, *, tolerance: float, comparable: bool = True,
            why: str = "") -> tuple[str, str]:
    """(verdict, why) of one value claim; ``why`` is a ``WHY_*`` phrase (the numbers stand in the claim's row).

    It rests on the corrected-protocol measurement alone (the report-protocol one is only shown beside it). "not
    comparable" when the measurement is missing (``why`` or "not run") or ``comparable`` is False (``why`` says
    why); "reproduced" when it is within ``tolerance`` of ``claimed``; else "not reproduced"."""
    if is_missing(measured_corrected):
        return NOT_COMPARABLE, why or WHY_NOT_RUN
    if not comparable:
        return NOT_COMPARABLE, why
    if abs(float(measured_corrected) - claimed) <= tolerance:
        return REPRODUCED, WHY_WITHIN
    return NOT_REPRODUCED, WHY_OUTSIDE


def direction_verdict(claimed: float, summary: dict | None, *, paired: bool = True,
                      why: str = "") -> tuple[str, str, str | None]:
    """(verdict, why, outcome) of a direction claim ``a - b`` with the claimed sign of ``claimed``.

    ``summary``: the measured paired summary (``mean_diff``, ``ci_low``, ``ci_high``, ``wins``, ``n``), or for
    ``paired=False`` just ``mean_diff``. With a paired summary the outcome is ``comparison.outcome`` ("better than",
    "worse than", "not clearly different from": a higher or lower score, PSNR here) and the claim is "reproduced"
    when it is the claimed one; otherwise (FID, seconds: lower is the claim) the sign of the difference decides,
    the outcome is "higher than" / "lower than", and ``why`` says that it went by the sign. Missing:
    "not comparable" (``why`` or "not run")."""
    if summary is None or is_missing(summary.get("mean_diff")):
        return NOT_COMPARABLE, why or WHY_NOT_RUN, None
    d = float(summary["mean_diff"])
    if paired:
        want = BETTER if claimed > 0 else WORSE
        out = comparison.outcome(summary)
    else:  # a set statistic or a time: the sign, in words that do not say which way is good
        want = HIGHER if claimed > 0 else LOWER
        out = HIGHER if d > 0 else LOWER if d < 0 else EQUAL
    how = "" if paired else WHY_SIGN
    if out == want:
        return REPRODUCED, WHY_AS_CLAIMED + how, out
    if out in (UNCLEAR, EQUAL):
        return NOT_REPRODUCED, (WHY_UNCLEAR if paired else "no difference" + how), out
    return NOT_REPRODUCED, WHY_REVERSED + how, out


def value_verdict(claim_id: str, measured, *, profile: str, dip_iterations=None) -> tuple[str, str]:
    """(verdict, why) of one value claim from a single measurement, by the rule of ``claims_audit.assess`` (for chapters
    that quote a claim beside their own number, so that they and chapter 07 say the same)."""
    c = next((c for c in CLAIMS if c["claim_id"] == claim_id and c["kind"] == "value"), None)
    if c is None:
        raise ValueError(f"claim_id={claim_id!r} is not a value claim")
    ok, why = comparability(c["metric"], profile=profile, dip_iterations=dip_iterations,
                            report_dip_iterations=c["report_dip_iterations"])
    return verdict(c["claimed"], measured, tolerance=c["tolerance"], comparable=ok, why=why)
