"""The GPU profiles' configurations (paper, colab) end to end on the CPU at tiny cost: its own presets at 64 px, 2 training
steps, 3 reverse steps, one batched DIP step at B = 2, through the code paths the notebooks call
(pipeline.train_or_load, ddpm.sample, dip.fit_dip under both protocols, tdpm.tdpm_dip, the memory plan)."""

import pytest
import torch

from tdpmlib.methods import ddpm, dip, memory, models, tdpm
from tdpmlib.workflow import config, pipeline


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["paper", "colab"])
def test_gpu_profile_runs_end_to_end_on_the_cpu(tmp_path, profile):
    cfg = config.Config.from_params(profile=profile, notebook="gpu_tiny", device="cpu", results_dir=str(tmp_path),
                                    train_steps=2, train_epochs=0, batch_size=2, warmup_steps=1, checkpoint_every=1)
    assert (cfg.resolution, cfg.ddpm_preset, cfg.dip_preset, cfg.dip_preset_official) == (
        64, "ddpm-paper", "dip-paper", "skip-paper")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1

    unet, sched, info = pipeline.train_or_load(cfg, images, schedule="linear")
    assert not info["loaded"] and models.count_parameters(unet) > 100e6  # the report's 113.7 M-parameter DDPM
    again = pipeline.train_or_load(cfg, images, schedule="linear")
    assert again[2]["loaded"]  # the saved network is recognised by its configuration

    x = ddpm.sample(unet, sched, n=2, resolution=64, generator=g, method="ddim", num_steps=3,
                    batch_size=cfg.sample_batch)
    assert x.shape == (2, 3, 64, 64) and torch.isfinite(x).all()

    for protocol, preset in (("plain", cfg.dip_preset), ("official", cfg.dip_preset_official)):
        fit = dip.fit_dip(images[:2], iterations=1, protocol=protocol, preset=preset, seed=0)
        assert fit.output.shape == (2, 3, 64, 64) and torch.isfinite(fit.output).all()

    out = tdpm.tdpm_dip(unet, sched, images[:2], t_trunc=3, dip_iterations=1, generator=g, preset=cfg.dip_preset)
    assert out.x0.shape == (2, 3, 64, 64) and (out.network_evaluations, out.dip_iterations) == (4, 1)  # T_trunc + 1

    plan = memory.plan(dip_preset=cfg.dip_preset, ddpm_preset=cfg.ddpm_preset, resolution=cfg.resolution,
                       budget=int(memory.FRACTION * memory.GPU_MEMORY_GB["T4"] * 1e9), dip_cap=cfg.sample_batch,
                       sample_cap=cfg.sample_batch)
    assert 1 <= plan["dip_batch"] < cfg.sample_batch  # on a T4 the paper DIP batch must be split


def test_paper_profile_trains_as_the_author_and_cpu_as_before():
    """paper: no EMA, no flips, the author's resize, fp32, recorded in the model's identity; cpu: the book's
    recipe, whose identity has none of these keys, so the committed cpu networks are still recognised."""
    paper = config.Config.from_params(profile="paper", notebook="x", device="cpu")
    assert (paper.ema_decay, paper.hflip, paper.preprocess, paper.train_autocast) == (0.0, False, "author", False)
    tcfg = pipeline.train_config(paper, "linear", 10)
    assert (tcfg["ema_decay"], tcfg["hflip"], tcfg["train_autocast"]) == (0.0, False, False)
    assert tcfg["data"].endswith("[preprocess=author]")
    assert pipeline.recipe(paper) == dict(ema_decay=0.0, hflip=False)
    cpu = config.Config.from_params(profile="cpu", notebook="x", device="cpu")
    assert not {"ema_decay", "hflip", "train_autocast"} & set(pipeline.train_config(cpu, "linear", 10))
    assert "preprocess" not in pipeline.train_config(cpu, "linear", 10)["data"]


@pytest.mark.parametrize("name, value", [("ema_decay", 1.0), ("ema_decay", -0.1), ("hflip", 1),
                                         ("preprocess", "lanczos"), ("train_autocast", "no")])
def test_bad_recipe_parameters(name, value):
    with pytest.raises(ValueError, match=f"{name}="):
        config.Config.from_params(profile="cpu", notebook="x", **{name: value})
