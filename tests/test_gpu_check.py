"""scripts/gpu_check.py, the one-shot device check, dry-run on the CPU at tiny sizes."""

import importlib.util
import json
from pathlib import Path

import pytest

from tdpmlib import budget

REPO = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_checks_times_and_extrapolates(tmp_path):
    gc = load()
    assert gc.main(["--dry-run", "--out", str(tmp_path), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(c["ok"] for c in report["checks"].values())
    cases = {(r["case"], r["fast"]) for r in report["timings"]}
    assert cases == {(c, f) for c in ("train", "sample", "dip B=2", "dip B=4", "dip skip") for f in (True, False)}
    assert all(r["seconds"] > 0 and r["per_unit"] > 0 for r in report["timings"])
    minutes = report["extrapolation"]["per_notebook_min"]
    assert set(minutes) == set(budget.workload("paper"))
    assert report["extrapolation"]["total_min"] == pytest.approx(sum(minutes.values()))


def test_without_cuda_the_full_run_is_refused_in_one_line(tmp_path, capsys):
    assert load().main(["--out", str(tmp_path), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "gpu_check.json").exists()


def test_workload_scales_with_the_training_set():
    small, large = budget.workload("paper", n_train=737), budget.workload("paper", n_train=6621)
    assert large["01_ddpm_training"]["train"] > small["01_ddpm_training"]["train"]
    assert large["02_dip_fitting"] == small["02_dip_fitting"]
