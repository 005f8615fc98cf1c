"""The report's claims (``tdpmlib.studies.claims``) looked up in this run's results, given their verdicts, and shown.

``measure`` finds the measurement of every claim: for a value claim the summary row under the report's protocol
and under the corrected one; for a direction claim the paired comparison over images of the rows its selectors
pick (``paired_measurement``), or for set statistics and times the difference of the two value measurements.
Times are read from chapter 08's timing benchmark only (``timings``, ``tdpmlib.studies.timing``).
``assess`` adds ``comparable``, ``verdict`` and ``reason`` (a short ``claims.WHY_*`` phrase) by the rules of
``tdpmlib.studies.claims``. The display
helpers (``display_table``, ``counts``, ``schedule_table``, ``claims_html``) turn the assessed table into chapter
07's tables.

Per-image sources: chapter 03's ``denoising.csv`` (t = 600) and ``study_rows.csv`` (sigma), chapter 06's
``table3.csv`` (its t = 600 T_trunc table) and ``rows.csv`` (sigma; ``choices.csv`` names each schedule's
validated T_trunc).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book import comparison
from .claims import (COLUMN, CONFIGURATION, HYBRID, NOT_COMPARABLE, SOURCES, VERDICTS, WHY_NO_FID, WHY_NOT_RUN,
                     WHY_SETTING, as_number, as_text, comparability, direction_verdict, fmt_number, is_missing, verdict)
from .timing import seconds_or_none

_GEN, _DEN, _T3, _DEN_ROWS, _T3_ROWS, _STUDY_ROWS, _ABL_ROWS, _TIME = SOURCES


# ------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------

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
            raise ValueError(f"the {claim['source']} table has no method_key column (see tdpmlib.studies.report_protocol)")
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
        return (as_number(row.get("nfe")) or 0) + (as_number(row.get("dip_iterations")) or 0)
    return as_number(row.get(COLUMN[metric]))


def _resolve(sel: dict, choices: pd.DataFrame | None) -> dict | None:
    """A selector with ``HYBRID`` replaced by the schedule's validated T_trunc > 0 (None when unknown)."""
    if sel.get("method_key") != HYBRID:
        return sel
    if choices is None or len(choices) == 0:
        return None
    c = choices[(choices["ablation"] == "t_trunc (T_trunc > 0)") & _same_value(choices["sigma"], sel["sigma"])
                & (choices["schedule"] == sel["schedule"])]
    return None if c.empty else dict(sel, method_key=c["method_key"].iloc[0])


# Columns that tell apart several rows of one image and setting, and the value a selector that does not name them
# means: chapter 06 reads one state out several ways (``tdpm.READOUTS``), and the report's readout is the ancestral one.
SELECT_DEFAULTS = {"readout": "ancestral"}


def _select(df: pd.DataFrame | None, sel: dict | None) -> pd.DataFrame:
    """The test rows of a per-image table that match a selector (numbers compared as numbers; a column of
    ``SELECT_DEFAULTS`` that the selector does not name takes its default)."""
    if df is None or sel is None or len(df) == 0:
        return pd.DataFrame()
    mask = pd.Series(True, index=df.index)
    if "split" in df.columns:
        mask &= df["split"] == "test"
    for col, val in SELECT_DEFAULTS.items():
        if col in df.columns and col not in sel:
            mask &= df[col] == val
    for col, val in sel.items():
        if col not in df.columns:
            return pd.DataFrame()
        mask &= _same_value(df[col], val)
    return df[mask]


def paired_measurement(df, sel_a, sel_b, *, seed: int = 0) -> dict | None:
    """``comparison.paired`` of the rows selected by ``sel_a`` and ``sel_b`` (None when either is missing) plus the
    ``outcome`` in the book's vocabulary."""
    ra, rb = _select(df, sel_a), _select(df, sel_b)
    if ra.empty or rb.empty:
        return None
    s = comparison.paired(ra, rb, seed=seed)
    return dict(s, outcome=comparison.outcome(s))


