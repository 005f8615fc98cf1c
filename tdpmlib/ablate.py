"""Chapter 06's ablations of the denoising study, at realistic noise levels (sigma = 25 and 50 by default).

Every ablation keeps the protocol of ``tdpmlib.study`` (chapter 03): the same validation / test images
(``study.split_eval``), the same observation of each image at each sigma (``study.observe``: y at the level
t(sigma) of the study's schedule, so y / sqrt(abar) = x_0 + noise of variance ``v_obs``), choices made on the
validation images, scores on the test images, and every comparison paired over the test images
(``stats.paired``: mean difference, 95% bootstrap interval, wins), read in one vocabulary (``outcome``).

The DIP is the study's validated official-protocol DIP: ``official_fit`` calls ``study.fit_budgets`` with the
study's own arguments, so it loads chapter 03's cached fit (``results/<profile>/cache``) instead of fitting
again; its budget k is the one with the best mean validation PSNR (``validated_budget``, as in the study).

The ablations
-------------
* ``t_trunc``: the matched TDPM-DIP (``matched_state``: the DIP output at budget k topped up with fresh noise to
  the level T_trunc expects, then T_trunc ancestral steps) at T_trunc = f * t(sigma) for the plan's fractions f;
  T_trunc = 0 is the DIP alone. Run for both schedules, each at its own t(sigma) (``schedule_level``).
* ``schedule``: linear against cosine at matched sigma. Both schedules get the *same* observation (the
  study's), handed to each DDPM at the level of its own schedule whose noise is nearest (``schedule_level``;
  the remaining mismatch, a grid effect under 1% at sigma >= 15, is reported). The DIP does not use a schedule,
  so at matched sigma it is the same fit under both; the DDPM alone (posterior mean, ancestral from t) and the
  matched TDPM-DIP (at each schedule's validated T_trunc) change.
* ``chains``: the mean of K matched TDPM-DIP chains, each from its own topped-up state, at the validated
  T_trunc of the study's schedule.
* ``dip_iterations``: the DIP's output at every candidate budget, from the same fit (no extra cost).
* ``dip_lr``: the official DIP refit at its learning rate times the plan's factors, budget validated per rate
  (a new fit per rate: the cpu plan leaves it out).
* ``report_table3``: the report's own ablation at t = 600, kept only for chapter 07's claims: the report's
  protocol (``tdpm.tdpm_dip``, DIP target built from the clean image) and the matched TDPM-DIP on the
  observation, at the report's T_trunc values, with the report's plain DIP at its 100 iterations.

Rows (``ROW_COLUMNS``) are per image; ``split`` is "val" or "test". ``value`` is the varied factor.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import config, ddpm, dip, metrics, schedules, stats, study, tdpm

STEM = "06_ablations"
ABLATIONS = ("t_trunc", "schedule", "chains", "dip_iterations", "dip_lr")
ROW_COLUMNS = ("ablation", "sigma", "schedule", "t", "method_key", "method", "value", "split", "image", "psnr",
               "ssim", "seconds", "nfe", "dip_iterations", "noise_ratio")
# One vocabulary for a paired comparison, shared with chapter 03 and chapter 07 (``outcome``).
WORDS = dict(better="better than", unclear="not clearly different from", worse="worse than")

# The grid per profile (the notebook's parameters, None: these). fractions: T_trunc / t(sigma), 0 = the DIP
# alone; chains: numbers of chains K; lr_factors: multiples of the official DIP's learning rate (a new DIP fit
# each, so the cpu plan has none); report_t_truncs: the report's Table 3. The cpu plan is sized for about
# 10 min on 2 cores once chapter 03's DIP fits are cached: the reverse chains dominate (T_trunc up to t/2 under
# both schedules on the validation and test images, the DDPM alone from t(sigma) under both schedules on the
# test images), then the five DIP fits of the t = 600 section.
PLANS = {
    "smoke": dict(sigmas="25,50", fractions="0,0.125,0.5", chains="1,2", lr_factors="0.5", lr_sigmas="25",
                  report_t_truncs="0,5,10,50"),
    "cpu": dict(sigmas="25,50", fractions="0,0.0625,0.125,0.25,0.5", chains="1,2,4", lr_factors="",
                lr_sigmas="25", report_t_truncs="0,5,10,50"),
    "paper": dict(sigmas="25,50", fractions="0,0.0625,0.125,0.25,0.5,1", chains="1,2,4,8", lr_factors="0.3,3",
                  lr_sigmas="25,50", report_t_truncs="0,5,10,50"),
}
# The T_trunc fractions that chapter 07's Table 3 claims read at realistic sigma ("a few" steps, "many").
FEW, MANY = 0.125, 0.5
REPORT_T = 600  # the report's observation level (its Tables 2-4)


# --------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------

EXAMPLES = dict(sigmas="25,50", fractions="0,0.125,0.5", chains="1,2,4", lr_factors="0.3,3", lr_sigmas="25",
                report_t_truncs="0,5,10,50")


def _numbers(name, value, *, cast, low, high, allow_empty=False):
    allowed = (f"use comma-separated numbers in [{low:g}, {high:g}], e.g. \"{EXAMPLES.get(name, '1,2')}\""
               + (' (or "" for none)' if allow_empty else ""))
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}")
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        out = tuple(sorted({cast(p) for p in parts}))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}") from None
    if (not out and not allow_empty) or any(not (low <= v <= high) or not math.isfinite(v) for v in out):
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}")
    return out


def _int(text):
    v = float(text)
    if v != int(v):
        raise ValueError(text)
    return int(v)


CHECKS = dict(
    sigmas=lambda n, v: _numbers(n, v, cast=_int, low=1, high=255),
    fractions=lambda n, v: tuple(sorted({0.0, *_numbers(n, v, cast=float, low=0, high=1)})),
    chains=lambda n, v: tuple(sorted({1, *_numbers(n, v, cast=_int, low=1, high=64)})),
    lr_factors=lambda n, v: tuple(f for f in _numbers(n, v, cast=float, low=1e-3, high=1e3, allow_empty=True)
                                  if f != 1.0),
    lr_sigmas=lambda n, v: _numbers(n, v, cast=_int, low=1, high=255),
    report_t_truncs=lambda n, v: _numbers(n, v, cast=_int, low=0, high=REPORT_T),
)


def settings(profile: str, **params) -> dict:
    """The ablation grid: each parameter given (not None) is checked, the others come from ``PLANS[profile]``.
    Raises ValueError naming a bad parameter (e.g. ``fractions="0,2"``); 0 is always among the fractions and
    1 among the chains; an ``lr_sigmas`` given outside ``sigmas`` is refused (the plan's are cut to ``sigmas``)."""
    config.check_choice("profile", profile, list(PLANS))
    unknown = set(params) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown ablation parameter(s) {sorted(unknown)}; allowed: {sorted(CHECKS)}")
    out = {}
    for name, check in CHECKS.items():
        value = params.get(name)
        out[name] = check(name, PLANS[profile][name] if value is None else value)
    if params.get("lr_sigmas") is None:  # the plan's levels that this run has (else its first)
        out["lr_sigmas"] = tuple(s for s in out["lr_sigmas"] if s in out["sigmas"]) or out["sigmas"][:1]
    elif set(out["lr_sigmas"]) - set(out["sigmas"]):
        raise ValueError(f"lr_sigmas={params['lr_sigmas']!r} is not allowed; use levels among sigmas={out['sigmas']}")
    return out


def check_optional_list(name, value):
    """A notebook parameter that is None (the profile's plan) or a comma-separated string."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not allowed; use None (the profile's plan) or a comma-separated string")
    return value


EXTRA_CHECKS = {name: check_optional_list for name in CHECKS}


# --------------------------------------------------------------------------------------------------------
# The observation, the DIP fit, the matched state
# --------------------------------------------------------------------------------------------------------

def generator(seed: int, *parts) -> torch.Generator:
    """A CPU generator seeded from the run's seed and a purpose (any reprs), without collisions in practice."""
    h = int(hashlib.sha256(repr((seed, *parts)).encode()).hexdigest()[:15], 16)
    return torch.Generator().manual_seed(h)


@dataclass
class Observed:
    """The study's observation at one sigma, of the validation images followed by the test images."""

    sigma: int
    clean: torch.Tensor
    n_val: int
    y_scaled: torch.Tensor   # y / sqrt(abar_t) = x_0 + noise of variance v_obs
    t: int                   # the level of the observation under the study's schedule
    v_obs: float

    @property
    def split(self) -> list[str]:
        return ["val"] * self.n_val + ["test"] * (len(self.clean) - self.n_val)

    @property
    def test(self) -> slice:
        return slice(self.n_val, len(self.clean))


def observe(val: torch.Tensor, test: torch.Tensor, sigma: int, scheduler, *, seed: int) -> Observed:
    """The study's observation (``study.observe``) of the validation and test images at ``sigma``."""
    clean = torch.cat([val, test])
    y, t = study.observe(clean, sigma, scheduler, seed=seed)
    ab = float(schedules.alpha_bar(scheduler, t))
    return Observed(sigma=sigma, clean=clean, n_val=len(val), y_scaled=(y / ab ** 0.5).float(), t=t,
                    v_obs=schedules.noise_var(scheduler, t))


def official_fit(obs: Observed, *, budgets, seed: int, device, preset: str, lr: float | None = None, cache_dir=None):
    """The official-protocol DIP fit of ``study.fit_budgets``, with the study's arguments (so chapter 03's cached
    fit is loaded when it exists; ``lr`` None is the study's own)."""
    return study.fit_budgets(obs.y_scaled, obs.clean, protocol="official", budgets=budgets, seed=seed, sigma=obs.sigma,
                             device=device, preset=preset, lr=lr, cache_dir=cache_dir)


def validated_budget(fit: dict, obs: Observed) -> tuple[int, pd.Series]:
    """(k, mean validation PSNR per budget): the budget with the best mean validation PSNR (ties: the smaller)."""
    val = obs.clean[: obs.n_val]
    means = pd.Series({k: float(metrics.psnr(fit["outputs"][k][: obs.n_val], val).mean()) for k in sorted(fit["outputs"])})
    return int(means.idxmax()), means


def schedule_level(scheduler, v_obs: float) -> tuple[int, float]:
    """(t, ratio): the level of ``scheduler`` whose noise is nearest an observation of noise variance ``v_obs``
    (x0 units), and the observation's noise std over that level's (1 = exact)."""
    t = schedules.t_for_sigma(scheduler, 127.5 * math.sqrt(v_obs))
    return t, math.sqrt(v_obs / schedules.noise_var(scheduler, t))


def matched_state(x_hat: torch.Tensor, y_scaled: torch.Tensor, v_obs: float, t_trunc: int, scheduler, *,
                  generator: torch.Generator) -> torch.Tensor:
    """``tdpm.matched_state`` for an observation given in x0 units (y_scaled, noise variance v_obs), so that a
    schedule other than the observation's can take it: sqrt(abar_T) (x_hat + sqrt(max(0, v_T - e_hat)) n),
    e_hat = ``tdpm.estimated_error_var``. T_trunc = 0 returns x_hat."""
    tdpm.check_t_trunc(t_trunc, scheduler)
    if t_trunc == 0:
        return x_hat
    x_hat = x_hat.float().cpu()
    e_hat = tdpm.estimated_error_var(x_hat, y_scaled.float().cpu(), v_obs)
    v_t, ab_t = schedules.noise_var(scheduler, t_trunc), float(schedules.alpha_bar(scheduler, t_trunc))
    top_up = (v_t - e_hat).clamp_min(0).sqrt().view(-1, 1, 1, 1)
    return (ab_t ** 0.5 * (x_hat + top_up * torch.randn(x_hat.shape, generator=generator))).float()


def levels(t: int, fractions) -> dict[int, float]:
    """T_trunc level -> fraction of t: 0 for the fraction 0, else round(f * t) (at least 1); the first fraction
    that lands on a level keeps it."""
    out = {}
    for f in sorted(fractions):
        level = 0 if f == 0 else max(1, round(f * t))
        out.setdefault(level, f)
    return out


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------

def _rows(x: torch.Tensor, obs: Observed, images: slice, **common) -> list[dict]:
    clean = obs.clean[images]
    split = obs.split[images]
    p, s = metrics.psnr(x, clean), metrics.ssim_or_nan(x, clean)
    ratio = common.pop("ratio", None)
    return [dict(common, split=split[i], image=i + (images.start or 0), psnr=float(p[i]), ssim=float(s[i]),
                 noise_ratio=float("nan") if ratio is None else float(ratio[i])) for i in range(len(clean))]


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(ROW_COLUMNS))


