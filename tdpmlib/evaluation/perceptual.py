"""LPIPS, the learned perceptual image patch similarity (Zhang et al. 2018), through torchmetrics.

LPIPS compares two images by the features of an ImageNet-trained network: each layer's activations are
unit-normalised over channels, their squared difference is weighted per channel by a learned 1x1
"linear" layer, averaged over space and summed over layers. 0 means identical; larger is less alike.

Where its weights come from
---------------------------
torchmetrics ships the linear layers (``lpips_models/alex.pth`` and so on); the backbone's ImageNet
weights come from torchvision, which downloads them from ``download.pytorch.org`` on first use into the
torch hub cache (``torch.hub.get_dir()/checkpoints``). Offline, without that file, LPIPS cannot be
computed, and this module degrades as ``metrics.fid_kid`` does:

* :func:`lpips_status` is ``""`` when LPIPS can be computed, else one plain sentence for the book's
  prose, e.g. "LPIPS is not reported: its AlexNet weights could not be downloaded on this machine."
  It looks for the weight file in the cache and otherwise opens one TCP connection to the download host
  (``PROBE_TIMEOUT_S``; skipped when an HTTP(S) proxy is set), so it answers within seconds offline.
  The answer is cached per backbone; a download that fails later updates it.
* :func:`lpips` raises :class:`LPIPSUnavailableError` (with that sentence) when it cannot compute;
  :func:`lpips_or_nan` returns NaNs instead, so a table can drop the column.

Two injections keep the tests offline (like ``fid_kid``'s ``feature_extractor``):

* ``net``: any callable mapping ``(pred, target)`` on ``[-1, 1]`` to one distance per image; it replaces
  LPIPS entirely.
* ``backbone``: a feature network for torchmetrics' own LPIPS module (its scaling layer, channel
  normalisation, shipped linear layers and spatial average all run). It must return the backbone's five
  (AlexNet, VGG16) or seven (SqueezeNet) feature maps with torchvision's channel counts, e.g.
  ``torchmetrics.functional.image.lpips.Alexnet(pretrained=False)``, a randomly initialised AlexNet.

Images are ``N x 3 x H x W`` on the model scale ``[-1, 1]`` and clamped to it (as ``metrics.to_unit``
does) before torchmetrics sees them. Each backbone needs a minimum size (``MIN_SIZE``: AlexNet 31 px,
so the cpu profile's 32 px works and the smoke profile's 16 px does not; :func:`lpips_or_nan` gives
NaN there, as ``metrics.ssim_or_nan`` does below SSIM's window).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..connectivity import proxy_configured, tcp_unreachable_reason
from .metrics import _check_pair, to_unit

__all__ = ["NET_TYPES", "MIN_SIZE", "LPIPSUnavailableError", "lpips", "lpips_or_nan", "lpips_status"]

NET_TYPES = ("alex", "vgg", "squeeze")
"""Backbones torchmetrics' LPIPS offers (the LPIPS paper's default and the usual one is ``alex``)."""

MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
"""The smallest image side each backbone's feature layers accept (measured with torchmetrics 1.9)."""

PROBE_TIMEOUT_S = 3.0
"""Seconds to wait for a TCP connection to the weights' download host before calling it unreachable."""

_NAMES = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet"}
_TORCHVISION_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def _no_weights(net_type: str) -> str:
    return f"LPIPS is not reported: its {_NAMES[net_type]} weights could not be downloaded on this machine."


def _failed(net_type: str) -> str:
    return f"LPIPS is not reported: its {_NAMES[net_type]} network could not be built on this machine."


class LPIPSUnavailableError(RuntimeError):
    """LPIPS cannot be computed here (no backbone weights); the message starts with ``lpips_status``'s sentence."""


def _check_net_type(net_type: str) -> None:
    if net_type not in NET_TYPES:
        raise ValueError(f"net_type={net_type!r} is not allowed; use one of {list(NET_TYPES)}")


# --------------------------------------------------------------------------------------------------
# Availability of the backbone weights
# --------------------------------------------------------------------------------------------------

_STATUS: dict[str, str] = {}  # net_type -> "" (available) or the sentence; filled on first use


def _weights_url(net_type: str) -> str:
    import torchvision

    return getattr(torchvision.models, _TORCHVISION_WEIGHTS[net_type]).DEFAULT.url


