"""ddpm_source as a hub model id ("hub:ID", "author"): a diffusers UNet loaded as it is, never trained here.

Offline: the "hub" is a local folder in the hub's layout (config.json, the weights and scheduler_config.json at
its top, as the author's ``push_to_hub`` left them); the author's ids are checked by name, never downloaded."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from tdpmlib.methods import models
from tdpmlib.workflow import pipeline, remote


def _hub_folder(path, *, resolution=16, beta_schedule="linear"):
    unet = models.make_unet("tiny", resolution=resolution)
    unet.save_pretrained(path)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule).save_config(path)
    return unet


def _no_training(*a, **k):
    raise AssertionError("trained although a hub model was named")


def test_a_model_in_the_hubs_layout_is_loaded_as_it_is(tmp_path, monkeypatch):
    ref = _hub_folder(tmp_path / "hub")
    monkeypatch.setattr(pipeline.ddpm_training, "train_ddpm", _no_training)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"),
                         ddpm_source=f"hub:{tmp_path / 'hub'}")
    unet, sched, info = pipeline.train_or_load(cfg, torch.rand(4, 3, 16, 16), schedule="linear")
    assert info["loaded"] and info["source"] == str(tmp_path / "hub") and info["log"].empty
    assert sched.config.beta_schedule == "linear"
    for a, b in zip(unet.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a.cpu(), b)


def test_a_hub_model_of_another_schedule_or_size_is_refused(tmp_path):
    _hub_folder(tmp_path / "cos", beta_schedule="squaredcos_cap_v2")
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"),
                         ddpm_source=f"hub:{tmp_path / 'cos'}")
    with pytest.raises(ValueError, match="beta_schedule='squaredcos_cap_v2'"):
        pipeline.train_or_load(cfg, torch.rand(4, 3, 16, 16), schedule="linear")
    _hub_folder(tmp_path / "big", resolution=32)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"),
                         ddpm_source=f"hub:{tmp_path / 'big'}")
    with pytest.raises(ValueError, match="is a 32 px model"):
        pipeline.train_or_load(cfg, torch.rand(4, 3, 16, 16), schedule="linear")


def test_author_names_the_authors_two_models(tmp_path, monkeypatch):
    asked = []

    def fake_from_pretrained(source, **kw):
        asked.append(source)
        raise OSError("offline")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", fake_from_pretrained)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"), ddpm_source="author")
    for schedule in ("linear", "cosine"):
        with pytest.raises(OSError):
            pipeline.train_or_load(cfg, torch.rand(4, 3, 16, 16), schedule=schedule)
    assert asked == ["FelixChao/ddpm-pokemon-64-full-steps", "FelixChao/ddpm-pokemon-64-cosine"]
    assert remote.hub_model("some/folder", "linear") == ""  # the book's layout: fetch_model, not a hub model
    assert remote.hub_model("hub:me/ddpm-{schedule}", "cosine") == "me/ddpm-cosine"


@pytest.mark.parametrize("source", ["hub:", 3])
def test_bad_hub_source(tmp_path, source):
    with pytest.raises(ValueError, match="ddpm_source="):
        pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path), ddpm_source=source)