def _timed(device, fn):
    with metrics.CudaTimer(device) as tm:
        out = fn()
    return out, tm.seconds


def dip_seconds(fit: dict, k: int) -> float:
    """Seconds per image of the DIP fit up to budget k (k / K of the whole fit's measured time)."""
    return fit["seconds"] * k / fit["iterations"]


def t_trunc_rows(unet, scheduler, schedule: str, obs: Observed, fit: dict, k: int, fractions, *, seed: int,
                 device) -> pd.DataFrame:
    """The ``t_trunc`` ablation for one schedule on the validation and test images: the matched TDPM-DIP from the
    DIP output at budget k, at each level of ``levels(t_s, fractions)`` with t_s the schedule's own t(sigma)."""
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    x_hat = fit["outputs"][k]
    rows = []
    for level, frac in levels(t_s, fractions).items():
        g = generator(seed, "t_trunc", obs.sigma, schedule, level)
        state = matched_state(x_hat, obs.y_scaled, obs.v_obs, level, scheduler, generator=g)
        x, sec = _timed(device, lambda: tdpm.reverse_from_state(unet, scheduler, state, level, generator=g))
        ratio = tdpm.noise_ratio(state, obs.clean, level, scheduler) if level > 0 else None
        rows += _rows(x, obs, slice(0, len(obs.clean)), ablation="t_trunc", sigma=obs.sigma, schedule=schedule, t=t_s,
                      method_key=f"t_trunc={level}", method="DIP alone" if level == 0 else f"TDPM-DIP, T_trunc = {level}",
                      value=frac, seconds=dip_seconds(fit, k) + sec / len(obs.clean), nfe=level, dip_iterations=k,
                      ratio=ratio)
    return _frame(rows)


