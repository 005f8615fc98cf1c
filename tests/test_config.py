"""Every notebook parameter is validated before work starts: one ValueError naming parameter, value and what is allowed."""

import pytest
import torch

from tdpmlib import config, data, models
from tdpmlib.config import Config

BASE = dict(notebook="t", profile="smoke", results_dir="/tmp/tdpm-test-results")

BAD = [
    (dict(profile="fast"), r"profile='fast' is not allowed; use one of \['smoke', 'cpu', 'colab', 'paper'\]"),
    (dict(schedule="quadratic"), r"schedule='quadratic' is not allowed; use one of \['cosine', 'linear'\]"),
    (dict(seed=1.5), r"seed=1.5 is not allowed; use an integer"),
    (dict(seed="0"), r"seed='0' is not allowed; use an integer"),
    (dict(seed=-1), r"seed=-1 is not allowed"),
    (dict(dip_iterations=0), r"dip_iterations=0 is not allowed; use an integer >= 1"),
    (dict(dip_iterations=-100), r"dip_iterations=-100 is not allowed"),
    (dict(train_steps=-5), r"train_steps=-5 is not allowed"),
    (dict(dip_lr="1e-3"), r"dip_lr='1e-3' is not allowed; use a finite number"),
    (dict(dip_lr=0.0), r"dip_lr=0.0 is not allowed; use a number > 0"),
    (dict(train_lr=float("nan")), r"train_lr=nan is not allowed; use a finite number"),
    (dict(profile="cpu", resolution=20), r"resolution=20 is not allowed for preset 'ddpm-cpu'; use a positive multiple of 8"),
    (dict(resolution=17), r"resolution=17 is not allowed for preset 'tiny'; use a positive multiple of 2"),
    (dict(data_source="/no/such/images.parquet"), r"data_source='/no/such/images.parquet' is not allowed; the path does not exist"),
    (dict(device="tpu"), r"device='tpu' is not allowed; use one of \['auto', 'cpu', 'cuda'\]"),
    (dict(n_generate=0), r"n_generate=0 is not allowed"),
    (dict(batch_size=True), r"batch_size=True is not allowed"),
    (dict(held_out=1.5), r"held_out=1.5 is not allowed"),
    (dict(ddpm_preset="huge"), r"ddpm_preset='huge' is not allowed"),
    (dict(run_name="a/b"), r"run_name='a/b' is not allowed; use a plain folder name"),
    (dict(bogus=1), r"unknown parameter\(s\) \['bogus'\]"),
    (dict(train_steps=0), r"train_steps=0 is not allowed; set exactly one of train_steps and train_epochs"),
]


@pytest.mark.parametrize("params, message", BAD, ids=[str(p) for p, _ in BAD])
def test_bad_parameter_gives_one_clear_error(params, message):
    with pytest.raises(ValueError, match=message) as info:
        Config.from_params(**dict(BASE, **params))
    assert "\n" not in str(info.value)  # one line


def test_resolution_the_unet_cannot_take():
    with pytest.raises(ValueError, match=r"resolution=36 is not allowed for preset 'ddpm-paper'; use a positive multiple of 32"):
        Config.from_params(**dict(BASE, profile="paper", resolution=36, device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda():
    with pytest.raises(ValueError, match=r"device='cuda' is not allowed; CUDA is not available on this machine"):
        Config.from_params(**dict(BASE, device="cuda"))


def test_empty_dataset_and_missing_image_column(tmp_path):
    empty = data.write_synthetic_parquet(tmp_path / "empty.parquet", n=0)
    with pytest.raises(ValueError, match="no images"):
        data.load_images(str(empty), resolution=16)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "noimg.parquet")
    with pytest.raises(ValueError, match="image"):
        data.load_images(str(tmp_path / "noimg.parquet"), resolution=16)


def test_profile_defaults_and_overrides():
    cfg = Config.from_params(**dict(BASE, dip_iterations=7, n_denoise=None))
    assert cfg.dip_iterations == 7 and cfg.n_denoise == config.PROFILES["smoke"]["n_denoise"]
    assert cfg.run_name == "t" and cfg.torch_device.type in ("cpu", "cuda")
    for name, prof in config.PROFILES.items():  # every profile is itself valid
        c = Config.from_params(notebook="t", profile=name, results_dir="/tmp/x", device="cpu")
        assert models.check_resolution(c.ddpm_preset, c.resolution)


def test_extra_checks_validate_notebook_parameters():
    checks = {"t_trunc": lambda n, v: config.check_int(n, v, low=0, high=1000)}
    cfg = Config.from_params(**dict(BASE, t_trunc=10), extra_checks=checks)
    assert cfg.extra == {"t_trunc": 10}
    with pytest.raises(ValueError, match=r"t_trunc=1000\.5 is not allowed|t_trunc=-1 is not allowed"):
        Config.from_params(**dict(BASE, t_trunc=-1), extra_checks=checks)


def test_gpu_only_profile_is_refused_without_cuda(monkeypatch, capsys):
    import subprocess
    import sys
    from pathlib import Path

    from tdpmlib import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="profile='paper' is not allowed; it needs a CUDA GPU"):
        config.check_profile_device("paper", "auto")
    config.check_profile_device("cpu", "auto")  # the CPU profiles run anywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config.check_profile_device("paper", "auto")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):  # an explicit CPU device on a CUDA machine
        config.check_profile_device("paper", "cpu")
    # the two entry points refuse before any work: the training CLI (exit 2, one line) and the book runner
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.main(["--profile", "paper", "--results-dir", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "scripts" / "run_notebooks.py"), "--profile", "paper",
                          "--param", "device=cpu", "--out", "/nonexistent/never-written"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "needs a CUDA GPU" in out.stderr and not Path("/nonexistent").exists()