def _weights_file(net_type: str) -> Path:
    """Where torchvision keeps the backbone's ImageNet weights once downloaded."""
    name = os.path.basename(urllib.parse.urlsplit(_weights_url(net_type)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _download_unreachable_reason(net_type: str) -> str | None:
    """Why the weights' download host can't be reached, or None if it can (or when a proxy is set)."""
    if proxy_configured():
        return None
    url = urllib.parse.urlsplit(_weights_url(net_type))
    port = url.port or (443 if url.scheme == "https" else 80)
    return tcp_unreachable_reason(url.hostname, port, timeout=PROBE_TIMEOUT_S) if url.hostname else None


def lpips_status(net_type: str = "alex", *, refresh: bool = False) -> str:
    """``""`` when LPIPS with ``net_type``'s backbone can be computed on this machine, else one plain sentence
    saying why it is not reported. Cached per backbone; ``refresh=True`` checks again.

    Available means: the weight file is in the torch hub cache, or its download host answers (the download
    happens on first use, and if it fails there the status becomes the sentence)."""
    _check_net_type(net_type)
    if refresh or net_type not in _STATUS:
        if _weights_file(net_type).is_file():
            _STATUS[net_type] = ""
        else:
            _STATUS[net_type] = "" if _download_unreachable_reason(net_type) is None else _no_weights(net_type)
    return _STATUS[net_type]


# --------------------------------------------------------------------------------------------------
# The LPIPS module
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _pretrained_module(net_type: str) -> nn.Module:
    """torchmetrics' LPIPS with the ImageNet backbone (downloaded on first use) and its linear layers."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    # torch.hub prints "Downloading: <url>" to stderr before it tries; pass it on only when that worked
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        module = _NoTrainLpips(net=net_type)
    sys.stderr.write(log.getvalue())
    return module


def _module_with_backbone(net_type: str, backbone: nn.Module) -> nn.Module:
    """torchmetrics' LPIPS with its shipped linear layers and ``backbone`` in place of the ImageNet network.

    ``pnet_rand=True`` builds a randomly initialised torchvision backbone (no download), which is then
    replaced; torchmetrics has no argument that takes a backbone directly."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    module = _NoTrainLpips(net=net_type, pnet_rand=True)
    module.net = backbone
    module.eval()  # _NoTrainLpips keeps every submodule, the new backbone included, in evaluation mode
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _lpips_module(net_type: str, backbone: nn.Module | None) -> nn.Module:
    if backbone is not None:
        return _module_with_backbone(net_type, backbone)
    status = lpips_status(net_type)
    if status:
        raise LPIPSUnavailableError(status)
    try:
        return _pretrained_module(net_type)
    except Exception as err:  # offline: urllib's URLError (an OSError) from torchvision's download
        _STATUS[net_type] = _no_weights(net_type) if isinstance(err, OSError) else _failed(net_type)
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise LPIPSUnavailableError(f"{_STATUS[net_type]} ({detail})") from None


# --------------------------------------------------------------------------------------------------
# Per-image LPIPS
# --------------------------------------------------------------------------------------------------


def _check_inputs(pred: Tensor, target: Tensor, net_type: str, batch_size: int) -> None:
    _check_pair(pred, target)
    if pred.shape[1] != 3:
        raise ValueError(f"`pred` and `target` must be RGB (N x 3 x H x W), got {pred.shape[1]} channels")
    _check_net_type(net_type)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use an integer >= 1")


def _too_small(pred: Tensor, net_type: str) -> bool:
    return min(pred.shape[-2:]) < MIN_SIZE[net_type]


def lpips(
    pred: Tensor,
    target: Tensor,
    *,
    net: Callable[[Tensor, Tensor], Tensor] | None = None,
    backbone: nn.Module | None = None,
    net_type: str = "alex",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Per-image LPIPS (shape ``N``, float32, on the CPU) of two ``N x 3 x H x W`` batches on ``[-1, 1]``.

    * default: torchmetrics' LPIPS with ``net_type``'s ImageNet backbone (``"alex"``, ``"vgg"`` or
      ``"squeeze"``), fed :func:`~tdpmlib.evaluation.metrics.to_unit` images with ``normalize=True`` in chunks of
      ``batch_size`` on ``device``. Raises :class:`LPIPSUnavailableError` when the backbone's weights can't
      be had (see :func:`lpips_status`), and ``ValueError`` for images smaller than ``MIN_SIZE[net_type]``.
    * ``backbone``: the same computation with this feature network instead of the ImageNet one (see the
      module docstring); needs no download.
    * ``net``: a callable mapping ``(pred, target)``, as given on ``[-1, 1]`` and moved to ``device``, to
      one distance per image; used instead of LPIPS, errors not swallowed.
    """
    _check_inputs(pred, target, net_type, batch_size)
    device = torch.device(device)
    if net is not None:
        with torch.no_grad():
            out = torch.as_tensor(net(pred.to(device), target.to(device)))
        out = out.detach().reshape(-1).float().cpu()
        if out.numel() != len(pred):
            raise ValueError(f"net returned {out.numel()} distances for {len(pred)} image pairs; it must return one per pair")
        return out
    if _too_small(pred, net_type):
        raise ValueError(
            f"`pred` is {pred.shape[-2]}x{pred.shape[-1]} px; LPIPS with net_type={net_type!r} needs at least "
            f"{MIN_SIZE[net_type]} px a side (use lpips_or_nan for NaN instead)"
        )
    module = _lpips_module(net_type, backbone).to(device)
    out = []
    with torch.no_grad():
        for p, t in zip(pred.split(batch_size), target.split(batch_size)):
            p, t = to_unit(p.detach()).float().to(device), to_unit(t.detach()).float().to(device)
            out.append(module(p, t, normalize=True).reshape(-1).float().cpu())
    return torch.cat(out)


def lpips_or_nan(pred: Tensor, target: Tensor, **kwargs) -> Tensor:
    """:func:`lpips`, but NaN for every image where it is not available (no backbone weights, see
    :func:`lpips_status`) or the images are below the backbone's ``MIN_SIZE``. Bad input still raises."""
    _check_inputs(pred, target, kwargs.get("net_type", "alex"), kwargs.get("batch_size", 64))
    if kwargs.get("net") is None and _too_small(pred, kwargs.get("net_type", "alex")):
        return torch.full((len(pred),), math.nan)
    try:
        return lpips(pred, target, **kwargs)
    except LPIPSUnavailableError:
        return torch.full((len(pred),), math.nan)
