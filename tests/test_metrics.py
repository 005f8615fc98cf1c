"""Tests for tdpmlib.evaluation.metrics: each metric against a hand or library computation."""

from __future__ import annotations

import math
import time
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure

from tdpmlib.evaluation import metrics as M, sample_metrics


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random smooth images on [-1, 1]: bilinear upsampling of 8 x 8 noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- #
# to_unit, PSNR
# --------------------------------------------------------------------------- #
def test_to_unit_maps_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert torch.equal(M.to_unit(x), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_psnr_hand_computed_value():
    target = torch.zeros(1, 3, 8, 8)  # unit scale 0.5
    pred = target + 0.2  # unit scale 0.6: error 0.1, MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    value = M.psnr(pred, target)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_per_image():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 8, 8, generator=gen) * 1.6 - 0.8
    noise = torch.randn(2, 3, 8, 8, generator=gen) * torch.tensor([0.05, 0.3]).view(2, 1, 1, 1)
    pred = (target + noise).clamp(-1, 1)
    mse = ((M.to_unit(pred) - M.to_unit(target)) ** 2).flatten(1).mean(1).double()
    expected = 10 * torch.log10(1.0 / mse)
    value = M.psnr(pred, target)
    assert value.shape == (2,)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-4)
    assert value[0] > value[1] + 5  # the two images really have different errors


images = arrays(
    np.float32,
    st.tuples(st.integers(1, 2), st.just(3), st.integers(1, 4), st.integers(1, 4)),
    elements=st.floats(-1, 1, width=32, allow_subnormal=False),
)


@settings(max_examples=25, deadline=None)
@given(a=images, data=st.data())
def test_psnr_symmetric_and_maximal_for_identical(a, data):
    b = data.draw(arrays(np.float32, a.shape, elements=st.floats(-1, 1, width=32, allow_subnormal=False)))
    assume(not np.array_equal(a, b))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ab, ba = M.psnr(ta, tb), M.psnr(tb, ta)
    finite = torch.isfinite(ab)
    assert torch.equal(finite, torch.isfinite(ba))
    assert torch.allclose(ab[finite], ba[finite], atol=1e-4)
    same = M.psnr(ta, ta)
    assert torch.isinf(same).all() and (same > 0).all()  # torchmetrics: MSE 0 -> +inf
    assert (same >= ab).all()


# --------------------------------------------------------------------------- #
# SSIM
# --------------------------------------------------------------------------- #
def test_ssim_identical_is_one():
    x = smooth_images(2, 16, seed=1)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(M.ssim(x, x, crop_border=False), torch.ones(2), atol=1e-5, rtol=0)


def test_ssim_matches_skimage():
    gen = torch.Generator().manual_seed(0)
    target = smooth_images(1, 32, seed=0)
    pred = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(-1, 1)
    ours = M.ssim(pred, target)
    reference = structural_similarity(
        M.to_unit(pred)[0].double().numpy(),
        M.to_unit(target)[0].double().numpy(),
        channel_axis=0,
        data_range=1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ours.shape == (1,)
    assert ours.item() == pytest.approx(reference, abs=1e-3)
    # Without the border crop we get torchmetrics' full-map mean, which includes the
    # reflection-padded border and so differs from scikit-image (and Wang et al.).
    full = M.ssim(pred, target, crop_border=False)
    direct = structural_similarity_index_measure(
        M.to_unit(pred), M.to_unit(target), data_range=1.0, reduction="none"
    )
    torch.testing.assert_close(full, direct)
    assert abs(full.item() - reference) > 1e-3


def test_ssim_rejects_images_smaller_than_window():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="8 x 8"):
        M.ssim(x, x)


# --------------------------------------------------------------------------- #
# mean_std
# --------------------------------------------------------------------------- #
def test_mean_std_and_format():
    mean, std = M.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))  # ddof=1
    assert M.mean_std([7.0]) == (7.0, 0.0)
    assert M.mean_std(torch.tensor([1.0, 3.0])) == pytest.approx((2.0, math.sqrt(2)))
    assert M.fmt_mean_std([13.0, 13.8]) == "13.40 ± 0.57"
    assert M.fmt_mean_std([1.0, 2.0], digits=1) == "1.5 ± 0.7"
    with pytest.raises(ValueError):
        M.mean_std([])


