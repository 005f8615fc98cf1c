"""Chapter 06's plan: the values each ablation varies, per profile, and the checks of the notebook's parameters
(``settings``) that give one clear error naming the parameter."""

from __future__ import annotations

import math

from ..methods import tdpm
from ..workflow import config

# The grid per profile (the notebook's parameters, None: these). fractions: T_trunc / t(sigma), 0 = the DIP
# alone; chains: numbers of chains K; lr_factors: multiples of the official DIP's learning rate (a new DIP fit
# each, so the cpu plan has none); report_t_truncs: the report's Table 3; readouts: how the state at the chosen
# T_trunc of the study's schedule is read out (``tdpm.READOUTS``; the ancestral chain runs at every level);
# readout_chains: n of the mean-of-n-chains readout when chapter 03's results do not give it. The cpu plan is
# sized for about 10 min on 2 cores once chapter 03's DIP fits are cached: the reverse chains dominate (T_trunc
# up to t under both schedules on the validation and test images, the DDPM alone from t(sigma) under both
# schedules on the test images), then the five DIP fits of the t = 600 section.
_READOUTS = ",".join(tdpm.READOUTS)
PLANS = {
    "smoke": dict(sigmas="25,50", fractions="0,0.125,0.5", chains="1,2", lr_factors="0.5", lr_sigmas="25",
                  report_t_truncs="0,5,10,50", readouts=_READOUTS, readout_chains="4"),
    "cpu": dict(sigmas="25,50", fractions="0,0.0625,0.125,0.25,0.5,1", chains="1,2,4", lr_factors="",
                lr_sigmas="25", report_t_truncs="0,5,10,50", readouts=_READOUTS, readout_chains="4"),
    "paper": dict(sigmas="25,50", fractions="0,0.0625,0.125,0.25,0.5,1", chains="1,2,4,8", lr_factors="0.3,3",
                  lr_sigmas="25,50", report_t_truncs="0,5,10,50", readouts=_READOUTS, readout_chains="4"),
}
# The T_trunc fractions that chapter 07's Table 3 claims read at realistic sigma ("a few" steps, "many").
FEW, MANY = 0.125, 0.5
REPORT_T = 600  # the report's observation level (its Tables 2-4)


# --------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------

EXAMPLES = dict(sigmas="25,50", fractions="0,0.125,0.5", chains="1,2,4", lr_factors="0.3,3", lr_sigmas="25",
                report_t_truncs="0,5,10,50", readout_chains="4")


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


def _readouts(name, value) -> tuple[str, ...]:
    """Readout names (``tdpm.READOUTS``), in that order; "ancestral" always runs (the T_trunc curve's readout)."""
    allowed = f'use comma-separated names among {", ".join(tdpm.READOUTS)}, e.g. "ancestral,posterior_mean"'
    parts = {p.strip() for p in value.split(",") if p.strip()} if isinstance(value, str) else None
    if parts is None or parts - set(tdpm.READOUTS):
        raise ValueError(f"{name}={value!r} is not allowed; {allowed}")
    return tuple(r for r in tdpm.READOUTS if r in parts | {"ancestral"})


def _one_int(name, value, *, low, high) -> int:
    """One integer in [low, high], given as a string ("4")."""
    try:
        out = _int(value) if isinstance(value, str) else None
    except ValueError:
        out = None
    if out is None or not low <= out <= high:
        raise ValueError(f'{name}={value!r} is not allowed; use one integer in [{low}, {high}], e.g. "4"')
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
    report_t_truncs=lambda n, v: _numbers(n, v, cast=_int, low=0, high=REPORT_T - 1),
    readouts=_readouts,
    readout_chains=lambda n, v: _one_int(n, v, low=1, high=64),
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
