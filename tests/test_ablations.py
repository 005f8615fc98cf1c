"""tdpmlib.ablations: the grid per profile, the sweep arguments, and the per-ablation tables (no kernels)."""

from __future__ import annotations

import pandas as pd
import pytest

from tdpmlib import ablations, config, sweep


def cfg_for(profile, **kw):
    return config.Config.from_params(profile=profile, notebook=ablations.STEM, extra_checks=ablations.EXTRA_CHECKS, **kw)


def test_plan_runs_the_baseline_once_and_drops_it_elsewhere():
    cfg = cfg_for("cpu")
    sweeps = ablations.plan(cfg)
    names = [p.run_name for p in ablations.points(sweeps)]
    assert len(names) == len(set(names))
    base = [p for p in ablations.points(sweeps) if p.params.get("t_trunc") == 10 and p.params.get("schedule") == "linear"]
    assert len(base) == 1
    axes = {s.ablation: dict(s.axes) for s in sweeps if s.ablation != "t_trunc"}
    assert axes["dip_iterations"]["dip_iterations"] == [50, 200, 500]      # 100 is the baseline
    assert axes["dip_lr"]["dip_lr"] == [1e-4, 1e-2]
    assert axes["dip_preset"]["dip_preset"] == ["small"]
    assert axes["sigma"]["sigma"] == [15, 25, 50]
    assert all(a["report_protocol"] == [False] and a["mode"] == ["point"] for a in axes.values())


def test_plan_passes_seed_and_device_only_when_not_default():
    assert all("seed" not in dict(s.axes) for s in ablations.plan(cfg_for("smoke")))
    sweeps = ablations.plan(cfg_for("smoke", seed=3, device="cpu"))
    assert all(dict(s.axes)["seed"] == [3] and dict(s.axes)["device"] == ["cpu"] for s in sweeps)


def test_smoke_grid_is_small_and_paper_is_the_full_grid():
    assert len(ablations.points(ablations.plan(cfg_for("smoke")))) <= 4
    assert ablations.full_grid_points() == 12 + 4 + 1 + 2 + 3
    # smoke's two presets are the same network: no architecture point
    assert not [s for s in ablations.plan(cfg_for("smoke")) if s.ablation == "dip_preset"]


def test_sweep_argv_values_parse_back():
    cfg = cfg_for("cpu")
    for s in ablations.plan(cfg):
        argv = ablations.sweep_argv("nb.ipynb", cfg, s)
        assert argv[argv.index("--profile") + 1] == "cpu"
        for name, values in s.axes:
            i = argv.index(name)
            assert [sweep.parse_value(t) for t in argv[i + 1: i + 1 + len(values)]] == values


def test_preset_param_and_report_mode_check():
    assert ablations.preset_param("cpu", "") is None
    assert ablations.preset_param("cpu", "small") == "dip-cpu-small"
    assert ablations.preset_param("cpu", "tiny") == "tiny"
    ablations.check_report_mode(dict(ablations.POINT_DEFAULTS))
    with pytest.raises(ValueError, match="t_trunc=5 is not allowed in mode 'report'"):
        ablations.check_report_mode(dict(ablations.POINT_DEFAULTS, t_trunc=5))
    with pytest.raises(ValueError, match="mode="):
        cfg_for("smoke", mode="both")


def fake_rows():
    """Per-image rows of a tiny grid, with the columns run_point writes."""
    base = dict(t_trunc=10, schedule="linear", dip_iterations=100, dip_preset="dip-cpu", dip_lr=1e-3, t_obs=600, sigma=0.0,
                sigma255=782.0, dip_parameters=1000, seconds=1.0, nfe=10, seed=0, data="x", measured_against="clean")
    points = [dict(), dict(t_trunc=0, nfe=0), dict(schedule="cosine"), dict(dip_iterations=50), dict(dip_lr=0.01),
              dict(dip_preset="dip-cpu-small", dip_parameters=300), dict(sigma=25.0, t_obs=57, sigma255=25.0)]
    rows = []
    for k, change in enumerate(points):
        protocols = ("corrected", "report") if set(change) <= {"t_trunc", "nfe", "schedule"} else ("corrected",)
        for protocol in protocols:
            for i in range(3):
                psnr = 10.0 + k + i + (20 if protocol == "report" else 0)
                rows.append(dict(base, **change, protocol=protocol, image=i, psnr=psnr, ssim=0.1 * i,
                                 run_name=f"p{k}"))
    return pd.DataFrame(rows)


def base():
    return dict(t_trunc=10, schedule="linear", dip_iterations=100, dip_preset="dip-cpu", dip_lr=1e-3, t_obs=600)


@pytest.mark.parametrize("ablation, values", [
    ("t_trunc", [0, 10]), ("dip_iterations", [50, 100]), ("dip_lr", [1e-3, 1e-2]),
    ("dip_preset", ["dip-cpu", "dip-cpu-small"]), ("sigma", [57, 600]),
])
def test_select_keeps_the_baseline_in_every_ablation(ablation, values):
    sel = ablations.select(fake_rows(), ablation, base())
    assert sorted(sel["value"].unique().tolist()) == sorted(values)
    assert (sel["ablation"] == ablation).all()
    if ablation != "t_trunc":
        assert set(sel["protocol"]) == {"corrected"}


def test_select_t_trunc_has_both_schedules_and_protocols():
    sel = ablations.select(fake_rows(), "t_trunc", base())
    assert set(zip(sel["value"], sel["schedule"])) == {(0, "linear"), (10, "linear"), (10, "cosine")}
    assert set(sel["protocol"]) == {"corrected", "report"}


def test_summarise_and_sentences():
    rows, b = fake_rows(), base()
    summary = pd.concat([ablations.summarise(ablations.select(rows, a, b)) for a in ablations.ABLATIONS])
    assert {"ablation", "value", "schedule", "protocol", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std",
            "n"} <= set(summary.columns)
    base_row = summary[(summary["ablation"] == "t_trunc") & (summary["value"] == 10) & (summary["schedule"] == "linear")
                       & (summary["protocol"] == "corrected")].iloc[0]
    assert base_row["psnr_mean"] == pytest.approx(11.0) and base_row["psnr_std"] == pytest.approx(1.0)
    assert base_row["n"] == 3
    text = ablations.sentence(summary, "t_trunc", base=b)
    assert "highest at T_trunc 0 (11.00 ± 1.00 dB)" not in text  # image 0..2 of point 1 average 12
    assert "highest at T_trunc 0 (12.00 ± 1.00 dB)" in text and "lowest at T_trunc 10 (11.00" in text
    assert "report's protocol" in text and "32.00 dB (T_trunc 0)" in text
    assert "σ = 25 (t = 57)" in ablations.sentence(summary, "sigma", base=b)
    assert "300 parameters" in ablations.sentence(summary, "dip_preset", base=b)
    one = summary[summary["ablation"] != "dip_lr"]
    assert "did not run" in ablations.sentence(one, "dip_lr", base=b)
    assert "nothing to compare" in ablations.sentence(summary[summary["value"].astype(str) != "0.01"], "dip_lr", base=b)
    shown = ablations.display_table(summary[summary["ablation"] == "sigma"])
    assert shown.iloc[0, 0] == "σ = 25 (t = 57)" and shown.iloc[0]["PSNR (dB)"] == "17.00 ± 1.00"
