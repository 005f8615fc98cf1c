"""Notebook 06's ablations: the grid per profile, one ablation point, and the per-ablation summaries.

Design: one factor at a time around a *baseline point* -- T_trunc = 10, the linear schedule, the observation
at level t_obs = 600, and the profile's DIP iterations, DIP preset and learning rate (``baseline``). The
factors are T_trunc (crossed with the schedule), the DIP iterations, the DIP architecture (the profile's
preset and its small preset), the DIP learning rate and the noise level (pixel sigma on the 0..255 scale,
mapped to its level t(sigma) with ``schedules.t_for_sigma``, or the baseline's t_obs = 600).

Layout on disk: every point is one papermill run of ``06_ablations.ipynb`` in mode ``"point"``, launched by
the sweep CLI (``tdpmlib.sweep``) into the book's results root, so it lands in
``<results_dir>/<profile>/06_ablations__<axis>-<value>__...__mode-point/results.csv`` beside the other
notebooks' folders, with its config.json. Every point's results.csv repeats the point's *resolved*
parameters in columns, so an ablation's table is simply "the rows whose other factors equal the
baseline's", grouped by the varied factor (``select``): the baseline point, which the T_trunc sweep runs,
serves every ablation, and the other sweeps leave the baseline's value out. The CLI's merged file
``<results_dir>/<profile>/sweeps/06_ablations.csv`` is not read: all ablations share the notebook's stem,
so it only ever holds the last sweep's points. ``collect`` reads the results.csv of exactly the planned
points instead.

The report protocol (TDPM-DIP whose DIP target is built from the clean image, scored against that image:
what the report's Table 3 measured) runs in the T_trunc sweep; the other ablations run the corrected
protocol (TDPM-DIP fit to the observation y, ``tdpm.denoise``) only.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import config, data, metrics, models, pipeline, schedules, sweep, tdpm

STEM = "06_ablations"
ABLATIONS = ("t_trunc", "dip_iterations", "dip_preset", "dip_lr", "sigma")
TITLES = dict(t_trunc="Truncation level T_trunc", dip_iterations="DIP iterations", dip_preset="DIP architecture",
              dip_lr="DIP learning rate", sigma="Noise level")
# The factors that define a point (resolved values, as written to every point's results.csv).
FACTORS = ("t_trunc", "schedule", "dip_iterations", "dip_preset", "dip_lr", "t_obs")
# Which factors each ablation varies; every other factor stays at the baseline.
VARIES = dict(t_trunc=("t_trunc", "schedule"), dip_iterations=("dip_iterations",), dip_preset=("dip_preset",),
              dip_lr=("dip_lr",), sigma=("t_obs",))
# The column an ablation's "value" comes from.
VALUE = dict(t_trunc="t_trunc", dip_iterations="dip_iterations", dip_preset="dip_preset", dip_lr="dip_lr",
             sigma="t_obs")
BASE_T_TRUNC, BASE_SCHEDULE, BASE_T_OBS = 10, "linear", 600
OFFSETS = dict(observation=6000, corrected=6001, report=6002)  # cfg.generator offsets, one per purpose

# The grid per profile: ablation -> list of sweeps, each a dict axis -> values (the notebook's parameter
# names; dip_preset "" = the profile's preset, "small" = its small preset; sigma 0 = the baseline's
# t_obs = 600). Values equal to the baseline's are dropped from every sweep but T_trunc's (see ``plan``).
# "paper" is the book's full grid. "cpu" is cut to fit about 10 min on 2 cores (each point costs a kernel
# start, ~10 s, plus ~0.2 s per DIP iteration for 8 images and ~0.05 s per reverse step): T_trunc = 100 is
# left out on the linear schedule, the cosine schedule runs T_trunc 0, 10, 50 under the corrected protocol
# only, and DIP iterations stop at the profile's dip_iterations_long (500). "smoke" only checks that the
# cells run.
PLANS = {
    "paper": dict(
        t_trunc=[dict(t_trunc=[0, 5, 10, 50, 100, 200], schedule=["linear", "cosine"])],
        dip_iterations=[dict(dip_iterations=[50, 100, 200, 500, 1000])],
        dip_preset=[dict(dip_preset=["", "small"])],
        dip_lr=[dict(dip_lr=[1e-4, 1e-3, 1e-2])],
        sigma=[dict(sigma=[0, 15, 25, 50])],
    ),
    "cpu": dict(
        t_trunc=[dict(t_trunc=[0, 5, 10, 50, 200], schedule=["linear"]),
                 dict(t_trunc=[0, 10, 50], schedule=["cosine"], report_protocol=[False])],
        dip_iterations=[dict(dip_iterations=[50, 100, 200, 500])],
        dip_preset=[dict(dip_preset=["", "small"])],
        dip_lr=[dict(dip_lr=[1e-4, 1e-3, 1e-2])],
        sigma=[dict(sigma=[0, 15, 25, 50])],
    ),
    "smoke": dict(
        t_trunc=[dict(t_trunc=[0, 10], schedule=["linear"])],
        dip_iterations=[dict(dip_iterations=[20])],
        dip_preset=[dict(dip_preset=[""])],
        dip_lr=[dict(dip_lr=[1e-3])],
        sigma=[dict(sigma=[0, 25])],
    ),
}


# --------------------------------------------------------------------------------------------------------
# Parameters of one point
# --------------------------------------------------------------------------------------------------------

def preset_param(profile, dip_preset):
    """The notebook's ``dip_preset`` parameter as a Config value: "" -> None (the profile's preset),
    "small" -> the profile's small preset, a preset name -> itself (Config validates it)."""
    if dip_preset == "":
        return None
    if dip_preset == "small":
        return config.PROFILES.get(profile, {}).get("dip_preset_small", dip_preset)
    return dip_preset