def measure(claims: pd.DataFrame, *, generation=None, denoising=None, table3=None, denoising_rows=None,
            table3_rows=None, study_rows=None, ablation_rows=None, choices=None, timings=None,
            seed: int = 0) -> pd.DataFrame:
    """Add the measurements to ``claims_table()``: ``same`` (the report's protocol) and ``corrected`` for every
    claim; for value claims the context of ``comparability`` (``n``, ``n_reference``, ``fid_status``,
    ``dip_iterations``); for direction claims the paired summary of the corrected measurement (``ci_low``,
    ``ci_high``, ``wins``, ``n_pairs``, ``outcome``; ``paired`` False for set statistics and times, read by sign).

    Summary tables: ``generation`` (03 generation.csv), ``denoising`` (03 denoising_summary.csv), ``table3``
    (06 table3_summary.csv). Per-image tables: ``denoising_rows`` (03 denoising.csv), ``table3_rows``
    (06 table3.csv), ``study_rows`` (03 study_rows.csv), ``ablation_rows`` (06 rows.csv) with ``choices``
    (06 choices.csv). Seconds: ``timings`` (08 timings.csv, ``timing.read``), whose cases the seconds claims name.
    A missing table or row gives None."""
    tables = {_GEN: generation, _DEN: denoising, _T3: table3, _DEN_ROWS: denoising_rows, _T3_ROWS: table3_rows,
              _STUDY_ROWS: study_rows, _ABL_ROWS: ablation_rows}
    out = claims.copy()
    cols = {c: [None] * len(out) for c in ("same", "corrected", "n", "n_reference", "fid_status", "dip_iterations",
                                            "ci_low", "ci_high", "wins", "n_pairs", "outcome", "paired")}
    records = out.to_dict("records")
    for i, claim in enumerate(records):
        if claim["kind"] == "direction":
            continue
        if claim["source"] == _TIME:  # one benchmark: the case each protocol names
            cols["same"][i], cols["corrected"][i] = (seconds_or_none(timings, claim[w]) for w in ("same", "corrected"))
            continue
        r_same, r_corr = _row(claim, "same", tables), _row(claim, "corrected", tables)
        cols["same"][i], cols["corrected"][i] = _metric(r_same, claim["metric"]), _metric(r_corr, claim["metric"])
        if r_corr is not None:
            cols["n"][i], cols["n_reference"][i] = as_number(r_corr.get("n")), as_number(r_corr.get("n_reference"))
            cols["dip_iterations"][i] = as_number(r_corr.get("dip_iterations"))
            if claim["metric"] == "fid":
                cols["fid_status"][i] = as_text(r_corr.get("fid_status"))
    ids = {c["claim_id"]: i for i, c in enumerate(records)}
    for i, claim in enumerate(records):
        if claim["kind"] != "direction":
            continue
        if claim["source"] in (_GEN, _TIME):  # one number per method: the difference of the two value measurements
            for col in ("same", "corrected"):
                a, b = cols[col][ids[claim["a"]]], cols[col][ids[claim["b"]]]
                cols[col][i] = None if is_missing(a) or is_missing(b) else a - b
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
# The verdicts
# ------------------------------------------------------------------------------------------------------

def assess(measured: pd.DataFrame, *, profile: str) -> pd.DataFrame:
    """Add ``comparable``, ``verdict`` and ``reason`` (and for directions ``outcome``) to ``measure``'s output."""
    out = measured.copy()
    by_id = out.set_index("claim_id")
    comp, verdicts, reasons, outcomes = [], [], [], []
    for claim in out.to_dict("records"):
        if claim["kind"] == "configuration":
            comp.append(True), outcomes.append(None), verdicts.append(CONFIGURATION), reasons.append(WHY_SETTING)
            continue
        if claim["kind"] == "value":
            status = as_text(claim["fid_status"])
            ok, why = comparability(claim["metric"], profile=profile, fid_status=status, n=as_number(claim["n"]),
                                    n_reference=as_number(claim["n_reference"]), dip_iterations=as_number(claim["dip_iterations"]),
                                    report_dip_iterations=as_number(claim["report_dip_iterations"]))
            if is_missing(claim["corrected"]):
                ok, why = False, WHY_NO_FID if status and not status.startswith("ok") else WHY_NOT_RUN
            v, reason = verdict(claim["claimed"], claim["corrected"], tolerance=claim["tolerance"], comparable=ok, why=why)
            comp.append(ok), verdicts.append(v), reasons.append(reason), outcomes.append(None)
            continue
        statuses = [as_text(by_id.at[k, "fid_status"]) for k in (claim["a"], claim["b"]) if as_text(by_id.at[k, "fid_status"])]
        why = WHY_NO_FID if statuses and not statuses[0].startswith("ok") else WHY_NOT_RUN
        summary = None if is_missing(claim["corrected"]) else dict(
            mean_diff=claim["corrected"], ci_low=claim["ci_low"], ci_high=claim["ci_high"], wins=claim["wins"],
            n=claim["n_pairs"])
        v, reason, o = direction_verdict(claim["claimed"], summary, paired=bool(claim["paired"]), why=why)
        comp.append(v != NOT_COMPARABLE), verdicts.append(v), reasons.append(reason), outcomes.append(o)
    out["comparable"], out["verdict"], out["reason"], out["outcome"] = comp, verdicts, reasons, outcomes
    return out


