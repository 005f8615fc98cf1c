"""The skip (hourglass) network of the official Deep Image Prior code, as used for denoising.

Ulyanov, Vedaldi & Lempitsky, "Deep Image Prior", CVPR 2018; official code
github.com/DmitryUlyanov/deep-image-prior: ``models/skip.py`` (the layout), ``models/common.py`` (conv, bn,
act), ``models/__init__.py`` (``get_net(..., 'skip', ...)``) and ``denoising.ipynb`` (the F16 settings).
``denoising.ipynb`` builds ``get_net(32, 'skip', 'reflection', skip_n33d=128, skip_n33u=128, skip_n11=4,
num_scales=5, upsample_mode='bilinear')``, which is ``SkipNet()`` here with the defaults below.

One scale ``i`` of the encoder-decoder, nested, from the input (the official ``nn.Sequential`` in the same
order, so the parameters come out in the same order)::

    x -> skip:   conv 1x1 (C_in -> s) , BN, LeakyReLU                                [only if s > 0]
    x -> deeper: conv 3x3 stride 2 (C_in -> d), BN, LReLU, conv 3x3 (d -> d), BN, LReLU,
                 [scale i + 1, whose output has u channels], bilinear upsample x 2
    cat(skip, deeper) -> BN -> conv 3x3 (s + k -> u), BN, LReLU -> conv 1x1 (u -> u), BN, LReLU

(k = u of the next scale, or d at the deepest one). The head is conv 1x1 (u -> 3) and a sigmoid, so the
output is on [0, 1], the official image range. Every conv pads by reflection, every conv has a bias,
BatchNorm is ``nn.BatchNorm2d`` (eps 1e-5, affine). Downsampling is by the stride-2 conv itself
(``downsample_mode='stride'``).

BatchNorm here does not track running statistics: DIP only ever runs the network in training mode (the
official notebook never calls ``net.eval()``), where BatchNorm normalises by the statistics of the current
batch -- the one image being fitted -- so the outputs are those of the official network, and the module
has no buffers, which keeps ``torch.func.vmap`` over stacked networks free of in-place buffer updates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {
    # The official denoising network: 128 channels down and up at every scale, 4 skip channels, 5 scales
    # (denoising.ipynb, F16 branch). 5 scales need images of at least 64 px.
    "skip-paper": dict(channels=128, skip_channels=4, scales=5),
    # The official widths with one scale fewer, so that it runs on the book's 32 x 32 images.
    "skip-paper-4scales": dict(channels=128, skip_channels=4, scales=4),
    # The book's CPU variant at 32 x 32: a quarter of the width (0.12 M parameters per network instead of 2.2 M).
    "skip-cpu": dict(channels=32, skip_channels=4, scales=4),
    # For tests: runs on 8 x 8 images in milliseconds.
    "skip-tiny": dict(channels=4, skip_channels=2, scales=2),
}


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed for the skip network; use one of {sorted(PRESETS)}")
    return preset


def check_resolution(resolution, scales: int) -> int:
    """``scales`` stride-2 convolutions halve the image ``scales`` times, and the deepest map must still be at
    least 2 px for the 3x3 reflection padding, so the side must be a multiple of 2**scales and >= 2**(scales+1)
    (the official code crops its images to multiples of 32 for its 5 scales)."""
    factor = 2 ** scales
    ok = isinstance(resolution, int) and not isinstance(resolution, bool)
    if not ok or resolution < 2 * factor or resolution % factor:
        raise ValueError(f"resolution={resolution!r} is not allowed with scales={scales}; use a multiple of {factor} "
                         f"that is at least {2 * factor}")
    return resolution


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    # models/common.py conv(..., pad='reflection'): ReflectionPad2d((k - 1) // 2) then an unpadded conv.
    return nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, padding_mode="reflect", bias=True)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, track_running_stats=False)  # batch statistics always: see the module docstring


def _block(c_in: int, c_out: int, kernel: int, stride: int = 1, slope: float = 0.2) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out, kernel, stride), _bn(c_out), nn.LeakyReLU(slope))


class _Scale(nn.Module):
    """One scale of the hourglass; ``inner`` is the next (coarser) scale, or None at the deepest one."""

    def __init__(self, c_in: int, down: int, up: int, skip: int, inner: _Scale | None, *, k_down: int,
                 k_up: int, k_skip: int, upsample_mode: str, slope: float):
        super().__init__()
        self.skip = _block(c_in, skip, k_skip, slope=slope) if skip else None
        self.down = nn.Sequential(_block(c_in, down, k_down, 2, slope), _block(down, down, k_down, slope=slope))
        self.inner = inner
        k = inner.up_channels if inner is not None else down
        self.bn_cat = _bn(skip + k)
        self.up = nn.Sequential(_block(skip + k, up, k_up, slope=slope), _block(up, up, 1, slope=slope))  # need1x1_up
        self.up_channels, self.upsample_mode = up, upsample_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        if self.inner is not None:
            d = self.inner(d)
        d = F.interpolate(d, scale_factor=2, mode=self.upsample_mode,
                          align_corners=False if self.upsample_mode == "bilinear" else None)
        if self.skip is not None:
            d = torch.cat([self.skip(x), d], dim=1)  # official Concat(1, skip, deeper): skip first
        return self.up(self.bn_cat(d))


class SkipNet(nn.Module):
    """The official DIP skip network; defaults are the official denoising setting (see the module docstring).

    ``resolution`` is the image side the network will see, checked against ``scales``. The output is the
    sigmoid's, on [0, 1] (``need_sigmoid=True``); map it to [-1, 1] as 2 * out - 1.
    """

    def __init__(self, *, resolution: int, in_channels: int = 32, out_channels: int = 3, channels: int = 128,
                 skip_channels: int = 4, scales: int = 5, kernel_down: int = 3, kernel_up: int = 3,
                 kernel_skip: int = 1, upsample_mode: str = "bilinear", leaky_slope: float = 0.2):
        super().__init__()
        # in_channels=32: denoising.ipynb input_depth = 32; channels=128: skip_n33d = skip_n33u = 128;
        # skip_channels=4: skip_n11 = 4; scales=5: num_scales = 5; kernels 3/3/1: skip()'s filter_size_down,
        # filter_size_up, filter_skip_size defaults; bilinear: upsample_mode='bilinear'; LeakyReLU(0.2):
        # common.act('LeakyReLU').
        for name, v in dict(in_channels=in_channels, out_channels=out_channels, channels=channels,
                            scales=scales).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is not allowed; use an integer >= 1")
        if isinstance(skip_channels, bool) or not isinstance(skip_channels, int) or skip_channels < 0:
            raise ValueError(f"skip_channels={skip_channels!r} is not allowed; use an integer >= 0")
        if upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"upsample_mode={upsample_mode!r} is not allowed; use 'bilinear' or 'nearest'")
        self.resolution = check_resolution(resolution, scales)
        self.in_channels, self.scales = in_channels, scales
        inner = None
        for i in reversed(range(scales)):  # build from the deepest scale out; scale 0 sees the input
            inner = _Scale(in_channels if i == 0 else channels, channels, channels, skip_channels, inner,
                           k_down=kernel_down, k_up=kernel_up, k_skip=kernel_skip, upsample_mode=upsample_mode,
                           slope=leaky_slope)
        self.body = inner
        self.head = _conv(channels, out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(z)))


def make_skipnet(preset: str, *, resolution: int, in_channels: int = 32) -> SkipNet:
    """A freshly initialised SkipNet for a named preset (torch's default initialisation, as the official code;
    it follows torch's global RNG: seed it, or use ``torch.random.fork_rng``, for reproducible weights)."""
    return SkipNet(resolution=resolution, in_channels=in_channels, **PRESETS[check_preset(preset)])