# --------------------------------------------------------------------------- #
# FID / KID
# --------------------------------------------------------------------------- #
class RandomProjection(torch.nn.Module):
    """Fixed random linear map of a flattened 3 x 8 x 8 image to 16 features (no num_features)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 16)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(123)
            self.linear.weight.copy_(torch.randn(16, 192, generator=gen) / math.sqrt(192))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1  # fed as to_unit floats
        return self.linear(x.flatten(1))


def feature_set(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.2 * torch.randn(n, 3, 8, 8, generator=gen)).clamp(-0.5, 0.5)


def test_fid_kid_custom_extractor_is_monotone_in_shift():
    extractor = RandomProjection()
    real = feature_set(128, seed=0)
    results = {
        name: sample_metrics.fid_kid(real, fake, feature_extractor=extractor)
        for name, fake in {
            "copy": real.clone(),
            "same_dist": feature_set(128, seed=1),
            "shift1": real + 0.1,
            "shift2": real + 0.3,
        }.items()
    }
    for result in results.values():
        assert result["status"] == "ok (custom feature extractor)"
        assert all(isinstance(result[k], float) for k in ("fid", "kid_mean", "kid_std"))
    fid = {name: r["fid"] for name, r in results.items()}
    assert abs(fid["copy"]) < 1e-6
    assert fid["same_dist"] < fid["shift1"]
    assert fid["shift2"] > fid["shift1"] > fid["copy"]
    kid = {name: r["kid_mean"] for name, r in results.items()}
    assert kid["shift2"] > kid["shift1"] > kid["copy"]


def test_fid_matches_hand_formula():
    extractor = RandomProjection()
    real, fake = feature_set(64, seed=2), feature_set(48, seed=3) * 1.5 + 0.05
    with torch.no_grad():
        f_real = extractor(M.to_unit(real)).double().numpy()
        f_fake = extractor(M.to_unit(fake)).double().numpy()
    mu1, mu2 = f_real.mean(0), f_fake.mean(0)
    s1, s2 = np.cov(f_real, rowvar=False), np.cov(f_fake, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    result = sample_metrics.fid_kid(real, fake, feature_extractor=extractor)
    assert result["fid"] == pytest.approx(expected, rel=1e-3)


def test_kid_subset_size_is_capped_by_set_sizes():
    extractor = RandomProjection()
    result = sample_metrics.fid_kid(feature_set(5, seed=4), feature_set(7, seed=5) + 0.2, feature_extractor=extractor)
    assert result["status"].startswith("ok")
    assert result["kid_mean"] > 0
    again = sample_metrics.fid_kid(feature_set(5, seed=4), feature_set(7, seed=5) + 0.2, feature_extractor=extractor)
    assert again["kid_mean"] == result["kid_mean"]  # seeded subset draw


def kid_hand(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x . y / d + 1)^3 (Binkowski et al. 2018, Eq. 4)."""
    m, d = len(f_real), f_real.shape[1]
    k_xx = (f_real @ f_real.T / d + 1) ** 3
    k_yy = (f_fake @ f_fake.T / d + 1) ** 3
    k_xy = (f_real @ f_fake.T / d + 1) ** 3
    same = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(same - 2 * k_xy.sum() / m**2)