# ------------------------------------------------------------------------------------------------------
# Tables and sentences on the claims
# ------------------------------------------------------------------------------------------------------

def _cell(c: dict, col: str) -> str:
    x = c[col]
    if is_missing(x):
        return "—"
    signed = c["kind"] == "direction"
    text = fmt_number(float(x), c["metric"], signed)
    if col == "corrected" and signed and c.get("paired") and not is_missing(c.get("ci_low")):
        text += f" [{fmt_number(c['ci_low'], c['metric'], True)}, {fmt_number(c['ci_high'], c['metric'], True)}]"
        text += f", {int(c['wins'])}/{int(c['n_pairs'])}"
    return text


def display_table(assessed: pd.DataFrame) -> pd.DataFrame:
    """The assessed claims with numbers formatted per metric, for display (directions: mean paired difference,
    its 95% interval and the wins, "+1.51 [+1.33, +1.68], 20/20")."""
    rows = []
    for c in assessed.to_dict("records"):
        rows.append({"table": c["table"], "claim": c["claim_id"], "method": c["method"], "setting": c["setting"],
                     "metric": c["metric"] + (" (difference)" if c["kind"] == "direction" else ""),
                     "claimed": _cell(c, "claimed"), "report's protocol": _cell(c, "same"),
                     "corrected protocol": _cell(c, "corrected"), "verdict": c["verdict"], "reason": c["reason"]})
    return pd.DataFrame(rows)


METRIC_NAMES = {"fid": "FID", "psnr": "PSNR (dB)", "ssim": "SSIM", "frac_copies_fit": "copies of the fitted images",
                "seconds": "seconds", "steps": "steps"}


def claims_html(assessed: pd.DataFrame, table: str, *, source=None, command: str | None = None) -> str:
    """One of the report's tables as the book shows it: a numbered row per claim (method, setting, metric, the
    claimed value, both protocols' measurements, and the verdict with its short reason in brackets)."""
    from ..book import tables

    t = display_table(assessed[assessed["table"] == table]).reset_index(drop=True)
    t.insert(0, "#", range(1, len(t) + 1))
    t["metric"] = [("Δ " if m.endswith(" (difference)") else "") + METRIC_NAMES.get(m.removesuffix(" (difference)"), m)
                   for m in t["metric"]]
    t["verdict"] = t["verdict"] + " (" + t["reason"] + ")"  # one column: a table of nine would not fit the page
    return tables.html_table(t.drop(columns=["table", "claim", "reason"]), source=source, command=command,
                             columns={"#": "#", "method": "Method", "setting": "Setting", "metric": "Metric",
                                      "claimed": "Claimed", "report's protocol": "Report's protocol",
                                      "corrected protocol": "Corrected protocol", "verdict": "Verdict (why)"})


def counts(assessed: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per table (rows) and verdict (columns), with a total row; configuration entries apart."""
    cols = list(VERDICTS) + [CONFIGURATION]
    t = pd.crosstab(assessed["table"], assessed["verdict"]).reindex(columns=cols, fill_value=0)
    t.loc["all"] = t.sum()
    return t


def schedule_table(assessed: pd.DataFrame) -> pd.DataFrame:
    """The schedule claims (Table 4's directions) side by side: matched t against matched sigma, per method."""
    d = assessed[(assessed["table"] == "Table 4") & (assessed["kind"] == "direction")]
    rows = []
    for c in d.to_dict("records"):
        rows.append({"method": c["method"].split(":")[0], "setting": c["setting"],
                     "cosine − linear (dB) [95% CI]": _cell(c, "corrected"),
                     "wins": "—" if is_missing(c["wins"]) else f"{int(c['wins'])} of {int(c['n_pairs'])}",
                     "cosine against linear": c["outcome"] or "—", "verdict": c["verdict"]})
    return pd.DataFrame(rows)