def check_sigma(name, value):
    """Pixel noise sigma on the 0..255 scale; 0 means "use t_obs"."""
    return config.check_float(name, value, low=0, open_low=False, high=256)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; use True or False")
    return value


EXTRA_CHECKS = dict(
    mode=lambda n, v: config.check_choice(n, v, ("report", "point")),
    t_trunc=lambda n, v: config.check_int(n, v, low=0, high=999),
    sigma=check_sigma,
    t_obs=lambda n, v: config.check_int(n, v, low=1, high=1000),
    report_protocol=check_bool,
)


# The point parameters' defaults. In report mode they must keep them: the sweep forwards only the grid's
# values, so any other value would not reach the points.
POINT_DEFAULTS = dict(t_trunc=10, schedule="linear", dip_iterations=None, dip_preset="", dip_lr=None, sigma=0,
                      t_obs=600, report_protocol=True)


def check_report_mode(params: dict) -> None:
    """Raise ValueError if a point parameter differs from its default (report mode)."""
    changed = {k: v for k, v in params.items() if k in POINT_DEFAULTS and v != POINT_DEFAULTS[k]}
    if changed:
        k, v = next(iter(changed.items()))
        raise ValueError(f"{k}={v!r} is not allowed in mode 'report' (the sweeps set the point parameters); "
                         f"leave it at {POINT_DEFAULTS[k]!r} or use mode='point'")


def resolve_level(scheduler, *, sigma: float, t_obs: int) -> int:
    """The observation level of a point: t(sigma) when sigma > 0, else t_obs."""
    return schedules.t_for_sigma(scheduler, sigma) if sigma > 0 else t_obs


