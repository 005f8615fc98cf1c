"""tdpmlib.workflow.budget: FLOP counts per notebook and the colab profile's size; the GPU-memory refusal."""

import re
import warnings

import pytest

from tdpmlib.methods import memory
from tdpmlib.workflow import budget, config


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
    assert p["n_generate"] >= 64 and p["n_final_samples"] >= 128 and p["n_test"] >= 30
    for n_train in (737, 6621):
        assert budget.minutes("colab", "T4", n_train=n_train)["total"] <= 60  # training and DIP fits at fp32 there
        assert budget.minutes("colab", "H100", n_train=n_train)["total"] <= 8
        assert budget.minutes("colab", "H200", n_train=n_train)["total"] <= 8


def test_the_t4_is_priced_at_the_dtype_the_code_runs_there(monkeypatch):
    # a fake CUDA device of each class: ddpm.autocast decides the dtype, and the budget must price that one
    import contextlib

    import torch

    from tdpmlib.methods import ddpm

    for gpu, cap in budget.CAPABILITY.items():
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, _cap=cap: _cap)
        for training in (True, False):
            with warnings.catch_warnings():  # torch.autocast warns that this machine has no CUDA
                warnings.simplefilter("ignore")
                ctx = ddpm.autocast("cuda", training=training)
            runs = torch.float32 if isinstance(ctx, contextlib.nullcontext) else ctx.fast_dtype
            assert budget.run_dtype(gpu, training=training) == runs, (gpu, training)
    assert budget.run_dtype("T4", training=True) == torch.float32 and budget.rate("T4", training=True) <= 8.1
    assert budget.rate("T4", training=False) == 20.0 and budget.rate("H200", training=True) == 400.0
    # a T4 notebook's minutes: its training work at the fp32 rate, its sampling at the fp16 one
    units = budget.unit_tflop("colab")["01_ddpm_training"]
    assert budget.minutes("colab", "T4")["01_ddpm_training"] == pytest.approx(
        (units["train"] / budget.rate("T4", training=True) + units["nfe"] / 20.0) / 60)


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

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    head = next(line for line in readme if line.startswith("notebook ") and "T4 min" in line)
    total = next(line for line in readme[readme.index(head):] if line.startswith("total "))
    gpus = [g for g in head.replace(" min", "").split()[2:]]
    for gpu, value in zip(gpus, total.split()[2:], strict=True):
        assert float(value) == pytest.approx(budget.minutes("colab", gpu)["total"], abs=0.05), gpu


def test_training_estimate_follows_the_flop_count():
    import torch

    g = budget.forward_gflop("tiny", 16)
    cpu = budget.training_estimate("tiny", resolution=16, batch_size=8, steps=1000, device="cpu")
    tf = 3 * 8 * 1000 * g / 1e3
    assert f"{tf / (budget.CPU_TFLOPS_PER_THREAD * torch.get_num_threads()) / 60:.0f} min" in cpu
    gpu = budget.training_estimate("ddpm-paper", resolution=64, batch_size=32, steps=2000, device="cuda")
    tf = 3 * 32 * 2000 * budget.forward_gflop("ddpm-paper", 64) / 1e3
    assert f"{tf / 5.0 / 60:.1f} min on T4" in gpu and f"{tf / 400.0 / 60:.1f} min on H200" in gpu  # T4: fp32
