"""scripts/gpu_check.py, the one-shot device check, dry-run on the CPU at tiny sizes."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tdpmlib.workflow import budget

REPO = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_checks_and_times_without_extrapolating(tmp_path, capsys):
    gc = load()
    assert gc.main(["--dry-run", "--out", str(tmp_path), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(c["ok"] for c in report["checks"].values())
    cases = {(r["case"], r["fast"]) for r in report["timings"]}
    assert cases == {(c, f) for c in ("train", "sample", "dip B=2", "dip B=4", "dip skip") for f in (True, False)} | {
        ("sample, cpu noise", True)}
    assert all(r["seconds"] > 0 and r["per_unit"] > 0 for r in report["timings"])
    # tiny sizes say nothing about the paper profile: no minutes in the JSON or the log
    out = capsys.readouterr().out
    assert report["extrapolation"] is None and "not meaningful in a dry run" in out
    assert not re.search(r"extrapolated: \d", out)
    # the extrapolation itself, from these timings: every notebook of the paper workload
    ex = gc.extrapolate(report["timings"], budget.workload("paper"))
    assert set(ex["per_notebook_min"]) == set(budget.workload("paper"))
    assert ex["total_min"] == pytest.approx(sum(ex["per_notebook_min"].values()))


def test_sampling_is_timed_as_the_book_samples(monkeypatch):
    # ddpm.sample's path: batches of the memory plan's sample_batch_limit and a generator, on the device by default
    import torch

    from tdpmlib.methods import ddpm, memory, models, schedules

    gc = load()
    monkeypatch.setattr(memory, "sample_batch_limit", lambda unet, *, resolution, device, cap, **k: min(cap, 3))
    seen = []
    real = ddpm.reverse_chain
    monkeypatch.setattr(ddpm, "reverse_chain", lambda unet, sched, x, t, **k: (seen.append((len(x), k)),
                                                                               real(unet, sched, x, t, **k))[1])
    monkeypatch.setattr(gc, "SIZES", dict(gc.SIZES, dry=("tiny", "tiny", 8, 2, 8, (2,), dict(train=1, sample=2, dip=1))))
    unet = models.make_unet("tiny", resolution=8).eval()
    rows = gc.time_cases(unet, schedules.make_scheduler("linear"), gc.SIZES["dry"], torch.device("cpu"))
    sample_rows = [r for r in rows if r["case"].startswith("sample")]
    assert {r["batch"] for r in sample_rows} == {3} and seen
    assert all(b <= 3 and isinstance(k["generator"], torch.Generator) for b, k in seen)
    assert {k["noise"] for _, k in seen} == {"device", "cpu"}


def test_the_shell_wrapper_dry_run_passes(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--device", "cpu"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checks passed" in r.stdout and "not meaningful in a dry run" in r.stdout
    assert (tmp_path / "gpu_check.json").exists() and (tmp_path / "gpu_check.log").exists()


def test_without_cuda_the_full_run_is_refused_in_one_line(tmp_path, capsys):
    assert load().main(["--out", str(tmp_path), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "gpu_check.json").exists()


def test_workload_scales_with_the_training_set():
    small, large = budget.workload("paper", n_train=737), budget.workload("paper", n_train=6621)
    assert large["01_ddpm_training"]["train"] > small["01_ddpm_training"]["train"]
    assert large["02_dip_fitting"] == small["02_dip_fitting"]
