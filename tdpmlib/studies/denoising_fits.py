"""The one DIP fit of the denoising methods: one network per image, fitted once to the largest budget.

``fit_budgets`` returns the outputs at every budget of a grid (``dip.fit_dip``'s ``keep``), so a budget search
costs no extra fitting, and, when the clean images are given, the oracle output (the best iteration per image
against them: an upper bound, evaluation only). Every DIP row of the denoising tables reads such a fit through
``denoising_methods.Context.dip_fit``: the report's t = 600 rows (a grid of two budgets) and the sigma study's
validated budgets alike. Chapter 02 calls ``fit_budgets`` and chapter 05 ``dip_input`` directly, for the same fits.

Seeding: either the caller's z (and optional generator) or, with ``sigma``, the sigma study's per-image inputs
(``dip_input``: image i's z from its own generator, so it does not depend on how images are grouped) and a
generator from (seed, sigma). With ``cache_dir`` a fit is stored under a hash of every input and reloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

from ..methods import dip
from ..workflow import results


def image_generators(seed: int, sigma: int, n: int, purpose: int) -> list[torch.Generator]:
    """Image i's generator for a purpose (1: the observation's noise, 2/3: the plain/official DIP input)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + 100_000 * purpose + 1000 * sigma + i) for i in range(n)]


def dip_input(protocol: str, n: int, size: int, *, seed: int, sigma: int) -> torch.Tensor:
    """Per-image DIP inputs z (``dip.draw_input`` of the protocol, image i from its own generator)."""
    return torch.cat([dip.draw_input(protocol, (1, size, size), g)
                      for g in image_generators(seed, sigma, n, 2 if protocol == "plain" else 3)])


def fit_budgets(y_scaled: torch.Tensor, clean: torch.Tensor | None, *, protocol: str, budgets, seed: int,
                device, sigma: int | None = None, z: torch.Tensor | None = None,
                generator: torch.Generator | None = None, preset: str | None = None, lr: float | None = None,
                record_every: int | None = None, cache_dir=None) -> dict:
    """One DIP fit per image of ``y_scaled`` to max(budgets); returns ``outputs`` at every budget, ``iterations``
    (the fit's length), ``history`` and, with ``clean``, the ``oracle`` output with its ``oracle_iteration``. No
    seconds: a budget's cost is its iterations (wall clock comes from one benchmark, chapter 08).

    Inputs: ``z`` and ``generator`` as given, or with ``sigma`` (and no z) the sigma study's ``dip_input`` and a
    generator seeded from (seed, sigma). With ``cache_dir`` the result is stored there
    (``results.save_checkpoint``) under a name that hashes every input, so chapters that need the same fit load it
    instead of fitting again; any change refits."""
    budgets = sorted(set(budgets))
    if not budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in budgets):
        raise ValueError(f"budgets={budgets!r} is not allowed; use positive integers")
    if z is None and sigma is None:
        raise ValueError("fit_budgets needs z or sigma: give the DIP input, or the noise level that seeds it")
    record_every = record_every or max(1, budgets[0] // 4)
    p = dip.check_protocol(protocol)  # hash the settings the fit really uses, so a changed default refits
    preset, lr = preset or p.preset, p.lr if lr is None else lr
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        for tensor in (y_scaled, clean, z):
            if tensor is not None:
                h.update(tensor.float().contiguous().numpy().tobytes())
        h.update(repr((protocol, budgets, seed, sigma, preset, lr, record_every, torch.device(device).type)).encode())
        path = Path(cache_dir) / f"dip_{protocol}_sigma{sigma}_{h.hexdigest()[:16]}.pt"
        if path.exists():
            saved = results.load_checkpoint(path)
            saved.pop("seconds", None)  # stored by earlier versions
            return dict(saved, history=pd.DataFrame(saved["history"]))
    if z is None:
        z = dip_input(protocol, len(y_scaled), y_scaled.shape[-1], seed=seed, sigma=sigma)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 4000 + sigma)
    fit = dip.fit_dip(y_scaled, iterations=budgets[-1], z=z, protocol=protocol, preset=preset, lr=lr, seed=seed,
                      device=device, reference=clean, keep=budgets, record_every=record_every, generator=generator)
    out = dict(outputs=fit.outputs, iterations=budgets[-1], history=fit.history)
    if clean is not None:
        out.update(oracle=fit.best_output, oracle_iteration=fit.best_iteration)
    if path is not None:
        results.save_checkpoint(path, dict(out, history=fit.history.to_dict(orient="list")))
    return out
