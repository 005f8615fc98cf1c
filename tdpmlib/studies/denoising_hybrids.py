"""The hybrids of the denoising study (``study.run``), built on the validated official-protocol DIP fit.

Every hybrid starts from the DIP output x_hat at a budget k of the one fit that gives every budget's output.

* **The matched state** (``tdpm.matched_state``): x_hat topped up with fresh noise to the level T_trunc expects.
  Its error estimate is corrected for the share of the observation noise the DIP has fitted: the fraction
  ``absorbed`` is calibrated per budget k on the validation images (``tdpm.calibrate_absorbed``, which needs the
  clean images and so is a tuned choice like k) and used unchanged on the test images. One state per (k, T_trunc)
  and split, drawn once, is read out three ways (``tdpm.READOUTS``):

  - ``tdpm_matched``: one ancestral chain of T_trunc steps (the report's readout); (k, T_trunc) validated;
  - ``tdpm_matched_pm``: the one-step posterior mean E[x_0 | x_T] of the same state; its own (k, T_trunc)
    validated over the same grid (1 network evaluation per candidate);
  - ``tdpm_matched_mean``: the mean of n ancestral chains from the same state at ``tdpm_matched``'s validated
    (k, T_trunc), n chosen on validation. Chain 1 is ``tdpm_matched``'s chain (the chains are drawn one after
    another from the generator that drew the state, as ``tdpm.read_out`` draws them), so n = 1 is that method
    and the chains' mean for n is the mean of the first n chains.

  Where two readouts use the same (k, T_trunc) they read out the same state tensor: like with like.
* ``sdedit``: Example 1, x_hat re-noised to t_0 with fresh noise (``example1.dip_init_ddpm``), then t_0 steps.

Diagnostics of the matched rows (they use the clean image; nothing is chosen by them): ``noise_ratio``, the
state's actual over expected noise std (``tdpm.noise_ratio``); ``absorbed``; and the noise ratio of a state
matched at T_trunc = t from the same x_hat with and without the correction (``noise_ratio_at_t`` and
``noise_ratio_at_t_uncalibrated``), the level where an uncorrected estimate shows its bias most.

``run_hybrids`` takes the study's ``add`` (rows) and ``choose`` (validation selection) so that the rows and the
selection table have one definition, in ``study``.
"""

from __future__ import annotations

import itertools

import torch

from ..methods import tdpm
from . import dip_init

MATCHED = ("tdpm_matched", "tdpm_matched_pm", "tdpm_matched_mean")


def levels_for(fractions, t: int) -> list[int]:
    """Candidate levels: each fraction of t rounded, at least 1, without repeats, ascending."""
    return sorted({max(1, round(fr * t)) for fr in fractions})


class MatchedStates:
    """The matched state per (candidate, split), drawn once on first use, with its readouts. The state's fresh
    noise and the ancestral chains come from one generator per split (the same seed for every candidate), so
    candidates differ only in their DIP output and level."""

    def __init__(self, unet, scheduler, *, fit, y, clean, t, absorbed, splits, seeds):
        self.unet, self.scheduler, self.fit, self.y, self.clean, self.t = unet, scheduler, fit, y, clean, t
        self.absorbed, self.splits, self.seeds, self.cache = absorbed, splits, seeds, {}

    def get(self, k: int, level: int, split: str) -> dict:
        if (k, level, split) not in self.cache:
            sl = self.splits[split]
            g = torch.Generator().manual_seed(self.seeds[split])
            state = tdpm.matched_state(self.fit["outputs"][k][sl], self.y[sl], self.t, level, self.scheduler,
                                       generator=g, absorbed=self.absorbed[k])
            self.cache[(k, level, split)] = dict(state=state, g=g, chains=[], level=level,
                                                 ratio=tdpm.noise_ratio(state, self.clean[sl], level, self.scheduler))
        return self.cache[(k, level, split)]

    def chains(self, k: int, level: int, split: str, n: int) -> torch.Tensor:
        """The mean of the first n ancestral chains (n = 1: the ancestral readout), drawing only missing ones."""
        s = self.get(k, level, split)
        while len(s["chains"]) < n:
            s["chains"].append(tdpm.read_out(self.unet, self.scheduler, s["state"], level, generator=s["g"]))
        return torch.stack(s["chains"][:n]).mean(0)

    def posterior_mean(self, k: int, level: int, split: str) -> torch.Tensor:
        s = self.get(k, level, split)
        return tdpm.read_out(self.unet, self.scheduler, s["state"], level, readout="posterior_mean")


