"""Robustness guarantees: exact resume after SIGKILL, atomic writes, safe loading."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tdpmlib.workflow import data, results

REPO = Path(__file__).resolve().parents[1]


def _train_cmd(results_dir, parquet):
    return [sys.executable, "-m", "tdpmlib.workflow.train", "--profile", "smoke", "--schedule", "linear",
            "--data-source", str(parquet), "--results-dir", str(results_dir), "--train-steps", "60", "--checkpoint-every", "2"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return data.write_synthetic_parquet(tmp_path_factory.mktemp("d") / "imgs.parquet", n=24, size=16)


def test_sigkill_then_rerun_resumes_bitwise(tmp_path, parquet):
    """Kill the training command with SIGKILL at a random step, rerun it: the weights equal an uninterrupted run's."""
    ref = subprocess.run(_train_cmd(tmp_path / "ref", parquet), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    mdir = "smoke/models/ddpm-linear"
    kill_at = random.Random().randint(2, 50)  # a random step (checkpoints every 2 steps)
    proc = subprocess.Popen(_train_cmd(tmp_path / "run", parquet), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "run" / mdir / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = torch.load(ckpt, weights_only=True)["step"]
            except Exception:  # being replaced right now: atomic rename means the old or the new file
                step = 0
            if step >= kill_at:
                break
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / mdir / "train_config.json").exists(), "the run finished before it was killed"
    again = subprocess.run(_train_cmd(tmp_path / "run", parquet), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    from safetensors.torch import load_file
    a, b = (load_file(tmp_path / d / mdir / "unet_ema" / "diffusion_pytorch_model.safetensors") for d in ("ref", "run"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    la, lb = (pd.read_csv(tmp_path / d / mdir / "loss.csv") for d in ("ref", "run"))
    assert la.step.tolist() == lb.step.tolist() == list(range(1, 61)) and la.loss.tolist() == lb.loss.tolist()
    # finished: the checkpoint, needed only to resume, is gone
    assert not any((tmp_path / d / mdir / "checkpoint.pt").exists() for d in ("ref", "run"))
    # and a third run loads the finished model instead of training again
    third = subprocess.run(_train_cmd(tmp_path / "run", parquet), env=_env(), capture_output=True, text=True, timeout=300)
    assert "loaded" in third.stdout


def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    results.save_checkpoint(target, {"step": 1, "w": torch.ones(3)})

    def crashing_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        results.save_checkpoint(target, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert results.load_checkpoint(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_crash_mid_csv_and_figure_write(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    df = pd.DataFrame({"a": [1, 2]})

    def boom(self, path, *a, **k):
        Path(path).write_text("a\n1")
        raise RuntimeError("crash")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(RuntimeError):
        results.write_csv(tmp_path / "results.csv", df)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no results.csv, so a sweep will not take the run as finished
    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda path, **k: (Path(path).write_bytes(b"\x89PNG"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        results.save_figure(fig, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_named(tmp_path):
    p = tmp_path / "checkpoint.pt"
    results.save_checkpoint(p, {"model": {"w": torch.randn(100)}, "config": {"a": 1}})
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*corrupt or truncated"):
        results.load_checkpoint(p)


def test_checkpoint_with_other_config_lists_differing_keys(tmp_path):
    p = tmp_path / "checkpoint.pt"
    results.save_checkpoint(p, {"config": {"lr": 1e-4, "batch_size": 32, "seed": 0}})
    with pytest.raises(ValueError, match=r"differing keys: batch_size \(32 != 8\), lr"):
        results.load_checkpoint(p, expected_config={"lr": 1e-3, "batch_size": 8, "seed": 0})


def test_arbitrary_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "checkpoint.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        results.load_checkpoint(p)
