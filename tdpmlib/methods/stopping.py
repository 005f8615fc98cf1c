"""Early-stopping rules for a DIP fit that see only its outputs and losses, never the clean image (notebook 05).

``Discrepancy`` (Morozov's discrepancy principle) and ``ESWMV`` (the windowed moving variance of Wang et
al., "Early Stopping for Deep Image Prior", TMLR 2023) are ``dip.fit_dip`` monitors: ``update(k, output,
loss)`` after every iteration k (the output after k updates), per image, so they serve batched fits.
``eswmv_fit`` runs ES-WMV as its authors do: on its own fit, at their learning rate, until the rule has
stopped every image (or a cap), since a fit shorter than the patience can never see the rule fire.

The official code (github.com/sun-umn/Early_Stopping_for_DIP, ``ES_WMV.ipynb``) and ``ESWMV`` agree on:
the window holds the last W = ``buffer_size`` = 100 outputs, read before each Adam step (``closure``);
the variance is the mean over the window of ``((mean image - x_w) ** 2).sum() / x.size`` (``myMetric``),
i.e. the per-pixel population variance across the window averaged over pixels; ``EarlyStop.check_stop``
resets its wait on a strictly smaller variance and stops once ``wait_count >= patience`` (P = 1000), i.e.
P iterations after the last minimum; the detection is ``best_epoch``, the minimum's iteration, whose
output (PSNR) the paper reports. Their fit: Adam, lr 0.01, 5000 iterations (``num_iter``), continued past
the stop (it only freezes the detection).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..evaluation import metrics
from . import dip

# ES-WMV as its authors run it (ES_WMV.ipynb, the settings cell: ``buffer_size = 100``, ``patience = 1000``,
# ``lr = 0.01``, ``alg = 'adam'``, ``num_iter = 5000``).
ESWMV_WINDOW, ESWMV_PATIENCE, ESWMV_LR, ESWMV_MAX_ITERATIONS = 100, 1000, 0.01, 5000
SMOKE_ESWMV_MAX_ITERATIONS = 1500  # the smoke profile's cap: still >= W + P, so the rule can fire there too


def eswmv_cap(profile: str) -> int:
    """The cap of the ES-WMV fit: the official 5000 iterations (num_iter), except on the smoke profile."""
    return SMOKE_ESWMV_MAX_ITERATIONS if profile == "smoke" else ESWMV_MAX_ITERATIONS


class Discrepancy:
    """Morozov's discrepancy principle as a ``dip.fit_dip`` monitor: image i stops at the first iteration
    whose residual variance (the fit's per-image MSE loss) is <= ``noise_var`` (a number or one per image,
    in the target's units). An image for which it never fires keeps the last iteration seen (``fired`` False)."""

    def __init__(self, noise_var):
        self.noise_var = torch.as_tensor(noise_var, dtype=torch.float64)
        self.fired = None
        self._stop = None
        self._out = None
        self._last_k, self._last_out = -1, None

    def update(self, k, out, loss):
        loss = loss.detach().double().cpu()
        if self.fired is None:
            B = len(loss)
            self.fired = torch.zeros(B, dtype=torch.bool)
            self._stop = torch.full((B,), -1, dtype=torch.long)
            self._out = torch.zeros(out.shape)
        hit = ~self.fired & (loss <= self.noise_var)
        if hit.any():
            self._stop[hit] = k
            self._out[hit] = out.detach().float().cpu()[hit]
            self.fired |= hit
        self._last_k, self._last_out = k, out

    @property
    def stop_iteration(self) -> torch.Tensor:
        return torch.where(self.fired, self._stop, torch.full_like(self._stop, self._last_k))

    @property
    def output(self) -> torch.Tensor:
        last = self._last_out.detach().float().cpu()
        return torch.where(self.fired[:, None, None, None], self._out, last)


class ESWMV:
    """ES-WMV (Wang et al., "Early Stopping for Deep Image Prior", TMLR 2023): windowed moving variance.

    After each iteration k the variance of the last ``window`` outputs x_{k-W+1..k} is
    VAR_k = mean over pixels of the per-pixel variance across the window (the paper's
    (1/W) sum_w ||x_w - mean||_F^2 divided by the pixel count: the same argmin). Image i's detected
    iteration is the k with the smallest VAR_k seen so far, and its output is x_k there; the rule stops
    image i once VAR has not reached a new minimum for ``patience`` iterations, freezing the detection.
    ``stopped`` / ``stop_k`` record, per image, whether and where the patience ran out: P iterations after
    the last minimum, as the official ``EarlyStop.check_stop`` (module doc). Defaults W = 100, P = 1000 are
    the paper's. A fit shorter than the patience never stops: the detection is then the argmin over every
    full window seen. With no full window at all, the last iteration is returned (``valid`` False).
    Per-image throughout, so it serves batched fits; ``fit_dip`` still runs its full length (the monitor
    records where the rule stops), ``eswmv_fit`` ends the fit once every image has stopped.
    """

    def __init__(self, *, window: int = ESWMV_WINDOW, patience: int = ESWMV_PATIENCE):
        self.window = dip.check_positive_int("window", window)
        self.patience = dip.check_positive_int("patience", patience)
        self._buf = deque()
        self._s1 = self._s2 = None
        self.variances: list[tuple[int, torch.Tensor]] = []
        self.best_var = self.best_k = self.best_out = self.stopped = self.stop_k = None
        self._last_k, self._last_out = -1, None

    def update(self, k, out, loss=None):
        x = out.detach()
        xd = x.double()
        if self._s1 is None:
            B = len(x)
            self._s1, self._s2 = torch.zeros_like(xd), torch.zeros_like(xd)
            self.best_var = torch.full((B,), float("inf"), dtype=torch.float64)
            self.best_k = torch.full((B,), -1, dtype=torch.long)
            self.best_out = torch.zeros(x.shape)
            self.stopped = torch.zeros(B, dtype=torch.bool)
            self.stop_k = torch.full((B,), -1, dtype=torch.long)
        self._buf.append(x)
        self._s1 += xd
        self._s2 += xd * xd
        if len(self._buf) > self.window:
            old = self._buf.popleft().double()
            self._s1 -= old
            self._s2 -= old * old
        self._last_k, self._last_out = k, x
        if len(self._buf) < self.window:
            return
        mean = self._s1 / self.window
        var = (self._s2 / self.window - mean * mean).clamp_min(0).mean(dim=(1, 2, 3)).cpu()
        self.variances.append((k, var.float()))
        improved = ~self.stopped & (var < self.best_var)
        if improved.any():
            self.best_var = torch.where(improved, var, self.best_var)
            self.best_k[improved] = k
            self.best_out[improved] = x.float().cpu()[improved]
        newly = ~self.stopped & (self.best_k >= 0) & (k - self.best_k >= self.patience)
        self.stopped |= newly
        self.stop_k[newly] = k

    @property
    def valid(self) -> torch.Tensor:
        return self.best_k >= 0

    @property
    def detected(self) -> torch.Tensor:
        """Per image: the iteration of the minimal windowed variance (the last seen when no full window)."""
        return torch.where(self.valid, self.best_k, torch.full_like(self.best_k, self._last_k))

    @property
    def output(self) -> torch.Tensor:
        last = self._last_out.float().cpu()
        return torch.where(self.valid[:, None, None, None], self.best_out, last)

    def variance_frame(self) -> pd.DataFrame:
        """Long table (image, iteration, wmv) of the windowed variances seen."""
        if not self.variances:
            return pd.DataFrame(columns=["image", "iteration", "wmv"])
        ks = [k for k, _ in self.variances]
        v = torch.stack([v for _, v in self.variances])  # K x B
        B = v.shape[1]
        return pd.DataFrame(dict(image=np.tile(np.arange(B), len(ks)), iteration=np.repeat(ks, B),
                                 wmv=v.flatten().numpy()))


@dataclass
class ESWMVRun:
    """One ``eswmv_fit``: the monitor (detections, stops, variances) and the fit's evaluation record."""
    monitor: ESWMV
    history: pd.DataFrame          # image, iteration, loss[, psnr_ref]: every iteration seen
    iterations: int                # the last iteration seen (the fit ends once every image has stopped)
    max_iterations: int
    lr: float
    seconds: float
    best_iteration: torch.Tensor | None = None  # oracle over this fit (evaluation only)
    best_psnr: torch.Tensor | None = None
    best_output: torch.Tensor | None = None

    @property
    def fired_fraction(self) -> float:
        """The share of images whose rule stopped (patience ran out) within the budget."""
        return float(self.monitor.stopped.double().mean())


def eswmv_fit(target: torch.Tensor, *, seed: int, device, z: torch.Tensor | None = None,
              generator: torch.Generator | None = None, protocol: str = "eswmv", preset: str | None = None,
              lr: float = ESWMV_LR, window: int = ESWMV_WINDOW, patience: int = ESWMV_PATIENCE,
              max_iterations: int = ESWMV_MAX_ITERATIONS, reference: torch.Tensor | None = None,
              indices=None, jitter_generator: torch.Generator | None = None, fast: bool | None = None) -> ESWMVRun:
    """ES-WMV as its authors run it: one DIP per image (``protocol`` "eswmv": their skip network, 32-channel
    input jittered at every step; z drawn from ``generator`` unless given) fit to ``target`` by Adam at ``lr``
    (0.01, the official code's), watched by ``ESWMV(window, patience)``, until the rule has stopped every image
    or ``max_iterations`` updates (the official fit runs 5000). A rule stops image i ``patience`` iterations
    after its last variance minimum, so the fit lasts at least W + P iterations. Iteration k's output is
    G(z) after k updates, as in ``dip.fit_dip`` (and the official loop, which reads the output before each
    step). ``reference`` (clean images) is used only for the recorded PSNR and this fit's oracle.
    ``indices``: the networks' initial-weight indices (``dip.DIPFitter``). The input jitter comes from
    ``jitter_generator``; by default, as in ``dip.fit_dip``, from a generator seeded by one draw from
    ``generator`` after z (with ``seed`` when there is no generator)."""
    dip.check_positive_int("max_iterations", max_iterations)
    monitor = ESWMV(window=window, patience=patience)
    if z is None:
        z = dip.draw_input(protocol, (len(target), *target.shape[-2:]), generator)
    if dip.check_protocol(protocol).jitter_std and jitter_generator is None:
        s = seed if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        jitter_generator = torch.Generator(torch.device(device)).manual_seed(s)
    fitter = dip.DIPFitter(z, protocol=protocol, preset=preset, lr=lr, seed=seed, device=device, fast=fast,
                           indices=indices, jitter_generator=jitter_generator)
    target_d = target.to(fitter.device)
    ref = reference.to(fitter.device) if reference is not None else None
    B = len(target)
    best = dip.BestIteration(B)
    cols = {c: [] for c in ("image", "iteration", "loss", *(("psnr_ref",) if ref is not None else ()))}
    with metrics.CudaTimer(fitter.device) as timer:
        for k in range(max_iterations + 1):
            if k < max_iterations:
                out, loss = fitter.step(target_d)
            else:
                out = fitter.output()
                loss = ((out - target_d) ** 2).mean(dim=(1, 2, 3))
            monitor.update(k, out, loss)
            cols["image"].append(torch.arange(B))
            cols["iteration"].append(torch.full((B,), k))
            cols["loss"].append(loss.double().cpu())
            if ref is not None:
                p = metrics.psnr(out, ref).cpu()
                cols["psnr_ref"].append(p)
                best.update(k, out, p)
            if monitor.stopped.all():
                break
    hist = pd.DataFrame({c: torch.cat(v).numpy() for c, v in cols.items()})
    return ESWMVRun(monitor=monitor, history=hist, iterations=k, max_iterations=max_iterations, lr=lr,
                    seconds=timer.seconds, best_iteration=best.iteration if ref is not None else None,
                    best_psnr=best.psnr if ref is not None else None, best_output=best.output)
