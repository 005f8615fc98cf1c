"""Running a notebook alone on Colab: results under /content, sibling notebooks fetched, a GPU the wheel cannot use."""
import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from tdpmlib.studies import conclusions
from tdpmlib.workflow import pipeline

REPO = Path(__file__).resolve().parent.parent


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
    from tdpmlib.workflow import remote
    assert remote.REPOSITORY == url
    monkeypatch.delenv("TDPM_NOTEBOOKS_URL", raising=False)
    assert conclusions.notebook_url("03_tdpm_dip") == url.replace("github.com", "raw.githubusercontent.com") + "/main/notebooks/03_tdpm_dip.ipynb"


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
    path = conclusions.ensure_results(cfg, "03_x", "out.csv", notebooks_dir=tmp_path / "nowhere")
    assert path.read_text() == "a\n1\n"
    assert json.loads((cfg.out_dir() / "producers" / "03_x.ipynb").read_text())["cells"]


def test_unfetchable_notebook_names_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TDPM_NOTEBOOKS_URL", (tmp_path / "empty").as_uri())
    cfg = pipeline.setup("07_y", show=False, profile="smoke", results_dir=str(tmp_path / "res"))
    with pytest.raises(FileNotFoundError, match="run notebooks/03_x.ipynb .*could not be fetched"):
        conclusions.ensure_results(cfg, "03_x", "out.csv", notebooks_dir=tmp_path / "nowhere")
    assert not list((cfg.out_dir()).rglob("*.ipynb*"))  # nothing half-written


# ---- trained DDPMs from a folder or URL (ddpm_source) --------------------------------------------------------------
def _trained_folder(cfg, schedule, n_train, root):
    """A finished model folder as train_or_load leaves it, built by hand (a random network, a one-row loss log)."""
    from tdpmlib.methods import models

    d = root / f"ddpm-{schedule}"
    unet = models.make_unet(cfg.ddpm_preset, resolution=cfg.resolution)
    unet.save_pretrained(d / "unet_ema")
    (d / "loss.csv").write_text("step,loss,lr,seconds\n1,0.5,0.001,1.0\n")
    (d / "train_summary.json").write_text(json.dumps(dict(train_seconds=1.0, steps=1)))
    (d / "train_config.json").write_text(json.dumps(pipeline.train_config(cfg, schedule, n_train)))
    return unet


def _no_training(*a, **k):
    raise AssertionError("trained although a matching model was available")


@pytest.mark.parametrize("over_http", [False, True])
def test_trained_ddpm_is_loaded_from_a_folder_or_url(tmp_path, monkeypatch, over_http):
    import functools
    import http.server
    import threading

    train = torch.rand(6, 3, 16, 16)
    src_cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "elsewhere"))
    ref = _trained_folder(src_cfg, "linear", len(train), tmp_path / "models")
    source = str(tmp_path / "models")
    if over_http:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=source)
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        source = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setattr(pipeline.ddpm_training, "train_ddpm", _no_training)
        cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"), ddpm_source=source)
        unet, _, info = pipeline.train_or_load(cfg, train, schedule="linear")
    finally:
        if over_http:
            server.shutdown()
    assert info["loaded"]
    for a, b in zip(unet.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    assert (cfg.model_dir("linear") / "train_config.json").exists()


def test_trained_ddpm_of_another_configuration_is_not_used(tmp_path, monkeypatch, capsys):
    train = torch.rand(6, 3, 16, 16)
    other = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "o"), seed=1)
    _trained_folder(other, "linear", len(train), tmp_path / "models")
    monkeypatch.setenv("TDPM_DDPM_SOURCE", str(tmp_path / "models"))  # the environment variable works like the parameter

    class Trained(Exception):
        pass

    def train_instead(*a, **k):
        raise Trained

    monkeypatch.setattr(pipeline.ddpm_training, "train_ddpm", train_instead)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"))
    with pytest.raises(Trained):
        pipeline.train_or_load(cfg, train, schedule="linear")
    assert "another configuration (differs in seed)" in capsys.readouterr().out
    assert not (cfg.model_dir("linear") / "train_config.json").exists()


