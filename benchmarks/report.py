"""The benchmark table: printing, writing bench.csv / bench.json, and loading them back (notebook 08)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tdpmlib.book.tables import typeset
from tdpmlib.workflow import results

from . import CASES, COLUMNS
from .common import fmt_mb

# The targets (and the report's claim), in display order: id -> (what, target, value column, best).
TARGETS = {
    "dip_cpu": ("DIP fitting: batched vs fastest loop, dip-cpu @32 px, B=16, 100 it. (2 CPU cores)", ">= 3x",
                "ratio", "max"),
    "dip_gpu": ("DIP fitting: batched vs fastest loop, dip-paper @64 px, B=64, 100 it. (H200)", ">= 20x",
                "ratio", "max"),
    "sampling_gpu_1000x1000": ("DDPM sampling: 1000 images x 1000 ancestral steps, ddpm-paper @64 px (H200)",
                               "<= 90 s", "seconds", "min"),
    "sampling_gpu_speedup": ("DDPM sampling: fast path vs fp32 eager, ddpm-paper @64 px, batch 500 (H200)", ">= 3x",
                             "ratio", "max"),
    "mem_training_b32": ("Memory: the report's training configuration (batch 32) fits on the GPU",
                         "peak <= GPU memory", "peak_mem_mb", "max"),
    "mem_sampling_b500": ("Memory: sampling at batch 500 fits on the GPU", "peak <= GPU memory", "peak_mem_mb",
                          "max"),
}


# --- printing -----------------------------------------------------------------------------------------------

def _num(v, fmt="{:.3g}") -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "" if math.isnan(v) else fmt.format(v)


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: one formatted string per cell."""
    out = pd.DataFrame({
        "case": df["case"],
        "row": df["row"].map(typeset),
        "variant": df["variant"].fillna("").map(typeset),
        "status": df["status"],
        "throughput": [f"{_num(t)} {u}" if _num(t) else "" for t, u in zip(df["throughput"], df["unit"])],
        "seconds": [f"{_num(s)} s / {p}" if _num(s) else "" for s, p in zip(df["seconds"], df["seconds_per"])],
        "peak memory": [fmt_mb(float(m)) if str(st) == "measured" and str(how) not in ("", "nan") else ""
                        for m, st, how in zip(df["peak_mem_mb"], df["status"], df["mem_method"])],
        "ratio": [f"{_num(r, '{:.2f}')}×" if _num(r) else "" for r in df["ratio"]],
        "target": df["target"].fillna("").map(typeset),
        "met": [{True: "yes", False: "no"}.get(_bool(m), "") for m in df["target_met"]],
        "MFU": [f"{float(m):.1%}" if _num(m) else "" for m in df["mfu"]],
        "extrapolation": df["extrapolation"].fillna(""),
    })
    return out


def _bool(v):
    if isinstance(v, bool):
        return v
    if str(v) in ("True", "true", "1"):
        return True
    if str(v) in ("False", "false", "0"):
        return False
    return None


def format_table(df: pd.DataFrame) -> str:
    """A plain-text table, one block per benchmark row label, notes underneath."""
    shown = display_frame(df)
    lines = []
    for label, idx in shown.groupby("row", sort=False).groups.items():
        block = shown.loc[idx].drop(columns=["case", "row"])
        block = block.loc[:, [c for c in block.columns if (block[c].astype(str) != "").any()]]
        lines.append(f"== [{df.loc[idx[0], 'case']}] {label}")
        lines.append(block.to_string(index=False))
        for i in idx:
            if str(df.loc[i, "note"]).strip() not in ("", "nan"):
                lines.append(f"   note ({df.loc[i, 'variant'] or 'row'}): {df.loc[i, 'note']}")
        lines.append("")
    return "\n".join(lines)


# --- files --------------------------------------------------------------------------------------------------

def run_dir(out_root, slug: str, quick: bool) -> Path:
    return Path(out_root) / (slug + ("-quick" if quick else ""))


