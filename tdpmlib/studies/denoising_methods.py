"""The denoising methods of notebook 03 as two tables of functions, and what each function is handed.

* ``METHODS`` -- the corrected protocol: ``fn(ctx, y) -> Estimate``, with y the observation
  sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps of one chunk of images. ``ctx`` (a ``Context``) carries what a
  method may use: the DDPM and its scheduler, the level t, the run's sizes and DIP settings, the DIP input z,
  per-purpose generators and the device. It holds no clean image, so a method cannot see one.
  To add a method, write such a function and add one entry ``key: Method(label, fn)``.
* ``WITH_CLEAN`` -- the rows that need the clean image, ``fn(ctx, y, clean) -> Estimate``: the DIP oracle
  (an upper bound, not a method) and three "report protocol" rows that reproduce the measurements behind
  the report's ~32 dB: a DIP fit to the clean image and scored against that same image, a DIP fit to y
  scored against its own target y / sqrt(abar_t), and TDPM-DIP whose target is built from the clean image.

``DENOISING_METHODS`` (key -> label template) and ``REPORT_PROTOCOL`` list the tables' keys for the notebooks.
``Estimate`` is (x0 estimate, network evaluations, DIP iterations, and for TDPM-DIP the state handed to the
chain); seconds come only from chapter 08's benchmark. A method with a grid of settings (``dip_plain``,
``dip_official``: every budget of one fit) returns its candidates, ``{params: Estimate}``, for the caller to
choose among on validation images. Every DIP row reads one fit per (chunk, protocol), ``Context.dip_fit``
(``denoising_fits.fit_budgets``); work that does not depend on y is done once per run (``Context.once``).

``run_methods`` is THE runner: both studies hand it a context, the observation and the keys they want, the
report's t = 600 rows (``report_protocol.run_denoising``: the entries with ``in_report``) and the sigma study
(``denoising.run``: floors, DDPM alone, DIP at its budgets, the oracles, the earlier TDPM-DIP variant). The
sigma study's hybrids are built on the DIP fit this returns (``denoising_hybrids``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..methods import ddpm, dip, schedules, tdpm
from .denoising_fits import fit_budgets

# Generator offsets of the report rows that do not depend on y (added to the run's seed through ``generator``).
OFFSETS = dict(report_dip_clean=3100, report_tdpm_clean=3110)  # report_tdpm_clean: + the schedule's index


def generator(seed: int, offset: int) -> torch.Generator:
    """The same seeding as ``Config.generator``: a CPU generator from (seed, offset)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + offset)


# --------------------------------------------------------------------------- #
# What a method is handed, and what it returns
# --------------------------------------------------------------------------- #
class Estimate(NamedTuple):
    x0: torch.Tensor              # the estimate of the chunk's clean images, CPU, [-1, 1] scale
    nfe: int                      # DDPM network evaluations per image
    dip_iterations: int           # DIP iterations per image
    state: torch.Tensor | None = None  # TDPM-DIP: the state handed to the chain at level nfe (diagnostics)


