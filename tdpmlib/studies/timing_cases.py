"""The cases of the book's timing benchmark (``tdpmlib.studies.timing``), built from the chapters' committed results.

Each case runs one method at the budget its chapter validated, on one batch of the profile's images, with the
profile's networks: the trained DDPM when its folder has one, else a seeded network of the same preset (the time of
a forward pass does not depend on the weights). Budgets are read, never typed:

* chapter 03's ``study_rows.csv`` (every σ of the study): the DDPM's one-step posterior mean, ancestral sampling and
  DDIM from t(σ), the mean of K chains, non-local means, both DIP protocols at their validated budgets, the matched
  TDPM-DIP at its validated (k, T_trunc), DIP then SDEdit at its (k, t0) and the earlier variant (``dip_polish``);
  chapter 02's ``config.json`` and chapter 04's ``denoise_rows.csv`` (the methods it shows, ``EXAMPLE1_METHODS``)
  add any σ or budget the study lacks;
* chapter 05: the DDPM-guided early stop, run for its mean number of iterations over the test images
  (``per_image.csv``) with the chapter's stages (``config.json``);
* chapter 03's ``denoising_summary.csv``: the report's t = 600 setting, DDPM ancestral from 600 and the
  report-protocol DIP (100 iterations at lr 1e-4);
* chapter 03's ``generation.csv``: the full DDPM chain, DDIM-50 and DDIM-100 from pure noise, and TDPM-DIP as the
  report generates (``tdpm.tdpm_dip``: T_trunc + 1 network evaluations after a 100-iteration DIP).

``build`` returns the cases and the sources it could not read; ``SETTINGS`` gives each profile's batch (1 image
on the CPU profiles, 4 on the GPU ones), repeats and warm-up; ``workload`` sums a case list's cost units.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ..methods import ddpm, dip, models, schedules, tdpm
from ..workflow import results
from . import denoising, denoising_methods, dip_init, generation, guided_stopping
from .timing import Case, GEN_DDPM, GEN_TDPM, study_key

SETTINGS = {"smoke": dict(batch=1, repeats=1, warmup=1), "cpu": dict(batch=1, repeats=1, warmup=1),
            "colab": dict(batch=4, repeats=1, warmup=1), "paper": dict(batch=4, repeats=1, warmup=1)}
# the study's methods that are timed (floors without computation and the oracles, upper bounds, are not methods)
STUDY_METHODS = ("tweedie", "ddpm", "ddim", "mean_k", "nlm", "dip_plain", "dip_official", "tdpm_matched",
                 "tdpm_matched_pm", "tdpm_matched_mean", "sdedit", "dip_polish")
# the methods chapter 04 shows beside Example 1 (its other rows are the study's own, timed from chapter 03's)
EXAMPLE1_METHODS = ("tweedie", "ddpm", "ddim", "mean_k", "dip_official", "sdedit")
# the readout of each matched TDPM-DIP row (``tdpm.READOUTS``; the chains of "mean_chains" are in its params, n=...)
READOUT = {"tdpm_matched": "ancestral", "tdpm_matched_pm": "posterior_mean", "tdpm_matched_mean": "mean_chains"}
WARM = 2  # DIP iterations and network evaluations of a case's untimed warm-up call


def networks(cfg, device):
    """(unet, scheduler) of the profile's schedule: the trained DDPM in ``cfg.model_dir()`` when it is there,
    else a network of the same preset with seeded random weights (the same cost per evaluation)."""
    scheduler = schedules.make_scheduler(cfg.schedule)
    saved = Path(cfg.model_dir(cfg.schedule)) / "unet_ema"
    if (saved / "config.json").exists():
        unet = ddpm.load_unet(saved, device)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            unet = models.make_unet(cfg.ddpm_preset, resolution=cfg.resolution)
    return ddpm.prepare(unet, device).eval(), scheduler


def images(n: int, resolution: int, *, seed: int = 0) -> torch.Tensor:
    """Smooth images in [-1, 1] (a method's cost does not depend on the picture)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=resolution, mode="bilinear",
                         align_corners=False)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _nlm_params(params) -> dict:
    """NLM's validated settings from its params ("h=0.8*sigma, patch=5"); the defaults when they are not there."""
    h = re.search(r"\bh=([\d.]+)", str(params))
    patch = re.search(r"\bpatch=(\d+)", str(params))
    return dict(h_factor=float(h.group(1)) if h else 0.8, patch_size=int(patch.group(1)) if patch else None)