def ddpm_rows(unet, scheduler, schedule: str, obs: Observed, *, seed: int, device) -> pd.DataFrame:
    """The DDPM alone on the test images under one schedule at matched sigma: the posterior mean (1 network
    evaluation) and ancestral sampling from the schedule's own t(sigma), both on the study's observation."""
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    ab = float(schedules.alpha_bar(scheduler, t_s))
    y = (ab ** 0.5 * obs.y_scaled[obs.test]).to(device)
    n = len(y)
    common = dict(ablation="schedule", sigma=obs.sigma, schedule=schedule, t=t_s, value=t_s, dip_iterations=0)
    x, sec = _timed(device, lambda: tdpm.tweedie(unet, scheduler, y, t_s).cpu())
    rows = _rows(x, obs, obs.test, method_key="tweedie", method=study.METHOD_LABELS["tweedie"], seconds=sec / n, nfe=1,
                 **common)
    g = generator(seed, "ddpm", obs.sigma, schedule)
    x, sec = _timed(device, lambda: ddpm.reverse_chain(unet, scheduler, y, t_s, generator=g).clamp(-1, 1).cpu())
    rows += _rows(x, obs, obs.test, method_key="ddpm", method=study.METHOD_LABELS["ddpm"], seconds=sec / n, nfe=t_s,
                  **common)
    return _frame(rows)