def test_kid_matches_hand_formula_and_is_near_zero_for_a_copy():
    # With equal set sizes the KID subset is the whole set (subset size min(1000, 64, 64)), so every one
    # of the random subsets is a permutation of the full sets and KID is the full-set MMD^2, not a draw.
    extractor = RandomProjection()
    real = feature_set(64, seed=6)
    with torch.no_grad():
        f_real = extractor(M.to_unit(real)).double().numpy()
    values = {}
    for name, fake in {"copy": real.clone(), "shifted": real + 0.2}.items():
        with torch.no_grad():
            f_fake = extractor(M.to_unit(fake)).double().numpy()
        result = sample_metrics.fid_kid(real, fake, feature_extractor=extractor, kid_subsets=5)
        expected = kid_hand(f_real, f_fake)
        assert result["kid_mean"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert result["kid_std"] < 1e-5  # the same value for every subset
        assert result["status_detail"] is None
        values[name] = result["kid_mean"]
    # The unbiased estimator of a set against itself is not exactly 0, but tiny next to a real shift.
    assert values["shifted"] > 0.01
    assert abs(values["copy"]) < 0.05 * values["shifted"]


def _inception_weights_fail(monkeypatch, error: Exception) -> list[str]:
    """Make the Inception weights fail to load as they do offline, even where they are cached.

    ``fid_kid`` builds torchmetrics' FrechetInceptionDistance(feature=2048), whose NoTrainInceptionV3 is
    torch-fidelity's FeatureExtractorInceptionV3; that loads its weights with the ``load_state_dict_from_url``
    it imported from torch.hub (download, or the torch.hub cache). Returns the URLs it was asked for.
    """
    feature_extractor_inceptionv3 = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    calls: list[str] = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise error

    monkeypatch.setattr(feature_extractor_inceptionv3, "load_state_dict_from_url", fail)
    return calls


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "error",
    [
        urllib.error.URLError(OSError(-3, "Temporary failure in name resolution")),  # what torch.hub raises offline
        OSError(28, "No space left on device"),
    ],
    ids=["URLError", "OSError"],
)
def test_fid_kid_without_inception_weights_says_so_in_a_plain_sentence(monkeypatch, error):
    calls = _inception_weights_fail(monkeypatch, error)
    result = sample_metrics.fid_kid(smooth_images(2, 16, seed=0), smooth_images(2, 16, seed=1))
    assert len(calls) == 1 and "inception" in calls[0]  # failed where the weights are loaded, nowhere else
    assert result == {
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "status": sample_metrics.FID_NO_WEIGHTS,
        "status_detail": result["status_detail"],
    }
    status = result["status"]
    # One plain sentence for the book's prose: no exception text, no brackets, no second sentence.
    assert status.startswith("unavailable: ") and "Inception weights" in status
    for raw in (type(error).__name__, "Error", "<", ">", "(", ")", "[", "Errno", str(error.args[-1])):
        assert raw not in status, raw
    assert "." not in status and "\n" not in status
    # The technical reason is kept separately.
    assert result["status_detail"].startswith(f"{type(error).__name__}: ")
    assert str(error.args[-1]) in result["status_detail"]


@pytest.mark.timeout(120)
def test_fid_kid_damaged_weights_are_an_error_not_a_missing_download(monkeypatch):
    _inception_weights_fail(monkeypatch, RuntimeError("Error(s) in loading state_dict: <garbled>"))
    with pytest.raises(RuntimeError, match="loading state_dict"):
        sample_metrics.fid_kid(smooth_images(2, 16, seed=0), smooth_images(2, 16, seed=1))


class _FakeMetric:
    """Stands in for torchmetrics' FID / KID: builds without weights, then fails where ``fail`` says."""

    fail: tuple[str, Exception] = ("", None)

    def __init__(self, *args, **kwargs):
        pass

    def to(self, device):
        if self.fail[0] == "to":
            raise self.fail[1]
        return self

    def update(self, images, real):
        if self.fail[0] == "update":
            raise self.fail[1]


