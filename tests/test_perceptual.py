"""Tests for tdpmlib.evaluation.perceptual: LPIPS through torchmetrics, offline.

The ImageNet backbone can't be downloaded here, so torchmetrics' LPIPS module runs with injected backbones
(a toy one, checked against a hand computation, and torchmetrics' own AlexNet with random weights, checked
against torchmetrics' module), and both availability branches are simulated by monkeypatching the weight
file, the network probe and the pretrained module.
"""

from __future__ import annotations

import math
import socket
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import lpips as tm_lpips

from tdpmlib import connectivity
from tdpmlib.evaluation import perceptual

SENTENCE = "LPIPS is not reported: its AlexNet weights could not be downloaded on this machine."
ALEX_CHANNELS = [64, 192, 384, 256, 256]


@pytest.fixture(autouse=True)
def fresh_status():
    perceptual._STATUS.clear()
    yield
    perceptual._STATUS.clear()


def _images(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


class ToyBackbone(nn.Module):
    """Five seeded conv + ReLU maps with AlexNet's channel counts, at halving resolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 3, padding=1) for c in ALEX_CHANNELS)

    def forward(self, x):
        return [torch.relu(conv(F.avg_pool2d(x, 2**k))) for k, conv in enumerate(self.convs)]


def _hand_lpips(pred, target, backbone):
    """LPIPS by its definition (Zhang et al. 2018, Eq. 1) with torchmetrics' shipped AlexNet linear weights."""
    lin = torch.load(Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth", map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        f0 = backbone((pred.clamp(-1, 1) - shift) / scale)
        f1 = backbone((target.clamp(-1, 1) - shift) / scale)
        total = torch.zeros(len(pred))
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / torch.sqrt(1e-8 + (a**2).sum(dim=1, keepdim=True))
            b = b / torch.sqrt(1e-8 + (b**2).sum(dim=1, keepdim=True))
            w = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total += ((a - b) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    return total


# --------------------------------------------------------------------------------------------------
# The computation
# --------------------------------------------------------------------------------------------------


def test_injected_net_is_used_as_given():
    pred, target = _images(4, seed=1), _images(4, seed=2)
    seen = {}

    def mse(p, t):
        seen["range"] = (float(p.min()), float(p.max()))
        return ((p - t) ** 2).mean(dim=(1, 2, 3))

    out = perceptual.lpips(pred * 1.2, target, net=mse)
    torch.testing.assert_close(out, ((pred * 1.2 - target) ** 2).mean(dim=(1, 2, 3)), atol=0, rtol=0)
    assert seen["range"][0] < -1.0  # the injected net gets the images as given, not clamped
    with pytest.raises(ValueError, match="net returned 1 distances for 4 image pairs"):
        perceptual.lpips(pred, target, net=lambda p, t: torch.zeros(1))


def test_torchmetrics_module_with_a_toy_backbone_matches_the_definition():
    pred, target = _images(3, seed=3), _images(3, seed=4)
    pred[0, :, :4] = 1.7  # outside [-1, 1]: clamped, as metrics.to_unit does
    backbone = ToyBackbone()
    out = perceptual.lpips(pred, target, backbone=backbone, batch_size=2)
    assert out.shape == (3,) and out.dtype == torch.float32 and (out > 0).all()
    torch.testing.assert_close(out, _hand_lpips(pred, target, backbone), rtol=1e-5, atol=1e-7)


def test_random_alexnet_path_agrees_with_torchmetrics_and_is_zero_on_identical_images():
    reference = tm_lpips._NoTrainLpips(net="alex", pnet_rand=True)  # random backbone, shipped linear layers
    pred, target = _images(3, seed=5), _images(3, seed=6)
    target[1] = pred[1]
    out = perceptual.lpips(pred, target, backbone=reference.net)
    with torch.no_grad():
        expected = reference(pred, target).reshape(-1)  # torchmetrics on [-1, 1], normalize=False
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
    assert out[1] == 0 and out[0] > 0 and out[2] > 0
    assert torch.equal(perceptual.lpips(pred, pred, backbone=reference.net), torch.zeros(3))
    one_at_a_time = perceptual.lpips(pred, target, backbone=reference.net, batch_size=1)
    torch.testing.assert_close(one_at_a_time, out, rtol=1e-5, atol=1e-7)


def test_bad_input_is_one_value_error():
    x = _images(2)
    with pytest.raises(ValueError, match=r"net_type='resnet' is not allowed; use one of \['alex', 'vgg', 'squeeze'\]"):
        perceptual.lpips(x, x, net_type="resnet")
    with pytest.raises(ValueError, match="must be RGB"):
        perceptual.lpips(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="shape mismatch"):
        perceptual.lpips(x, x[:1])
    with pytest.raises(ValueError, match="batch_size=0 is not allowed"):
        perceptual.lpips(x, x, batch_size=0)
    small = _images(2, size=16)
    with pytest.raises(ValueError, match=r"16x16 px; LPIPS with net_type='alex' needs at least 31 px"):
        perceptual.lpips(small, small, backbone=ToyBackbone())


def test_below_the_minimum_size_lpips_or_nan_gives_nan(monkeypatch):
    def must_not_build(*args):
        raise AssertionError("no module is built for images LPIPS can't take")

    monkeypatch.setattr(perceptual, "_lpips_module", must_not_build)
    out = perceptual.lpips_or_nan(_images(2, size=16), _images(2, size=16))
    assert out.shape == (2,) and torch.isnan(out).all()


# --------------------------------------------------------------------------------------------------
# Availability: the unavailable and the available branch
# --------------------------------------------------------------------------------------------------


def test_missing_weights_give_the_sentence_and_nans(monkeypatch, tmp_path):
    monkeypatch.setattr(perceptual, "_weights_file", lambda net_type: tmp_path / "absent.pth")
    monkeypatch.setattr(perceptual, "_download_unreachable_reason", lambda net_type: "no route")

    def must_not_download(net_type):
        raise AssertionError("tried to download although the host is unreachable")

    monkeypatch.setattr(perceptual, "_pretrained_module", must_not_download)
    assert perceptual.lpips_status() == SENTENCE
    out = perceptual.lpips_or_nan(_images(3), _images(3, seed=1))
    assert out.shape == (3,) and torch.isnan(out).all()
    with pytest.raises(perceptual.LPIPSUnavailableError, match=SENTENCE):
        perceptual.lpips(_images(3), _images(3, seed=1))
    # an injected backbone needs no weights, so it still gives numbers
    assert torch.isfinite(perceptual.lpips_or_nan(_images(2), _images(2, seed=1), backbone=ToyBackbone())).all()


def test_cached_weights_make_it_available_without_probing(monkeypatch, tmp_path):
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(perceptual, "_weights_file", lambda net_type: weights)

    def must_not_probe(net_type):
        raise AssertionError("probed the network although the weights are cached")

    backbone = ToyBackbone()
    monkeypatch.setattr(perceptual, "_download_unreachable_reason", must_not_probe)
    monkeypatch.setattr(perceptual, "_pretrained_module", lambda net_type: perceptual._module_with_backbone(net_type, backbone))
    assert perceptual.lpips_status() == ""
    pred, target = _images(2, seed=7), _images(2, seed=8)
    out = perceptual.lpips_or_nan(pred, target)
    torch.testing.assert_close(out, _hand_lpips(pred, target, backbone), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("error, sentence", [
    (urllib.error.URLError("[Errno -3] Temporary failure in name resolution"), SENTENCE),
    (RuntimeError("something else"), "LPIPS is not reported: its AlexNet network could not be built on this machine."),
])
def test_a_failed_download_updates_the_status(monkeypatch, tmp_path, error, sentence):
    monkeypatch.setattr(perceptual, "_weights_file", lambda net_type: tmp_path / "absent.pth")
    monkeypatch.setattr(perceptual, "_download_unreachable_reason", lambda net_type: None)

    def fails(net_type):
        raise error

    monkeypatch.setattr(perceptual, "_pretrained_module", fails)
    assert perceptual.lpips_status() == ""  # the host answers ...
    assert torch.isnan(perceptual.lpips_or_nan(_images(2), _images(2, seed=1))).all()  # ... but the download fails
    assert perceptual.lpips_status() == sentence
    with pytest.raises(perceptual.LPIPSUnavailableError, match="^" + sentence.replace(".", r"\.") + "$"):
        perceptual.lpips(_images(2), _images(2, seed=1))


def test_status_is_quick_when_the_host_does_not_answer(monkeypatch, tmp_path):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(perceptual, "_weights_file", lambda net_type: tmp_path / "absent.pth")
    monkeypatch.setattr(perceptual, "_weights_url", lambda net_type: "https://tdpmlib-no-such-host.invalid/alexnet.pth")
    monkeypatch.setattr(perceptual, "PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    assert perceptual.lpips_status() == SENTENCE  # .invalid never resolves (RFC 2606)
    assert time.monotonic() - start < 3
    monkeypatch.setattr(perceptual, "_download_unreachable_reason", lambda net_type: pytest.fail("not cached"))
    assert perceptual.lpips_status() == SENTENCE  # cached: no second probe
    assert math.isnan(float(perceptual.lpips_or_nan(_images(1), _images(1))[0]))


def test_the_weight_file_and_the_tcp_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert perceptual._weights_file("alex") == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        assert connectivity.tcp_unreachable_reason("127.0.0.1", port, timeout=2) is None
    finally:
        server.close()
    reason = connectivity.tcp_unreachable_reason("127.0.0.1", port, timeout=2)  # closed now: refused at once
    assert reason is not None and reason.startswith("127.0.0.1 unreachable")


def test_denoising_scores_carry_lpips_when_available_and_nan_otherwise(monkeypatch):
    from tdpmlib.studies import denoising

    pred, target = _images(4, seed=7), _images(4, seed=8)
    backbone = ToyBackbone()
    monkeypatch.setattr(perceptual, "lpips_status", lambda net_type="alex", **k: "")  # as on Colab: weights there
    monkeypatch.setattr(perceptual, "_pretrained_module", lambda net_type: perceptual._module_with_backbone(net_type, backbone))
    got = denoising.score(pred, target)["lpips"]
    torch.testing.assert_close(got, _hand_lpips(pred, target, backbone), rtol=1e-4, atol=1e-6)
    monkeypatch.undo()
    monkeypatch.setattr(perceptual, "_weights_file", lambda net_type: Path("/nonexistent/alexnet.pth"))
    monkeypatch.setattr(perceptual, "_download_unreachable_reason", lambda net_type: "unreachable")
    assert denoising.score(pred, target)["lpips"].isnan().all()  # offline: the tables drop the column
