"""The Deep Image Prior protocols that ``dip.fit_dip`` runs, by name: their settings, the checks of a fit's
arguments and the fixed network input z.

Three protocols, picked by name (``fit_dip(..., protocol=...)``; their settings are ``PROTOCOLS``):

* ``"plain"`` (default) -- the reproduced report's DIP as the author's code runs it (``DIP.ipynb`` and
  ``models/TDPM-DIP_model.py``): a diffusers UNet (``models.PRESETS``) called with timestep 0 on a fixed
  3-channel z ~ N(0, 1); Adam at lr 1e-4 on the MSE to the target; no input jitter, averaging or backtracking.
* ``"eswmv"`` -- the DIP that the ES-WMV authors run: the official network, input and jitter at lr 0.01,
  without averaging or backtracking (``PROTOCOLS``).
* ``"official"`` -- the denoising protocol of the official code of Ulyanov et al. 2018
  (github.com/DmitryUlyanov/deep-image-prior, ``denoising.ipynb``): the skip network (``skipnet``) on a
  32-channel z ~ U(0, 1) * 0.1 (``get_noise(32, 'noise', ..., var=1./10)``); at every step z is re-jittered
  with fresh N(0, (1/30)^2) noise (``reg_noise_std``); Adam at lr 0.01 (``LR``); an exponential average of
  the outputs, out_avg = 0.99 * out_avg + 0.01 * out, started at the first output (``exp_weight``); and
  backtracking. The averaged output is what is returned, recorded, kept and shown to monitors (the notebook
  evaluates ``out_avg``); the raw output is recorded beside it. The sigmoid output s on [0, 1] enters this
  project as 2 s - 1 on [-1, 1]; the loss is the official [0, 1]-scale MSE (a quarter of the [-1, 1] MSE).
  The official network is preset "skip-paper" (5 scales, images of 64 px or more) or "skip-paper-4scales"
  (the same widths at 32 px); the default preset is the narrower CPU variant "skip-cpu".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DIPProtocol:
    """The named settings of one DIP protocol (``PROTOCOLS``)."""

    network: str                        # "unet": models.PRESETS; "skip": skipnet.PRESETS
    preset: str                         # the default preset
    lr: float                           # the default Adam learning rate
    input_channels: int                 # z is B x input_channels x H x W
    input_noise: str                    # "normal": z ~ N(0, 1); "uniform": z ~ U(0, 1) * input_scale
    input_scale: float = 1.0
    jitter_std: float = 0.0             # std of the fresh Gaussian noise added to z at every step (0: none)
    ema: float = 0.0                    # out_avg = ema * out_avg + (1 - ema) * out (0: no averaging)
    backtrack_db: float | None = None   # restore when the PSNR to the target drops by more than this (None: never)
    backtrack_every: int = 100          # the check is skipped when the image's counter is a multiple of this
    loss_scale: float = 1.0             # the training loss is loss_scale * (sum of per-image [-1, 1] MSEs)


PROTOCOLS = {
    # lr 1e-4: the author's (the report's text gives none; the book used 1e-3 before, which fits 10x closer in 100 steps)
    "plain": DIPProtocol("unet", "dip-cpu", 1e-4, 3, "normal"),
    "official": DIPProtocol("skip", "skip-cpu", 0.01, 32, "uniform", input_scale=0.1, jitter_std=1 / 30, ema=0.99,
                            backtrack_db=5.0, backtrack_every=100, loss_scale=0.25),
    # The DIP the ES-WMV authors run (github.com/sun-umn/Early_Stopping_for_DIP, ES_WMV.ipynb): the same skip
    # network, input and jitter as the official protocol, Adam at 0.01, but no output averaging and no
    # backtracking (both would smooth the very variance the rule watches).
    "eswmv": DIPProtocol("skip", "skip-cpu", 0.01, 32, "uniform", input_scale=0.1, jitter_std=1 / 30,
                         loss_scale=0.25),
}


def check_protocol(protocol) -> DIPProtocol:
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not allowed; use one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def check_positive_int(name: str, v, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r} is not allowed; use an integer >= {low}")
    return v


def check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr={lr!r} is not allowed; use a number in (0, 1)")
    return float(lr)


def draw_input(protocol: str, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """The fixed network input z for ``shape`` = (B, H, W), drawn from ``generator`` (CPU)."""
    p = check_protocol(protocol)
    b, h, w = shape
    if p.input_noise == "normal":
        return torch.randn(b, p.input_channels, h, w, generator=generator)
    return torch.rand(b, p.input_channels, h, w, generator=generator) * p.input_scale