def chains_rows(unet, scheduler, schedule: str, obs: Observed, fit: dict, k: int, level: int, chains, *, seed: int,
                device) -> pd.DataFrame:
    """The ``chains`` ablation on the test images: max(chains) matched TDPM-DIP chains at ``level``, each from its own
    topped-up state (one batch), and for each K the mean of the first K."""
    x_hat, kmax = fit["outputs"][k][obs.test], max(chains)
    n = len(x_hat)
    y_scaled = obs.y_scaled[obs.test]
    g = generator(seed, "chains", obs.sigma, schedule, level)
    states = torch.stack([matched_state(x_hat, y_scaled, obs.v_obs, level, scheduler, generator=g) for _ in range(kmax)], 1)
    out, sec = _timed(device, lambda: tdpm.reverse_from_state(unet, scheduler, states.flatten(0, 1), level, generator=g))
    out = out.view(n, kmax, *x_hat.shape[1:])
    t_s, _ = schedule_level(scheduler, obs.v_obs)
    rows = []
    for K in sorted(chains):
        rows += _rows(out[:, :K].mean(1), obs, obs.test, ablation="chains", sigma=obs.sigma, schedule=schedule, t=t_s,
                      method_key=f"K={K}", method=f"TDPM-DIP, mean of {K} chain{'s' if K > 1 else ''}", value=K,
                      seconds=dip_seconds(fit, k) + K * sec / (kmax * n), nfe=K * level, dip_iterations=k)
    return _frame(rows)


def iteration_rows(fit: dict, obs: Observed, *, schedule: str, ablation: str = "dip_iterations", key: str = "k",
                   lr: float | None = None) -> pd.DataFrame:
    """The DIP alone at every budget of a fit, on the validation and test images (``value``: the budget; with
    ``lr`` given, the rows are that rate's and ``value`` is the rate)."""
    rows = []
    for k in sorted(fit["outputs"]):
        rows += _rows(fit["outputs"][k], obs, slice(0, len(obs.clean)), ablation=ablation, sigma=obs.sigma,
                      schedule=schedule, t=obs.t, method_key=f"{key}={k}" if lr is None else f"lr={lr:g}, k={k}",
                      method=f"DIP, {k} iterations" if lr is None else f"DIP, lr {lr:g}, {k} iterations",
                      value=k if lr is None else lr, seconds=dip_seconds(fit, k), nfe=0, dip_iterations=k)
    return _frame(rows)