def test_interrupted_model_copy_leaves_nothing(tmp_path, monkeypatch):
    from tdpmlib.workflow import remote

    train = torch.rand(6, 3, 16, 16)
    cfg = pipeline.setup("x", show=False, profile="smoke", results_dir=str(tmp_path / "run"))
    _trained_folder(cfg, "linear", len(train), tmp_path / "models")
    real_read = remote.read

    def flaky(base, name, **k):
        if name.endswith(".safetensors"):
            raise ConnectionResetError("connection dropped")
        return real_read(base, name, **k)

    monkeypatch.setattr(remote, "read", flaky)
    dest = tmp_path / "run" / "ddpm-linear"
    why = remote.fetch_model(str(tmp_path / "models" / "ddpm-linear"), dest,
                             expect=pipeline.train_config(cfg, "linear", len(train)))
    assert "could not be copied" in why and "ConnectionResetError" in why
    assert not dest.exists() or not any(dest.rglob("*"))
    assert not list((tmp_path / "run").glob(".*fetch*"))


def test_ddpm_source_must_exist(tmp_path):
    with pytest.raises(ValueError, match="ddpm_source"):
        pipeline.setup("x", show=False, profile="smoke", ddpm_source=str(tmp_path / "nowhere"))


# ---- the repository URL: set once in _config.yml, every copy equal to it ----------------------------------------------
# Repositories the book cites; every other GitHub repository URL in the project is a copy of its own.
CITED = {"felixchao/Generative-Models-for-Visual-Signals", "DmitryUlyanov/deep-image-prior",
         "sun-umn/Early_Stopping_for_DIP", "facebookincubator/submitit"}
GITHUB_REPO = re.compile(r"https://(?:github\.com|raw\.githubusercontent\.com)/([\w.-]+/[\w-]+(?:\.(?!git\b)[\w-]+)*)")
TEXT = {".py", ".ipynb", ".md", ".yml", ".yaml", ".cff", ".toml", ".sh", ".txt", ".bib", ""}


def repository_copies():
    """(file, owner/name) for every GitHub repository URL in the files git knows (tests, whose URLs are examples, and
    results aside), the cited repositories left out."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    return [(f, m) for f in files if Path(f).suffix in TEXT and not f.startswith(("results/", "tests/")) and (REPO / f).is_file()
            for m in GITHUB_REPO.findall((REPO / f).read_text(errors="replace")) if m not in CITED]


def test_every_copy_of_the_repository_url_is_the_configured_one():
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    slug = url.removeprefix("https://github.com/")
    copies = repository_copies()
    wrong = sorted({f"{f}: {m}" for f, m in copies if m != slug})
    assert not wrong, f"copies of the repository URL that differ from _config.yml's {url}:\n" + "\n".join(wrong)
    where = {f for f, _ in copies}
    # the copies this test exists for are seen: every install cell, 08's clone, tdpmlib.workflow.remote, README, CITATION.cff
    assert {"tdpmlib/workflow/remote.py", "README.md", "CITATION.cff", "_config.yml"} <= where
    assert {f"notebooks/{p.name}" for p in (REPO / "notebooks").glob("[0-9]*.ipynb")} <= where
    clone = [c for c in nbformat.read(str(REPO / "notebooks" / "08_performance.ipynb"), as_version=4).cells
             if '"clone"' in c.source]
    assert clone and f'"{url}.git"' in clone[0].source


def test_the_url_pattern_sees_a_fork_and_a_git_suffix():
    assert GITHUB_REPO.findall('["git", "clone", "https://github.com/alice/tdpm-dip.git"] https://github.com/a/b.c') \
        == ["alice/tdpm-dip", "a/b.c"]


def test_readme_colab_cell_installs_the_core_from_the_configured_repository():
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    readme = (REPO / "README.md").read_text()
    cell = re.search(r"## Colab\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert f'REPO = "{url}"' in cell
    installs = [line for line in cell.splitlines() if "pip install" in line]
    assert installs and not any("[" in line or "torch" in line for line in installs), installs  # core only
    assert re.search(r"^%run \d\d\w*\.ipynb$", cell, re.M)