def _int(params: str, name: str) -> int:
    m = re.search(rf"\b{name}=(\d+)", str(params))
    if m is None:
        raise ValueError(f"params={params!r} has no {name}=<integer>")
    return int(m.group(1))


# ------------------------------------------------------------------------------------------------------
# The methods, as the chapters run them (each returns fn(inputs) for a budget)
# ------------------------------------------------------------------------------------------------------

class _Methods:
    def __init__(self, unet, scheduler, *, device, resolution: int, presets: dict, lr_plain: float):
        self.unet, self.sched, self.device, self.res = unet, scheduler, torch.device(device), resolution
        self.presets, self.lr_plain = presets, lr_plain

    def observe(self, t: int):
        """setup(batch) of a denoising case at level t: the observation y (CPU and on the device) and y/√ᾱ."""
        def setup(batch):
            y = tdpm.observe(images(batch, self.res), t, self.sched, generator=_gen(1))
            return dict(y=y, yd=y.to(self.device), y_scaled=(y / float(schedules.alpha_bar(self.sched, t)) ** 0.5).float())
        return setup

    def chain(self, t: int, *, method="ddpm", num_steps=None, copies=1):
        def fn(x):
            y = x["yd"].repeat_interleave(copies, dim=0) if copies > 1 else x["yd"]
            out = ddpm.reverse_chain(self.unet, self.sched, y, t, method=method, num_steps=num_steps, generator=_gen())
            return out.clamp(-1, 1).view(len(x["yd"]), copies, *y.shape[1:]).mean(1).cpu()
        return fn

    def tweedie(self, t: int):
        return lambda x: tdpm.tweedie(self.unet, self.sched, x["yd"], t).cpu()

    def nlm(self, t: int, *, h_factor: float = 0.8, patch_size: int | None = None):
        ab = float(schedules.alpha_bar(self.sched, t))
        return lambda x: denoising_methods.nlm_images(x["y_scaled"], math.sqrt((1 - ab) / ab) / 2, h_factor=h_factor,
                                              patch_size=patch_size)

    def dip(self, protocol: str, k: int):
        kw = dict(protocol=protocol, preset=self.presets[protocol], device=self.device, record_every=k)
        if protocol == "plain":
            kw["lr"] = self.lr_plain
        return lambda x: dip.fit_dip(x["y_scaled"], iterations=k, generator=_gen(), **kw).output

    def hybrid(self, key: str, t: int, k: int, level: int, *, readout="ancestral", n_chains=1):
        """The study's hybrids: the official-protocol DIP's fit, then the state and its chain; ``dip_polish`` fits
        its own DIP, to y rescaled to T_trunc (``tdpm.denoise``)."""
        if key == "dip_polish":
            def polish(x):
                z = dip.draw_input("official", (len(x["y"]), *x["y"].shape[-2:]), _gen(3))
                return tdpm.denoise(self.unet, self.sched, x["y"], t, t_trunc=level, dip_iterations=k, z=z,
                                    generator=_gen(2), device=self.device, protocol="official",
                                    preset=self.presets["official"], record_every=k).x0
            return polish
        fit = self.dip("official", k)

        def fn(x):
            x_hat, g = fit(x), _gen(2)
            if key == "sdedit":
                return dip_init.dip_init_ddpm(self.unet, self.sched, x_hat, level, generator=g)
            state = tdpm.matched_state(x_hat, x["y"], t, level, self.sched, generator=g)
            return tdpm.read_out(self.unet, self.sched, state, level, readout=readout, n_chains=n_chains, generator=g)
        return fn

    def guided(self, t: int, iterations: int, *, n_stages: int, per_stage: int, noise_factor: float):
        return lambda x: guided_stopping.guided_dip(x["y"], t, self.sched, n_stages=n_stages, iters_per_stage_max=per_stage,
                                             generator=_gen(), protocol="official", preset=self.presets["official"],
                                             device=self.device, noise_factor=noise_factor,
                                             continue_to=iterations).output

    def sample(self, method="ddpm", num_steps=None):
        return lambda batch: ddpm.sample(self.unet, self.sched, n=batch, resolution=self.res, generator=_gen(),
                                         device=self.device, method=method, num_steps=num_steps, batch_size=batch)

    def tdpm_generate(self, t_trunc: int, k: int, lr: float):
        return lambda x0: tdpm.tdpm_dip(self.unet, self.sched, x0, t_trunc=t_trunc, dip_iterations=k,
                                        generator=_gen(), device=self.device, preset=self.presets["plain"], lr=lr,
                                        record_every=max(1, k)).x0