def write(out_root, slug: str, quick: bool, rows: list[dict], meta: dict, cases_run: list[str]) -> Path:
    """Write bench.csv and bench.json atomically. A run of some cases replaces only those cases' rows of an
    earlier run on the same hardware (bench.json keeps when and at which commit each case was measured)."""
    d = run_dir(out_root, slug, quick)
    new = pd.DataFrame(rows, columns=COLUMNS)
    old_meta = {}
    if (d / "bench.csv").exists() and (d / "bench.json").exists() and set(cases_run) != set(CASES):
        old = pd.read_csv(d / "bench.csv")
        old_meta = results.read_json(d / "bench.json")
        drop = set(cases_run) | ({"peak"} if (new["case"] == "peak").any() else set())
        kept = old[~old["case"].isin(drop)]
        new = pd.concat([kept.reindex(columns=COLUMNS), new], ignore_index=True)
        order = {c: i for i, c in enumerate(["peak", *CASES])}
        new = new.sort_values("case", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    case_runs = dict(old_meta.get("case_runs", {}))
    for c in cases_run:
        case_runs[c] = dict(date=meta["date"], git_commit=meta["git_commit"], torch=meta["torch"],
                            threads=meta.get("threads"), loadavg_start=meta.get("loadavg_start"))
    if "peak" not in meta and "peak" in old_meta:  # a run without sampling/training keeps the measured peak
        meta = dict(meta, peak=old_meta["peak"])
    meta = dict(meta, case_runs=case_runs, columns=COLUMNS)
    results.write_csv(d / "bench.csv", new)
    results.write_json(d / "bench.json", meta)
    return d


def load_runs(root) -> list[dict]:
    """Every benchmark run under ``root`` (``<root>/<slug>/bench.csv`` + ``bench.json``), newest first.

    A quick run is left out when a full run on the same hardware exists; rows of cases the suite no longer has (the
    retired end-to-end case, whose per-image costs chapter 08's timing benchmark now measures) are left out of its
    table. Each entry: slug, quick, meta, table.
    """
    root = Path(root)
    found = []
    for csv in sorted(root.glob("*/bench.csv")):
        js = csv.with_name("bench.json")
        if not js.exists():
            continue
        meta = results.read_json(js)
        table = pd.read_csv(csv, keep_default_na=True)
        found.append(dict(slug=csv.parent.name, quick=bool(meta.get("quick")), meta=meta,
                          table=table[table["case"].isin(["peak", *CASES])].reset_index(drop=True)))
    full = {r["slug"] for r in found if not r["quick"]}
    runs = [r for r in found if not (r["quick"] and r["slug"].removesuffix("-quick") in full)]
    return sorted(runs, key=lambda r: r["meta"].get("date", ""), reverse=True)


def runs_table(runs: list[dict]) -> pd.DataFrame:
    """One line per run: where it was measured, with what, when."""
    cols = ["hardware", "device", "torch threads", "kind", "date", "git commit", "torch", "peak (measured)"]
    rows = []
    for r in runs:
        m = r["meta"]
        peak = m.get("peak") or {}
        rows.append({"hardware": m.get("hardware_name", r["slug"]), "device": m.get("device", ""),
                     "torch threads": m.get("threads", ""),
                     "kind": "quick (smoke settings, not a measurement of the targets)" if r["quick"] else "full",
                     "date": m.get("date", ""), "git commit": m.get("git_commit", ""), "torch": m.get("torch", ""),
                     "peak (measured)": (f"{peak['flops_per_s'] / 1e12:.2f} TFLOP/s {peak['dtype']} matmul"
                                         if peak else "")})
    return pd.DataFrame(rows, columns=cols)


def targets_table(runs: list[dict]) -> pd.DataFrame:
    """One line per target and hardware that measured it; "not measured" where no full run did (never estimated)."""
    rows = []
    for tid, (what, target, col, best) in TARGETS.items():
        hits = []
        for r in runs:
            if r["quick"]:
                continue
            t = r["table"]
            sel = t[(t["target_id"] == tid) & (t["status"] == "measured")]
            if len(sel):
                pick = sel.loc[sel[col].idxmax() if best == "max" else sel[col].idxmin()]
                hits.append((r, pick))
        if not hits:
            rows.append(dict(id=tid, what=typeset(what), target=typeset(target), hardware="", value="not measured", met="",
                             extrapolated=""))
        for r, pick in hits:
            v = float(pick[col])
            value = (f"{v:.2f}×" if col == "ratio" else f"{v:.1f} s" if col == "seconds" else fmt_mb(v))
            rows.append(dict(id=tid, what=typeset(what), target=typeset(target), hardware=r["meta"].get("hardware_name", r["slug"]),
                             value=value, met={True: "yes", False: "no"}.get(_bool(pick["target_met"]), ""),
                             extrapolated=pick["extrapolation"] if isinstance(pick["extrapolation"], str) else ""))
    return pd.DataFrame(rows, columns=["id", "what", "target", "hardware", "value", "met", "extrapolated"])


def speedups(runs: list[dict]) -> pd.DataFrame:
    """Rows with a measured ratio other than the baselines', for the bar chart (with their target, if any)."""
    out = []
    for r in runs:
        t = r["table"]
        sel = t[(t["status"] == "measured") & t["ratio"].notna() & (t["variant"] != t["baseline"])
                & ~t["variant"].astype(str).str.startswith("loop")]
        for _, row in sel.iterrows():
            out.append(dict(hardware=r["meta"].get("hardware_name", r["slug"]) + (" (quick)" if r["quick"] else ""),
                            case=row["case"], label=f"{row['case']}: {row['variant']}\n{row['row']}",
                            ratio=float(row["ratio"]), target=float(row["target_value"])
                            if str(row["target"]).startswith(">=") else float("nan")))
    return pd.DataFrame(out, columns=["hardware", "case", "label", "ratio", "target"])


# --- notebook 08 helpers ------------------------------------------------------------------------------------

def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; use True or False")
    return value


def check_dir(name: str, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not allowed; use a folder path string ('' = the default)")
    return value


def target_hit(runs: list[dict], tid: str) -> dict | None:
    """The newest full run's measurement of a target: value (formatted), met (True/False), hardware; or None."""
    table = targets_table(runs)
    sel = table[(table["id"] == tid) & (table["hardware"] != "")]
    if not len(sel):
        return None
    row = sel.iloc[0]
    return dict(value=row["value"], met=row["met"] == "yes", hardware=row["hardware"],
                extrapolated=row["extrapolated"])


FIG_FONT = 11  # pt; the figure is shown about 1:1 in the book's text column, so this is its smallest text
LABEL_WIDTH = 40  # characters per line of a bar's label, so that the labels leave the bars half the width


def _bar_label(label: str) -> str:
    """A bar's label wrapped to ``LABEL_WIDTH`` characters per line (each given line wrapped on its own)."""
    import textwrap

    return "\n".join(textwrap.fill(line, LABEL_WIDTH, break_on_hyphens=False) for line in label.split("\n"))


def speedup_figure(runs: list[dict]):
    """Horizontal bars: each measured speed-up against its baseline, one panel per run, targets as red ticks.

    Every text is at least ``FIG_FONT`` points; the log x axis labels only its major ticks (1×, 2×, 5×, 10×, ...),
    so that no tick label runs into another."""
    import matplotlib
    import matplotlib.pyplot as plt

    data = speedups(runs)
    groups = list(dict.fromkeys(data["hardware"])) or ["no measurements"]
    labels = [_bar_label(lab) for lab in data["label"]]
    lines = [max(1, sum(lab.count("\n") + 1 for lab, h in zip(labels, data["hardware"]) if h == g)) for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8.2, 0.24 * sum(lines) + 1.4 * len(groups)),
                             gridspec_kw=dict(height_ratios=lines), squeeze=False)
    for ax, g in zip(axes[:, 0], groups):
        sel = (data["hardware"] == g).to_numpy()
        d = data[sel].reset_index(drop=True)
        ax.barh(range(len(d)), d["ratio"] - 1, left=1, color="C0")
        for i, (ratio, target) in enumerate(zip(d["ratio"], d["target"])):
            ax.text(ratio, i, f" {ratio:.2f}×", va="center", fontsize=FIG_FONT, clip_on=True)
            if target == target:
                ax.plot([target, target], [i - 0.45, i + 0.45], color="C3", lw=2.5,
                        label="target" if i == d["target"].first_valid_index() else None)
        ax.axvline(1.0, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="both", labelsize=FIG_FONT)
        ax.set_yticks(range(len(d)), [lab for lab, s in zip(labels, sel) if s])
        ax.invert_yaxis()
        ax.set_title(g, fontsize=FIG_FONT + 1)
        ax.set_xlabel("speed-up over the baseline of the same run (log scale)", fontsize=FIG_FONT)
        ax.set_xlim(left=min(0.8, float(d["ratio"].min()) * 0.9) if len(d) else None,
                    right=max(2.5, float(d["ratio"].max()) * 2.0) if len(d) else None)  # room for the values
        if d["target"].notna().any():
            ax.legend(loc="lower right", fontsize=FIG_FONT)
        if not len(d):
            ax.text(0.5, 0.5, "no measurements", ha="center", transform=ax.transAxes, fontsize=FIG_FONT)
    fig.tight_layout()
    return fig