def run_hybrids(unet, scheduler, *, fit: dict, y: torch.Tensor, y_scaled: torch.Tensor, clean: torch.Tensor,
                n_val: int, t: int, v_obs: float, sigma: int, seed: int, t_truncs, t0s, readout_chains, add,
                choose) -> dict:
    """Every hybrid candidate on the validation images, the chosen one on the test images (module doc); rows go
    through ``add(key, x, nfe=, its=, params=, diag=)`` and candidates through ``choose(key, {params: x_val},
    {params: fields})``. Returns the chosen (k, level) per hybrid."""
    splits = {"val": slice(0, n_val), "test": slice(n_val, len(clean))}
    val = clean[splits["val"]]
    ks = sorted(fit["outputs"])
    absorbed = {k: tdpm.calibrate_absorbed(fit["outputs"][k][splits["val"]], y_scaled[splits["val"]], val, v_obs)
                for k in ks}
    base = seed * 1_000_003 + 6000 + 10 * sigma
    ms = MatchedStates(unet, scheduler, fit=fit, y=y, clean=clean, t=t, absorbed=absorbed, splits=splits,
                       seeds={"val": base, "test": base + 5})
    names = {f"k={k}, T_trunc={level}": (k, level) for k, level in itertools.product(ks, levels_for(t_truncs, t))}
    fields = {n: dict(k=k, level=level, absorbed=absorbed[k]) for n, (k, level) in names.items()}

    best = choose("tdpm_matched", {n: ms.chains(*kl, "val", 1) for n, kl in names.items()}, fields)
    best_pm = choose("tdpm_matched_pm", {n: ms.posterior_mean(*kl, "val") for n, kl in names.items()}, fields)
    means = {f"{best}, n={n}": n for n in readout_chains}
    best_mean = choose("tdpm_matched_mean", {m: ms.chains(*names[best], "val", n) for m, n in means.items()},
                       {m: fields[best] for m in means})

    def ratios_at_t(k):
        """(uncorrected, corrected) noise ratio of the state matched at T_trunc = t from budget k, every image."""
        out = []
        for a in (0.0, absorbed[k]):
            state = tdpm.matched_state(fit["outputs"][k], y, t, t, scheduler, absorbed=a,
                                       generator=torch.Generator().manual_seed(seed * 1_000_003 + 8000 + sigma))
            out.append(tdpm.noise_ratio(state, clean, t, scheduler))
        return out

    def add_matched(key, name, readout, nfe, params):
        k, level = names[name]
        x = torch.cat([readout(k, level, s) for s in splits])
        uncorrected, corrected = ratios_at_t(k)
        add(key, x, nfe=nfe, its=k, params=params, diag=dict(
            noise_ratio=torch.cat([ms.get(k, level, s)["ratio"] for s in splits]),
            absorbed=torch.full((len(clean),), absorbed[k], dtype=torch.float64), noise_ratio_at_t=corrected,
            noise_ratio_at_t_uncalibrated=uncorrected))

    level = names[best][1]
    add_matched("tdpm_matched", best, lambda k, lv, s: ms.chains(k, lv, s, 1), level, best)
    add_matched("tdpm_matched_pm", best_pm, ms.posterior_mean, tdpm.readout_nfe("posterior_mean", names[best_pm][1]),
                best_pm)
    n = means[best_mean]
    add_matched("tdpm_matched_mean", best, lambda k, lv, s: ms.chains(k, lv, s, n),
                tdpm.readout_nfe("mean_chains", level, n_chains=n), best_mean)

    # Example 1 (DIP then SDEdit): every (k, t_0) on validation, the chosen one on test
    sd_names = {f"k={k}, t0={lv}": (k, lv) for k, lv in itertools.product(ks, levels_for(t0s, t))}

    def sdedit(k, lv, split):
        g = torch.Generator().manual_seed(base + 1 + (5 if split == "test" else 0))
        return dip_init.dip_init_ddpm(unet, scheduler, fit["outputs"][k][splits[split]], lv, generator=g).clamp(-1, 1).cpu()

    on_val = {n: sdedit(*kl, "val") for n, kl in sd_names.items()}
    best_sd = choose("sdedit", on_val, {n: dict(k=k, level=lv) for n, (k, lv) in sd_names.items()})
    k, lv = sd_names[best_sd]
    add("sdedit", torch.cat([on_val[best_sd], sdedit(k, lv, "test")]), nfe=lv, its=k, params=best_sd)
    return {"tdpm_matched": names[best], "tdpm_matched_pm": names[best_pm], "tdpm_matched_mean": names[best],
            "sdedit": sd_names[best_sd]}