@dataclass(kw_only=True)
class Context:
    """What a denoising method may use for one chunk of images of one setting. No clean image: by construction
    the corrected methods cannot see it. Generators are per setting and purpose and continue across chunks.

    DIP fits (``dip_fit``) are seeded one of two ways: the report's (``sigma`` None: the chunk's ``z`` for the
    plain protocol and ``dip_seed``), or the sigma study's (``sigma`` given: ``denoising_fits.dip_input`` per
    image and protocol, a generator from (seed, sigma), fits cached in ``cache_dir``). ``dip_budgets`` maps a
    protocol to its budget grid (default: ``dip_iterations`` and ``dip_iterations_long``)."""
    unet: torch.nn.Module
    scheduler: object
    t: int                         # the observation's level
    device: object
    generators: dict               # "ddpm", "mean_k", "tdpm" -> torch.Generator
    n_chains: int = 1
    schedule: str = ""
    schedule_index: int = 0        # the schedule's position among the run's schedules (report seeding)
    t_trunc: int = 0               # TDPM-DIP's T_trunc, in the report's meaning (``tdpm.report_level``)
    tdpm_level: int | None = None  # or the level its chain starts at, given directly (the sigma study)
    dip_iterations: int = 0
    dip_iterations_long: int = 0
    dip_kw: dict = field(default_factory=dict)   # preset, lr, device (and protocol for TDPM-DIP's own fit)
    dip_budgets: dict = field(default_factory=dict)   # protocol -> budgets of its fit
    dip_presets: dict = field(default_factory=dict)   # protocol -> network preset (default: dip_kw's, else its own)
    nlm_h_factor: float = 0.8      # non-local means: h = factor * sigma (``nlm_images``)
    nlm_patch_size: int | None = None
    seed: int = 0                  # the run's seed
    dip_seed: int = 0              # the DIP networks' seed (the report: per chunk; the sigma study: the run's)
    sigma: int | None = None       # the sigma study's pixel noise level: selects its DIP seeding (above)
    cache_dir: object = None       # where the sigma study's DIP fits are cached (``fit_budgets``)
    chunk: int = 0                 # the chunk's index
    z: torch.Tensor | None = None  # the chunk's DIP input, shared by the DIP rows and TDPM-DIP
    run_memo: dict = field(default_factory=dict)   # shared by every context of a run: see ``once``
    fits: dict = field(default_factory=dict)       # protocol -> ``fit_budgets`` result of this chunk (``dip_fit``)

    @property
    def abar(self) -> float:
        return float(schedules.alpha_bar(self.scheduler, self.t))

    @property
    def t_trunc_used(self) -> int:
        """The level TDPM-DIP's chain starts at: ``tdpm_level`` if given, else where the report's T_trunc starts
        its chain (T_trunc + 1), capped at the observation's level."""
        return self.tdpm_level if self.tdpm_level is not None else min(tdpm.report_level(self.t_trunc), self.t)

    @property
    def ddim_steps(self) -> int:
        return min(self.t, 50)

    def y_scaled(self, y: torch.Tensor) -> torch.Tensor:
        """y / sqrt(abar_t) = x_0 + noise of variance (1 - abar_t) / abar_t."""
        return y / math.sqrt(self.abar)

    def once(self, key, make: Callable):
        """``make()`` the first time ``key`` is asked for in this run, the stored value afterwards (work that
        does not depend on the observation)."""
        if key not in self.run_memo:
            self.run_memo[key] = make()
        return self.run_memo[key]

    def dip_fit(self, y: torch.Tensor, protocol: str = "plain", *, clean: torch.Tensor | None = None) -> dict:
        """ONE ``denoising_fits.fit_budgets`` per protocol on y / sqrt(abar_t) to the largest of its budgets;
        every row of the chunk that reads it shares it. ``clean`` (evaluation only: it ranks the iterations for
        the oracle and never feeds the fit) must come with the first call, since the fit runs once."""
        if protocol not in self.fits:
            budgets = self.dip_budgets.get(protocol) or (self.dip_iterations, self.dip_iterations_long)
            kw = dict(preset=self.dip_presets.get(protocol) or self.dip_kw.get("preset"), lr=self.dip_kw.get("lr"))
            if self.sigma is None:  # the report's seeding: the chunk's z and seed
                kw.update(z=self.z, record_every=max(budgets))
            else:  # the sigma study's: per-image inputs, a generator from (seed, sigma), cached
                kw.update(sigma=self.sigma, cache_dir=self.cache_dir)
            self.fits[protocol] = fit_budgets(self.y_scaled(y), clean, protocol=protocol, budgets=budgets,
                                              seed=self.dip_seed, device=self.device, **kw)
        fit = self.fits[protocol]
        if clean is not None and "oracle" not in fit:
            raise RuntimeError("the shared DIP fit has already run; rows that observe it must run first")
        return fit


# --------------------------------------------------------------------------- #
# The corrected protocol: every method sees only the observation y
# --------------------------------------------------------------------------- #
def ddpm_ancestral(ctx: Context, y: torch.Tensor) -> Estimate:
    """The ancestral reverse chain from level t (the report's baseline): t evaluations."""
    x = ddpm.reverse_chain(ctx.unet, ctx.scheduler, y.to(ctx.device), ctx.t, method="ddpm",
                           generator=ctx.generators["ddpm"])
    return Estimate(x.clamp(-1, 1).cpu(), nfe=ctx.t, dip_iterations=0)


def tweedie(ctx: Context, y: torch.Tensor) -> Estimate:
    """The one-step posterior mean E[x_0 | y] (``tdpm.tweedie``): 1 evaluation."""
    return Estimate(tdpm.tweedie(ctx.unet, ctx.scheduler, y.to(ctx.device), ctx.t).cpu(), nfe=1, dip_iterations=0)