# ------------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------------

def _study_case(m: _Methods, key: str, sigma, t: int, nfe: int, its: int, params: str, source: str) -> Case:
    """One study method at one σ, at the budget of its committed row."""
    label = denoising.METHOD_LABELS.get(key, key)
    make = {
        "tweedie": lambda n, k: m.tweedie(t),
        "ddpm": lambda n, k: m.chain(t),
        "ddim": lambda n, k: m.chain(t, method="ddim", num_steps=max(1, min(n, t))),
        "mean_k": lambda n, k: m.chain(t, copies=max(1, round(n / t))),
        "nlm": lambda n, k: m.nlm(t, **_nlm_params(params)),
        "dip_plain": lambda n, k: m.dip("plain", k),
        "dip_official": lambda n, k: m.dip("official", k),
    }
    if key in make:
        fn = make[key](nfe, its)
        warm = make[key](WARM, WARM) if key in ("dip_plain", "dip_official") else None
        if key in ("ddpm", "ddim", "mean_k"):
            warm = m.chain(min(WARM, t))
    else:  # the hybrids: (k, level) from the chosen params, and for the mean of chains its n
        level = _int(params, "t0" if key == "sdedit" else "T_trunc")
        readout = READOUT.get(key, "ancestral")
        chains = _int(params, "n") if readout == "mean_chains" else 1
        fn = m.hybrid(key, t, its, level, readout=readout, n_chains=chains)
        warm = m.hybrid(key, t, WARM, min(level, WARM), readout=readout, n_chains=1)
    return Case(key=study_key(sigma, key), method=label, nfe=int(nfe), dip_iterations=int(its), fn=fn,
                setup=m.observe(t), warm=warm, group=f"denoising, σ = {int(round(float(sigma)))} (t = {t})",
                params="" if pd.isna(params) else str(params), source=source)


def _from_rows(m, rows: pd.DataFrame, source: str, cases: dict, *, methods=STUDY_METHODS) -> None:
    test = rows[(rows["split"] == "test") & rows["method_key"].isin(methods)]
    for (sigma, key), g in test.groupby(["sigma", "method_key"], sort=False):
        r = g.iloc[0]
        case = _study_case(m, key, sigma, int(r["t"]), int(r["nfe"]), int(r["dip_iterations"]), r["params"], source)
        _add(cases, case)


def _add(cases: dict, case: Case) -> None:
    """Add a case; the same method at the same budget from another chapter is timed once."""
    old = cases.get(case.key)
    if old is None:
        cases[case.key] = case
    elif (old.nfe, old.dip_iterations) != (case.nfe, case.dip_iterations):
        chapter = case.source.split("_")[0]
        cases[f"{case.key}_ch{chapter}"] = dataclasses.replace(case, key=f"{case.key}_ch{chapter}")