def report_table3(unet, scheduler, clean: torch.Tensor, *, t_truncs, dip_iterations: int, preset: str, lr: float,
                  seed: int, device, t_obs: int = REPORT_T) -> pd.DataFrame:
    """The report's Table 3 at level ``t_obs`` (600) on ``clean``: per T_trunc, the report's protocol
    (``tdpm.tdpm_dip``: the DIP target built from the clean image) and the matched TDPM-DIP on the observation
    (one DIP fit to y / sqrt(abar), ``matched_state``, T_trunc steps; T_trunc = 0: that DIP alone), both with the
    report's plain DIP; PSNR/SSIM against the clean image. One row per (protocol, T_trunc, image)."""
    y = tdpm.observe(clean, t_obs, scheduler, generator=generator(seed, "table3-observation"))
    ab = float(schedules.alpha_bar(scheduler, t_obs))
    y_scaled = (y / ab ** 0.5).float()
    v_obs = schedules.noise_var(scheduler, t_obs)
    kw = dict(iterations=dip_iterations, preset=preset, lr=lr, seed=seed, device=device, record_every=dip_iterations)
    fit, fit_sec = _timed(device, lambda: dip.fit_dip(y_scaled, generator=generator(seed, "table3-dip"), **kw))
    rows = []

    def add(protocol, x, tt, seconds):
        p, s = metrics.psnr(x, clean), metrics.ssim_or_nan(x, clean)
        rows.extend(dict(protocol=protocol, t_obs=t_obs, t_trunc=tt, image=i, psnr=float(p[i]), ssim=float(s[i]),
                         seconds=seconds, nfe=tt, dip_iterations=dip_iterations) for i in range(len(clean)))

    for tt in sorted(t_truncs):
        g = generator(seed, "table3-report", tt)
        res = tdpm.tdpm_dip(unet, scheduler, clean, t_trunc=tt, dip_iterations=dip_iterations, generator=g,
                            device=device, preset=preset, lr=lr, seed=seed, record_every=dip_iterations)
        add("report", res.x0, tt, res.seconds / len(clean))
        g = generator(seed, "table3-matched", tt)
        state = matched_state(fit.output, y_scaled, v_obs, tt, scheduler, generator=g)
        x, sec = _timed(device, lambda: tdpm.reverse_from_state(unet, scheduler, state, tt, generator=g))
        add("corrected", x, tt, (fit_sec + sec) / len(clean))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------
# Choices and paired comparisons
# --------------------------------------------------------------------------------------------------------

def validated(rows: pd.DataFrame, *, by=("sigma", "schedule"), exclude=()) -> pd.DataFrame:
    """Per group of ``by``: the method_key with the best mean validation PSNR (ties: the first in row order),
    leaving out the keys in ``exclude``. Columns: by..., method_key, val_psnr, and the chosen rows' value, nfe
    and dip_iterations (those not in ``by``)."""
    by = list(by)
    v = rows[(rows["split"] == "val") & ~rows["method_key"].isin(list(exclude))]
    if v.empty:
        raise ValueError("validated: no validation rows to choose from")
    keys = [*by, "method_key"]
    means = v.groupby(keys, sort=False)["psnr"].mean().rename("val_psnr").reset_index()
    best = means.loc[means.groupby(by, sort=False)["val_psnr"].idxmax()]
    first = v.drop_duplicates(keys).set_index(keys)[[c for c in ("value", "nfe", "dip_iterations") if c not in by]]
    return best.join(first, on=keys).reset_index(drop=True)


def paired(a: pd.DataFrame, b: pd.DataFrame, *, seed: int = 0, metric: str = "psnr") -> dict:
    """``stats.paired`` of two per-image row sets (one row per image each, matched on ``image``); raises
    ValueError when they do not cover the same images."""
    sa, sb = a.set_index("image")[metric], b.set_index("image")[metric]
    if sa.empty or sa.index.has_duplicates or sb.index.has_duplicates or set(sa.index) != set(sb.index):
        raise ValueError(f"paired: the two row sets are not one row per image on the same images "
                         f"({len(sa)} and {len(sb)} rows)")
    return stats.paired(sa.values, sb.loc[sa.index].values, seed=seed)


def outcome(summary) -> str:
    """"better than" / "worse than" / "not clearly different from": where the 95% interval of the mean paired
    difference lies (``stats.verdict``, no threshold). The book's one vocabulary for a paired comparison."""
    return stats.verdict(summary, **WORDS)


def pick(rows: pd.DataFrame, sel: dict, *, split: str = "test") -> pd.DataFrame:
    """The rows of ``split`` whose columns equal ``sel``'s values."""
    m = rows["split"] == split
    for col, val in sel.items():
        m &= rows[col] == val
    return rows[m]


def compare(rows: pd.DataFrame, sel_a: dict, sel_b: dict, *, seed: int = 0, split: str = "test", **labels) -> dict:
    """Paired comparison of the rows selected by ``sel_a`` against those selected by ``sel_b`` (``pick``) on the
    ``split`` images: ``labels``, then ``stats.paired``'s summary, the two means and the ``outcome``."""
    ra, rb = pick(rows, sel_a, split=split), pick(rows, sel_b, split=split)
    if ra.empty or rb.empty:
        raise ValueError(f"compare: no {split} rows for {sel_a if ra.empty else sel_b}")
    s = paired(ra, rb, seed=seed)
    return dict(labels, **s, a_psnr=float(ra["psnr"].mean()), b_psnr=float(rb["psnr"].mean()), outcome=outcome(s))


