"""tdpmlib.methods.memory: the per-device memory model, and fit_dip split into chunks that it sizes."""

import pandas as pd
import pytest
import torch

from tdpmlib.methods import dip, memory, models


def test_activation_count_matches_a_hand_count():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.empty(2, 3, 5, 5, device="meta")
    # conv: 2*4*25, relu: 2*4*25, conv: 2*2*25 elements
    assert memory.activation_elements(net.to("meta"), x, timestep=False) == 200 + 200 + 100


def test_dip_bytes_cover_adam_state_and_grow_with_resolution():
    n = models.count_parameters(models.make_unet("dip-cpu", resolution=32))
    small = memory.dip_network_bytes("dip-cpu", resolution=16)
    large = memory.dip_network_bytes("dip-cpu", resolution=32)
    assert large > small > n * memory.ADAM_BYTES_PER_PARAM  # activations come on top of the fixed state
    assert memory.dip_network_bytes("skip-cpu", resolution=32) > 0  # skip networks (32-channel input) too


def test_fits_bounds():
    assert memory.fits(10, 100, cap=50) == 10
    assert memory.fits(10, 100, cap=3) == 3
    assert memory.fits(10, 100, cap=50, fixed=55) == 4
    assert memory.fits(1000, 100, cap=50) == 1  # one item always: the device then fails loudly
    with pytest.raises(ValueError, match="positive"):
        memory.fits(0, 100, cap=1)


@pytest.mark.parametrize("gpu", ["T4", "A100 40 GB", "H200"])
def test_the_paper_profile_fits_each_gpu_class(gpu):
    """The paper profile's DIP (64 networks) and sampling (500 images) batches, planned for 16, 40 and 141 GB."""
    budget = int(memory.FRACTION * memory.GPU_MEMORY_GB[gpu] * 1e9)
    p = memory.plan(dip_preset="dip-paper", ddpm_preset="ddpm-paper", resolution=64, budget=budget, dip_cap=64,
                    sample_cap=500)
    assert 1 <= p["dip_batch"] <= 64 and 1 <= p["sample_batch"] <= 500
    assert p["dip_peak"] <= budget and p["sample_peak"] <= budget
    if gpu == "T4":  # a paper-size DIP network holds about 1.1 GB: 64 at once would need ~70 GB
        assert p["dip_batch"] < 16
    gib = 2 ** 30
    assert memory.describe(p) == (f"DIP {p['dip_batch']} × dip-paper ({p['dip_peak'] / gib:.1f} GiB), sampling "
                                  f"{p['sample_batch']} × ddpm-paper ({p['sample_peak'] / gib:.1f} GiB); "
                                  f"budget {budget / gib:.1f} GiB")


def test_larger_gpus_fit_larger_batches():
    plans = [memory.plan(dip_preset="dip-paper", ddpm_preset="ddpm-paper", resolution=64, dip_cap=500,
                         sample_cap=5000, budget=int(memory.FRACTION * gb * 1e9)) for gb in (16, 40, 141)]
    assert [p["dip_batch"] for p in plans] == sorted(p["dip_batch"] for p in plans)
    assert plans[0]["dip_batch"] < plans[-1]["dip_batch"] and plans[0]["sample_batch"] < plans[-1]["sample_batch"]


def test_the_cpu_keeps_the_configured_batches():
    assert memory.device_budget("cpu") is None
    assert memory.dip_batch_limit("dip-paper", resolution=64, device="cpu", cap=500) == 500
    p = memory.plan(dip_preset="tiny", ddpm_preset="tiny", resolution=8, budget=None, dip_cap=7, sample_cap=9)
    assert (p["dip_batch"], p["sample_batch"]) == (7, 9)
    assert memory.describe(p).startswith("DIP 7 × tiny (") and memory.describe(p).endswith("; CPU, no cap")
    assert len(memory.describe(p)) <= 80


def test_fit_dip_in_chunks_equals_one_batch():
    """Each network's initial weights depend on (seed, image index) only, so fitting 5 images as chunks of 2
    gives the same outputs, history and best iterations as one batch (plain protocol: no input jitter), up to
    float rounding: a batched convolution's kernel depends on the batch size (~1e-7 here)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    ref = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    z = dip.draw_input("plain", (5, 8, 8), torch.Generator().manual_seed(1))
    kw = dict(iterations=4, z=z, preset="tiny", seed=3, reference=ref, keep=(2,), record_every=2)
    whole = dip.fit_dip(target, **kw)
    split = dip.fit_dip(target, max_batch=2, **kw)
    close = dict(atol=1e-5, rtol=0)
    assert torch.allclose(split.output, whole.output, **close) and torch.allclose(split.outputs[2], whole.outputs[2], **close)
    assert torch.allclose(split.best_output, whole.best_output, **close)
    assert torch.equal(split.best_iteration, whole.best_iteration)
    pd.testing.assert_frame_equal(split.history, whole.history, check_exact=False, atol=1e-4, rtol=1e-5)


def test_fit_dip_in_chunks_keeps_the_official_protocols_records():
    target = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fit = dip.fit_dip(target, iterations=2, protocol="official", preset="skip-tiny", seed=0, max_batch=2)
    assert fit.output.shape == target.shape and fit.raw_output.shape == target.shape
    assert len(fit.backtracks) == 3 and sorted(fit.history["image"].unique()) == [0, 1, 2]


def test_sampling_batches_shrink_to_the_budget(monkeypatch):
    """On a device with little memory, ddpm.sample draws in smaller batches and still returns n images."""
    from tdpmlib.methods import ddpm, schedules

    unet = models.make_unet("tiny", resolution=8)
    per_image = memory.activation_elements(models.make_unet("tiny", resolution=8).to("meta"),
                                           torch.empty(1, 3, 8, 8, device="meta"), timestep=True) * 4
    monkeypatch.setattr(memory, "device_budget", lambda device, fraction=memory.FRACTION: 3 * per_image)
    assert memory.sample_batch_limit(unet, resolution=8, device="cpu", cap=64) == 3
    calls = []
    real = ddpm.reverse_chain
    monkeypatch.setattr(ddpm, "reverse_chain", lambda unet, sched, x, *a, **k: calls.append(len(x)) or real(unet, sched, x, *a, **k))
    out = ddpm.sample(unet, schedules.make_scheduler("linear"), n=7, resolution=8, method="ddim", num_steps=2,
                      generator=torch.Generator().manual_seed(0), batch_size=64)
    assert out.shape == (7, 3, 8, 8) and calls == [3, 3, 1]