@pytest.mark.parametrize("where, error", [
    ("update", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
    ("update", RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x1000 and 2048x1)")),
    ("to", torch.cuda.OutOfMemoryError("CUDA out of memory while moving the Inception network")),
], ids=["oom-feeding", "shape-error", "oom-building"])
def test_fid_kid_errors_other_than_missing_weights_propagate(monkeypatch, where, error):
    import torchmetrics.image.fid as tm_fid
    import torchmetrics.image.kid as tm_kid

    monkeypatch.setattr(_FakeMetric, "fail", (where, error))
    monkeypatch.setattr(tm_fid, "FrechetInceptionDistance", _FakeMetric)
    monkeypatch.setattr(tm_kid, "KernelInceptionDistance", _FakeMetric)
    with pytest.raises(type(error), match=str(error.args[0])[:20]):
        sample_metrics.fid_kid(smooth_images(2, 16, seed=0), smooth_images(2, 16, seed=1))


def test_fid_kid_custom_extractor_errors_are_not_swallowed():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise OSError("disk error in a custom extractor")

    with pytest.raises(OSError, match="custom extractor"):
        sample_metrics.fid_kid(feature_set(4, seed=0), feature_set(4, seed=1), feature_extractor=Broken())


# --------------------------------------------------------------------------- #
# SWD
# --------------------------------------------------------------------------- #
FAST_SWD = dict(patches_per_image=32, n_projections=128, n_repeats=2)


def test_pyramid_filters_match_progan_scipy_reference():
    x = torch.rand(2, 3, 16, 12, dtype=torch.float64)
    g = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    expected_down = scipy.ndimage.convolve(x.numpy(), g[None, None], mode="mirror")[..., ::2, ::2]
    np.testing.assert_allclose(sample_metrics._pyr_down(x).numpy(), expected_down, atol=1e-12)
    small = torch.rand(2, 3, 8, 6, dtype=torch.float64)
    zeros = np.zeros((2, 3, 16, 12))
    zeros[..., ::2, ::2] = small.numpy()
    expected_up = scipy.ndimage.convolve(zeros, g[None, None] * 4.0, mode="mirror")
    np.testing.assert_allclose(sample_metrics._pyr_up(small, (16, 12)).numpy(), expected_up, atol=1e-12)


def test_laplacian_pyramid_collapses_to_the_image():
    x = torch.rand(2, 3, 32, 20, dtype=torch.float64)
    levels = sample_metrics._laplacian_pyramid(x, 3)
    assert [tuple(level.shape[-2:]) for level in levels] == [(32, 20), (16, 10), (8, 5)]
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = band + sample_metrics._pyr_up(image, tuple(band.shape[-2:]))
    torch.testing.assert_close(image, x)


def test_sliced_wasserstein_in_one_dimension_is_wasserstein_1():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 1, generator=gen), torch.randn(300, 1, generator=gen) * 2 + 1
    value = sample_metrics._sliced_wasserstein(a, b, n_projections=3, n_repeats=2, gen=gen)
    assert value == pytest.approx(scipy.stats.wasserstein_distance(a[:, 0], b[:, 0]), rel=1e-5)


def test_swd_identical_sets_is_zero():
    x = smooth_images(8, 32, seed=0)
    result = sample_metrics.swd(x, x.clone(), **FAST_SWD)
    assert len(result["swd_levels"]) == 2  # 32 -> 16 (ProGAN stops at 16)
    assert result["swd_mean"] < 1e-9


def test_swd_increases_with_noise():
    x = smooth_images(8, 32, seed=0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    values = [sample_metrics.swd(x, x + std * noise, **FAST_SWD)["swd_mean"] for std in (0.02, 0.1, 0.5)]
    assert values[0] > 1.0
    assert values[0] < values[1] < values[2]


def test_swd_levels_sizes_and_uneven_sets():
    assert sample_metrics._default_n_levels(8) == 1
    assert sample_metrics._default_n_levels(16) == 1
    assert sample_metrics._default_n_levels(32) == 2
    assert sample_metrics._default_n_levels(128) == 4
    one = sample_metrics.swd(smooth_images(1, 8, seed=0), smooth_images(3, 8, seed=1), **FAST_SWD)
    assert len(one["swd_levels"]) == 1 and one["swd_mean"] > 0
    assert one == sample_metrics.swd(smooth_images(1, 8, seed=0), smooth_images(3, 8, seed=1), **FAST_SWD)
    three = sample_metrics.swd(smooth_images(2, 32, seed=0), smooth_images(2, 32, seed=1), n_levels=3, **FAST_SWD)
    assert len(three["swd_levels"]) == 3
    assert three["swd_mean"] == pytest.approx(np.mean(three["swd_levels"]))
    with pytest.raises(ValueError):
        sample_metrics.swd(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), n_levels=4)  # 4-px level < 7-px patch