def ddim(ctx: Context, y: torch.Tensor) -> Estimate:
    """Deterministic DDIM from level t over min(t, 50) levels."""
    x = ddpm.reverse_chain(ctx.unet, ctx.scheduler, y.to(ctx.device), ctx.t, method="ddim", num_steps=ctx.ddim_steps)
    return Estimate(x.clamp(-1, 1).cpu(), nfe=ddpm.network_evaluations(ctx.t, method="ddim", num_steps=ctx.ddim_steps),
                    dip_iterations=0)


def mean_of_chains(ctx: Context, y: torch.Tensor) -> Estimate:
    """The mean of ``n_chains`` independent ancestral chains from the same y: K t evaluations."""
    yk = y.to(ctx.device).repeat_interleave(ctx.n_chains, dim=0)  # image i's K copies are rows iK..iK+K-1
    x = ddpm.reverse_chain(ctx.unet, ctx.scheduler, yk, ctx.t, method="ddpm", generator=ctx.generators["mean_k"])
    x = x.clamp(-1, 1).view(len(y), ctx.n_chains, *y.shape[1:]).mean(dim=1).cpu()
    return Estimate(x, nfe=ctx.n_chains * ctx.t, dip_iterations=0)


def dip_short(ctx: Context, y: torch.Tensor) -> Estimate:
    """The shared plain DIP fit (``Context.dip_fit``) after ``dip_iterations``."""
    fit = ctx.dip_fit(y)
    return Estimate(fit["outputs"][ctx.dip_iterations], nfe=0, dip_iterations=ctx.dip_iterations)


def dip_long(ctx: Context, y: torch.Tensor) -> Estimate:
    """The shared plain DIP fit after all ``dip_iterations_long`` iterations."""
    fit = ctx.dip_fit(y)
    return Estimate(fit["outputs"][ctx.dip_iterations_long], nfe=0, dip_iterations=ctx.dip_iterations_long)


def dip_budgets(ctx: Context, y: torch.Tensor, *, protocol: str) -> dict[str, Estimate]:
    """Candidates ``{"k=<budget>": Estimate}``: the shared fit of ``protocol`` at every budget of its grid."""
    fit = ctx.dip_fit(y, protocol)
    return {f"k={k}": Estimate(x, nfe=0, dip_iterations=k) for k, x in sorted(fit["outputs"].items())}


def dip_plain(ctx: Context, y: torch.Tensor) -> dict[str, Estimate]:
    """The report's DIP protocol (``dip.PROTOCOLS["plain"]``) at every budget of its grid."""
    return dip_budgets(ctx, y, protocol="plain")


def dip_official(ctx: Context, y: torch.Tensor) -> dict[str, Estimate]:
    """The official protocol of Ulyanov et al. (``dip.PROTOCOLS["official"]``) at every budget of its grid."""
    return dip_budgets(ctx, y, protocol="official")


def tdpm_dip(ctx: Context, y: torch.Tensor) -> Estimate:
    """``tdpm.denoise``: a DIP fit to y rescaled to the level min(T_trunc + 1, t) where the report's T_trunc starts
    its chain, then that many reverse steps.
    It shares the DIP's input z and initialisation with the plain fit, so with T_trunc = 0 it equals ``dip_short``."""
    res = tdpm.denoise(ctx.unet, ctx.scheduler, y, ctx.t, t_trunc=ctx.t_trunc_used, dip_iterations=ctx.dip_iterations,
                       generator=ctx.generators["tdpm"], z=ctx.z, seed=ctx.dip_seed, record_every=ctx.dip_iterations,
                       **ctx.dip_kw)
    return Estimate(res.x0, nfe=ctx.t_trunc_used, dip_iterations=ctx.dip_iterations, state=res.state)


def nlm_images(y_scaled: torch.Tensor, sigma01: float, *, h_factor: float = 0.8,
               patch_size: int | None = None) -> torch.Tensor:
    """skimage non-local means per image on the [0, 1] scale (not clipped), returned on [-1, 1]: filtering
    strength h = ``h_factor`` * sigma01, patches of ``patch_size`` pixels (None: 5, or 3 below 24 px),
    search distance 6."""
    from skimage.restoration import denoise_nl_means

    if isinstance(h_factor, bool) or not isinstance(h_factor, (int, float)) or not 0 < h_factor < math.inf:
        raise ValueError(f"h_factor={h_factor!r} is not allowed; use a positive number (h = h_factor * sigma)")
    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1):
        raise ValueError(f"patch_size={patch_size!r} is not allowed; use a positive integer or None")
    patch = patch_size if patch_size is not None else 5 if min(y_scaled.shape[-2:]) >= 24 else 3
    out = []
    for img in y_scaled:
        u = ((img.double() + 1) / 2).permute(1, 2, 0).numpy()
        d = denoise_nl_means(u, patch_size=patch, patch_distance=6, h=h_factor * sigma01, sigma=sigma01,
                             fast_mode=True, channel_axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(d)).permute(2, 0, 1).float() * 2 - 1)
    return torch.stack(out)


