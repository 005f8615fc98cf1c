"""tdpmlib.budget: FLOP counts per notebook and the colab profile's size; the GPU-memory refusal."""

import re

import pytest

from tdpmlib import budget, config, memory


def test_forward_flops_match_the_stated_network_costs():
    # the issues' figures for the report's networks at 64 px: DDPM 31.0, DIP UNet 35.1-35.5 GFLOP per forward
    assert budget.forward_gflop("ddpm-paper", 64) == pytest.approx(31.0, abs=0.1)
    assert budget.forward_gflop("dip-paper", 64) == pytest.approx(35.4, abs=0.4)
    assert budget.forward_gflop("skip-paper", 64) < budget.forward_gflop("dip-paper", 64) / 10


def test_paper_profile_on_the_hub_data_matches_its_stated_arithmetic_floor():
    """Issue 16 puts the paper profile at 12.8 min of pure arithmetic on an H200 (hub data, 6,621 training images)."""
    assert budget.minutes("paper", "H200", n_train=6621)["total"] == pytest.approx(12.8, abs=0.6)


def test_colab_profile_fits_its_targets():
    p = config.PROFILES["colab"]
    assert p["resolution"] == 64 and p["ddpm_preset"] == "ddpm-paper" and p["dip_preset"] == "dip-paper"
    assert p["train_steps"] > 0 and p["train_epochs"] == 0  # a step budget: hub data and the parquet cost the same
    assert p["n_generate"] >= 256 and p["n_final_samples"] >= 256 and p["n_test"] >= 50
    for n_train in (737, 6621):
        assert budget.minutes("colab", "T4", n_train=n_train)["total"] <= 60
        assert budget.minutes("colab", "H200", n_train=n_train)["total"] <= 8


def test_the_stated_colab_cost_is_the_counted_one():
    t4, h200 = (float(x) for x in re.findall(r"about (\d+) min of arithmetic on a T4 and (\d+) min", config.GPU_ONLY["colab"])[0])
    assert t4 == round(budget.minutes("colab", "T4")["total"]) and h200 == round(budget.minutes("colab", "H200")["total"])


def test_describe_and_bad_gpu():
    assert "TFLOP" in budget.describe("colab", "03_tdpm_dip") and "T4" in budget.describe("colab", "03_tdpm_dip")
    assert budget.describe("colab", "07_conclusions").startswith("no network")
    with pytest.raises(ValueError, match="gpu='V100' is not allowed"):
        budget.minutes("colab", "V100")


def test_a_gpu_too_small_is_refused_with_the_estimate():
    need = memory.training_bytes("ddpm-paper", resolution=64, batch=32)
    memory.check_fits("ddpm-paper", resolution=64, batch=32, budget=need + 1)  # fits: no error
    memory.check_fits("ddpm-paper", resolution=64, batch=32, budget=None)      # the CPU: no check
    with pytest.raises(ValueError, match=r"too small for this profile.*about 1\.0 min") as err:
        memory.check_fits("ddpm-paper", resolution=64, batch=32, budget=need // 2, note="about 1.0 min on H200")
    assert len(str(err.value).splitlines()) == 1


def test_colab_refuses_the_cpu():
    with pytest.raises(ValueError, match="profile='colab' is not allowed; it needs a CUDA GPU"):
        config.check_profile_device("colab", "cpu")


def test_the_readme_shows_the_current_colab_estimate():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    total = next(line for line in readme.splitlines() if line.startswith("total ") and "." in line)
    t4, h200 = (float(x) for x in total.split()[-2:])
    assert t4 == pytest.approx(budget.minutes("colab", "T4")["total"], abs=0.05)
    assert h200 == pytest.approx(budget.minutes("colab", "H200")["total"], abs=0.05)


def test_training_estimate_follows_the_flop_count():
    import torch

    g = budget.forward_gflop("tiny", 16)
    cpu = budget.training_estimate("tiny", resolution=16, batch_size=8, steps=1000, device="cpu")
    tf = 3 * 8 * 1000 * g / 1e3
    assert f"{tf / (budget.CPU_TFLOPS_PER_THREAD * torch.get_num_threads()) / 60:.0f} min" in cpu
    gpu = budget.training_estimate("ddpm-paper", resolution=64, batch_size=32, steps=2000, device="cuda")
    tf = 3 * 32 * 2000 * budget.forward_gflop("ddpm-paper", 64) / 1e3
    assert f"{tf / 20.0 / 60:.1f} min on T4" in gpu and f"{tf / 400.0 / 60:.1f} min on H200" in gpu