def run_point(cfg) -> pd.DataFrame:
    """One ablation point on the first ``cfg.n_denoise`` held-out images; one row per (protocol, image).

    * corrected protocol: y = ``tdpm.observe(clean, t_obs)``; ``tdpm.denoise`` fits the DIP to y rescaled to
      level T_trunc and reverses T_trunc steps; PSNR/SSIM against the clean image;
    * report protocol (``cfg.extra["report_protocol"]``): ``tdpm.tdpm_dip`` builds its DIP target from the
      clean image at level T_trunc, as the report's Table 3 did; PSNR/SSIM against the clean image.

    Seconds are the wall clock of each protocol's call (DIP fit + reverse chain) divided by the images.
    """
    ex = cfg.extra
    train, held = pipeline.load_split(cfg)
    unet, sched, _ = pipeline.train_or_load(cfg, train)
    t_obs = resolve_level(sched, sigma=ex["sigma"], t_obs=ex["t_obs"])
    t_trunc = ex["t_trunc"]
    if t_trunc > t_obs:
        raise ValueError(f"t_trunc={t_trunc!r} is not allowed with an observation at level {t_obs}; use 0..{t_obs}")
    clean = held[: cfg.n_denoise]
    kw = dict(t_trunc=t_trunc, dip_iterations=cfg.dip_iterations, device=cfg.torch_device, preset=cfg.dip_preset,
              lr=cfg.dip_lr, seed=cfg.seed, record_every=max(1, cfg.dip_iterations))
    runs = {}
    y = tdpm.observe(clean, t_obs, sched, generator=cfg.generator(OFFSETS["observation"]))
    with warnings.catch_warnings():  # vmap over the DIP networks loops over CPU attention and says so at every fit
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        runs["corrected"] = tdpm.denoise(unet, sched, y, t_obs, generator=cfg.generator(OFFSETS["corrected"]), **kw)
        if ex["report_protocol"]:
            runs["report"] = tdpm.tdpm_dip(unet, sched, clean, generator=cfg.generator(OFFSETS["report"]), **kw)
    common = dict(t_trunc=t_trunc, schedule=cfg.schedule, dip_iterations=cfg.dip_iterations, dip_preset=cfg.dip_preset,
                  dip_lr=cfg.dip_lr, sigma=ex["sigma"], t_obs=t_obs, sigma255=float(schedules.sigma_at(sched, t_obs)),
                  dip_parameters=models.count_parameters(models.make_unet(cfg.dip_preset, resolution=cfg.resolution)),
                  seed=cfg.seed, data=data.resolve_source(cfg.data_source or None))
    rows = []
    for protocol, res in runs.items():
        psnr = metrics.psnr(res.x0, clean)
        ssim = metrics.ssim(res.x0, clean)
        for i in range(len(clean)):
            rows.append(dict(protocol=protocol, measured_against="clean", image=i, psnr=float(psnr[i]),
                             ssim=float(ssim[i]), seconds=res.seconds / len(clean), nfe=res.network_evaluations,
                             **common))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------
# The plan and the sweeps
# --------------------------------------------------------------------------------------------------------

def baseline(cfg) -> dict:
    """The baseline point's resolved factors."""
    return dict(t_trunc=BASE_T_TRUNC, schedule=BASE_SCHEDULE, dip_iterations=cfg.dip_iterations,
                dip_preset=cfg.dip_preset, dip_lr=cfg.dip_lr, t_obs=BASE_T_OBS)


def _is_baseline(cfg, name, value) -> bool:
    base = dict(dip_iterations=cfg.dip_iterations, dip_lr=cfg.dip_lr, sigma=0)
    if name == "dip_preset":
        return (preset_param(cfg.profile, value) or cfg.dip_preset) == cfg.dip_preset
    if name == "dip_lr":
        return math.isclose(value, cfg.dip_lr, rel_tol=1e-9)
    return name in base and value == base[name]


@dataclass
class Sweep:
    ablation: str
    axes: list  # [(name, values)], in -p order