def nl_means(ctx: Context, y: torch.Tensor) -> Estimate:
    """scikit-image non-local means on y / sqrt(abar_t) on the [0, 1] scale with the true equivalent sigma
    sqrt((1 - abar_t) / abar_t) / 2, h = ``ctx.nlm_h_factor`` sigma (0.8), patch ``ctx.nlm_patch_size`` (5; 3
    below 24 px), distance 6."""
    sigma01 = math.sqrt((1 - ctx.abar) / ctx.abar) / 2
    return Estimate(nlm_images(ctx.y_scaled(y), sigma01, h_factor=ctx.nlm_h_factor, patch_size=ctx.nlm_patch_size),
                    nfe=0, dip_iterations=0)


# --------------------------------------------------------------------------- #
# Rows that see the clean image: the oracle and the report's protocol
# --------------------------------------------------------------------------- #
def _oracle(ctx: Context, y: torch.Tensor, clean: torch.Tensor, protocol: str) -> Estimate:
    fit = ctx.dip_fit(y, protocol, clean=clean)
    return Estimate(fit["oracle"], nfe=0, dip_iterations=fit["iterations"])


def dip_oracle(ctx: Context, y: torch.Tensor, clean: torch.Tensor) -> Estimate:
    """Upper bound, not a method: per image, the iteration of the shared plain DIP fit with the best PSNR against
    the clean image. The fit itself sees only y; the clean image only ranks its iterations."""
    return _oracle(ctx, y, clean, "plain")


def dip_official_oracle(ctx: Context, y: torch.Tensor, clean: torch.Tensor) -> Estimate:
    """``dip_oracle`` of the shared official-protocol fit."""
    return _oracle(ctx, y, clean, "official")


def report_dip_clean(ctx: Context, y: torch.Tensor, clean: torch.Tensor) -> Estimate:
    """The report's DIP: ``dip.fit_dip(clean, iterations=dip_iterations)``, scored against its target, the clean
    image. It does not depend on y: fit once per run and repeated in every setting."""
    g = ctx.once("report_dip_clean generator", lambda: generator(ctx.seed, OFFSETS["report_dip_clean"]))
    fit = ctx.once(("report_dip_clean", ctx.chunk), lambda: dip.fit_dip(
        clean, iterations=ctx.dip_iterations, generator=g, seed=ctx.seed * 1_000 + 500 + ctx.chunk,
        record_every=ctx.dip_iterations, **ctx.dip_kw))
    return Estimate(fit.output, nfe=0, dip_iterations=ctx.dip_iterations)


def report_dip_y(ctx: Context, y: torch.Tensor, clean: torch.Tensor) -> Estimate:
    """The report's measurement of DIP on y: the shared plain fit at ``dip_iterations``, scored against its own
    target y / sqrt(abar_t) (``target="y_scaled"`` in its table entry); it does not use the clean image."""
    return dip_short(ctx, y)


def report_tdpm_clean(ctx: Context, y: torch.Tensor, clean: torch.Tensor) -> Estimate:
    """The report's TDPM-DIP: ``tdpm.tdpm_dip`` with the target built from the clean image at T_trunc, scored
    against the clean image. It does not depend on y: run once per schedule, repeated in its settings."""
    g = ctx.once(("report_tdpm_clean generator", ctx.schedule),
                 lambda: generator(ctx.seed, OFFSETS["report_tdpm_clean"] + ctx.schedule_index))
    res = ctx.once(("report_tdpm_clean", ctx.schedule, ctx.chunk), lambda: tdpm.tdpm_dip(
        ctx.unet, ctx.scheduler, clean, t_trunc=ctx.t_trunc, dip_iterations=ctx.dip_iterations, generator=g,
        seed=ctx.seed * 1_000 + 700 + ctx.chunk, record_every=ctx.dip_iterations, **ctx.dip_kw))
    return Estimate(res.x0, nfe=res.network_evaluations, dip_iterations=ctx.dip_iterations)


