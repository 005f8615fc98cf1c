"""Every notebook parameter is validated before work starts: one ValueError naming parameter, value and what is allowed."""

import pytest
import torch

from tdpmlib.methods import models
from tdpmlib.workflow import config, data
from tdpmlib.workflow.config import Config

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
    (dict(image_column=3), r"image_column=3 is not allowed; use a column name"),
    (dict(class_filter="label"), r"class_filter='label' is not allowed; use '' \(every image\) or 'COLUMN=V1,V2'"),
    (dict(class_filter="=3"), r"class_filter='=3' is not allowed; use ''"),
    (dict(class_filter=["label=3"]), r"class_filter=\['label=3'\] is not allowed; use ''"),
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

    from tdpmlib.workflow import train

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


def test_image_column_and_class_filter_reach_the_loader_and_the_model_identity(tmp_path, monkeypatch):
    import datasets
    import io
    import json
    from pathlib import Path

    from PIL import Image

    from tdpmlib.workflow import pipeline

    monkeypatch.delenv("TDPM_IMAGE_COLUMN", raising=False)
    monkeypatch.delenv("TDPM_CLASS_FILTER", raising=False)
    cells = []
    for v in range(6):
        buf = io.BytesIO()
        Image.new("L", (16, 16), 40 * v).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    path = tmp_path / "grey.parquet"
    datasets.Dataset.from_dict({"img": cells, "label": [0, 1, 0, 1, 0, 1]}, features=features).to_parquet(str(path))
    cfg = Config.from_params(**dict(BASE, data_source=str(path), class_filter="label=1"))
    assert (cfg.image_column, cfg.class_filter) == ("", "label=1")
    train, held = pipeline.load_split(cfg)
    values = sorted(torch.cat([train, held])[:, 0, 0, 0].tolist())
    assert values == pytest.approx([40 / 127.5 - 1, 120 / 127.5 - 1, 200 / 127.5 - 1], abs=1e-6)
    plain = pipeline.train_config(Config.from_params(**dict(BASE, data_source=str(path))), "linear", 5)
    filtered = pipeline.train_config(cfg, "linear", 5)
    assert filtered.keys() == plain.keys() and filtered["data"] == plain["data"] + " [class_filter=label=1]"
    monkeypatch.setenv("TDPM_CLASS_FILTER", "label=x,")
    with pytest.raises(ValueError, match=r"class_filter='label=x,' \(from TDPM_CLASS_FILTER\) is not allowed"):
        Config.from_params(**BASE)
    monkeypatch.delenv("TDPM_CLASS_FILTER")
    # the default options leave a committed model's identity byte for byte as it was
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "pokemon" / "train-128px.parquet"
    committed = Path(__file__).resolve().parents[1] / "results" / "cpu" / "models" / "ddpm-linear" / "train_config.json"
    if shared.is_file() and committed.is_file():
        cpu = Config.from_params(notebook="t", profile="cpu", device="cpu", results_dir=str(tmp_path), data_source=str(shared))
        assert pipeline.train_config(cpu, "linear", 737) == json.loads(committed.read_text())