def plan(cfg) -> list[Sweep]:
    """The sweeps of the profile's grid. Every sweep gets ``mode point``; outside the T_trunc ablation the
    baseline's value is dropped and the report protocol is off; a sweep left with no values is omitted.
    ``seed`` and ``device`` are passed when they differ from the notebook's defaults (the sweep does not
    forward them otherwise)."""
    sweeps = []
    for ablation, grids in PLANS[cfg.profile].items():
        for grid in grids:
            grid = dict(grid)
            if ablation != "t_trunc":
                name = next(iter(grid))
                grid[name] = [v for v in grid[name] if not _is_baseline(cfg, name, v)]
                if not grid[name]:
                    continue
                grid["report_protocol"] = [False]
            axes = [(k, list(v)) for k, v in grid.items()] + [("mode", ["point"])]
            if cfg.seed != 0:
                axes.append(("seed", [cfg.seed]))
            if cfg.device != "auto":
                axes.append(("device", [cfg.device]))
            sweeps.append(Sweep(ablation, axes))
    base_in_t = any(s.ablation == "t_trunc" and BASE_T_TRUNC in dict(s.axes)["t_trunc"]
                    and BASE_SCHEDULE in dict(s.axes)["schedule"] for s in sweeps)
    if not base_in_t:
        raise ValueError(f"the {cfg.profile!r} plan's T_trunc sweep must contain the baseline "
                         f"(T_trunc {BASE_T_TRUNC}, {BASE_SCHEDULE})")
    return sweeps


def full_grid_points() -> int:
    """The number of points of the full (paper-profile) grid."""
    return len(points(plan(config.Config.from_params(profile="paper", notebook=STEM))))


def points(sweeps: list[Sweep]) -> list[sweep.Point]:
    return [p for s in sweeps for p in sweep.build_grid(STEM, s.axes)]


def plan_table(cfg, sweeps: list[Sweep]) -> pd.DataFrame:
    """One row per ablation: the values this profile runs and the full (paper) grid's values."""
    full = {a: [dict(g) for g in gs] for a, gs in PLANS["paper"].items()}
    rows = []
    for ablation in ABLATIONS:
        own = [s for s in sweeps if s.ablation == ablation]
        n = sum(len(sweep.build_grid(STEM, s.axes)) for s in own)
        protocols = ["corrected" if g.get("report_protocol") == [False] or ablation != "t_trunc"
                     else "report + corrected" for g in PLANS[cfg.profile][ablation]]
        rows.append(dict(ablation=TITLES[ablation], values_run=_describe_grids(PLANS[cfg.profile][ablation]),
                         protocols="; ".join(protocols), full_grid=_describe_grids(full[ablation]), points_run=n))
    return pd.DataFrame(rows)


def _describe_grids(grids) -> str:
    parts = []
    for g in grids:
        parts.append(" × ".join(f"{k} ∈ {{{', '.join(_show(k, v) for v in vals)}}}" for k, vals in g.items()
                                if k != "report_protocol"))
    return "; ".join(parts)


def _show(name, v) -> str:
    if name == "dip_preset" and v == "":
        return "default"
    if name == "sigma" and v == 0:
        return f"none (t_obs = {BASE_T_OBS})"
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_argv(notebook, cfg, s: Sweep) -> list[str]:
    argv = [str(notebook)]
    for name, values in s.axes:
        argv += ["-p", name, *(repr(v) if isinstance(v, str) and v == "" else str(v) for v in values)]
    return argv + ["--profile", cfg.profile, "--results-dir", str(Path(cfg.results_dir).resolve())]


@contextlib.contextmanager
def captured_output():
    """Capture Python-level stdout/stderr and file descriptors 1 and 2 (the sweep's kernels write their
    start-up warnings there); yields a function returning the captured text."""
    buf = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stdout.flush(), sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1), os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield lambda: buf.getvalue() + (tmp.seek(0) or tmp.read().decode(errors="replace"))
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_sweeps(notebook, cfg, sweeps: list[Sweep]) -> pd.DataFrame:
    """Run every sweep through ``tdpmlib.sweep.main`` (finished points are skipped), quietly.

    Returns one row per sweep (ablation, points, already done, wall seconds). A failed point raises
    ``RuntimeError`` with the sweep's failure summary."""
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook} not found: report mode runs the notebook's own file through the sweep "
                                f"CLI, so run it from the notebooks/ folder")
    root = Path(cfg.results_dir).resolve()
    rows = []
    for s in sweeps:
        pts = sweep.build_grid(STEM, s.axes)
        before = sum(sweep.has_results(root, cfg.profile, p.run_name) for p in pts)
        t0 = time.perf_counter()
        with captured_output() as captured:
            rc = sweep.main(sweep_argv(notebook, cfg, s))
            text = captured()
        seconds = time.perf_counter() - t0
        if rc != 0:
            tail = text[text.find("summary"):] if "summary" in text else text
            raise RuntimeError(f"the {s.ablation} sweep failed (exit code {rc}):\n{tail.strip()}")
        rows.append(dict(ablation=s.ablation, points=len(pts), done_before=before, ran=len(pts) - before,
                         seconds=seconds))
    return pd.DataFrame(rows)