def t_trunc_paired(rows: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Every T_trunc > 0 against T_trunc = 0 (the DIP alone), per (sigma, schedule), on the test images."""
    out = []
    r = rows[rows["ablation"] == "t_trunc"]
    for (sigma, schedule), g in r.groupby(["sigma", "schedule"], sort=True):
        base = dict(ablation="t_trunc", sigma=sigma, schedule=schedule, method_key="t_trunc=0")
        for key, gg in g[g["nfe"] > 0].groupby("method_key", sort=False):
            out.append(compare(rows, dict(base, method_key=key), base, seed=seed, sigma=sigma, schedule=schedule,
                               t=int(gg["t"].iloc[0]), level=int(gg["nfe"].iloc[0]), fraction=float(gg["value"].iloc[0]),
                               a=gg["method"].iloc[0], b="DIP alone"))
    return pd.DataFrame(out).sort_values(["sigma", "schedule", "level"], kind="stable").reset_index(drop=True)


def schedule_paired(rows: pd.DataFrame, hybrid: pd.DataFrame, *, a: str = "cosine", b: str = "linear",
                    seed: int = 0) -> pd.DataFrame:
    """Schedule ``a`` against ``b`` at matched sigma on the test images: the DDPM's posterior mean and ancestral
    sampling (``ddpm_rows``), the DIP alone (T_trunc = 0: the same fit under both) and the matched TDPM-DIP at each
    schedule's validated T_trunc > 0 (``hybrid``: ``validated`` of the T_trunc rows without T_trunc = 0)."""
    out = []
    h = hybrid.set_index(["sigma", "schedule"])
    for sigma in sorted(rows.loc[rows["ablation"] == "schedule", "sigma"].unique()):
        for key in ("tweedie", "ddpm"):
            sel = dict(ablation="schedule", sigma=sigma, method_key=key)
            out.append(compare(rows, dict(sel, schedule=a), dict(sel, schedule=b), seed=seed, sigma=sigma,
                               method_key=key, method=study.METHOD_LABELS[key], a=a, b=b))
        sel = dict(ablation="t_trunc", sigma=sigma, method_key="t_trunc=0")
        out.append(compare(rows, dict(sel, schedule=a), dict(sel, schedule=b), seed=seed, sigma=sigma,
                           method_key="dip", method="DIP alone (the same fit under both)", a=a, b=b))
        ka, kb = h.loc[(sigma, a), "method_key"], h.loc[(sigma, b), "method_key"]
        out.append(compare(rows, dict(ablation="t_trunc", sigma=sigma, schedule=a, method_key=ka),
                           dict(ablation="t_trunc", sigma=sigma, schedule=b, method_key=kb), seed=seed, sigma=sigma,
                           method_key="tdpm_matched", a=a, b=b,
                           method=f"TDPM-DIP, validated T_trunc ({a} {int(h.loc[(sigma, a), 'nfe'])}, "
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
                 ssim_std=("ssim", "std"), n=("image", "size"), seconds_per_image=("seconds", "first"),
                 nfe=("nfe", "first"), dip_iterations=("dip_iterations", "first")).reset_index()


def table3_paired(t3: pd.DataFrame, a: int, b: int, *, protocol: str = "corrected", seed: int = 0) -> dict | None:
    """T_trunc a against T_trunc b at t = 600 under one protocol (None when either was not run)."""
    r = t3[t3["protocol"] == protocol]
    ra, rb = r[r["t_trunc"] == a], r[r["t_trunc"] == b]
    if ra.empty or rb.empty:
        return None
    s = paired(ra, rb, seed=seed)
    return dict(s, a_psnr=float(ra["psnr"].mean()), b_psnr=float(rb["psnr"].mean()), outcome=outcome(s))


# --------------------------------------------------------------------------------------------------------
# Display and sentences
# --------------------------------------------------------------------------------------------------------

def fmt_diff(r) -> str:
    """"+0.42 dB [+0.10, +0.75]": a paired summary's mean difference and 95% interval (3 decimals when all three
    are under 0.1 dB in size, so that a small difference does not print as +0.00)."""
    d = 3 if max(abs(r["mean_diff"]), abs(r["ci_low"]), abs(r["ci_high"])) < 0.1 else 2
    return f"{r['mean_diff']:+.{d}f} dB [{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}]"


def fmt_sigma(sigma) -> str:
    """25 for 25, 25.0 or "25" (values read back from CSV may be floats)."""
    return f"{float(sigma):g}"


def fmt_level(level: int, frac: float) -> str:
    """"7 (t/8)": a T_trunc level with its fraction of t(sigma); "0 (DIP alone)"."""
    if frac == 0:
        return "0 (DIP alone)"
    if frac == 1:
        return f"{level} (t)"
    inv = 1 / frac
    return f"{level} (t/{inv:.0f})" if abs(inv - round(inv)) < 1e-9 else f"{level} ({frac:g} t)"


def join_and(parts) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def count_phrase(outcomes, ref: str) -> str:
    """"2 are better than the DIP alone, 1 is not clearly different from it and 1 is worse than it"."""
    c = pd.Series(list(outcomes), dtype=object).value_counts()
    parts = []
    for w in WORDS.values():
        n = int(c.get(w, 0))
        if n:
            parts.append(f"{n} {'is' if n == 1 else 'are'} {w} {'it' if parts else ref}")
    return join_and(parts)


def comparison_text(r, *, a: str | None = None, b: str | None = None) -> str:
    """"A is better than B (+0.42 dB [+0.10, +0.75], wins 15 of 20)" for one paired summary."""
    return (f"{a or r['a']} is {r['outcome']} {b or r['b']} ({fmt_diff(r)}, wins {int(r['wins'])} of {int(r['n'])})")


def t_trunc_text(paired_t: pd.DataFrame, chosen: pd.DataFrame, schedule: str) -> str:
    """Per sigma, for one schedule: the T_trunc the validation images pick, how the T_trunc > 0 compare with the
    DIP alone on the test images, and the largest mean difference."""
    out = []
    c = chosen.set_index(["sigma", "schedule"])
    for sigma, g in paired_t[paired_t["schedule"] == schedule].groupby("sigma", sort=True):
        ch = c.loc[(sigma, schedule)]
        pick_text = ("the validation images pick T_trunc = 0, the DIP alone" if int(ch["nfe"]) == 0 else
                     f"the validation images pick T_trunc = {fmt_level(int(ch['nfe']), float(ch['value']))}")
        best = g.loc[g["mean_diff"].idxmax()]
        out.append(f"At σ = {fmt_sigma(sigma)} ({schedule} schedule, t = {int(g['t'].iloc[0])}) {pick_text}. On the test images, "
                   f"of the {len(g)} values of T_trunc > 0, {count_phrase(g['outcome'], 'the DIP alone')}; the highest "
                   f"mean difference is at T_trunc = {fmt_level(int(best['level']), float(best['fraction']))}: "
                   f"{fmt_diff(best)}, wins {int(best['wins'])} of {int(best['n'])}.")
    return " ".join(out)


def schedule_text(paired_s: pd.DataFrame, levels_by_sigma: dict) -> str:
    """Per sigma: cosine against linear for each method (``schedule_paired``); ``levels_by_sigma`` maps sigma to
    a dict schedule -> (t, noise ratio)."""
    out = []
    for sigma, g in paired_s.groupby("sigma", sort=True):
        lv = levels_by_sigma[sigma]
        a, b = g["a"].iloc[0], g["b"].iloc[0]
        parts = [f"{r['method']}: {comparison_text(r)}" for r in g.to_dict("records") if r["method_key"] != "dip"]
        out.append(f"At σ = {fmt_sigma(sigma)} ({b} t = {lv[b][0]}, {a} t = {lv[a][0]}): " + "; ".join(parts) + ".")
    return " ".join(out)


def chains_text(paired_c: pd.DataFrame) -> str:
    """Per sigma: the mean of K chains against one chain and against the DIP alone."""
    out = []
    for sigma, g in paired_c.groupby("sigma", sort=True):
        vs_one = g[g["b"] == "one chain"]
        vs_dip = g[g["b"] == "DIP alone"].sort_values("K")
        parts = [comparison_text(r, a=f"the mean of {int(r['K'])} chains", b="one chain") for r in vs_one.to_dict("records")]
        top = vs_dip.iloc[-1]
        parts.append(comparison_text(top, a=f"the mean of {int(top['K'])} chain{'s' if top['K'] > 1 else ''}",
                                     b="the DIP alone"))
        out.append(f"At σ = {fmt_sigma(sigma)} (T_trunc = {int(g['level'].iloc[0])}) " + "; ".join(parts) + ".")
    return " ".join(out)


def budget_text(paired_k: pd.DataFrame) -> str:
    """Per sigma: the validated budget and whether another budget does better on the test images."""
    out = []
    for sigma, g in paired_k.groupby("sigma", sort=True):
        kv = int(g["validated_k"].iloc[0])
        others = g[g["k"] != kv]
        own = g[g["k"] == kv].iloc[0]
        text = f"At σ = {fmt_sigma(sigma)} the validation images pick k = {kv} ({own['a_psnr']:.2f} dB on the test images)"
        if others.empty:
            out.append(text + ".")
            continue
        best = others.loc[others["mean_diff"].idxmax()]
        better = others[others["outcome"] == WORDS["better"]]
        if len(better):
            text += (f"; on the test images {join_and(f'k = {int(k)}' for k in better['k'])} would have done better, "
                     f"at most by {fmt_diff(best)} (k = {int(best['k'])})")
        else:
            text += (f"; no other budget is better than it on the test images (the nearest, k = {int(best['k'])}: "
                     f"{fmt_diff(best)})")
        out.append(text + ".")
    return " ".join(out)


def lr_text(paired_lr: pd.DataFrame) -> str:
    out = []
    for r in paired_lr.to_dict("records"):
        out.append(f"At σ = {fmt_sigma(r['sigma'])} the DIP at learning rate {r['lr']:g} (validated k = {r['k']}) is {r['outcome']} "
                   f"the DIP at the protocol's {r['default_lr']:g} (k = {r['default_k']}): {fmt_diff(r)}, wins "
                   f"{int(r['wins'])} of {int(r['n'])}.")
    return " ".join(out)


def table3_text(t3: pd.DataFrame, *, seed: int = 0) -> str:
    """The report protocol against the matched variant at t = 600, and the report's two Table 3 orderings under
    the matched variant (paired)."""
    s = table3_summary(t3).set_index(["protocol", "t_trunc"])["psnr_mean"]
    tts = sorted(t3["t_trunc"].unique())
    rep = ", ".join(f"{s[('report', t)]:.2f}" for t in tts)
    cor = ", ".join(f"{s[('corrected', t)]:.2f}" for t in tts)
    text = (f"At T_trunc = {', '.join(map(str, tts))} the report's protocol scores {rep} dB, the matched TDPM-DIP on "
            f"the observation {cor} dB.")
    few = table3_paired(t3, 5, 0, seed=seed)
    many = table3_paired(t3, 50, 10, seed=seed)
    if few:
        text += f" Under the matched variant T_trunc = 5 is {few['outcome']} T_trunc = 0 ({fmt_diff(few)})"
        text += f" and T_trunc = 50 is {many['outcome']} T_trunc = 10 ({fmt_diff(many)})." if many else "."
    return text


def t_trunc_summary(paired_t: pd.DataFrame, hybrid: pd.DataFrame, schedule: str) -> str:
    """Per sigma: the matched TDPM-DIP at the T_trunc > 0 that does best on the validation images against the
    DIP alone, on the test images."""
    out = []
    h = hybrid.set_index(["sigma", "schedule"])
    for sigma, g in paired_t[paired_t["schedule"] == schedule].groupby("sigma", sort=True):
        level = int(h.loc[(sigma, schedule), "nfe"])
        r = g[g["level"] == level].iloc[0]
        out.append(f"At σ = {fmt_sigma(sigma)} the matched TDPM-DIP at the T_trunc > 0 that does best on the validation images, "
                   f"{fmt_level(level, float(r['fraction']))}, is {r['outcome']} the DIP alone ({fmt_diff(r)}, wins "
                   f"{int(r['wins'])} of {int(r['n'])}).")
    return " ".join(out)


def summary_text(paired_t: pd.DataFrame, hybrid: pd.DataFrame, paired_s: pd.DataFrame, paired_c: pd.DataFrame | None,
                 schedule: str) -> str:
    """The chapter's findings in a few sentences: ``t_trunc_summary``, the schedules at matched sigma, the most
    chains against one."""
    out = [t_trunc_summary(paired_t, hybrid, schedule)]
    for key, name in (("tdpm_matched", "TDPM-DIP"), ("tweedie", "the DDPM's posterior mean"),
                      ("ddpm", "the DDPM's ancestral sampling")):
        rows = paired_s[paired_s["method_key"] == key]
        if len(rows):
            out.append(f"At matched σ, for {name} the {rows['a'].iloc[0]} schedule is "
                       + join_and(f"{r['outcome']} the {r['b']} one at σ = {fmt_sigma(r['sigma'])} ({fmt_diff(r)})"
                                  for r in rows.to_dict("records")) + ".")
    if paired_c is not None and len(paired_c):
        top = paired_c[paired_c["b"] == "one chain"]
        if len(top):
            kmax = int(top["K"].max())
            top = top[top["K"] == kmax]
            out.append(f"Averaging {kmax} chains is " + join_and(
                f"{r['outcome']} one chain at σ = {fmt_sigma(r['sigma'])} ({fmt_diff(r)})" for r in top.to_dict("records")) + ".")
    return " ".join(out)