def build(cfg, *, device=None, unet=None, scheduler=None) -> tuple[list[Case], list[str]]:
    """The benchmark's cases from the committed results of ``cfg``'s profile (``<results_dir>/<profile>/``),
    with the profile's networks (``networks``, unless ``unet`` and ``scheduler`` are given). Returns
    (cases, missing): ``missing`` names each results file that was not there (its cases are left out)."""
    device = torch.device(device or cfg.torch_device)
    if unet is None or scheduler is None:
        unet, scheduler = networks(cfg, device)
    root = Path(cfg.results_dir) / cfg.profile
    m = _Methods(unet, scheduler, device=device, resolution=cfg.resolution,
                 presets={"plain": cfg.dip_preset, "official": cfg.dip_preset_official}, lr_plain=cfg.dip_lr)
    cases, missing = {}, []

    def need(rel):
        p = root / rel
        if not p.is_file():
            missing.append(rel)
        return p if p.is_file() else None

    if p := need("03_tdpm_dip/study_rows.csv"):
        _from_rows(m, pd.read_csv(p), "03_tdpm_dip/study_rows.csv", cases)
    if p := need("02_dip_fitting/config.json"):
        c = results.read_json(p)
        for protocol, k in c.get("chosen_budgets", {}).items():
            _add(cases, _study_case(m, f"dip_{protocol}", c["sigma"], int(c["t"]), 0, int(k), f"k={k}",
                                    "02_dip_fitting/config.json"))
    if p := need("04_example1_dip_init_ddpm/denoise_rows.csv"):
        _from_rows(m, pd.read_csv(p), "04_example1_dip_init_ddpm/denoise_rows.csv", cases, methods=EXAMPLE1_METHODS)
    if (p := need("05_example2_guided_early_stopping/per_image.csv")) and \
            (c := need("05_example2_guided_early_stopping/config.json")):
        s = results.read_json(c)["settings"]
        rows = pd.read_csv(p)
        for sigma, g in rows[rows["rule_key"] == "guided"].groupby("sigma", sort=True):
            its, t = int(round(g["iterations"].mean())), int(g["t_obs"].iloc[0])
            fn = m.guided(t, its, n_stages=s["n_stages"], per_stage=s["iters_per_stage_max"],
                          noise_factor=s["noise_factor"])
            warm = m.guided(t, WARM, n_stages=s["n_stages"], per_stage=1, noise_factor=s["noise_factor"])
            _add(cases, Case(key=study_key(sigma, "guided"), method=f"Example 2: DIP {guided_stopping.RULE_LABELS['guided']}",
                             nfe=0, dip_iterations=its, fn=fn, setup=m.observe(t), warm=warm,
                             group=f"denoising, σ = {int(sigma)} (t = {t})",
                             params=f"{s['n_stages']} stages, the mean stop of the test images",
                             source="05_example2_guided_early_stopping/per_image.csv"))
    if p := need("03_tdpm_dip/denoising_summary.csv"):
        d = pd.read_csv(p)
        d = d[(d["schedule"] == cfg.schedule) & (d["protocol"] == "corrected")].set_index("method_key")
        src, t = "03_tdpm_dip/denoising_summary.csv", 600
        if "ddpm" in d.index:
            t = int(d.at["ddpm", "t"])
            _add(cases, Case(key=f"t{t}_ddpm", method=f"DDPM ancestral from t = {t}", nfe=int(d.at["ddpm", "nfe"]),
                             dip_iterations=0, fn=m.chain(t), setup=m.observe(t), warm=m.chain(WARM),
                             group=f"the report's t = {t}", source=src))
        if "dip_short" in d.index:
            k = int(d.at["dip_short", "dip_iterations"])
            _add(cases, Case(key="dip_report", method=f"DIP, report's protocol ({k} it., lr {cfg.dip_lr:g})", nfe=0,
                             dip_iterations=k, fn=m.dip("plain", k), setup=m.observe(t), warm=m.dip("plain", WARM),
                             group=f"the report's t = {t}", params=f"k={k}", source=src))
    if p := need("03_tdpm_dip/generation.csv"):
        g = pd.read_csv(p).set_index("method_key")
        src, gen = "03_tdpm_dip/generation.csv", "generation from pure noise"
        label = generation.GENERATION_METHODS
        for key, case_key, method, steps in (("ddpm", GEN_DDPM, "ddpm", None), ("ddim50", "gen_ddim50", "ddim", 50),
                                              ("ddim100", "gen_ddim100", "ddim", 100)):
            if key in g.index:
                _add(cases, Case(key=case_key, method=label[key], nfe=int(g.at[key, "nfe"]), dip_iterations=0,
                                 fn=m.sample(method, steps), warm=m.sample("ddim", WARM), group=gen, source=src))
        if "tdpm_train" in g.index:
            nfe, k = int(g.at["tdpm_train", "nfe"]), int(g.at["tdpm_train", "dip_iterations"])
            t_trunc = nfe - 1  # tdpm.report_level: the report's T_trunc takes T_trunc + 1 evaluations
            _add(cases, Case(key=GEN_TDPM, method=f"TDPM-DIP as the report generates (T_trunc = {t_trunc})", nfe=nfe,
                             dip_iterations=k, fn=m.tdpm_generate(t_trunc, k, cfg.dip_lr),
                             setup=lambda b: images(b, cfg.resolution, seed=3),
                             warm=m.tdpm_generate(min(t_trunc, WARM), WARM, cfg.dip_lr), group=gen,
                             params=f"DIP {k} it. at lr {cfg.dip_lr:g}, T_trunc = {t_trunc}", source=src))
    return list(cases.values()), missing


def workload(cases) -> dict:
    """The cost units of one image through every case: cases, network evaluations, DIP iterations."""
    cases = list(cases)
    return dict(cases=len(cases), nfe=sum(c.nfe for c in cases), dip_iterations=sum(c.dip_iterations for c in cases))