def collect(cfg, sweeps: list[Sweep]) -> pd.DataFrame:
    """The per-image rows of every planned point (its results.csv), with its run_name.

    Raises ``FileNotFoundError`` for a point without results and ``ValueError`` for a point run with
    another seed or data source (a stale folder from an earlier configuration)."""
    root = Path(cfg.results_dir).resolve()
    frames, missing = [], []
    for p in points(sweeps):
        csv = sweep.run_dir(root, cfg.profile, p.run_name) / "results.csv"
        if not csv.is_file():
            missing.append(p.run_name)
            continue
        frames.append(pd.read_csv(csv, keep_default_na=False, na_values=[""]).assign(run_name=p.run_name))
    if missing:
        raise FileNotFoundError(f"no results for {len(missing)} ablation point(s), e.g. {missing[0]}; "
                                "run the notebook in report mode")
    rows = pd.concat(frames, ignore_index=True)
    want = dict(seed=cfg.seed, data=data.resolve_source(cfg.data_source or None))
    stale = sorted({r for k, v in want.items() for r in rows.loc[rows[k] != v, "run_name"]})
    if stale:
        raise ValueError(f"{len(stale)} ablation point(s) were run with another seed or data source, e.g. "
                         f"{stale[0]}; delete their folders under {root / cfg.profile} or use another results_dir")
    return rows


# --------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------

def _equal(series: pd.Series, value) -> pd.Series:
    if isinstance(value, float):
        return pd.Series(np.isclose(series.astype(float), value, rtol=1e-9, atol=0), index=series.index)
    return series == value


def select(rows: pd.DataFrame, ablation: str, base: dict) -> pd.DataFrame:
    """The rows of one ablation: every factor it does not vary at the baseline's value, with a ``value``
    column (the varied factor) and an ``ablation`` column. Outside the T_trunc ablation only the corrected
    protocol is kept (the report protocol runs only at the baseline point there)."""
    mask = pd.Series(True, index=rows.index)
    for f in FACTORS:
        if f not in VARIES[ablation]:
            mask &= _equal(rows[f], base[f])
    out = rows[mask]
    if ablation != "t_trunc":
        out = out[out["protocol"] == "corrected"]
    out = out.drop_duplicates(subset=[*FACTORS, "protocol", "image"])
    out = out.assign(ablation=ablation, value=out[VALUE[ablation]])
    return out.sort_values([VALUE[ablation], "schedule", "protocol", "image"], kind="stable").reset_index(drop=True)