# --------------------------------------------------------------------------- #
# Nearest neighbours and memorisation
# --------------------------------------------------------------------------- #
def test_nearest_distances_finds_exact_copies_and_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    refs = torch.rand(10, 3, 4, 4, generator=gen) * 2 - 1
    queries = torch.cat([refs[[3, 7]], torch.rand(5, 3, 4, 4, generator=gen) * 2 - 1])
    dist, index = sample_metrics.nearest_distances(queries, refs, batch_size=2)
    assert index[:2].tolist() == [3, 7]
    assert dist[:2].tolist() == [0.0, 0.0]
    for q in range(len(queries)):
        brute = [math.sqrt(((queries[q] - r) ** 2).mean().item()) for r in refs]
        assert index[q].item() == int(np.argmin(brute))
        assert dist[q].item() == pytest.approx(min(brute), rel=1e-5, abs=1e-7)


def test_memorisation_detects_copies():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1
    held = torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1
    fresh = torch.rand(6, 3, 8, 8, generator=gen) * 2 - 1

    copies = sample_metrics.memorisation(train[:5], train, held)
    assert copies["ratio_median"] == pytest.approx(0.0, abs=1e-6)
    assert copies["frac_copies"] == 1.0
    assert copies["d_train_mean"] == pytest.approx(0.0, abs=1e-6) and copies["d_held_mean"] > 0.3
    assert copies["ratio"].shape == (5,)

    held_copies = sample_metrics.memorisation(held[:5], train, held)
    assert held_copies["ratio_median"] > 1e3 and math.isfinite(held_copies["ratio_mean"])
    assert held_copies["frac_copies"] == 0.0

    new = sample_metrics.memorisation(fresh, train, held)
    assert 0.8 < new["ratio_median"] < 1.25
    assert new["frac_copies"] == 0.0


# --------------------------------------------------------------------------- #
# Timer
# --------------------------------------------------------------------------- #
def test_cuda_timer_measures_sleep():
    with M.CudaTimer("cpu") as timer:
        time.sleep(0.05)
    assert 0.05 <= timer.seconds <= 0.5


def test_cuda_timer_synchronises_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    with M.CudaTimer(torch.device("cuda", 0)) as timer:
        assert len(calls) == 1  # before the clock starts
    assert calls == [torch.device("cuda", 0)] * 2
    assert timer.seconds >= 0
    with M.CudaTimer("cpu"):
        pass
    assert len(calls) == 2


def test_sort_columns_equals_torch_sort_and_keeps_swd_unchanged(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (200, 7), generator=gen).float()  # many ties
    for t in (x, x.double(), torch.randn(300, 4, generator=gen)):
        assert torch.equal(sample_metrics._sort_columns(t), torch.sort(t, dim=0).values)
    images = smooth_images(6, 32, seed=0)
    fake = images + 0.1 * torch.randn(images.shape, generator=gen)
    fast = sample_metrics.swd(images, fake, **FAST_SWD)
    monkeypatch.setattr(sample_metrics, "_sort_columns", lambda t: torch.sort(t, dim=0).values)
    assert sample_metrics.swd(images, fake, **FAST_SWD) == fast  # bit for bit, so committed SWD values stay reproducible


def test_swd_real_cache_gives_the_same_values_and_sorts_the_real_side_once(monkeypatch):
    real = smooth_images(5, 16, seed=0)
    fakes = [smooth_images(n, 16, seed=s) for n, s in ((4, 1), (4, 2), (7, 3), (4, 4))]
    sorts = []
    original = sample_metrics._sort_columns
    monkeypatch.setattr(sample_metrics, "_sort_columns", lambda x: sorts.append(1) or original(x))
    plain = [sample_metrics.swd(real, f, **FAST_SWD) for f in fakes]
    per_call = len(sorts) // len(fakes)  # both sides, every call
    sorts.clear()
    cache: dict = {}
    cached = [sample_metrics.swd(real, f, real_cache=cache, **FAST_SWD) for f in fakes]
    assert cached == plain  # exactly: the real side's projections are the ones it would recompute
    # the fake side every call, the real side once per fake-set size (4 and 7)
    assert len(sorts) == per_call // 2 * (len(fakes) + 2)
    assert {k[-4] for k in cache} == {4, 7}  # the key holds the fake-set size


def test_sort_columns_is_torch_sort():
    x = torch.randn(500, 33, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_metrics._sort_columns(x), torch.sort(x, dim=0).values)