# --------------------------------------------------------------------------- #
# The tables
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Method:
    label: str                           # with {fields} filled by ``denoising_labels``
    fn: Callable[..., Estimate]
    protocol: str = "corrected"          # "report": the report's protocol (not comparable with the others)
    measured_against: str = "clean"      # "dip_target": scored against the image the DIP was fit to
    target: str = "clean"                # the image the PSNR/SSIM are computed against: "clean" or "y_scaled"
    in_report: bool = True               # run by the report's t = 600 protocol (False: the sigma study's only)


# fn(ctx, y): the corrected protocol, never handed the clean image.
METHODS = {
    "ddpm": Method("DDPM ancestral from t", ddpm_ancestral),
    "tweedie": Method("DDPM one-step posterior mean (Tweedie)", tweedie),
    "ddim": Method("DDIM from t", ddim),
    "mean_k": Method("Mean of K = {n_chains} ancestral samples", mean_of_chains),
    "dip_short": Method("DIP on y/√ᾱ ({dip_iterations} it.)", dip_short),
    "dip_long": Method("DIP on y/√ᾱ ({dip_iterations_long} it.)", dip_long),
    "tdpm_dip": Method("TDPM-DIP (DIP fit to y, T_trunc = {t_trunc})", tdpm_dip),
    "nlm": Method("Non-local means (σ given)", nl_means),
    # the sigma study's DIP rows: candidates at every budget, the budget chosen on validation images
    "dip_plain": Method("DIP, report's protocol", dip_plain, in_report=False),
    "dip_official": Method("DIP, official protocol", dip_official, in_report=False),
}

# fn(ctx, y, clean): upper bounds and the report's measurements. They run before METHODS (``run_methods``), in
# this order, so that the oracles' clean images come with the first call of the shared DIP fits (keep them
# first). An oracle keeps the protocol label "corrected": it ranks the corrected fit's iterations and is scored
# like the corrected rows.
WITH_CLEAN = {
    "dip_oracle": Method("DIP oracle best iteration (upper bound)", dip_oracle),
    "dip_official_oracle": Method("DIP, official protocol, best iteration (upper bound)", dip_official_oracle,
                                  in_report=False),
    "report_dip_clean": Method("DIP fit to the clean image (report), vs its target", report_dip_clean,
                               protocol="report", measured_against="dip_target"),
    "report_dip_y": Method("DIP fit to y, vs its own target y/√ᾱ (report's measurement)", report_dip_y,
                           protocol="report", measured_against="dip_target", target="y_scaled"),
    "report_tdpm_clean": Method("TDPM-DIP, target built from the clean image (report)", report_tdpm_clean,
                                protocol="report"),
}

DENOISING_METHODS = {k: m.label for k, m in (METHODS | WITH_CLEAN).items() if m.in_report}  # the report's rows
REPORT_PROTOCOL = tuple(k for k, m in WITH_CLEAN.items() if m.protocol == "report")


def run_methods(ctx: Context, y: torch.Tensor, keys, *, clean: torch.Tensor | None = None) -> dict:
    """THE runner of both denoising studies: ``{key: fn(ctx, y)}`` for the keys of ``METHODS`` and
    ``{key: fn(ctx, y, clean)}`` for those of ``WITH_CLEAN`` (read now, so an added entry runs), the latter
    first, each group in the order given. A value is an ``Estimate``, or ``{params: Estimate}`` for a method with
    a grid. ``clean`` is handed only to ``WITH_CLEAN``'s rows; asking for one of them without it is an error."""
    keys = list(keys)
    bad = [k for k in keys if k not in METHODS and k not in WITH_CLEAN]
    if bad:
        raise ValueError(f"methods {bad} are not allowed; use keys of {list(METHODS | WITH_CLEAN)}")
    needs = [k for k in keys if k in WITH_CLEAN]
    if needs and clean is None:
        raise ValueError(f"methods {needs} need the clean image (clean=...); the others see only y")
    out = {k: WITH_CLEAN[k].fn(ctx, y, clean) for k in needs}
    out.update({k: METHODS[k].fn(ctx, y) for k in keys if k in METHODS})
    return out


def denoising_labels(*, dip_iterations: int, dip_iterations_long: int, n_chains: int, t_trunc: int) -> dict:
    """Key -> label of the denoising methods (both tables, read now), with the run's iteration counts filled in."""
    fields = dict(dip_iterations=dip_iterations, dip_iterations_long=dip_iterations_long, n_chains=n_chains,
                  t_trunc=t_trunc)
    return {k: m.label.format(**fields) for k, m in (METHODS | WITH_CLEAN).items()}