def summarise(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over images per (ablation, value, schedule, protocol)."""
    out = []
    for (ablation, value, schedule, protocol), g in selected.groupby(
            ["ablation", "value", "schedule", "protocol"], sort=False):
        pm, ps = metrics.mean_std(g["psnr"])
        sm, ss = metrics.mean_std(g["ssim"])
        out.append(dict(ablation=ablation, value=value, schedule=schedule, protocol=protocol, psnr_mean=pm, psnr_std=ps,
                        ssim_mean=sm, ssim_std=ss, n=len(g), seconds_per_image=float(g["seconds"].mean()),
                        nfe=int(g["nfe"].iloc[0]), dip_iterations=int(g["dip_iterations"].iloc[0]),
                        t_obs=int(g["t_obs"].iloc[0]), sigma=float(g["sigma"].iloc[0]),
                        sigma255=float(g["sigma255"].iloc[0]), dip_parameters=int(g["dip_parameters"].iloc[0])))
    return pd.DataFrame(out)


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary of one ablation as strings: mean ± std, n, seconds per image."""
    t = summary.copy()
    if (t["ablation"] == "sigma").all():
        t["value"] = [noise_label(a, b, c) for a, b, c in zip(t["t_obs"], t["sigma"], t["sigma255"])]
    t["PSNR (dB)"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(t["psnr_mean"], t["psnr_std"])]
    t["SSIM"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(t["ssim_mean"], t["ssim_std"])]
    t["s / image"] = [f"{v:.2f}" for v in t["seconds_per_image"]]
    cols = ["value", "schedule", "protocol", "PSNR (dB)", "SSIM", "n", "s / image"]
    return t[cols].rename(columns={"value": TITLES[summary["ablation"].iloc[0]]}).reset_index(drop=True)


def noise_label(t_obs, sigma, sigma255) -> str:
    return f"σ = {sigma:g} (t = {t_obs})" if sigma > 0 else f"t = {t_obs} (σ ≈ {sigma255:.0f})"


# --------------------------------------------------------------------------------------------------------
# One sentence per ablation
# --------------------------------------------------------------------------------------------------------

def _fmt_value(ablation, v) -> str:
    if ablation == "dip_lr":
        return f"{float(v):g}"
    return str(v)


def _extremes(s: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    ordered = s.sort_values("psnr_mean", kind="stable")
    return ordered.iloc[-1], ordered.iloc[0]


def sentence(summary: pd.DataFrame, ablation: str, *, base: dict) -> str:
    """One sentence on an ablation's summary, with its numbers (corrected protocol, linear schedule unless
    the ablation varies it)."""
    name = {"t_trunc": "T_trunc", "dip_iterations": "iterations", "dip_preset": "preset", "dip_lr": "learning rate",
            "sigma": "level"}[ablation]
    s = summary[(summary["ablation"] == ablation) & (summary["protocol"] == "corrected")]
    if ablation == "t_trunc":
        s = s[s["schedule"] == base["schedule"]]
    if len(s) == 0:
        return "This ablation did not run under this profile."
    if len(s) == 1:
        r = s.iloc[0]
        return (f"Only one setting ran under this profile ({name} {_fmt_value(ablation, r['value'])}: "
                f"{r['psnr_mean']:.2f} dB), so there is nothing to compare.")
    hi, lo = _extremes(s)
    if ablation == "sigma":
        first, last = s.sort_values("t_obs").iloc[0], s.sort_values("t_obs").iloc[-1]
        return (f"Under the corrected protocol PSNR goes from {first['psnr_mean']:.2f} dB at the lightest noise "
                f"({noise_label(first['t_obs'], first['sigma'], first['sigma255'])}) to {last['psnr_mean']:.2f} dB "
                f"at the heaviest ({noise_label(last['t_obs'], last['sigma'], last['sigma255'])}).")
    if ablation == "dip_preset":
        return (f"Under the corrected protocol the {hi['value']} DIP ({hi['dip_parameters']:,} parameters) gives "
                f"{hi['psnr_mean']:.2f} dB and the {lo['value']} DIP ({lo['dip_parameters']:,} parameters) "
                f"{lo['psnr_mean']:.2f} dB.")
    text = (f"Under the corrected protocol{' (' + base['schedule'] + ' schedule)' if ablation == 't_trunc' else ''} "
            f"PSNR is highest at {name} {_fmt_value(ablation, hi['value'])} ({hi['psnr_mean']:.2f} ± "
            f"{hi['psnr_std']:.2f} dB) and lowest at {name} {_fmt_value(ablation, lo['value'])} "
            f"({lo['psnr_mean']:.2f} ± {lo['psnr_std']:.2f} dB)")
    if ablation == "t_trunc":
        rep = summary[(summary["ablation"] == ablation) & (summary["protocol"] == "report")
                      & (summary["schedule"] == base["schedule"])]
        if len(rep):
            rhi = rep.sort_values("psnr_mean", kind="stable").iloc[-1]
            text += (f", while the report's protocol (DIP target built from the clean image) peaks at "
                     f"{rhi['psnr_mean']:.2f} dB (T_trunc {rhi['value']})")
    return text + "."
