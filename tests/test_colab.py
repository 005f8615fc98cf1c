"""Running a notebook alone on Colab: results under /content, sibling notebooks fetched, a GPU the wheel cannot use."""
import json
import os

import nbformat
import pytest
import torch
import yaml

from tdpmlib import pipeline, synthesis

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_results_go_under_content_on_colab(monkeypatch):
    monkeypatch.setattr(pipeline, "on_colab", lambda: True)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir="../results")
    assert cfg.results_dir == "/content/results"
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir="/tmp/mine")
    assert cfg.results_dir == "/tmp/mine"  # a folder the user chose is kept
    monkeypatch.setattr(pipeline, "on_colab", lambda: False)
    assert pipeline.setup("x", show=False, profile="smoke", results_dir="../results").results_dir == "../results"


def test_gpu_the_wheel_cannot_use_is_reported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/proc/driver/nvidia/version" or real_exists(p))
    reason = pipeline.gpu_fallback_reason()
    assert "cannot use it" in reason and torch.__version__ in reason
    with pytest.warns(UserWarning, match="runs on the CPU"):
        pipeline.setup("x", show=False, profile="smoke", device="auto")
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/proc/driver/nvidia/version" and real_exists(p))
    monkeypatch.setattr(pipeline.shutil, "which", lambda name: None)
    assert pipeline.gpu_fallback_reason() == ""  # no NVIDIA GPU at all: nothing to warn about


def test_repository_is_the_books(monkeypatch):
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    assert synthesis.REPOSITORY == url
    monkeypatch.delenv("TDPM_NOTEBOOKS_URL", raising=False)
    assert synthesis.notebook_url("03_tdpm_dip") == url.replace("github.com", "raw.githubusercontent.com") + "/main/notebooks/03_tdpm_dip.ipynb"


def _producer(folder, name):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('profile = "smoke"\nresults_dir = "r"\nseed = 0\ndata_source = ""\ndevice = "auto"')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(
        f"from pathlib import Path\nd = Path(results_dir) / profile / {name!r}\nd.mkdir(parents=True, exist_ok=True)\n"
        "(d / 'out.csv').write_text('a\\n1\\n')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / f"{name}.ipynb"))


def test_missing_sibling_notebook_is_fetched_and_run(tmp_path, monkeypatch):
    _producer(tmp_path / "remote", "03_x")
    monkeypatch.setenv("TDPM_NOTEBOOKS_URL", (tmp_path / "remote").as_uri())
    cfg = pipeline.setup("07_y", show=False, profile="smoke", results_dir=str(tmp_path / "res"))
    path = synthesis.ensure_results(cfg, "03_x", "out.csv", notebooks_dir=tmp_path / "nowhere")
    assert path.read_text() == "a\n1\n"
    assert json.loads((cfg.out_dir() / "producers" / "03_x.ipynb").read_text())["cells"]


def test_unfetchable_notebook_names_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TDPM_NOTEBOOKS_URL", (tmp_path / "empty").as_uri())
    cfg = pipeline.setup("07_y", show=False, profile="smoke", results_dir=str(tmp_path / "res"))
    with pytest.raises(FileNotFoundError, match="run notebooks/03_x.ipynb .*could not be fetched"):
        synthesis.ensure_results(cfg, "03_x", "out.csv", notebooks_dir=tmp_path / "nowhere")
    assert not list((cfg.out_dir()).rglob("*.ipynb*"))  # nothing half-written
