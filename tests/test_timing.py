"""tdpmlib.studies.timing (the one timing protocol), tdpmlib.studies.timing_cases (its cases) and chapter 08's place in the run order."""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tdpmlib.studies import timing

ROOT = Path(__file__).resolve().parents[1]


def _sleeper(key, per_image, calls=None):
    def fn(batch):
        if calls is not None:
            calls.append(batch)
        time.sleep(per_image * batch)
    return timing.Case(key=key, method=f"sleep {per_image} s", nfe=3, dip_iterations=7, fn=fn)


def test_a_sleeping_case_is_timed_within_tolerance():
    df = timing.run([_sleeper("a", 0.05), _sleeper("b", 0.02)], batch=2, repeats=2, warmup=0)
    t = df.set_index("key")
    assert t.at["a", "seconds_per_image"] == pytest.approx(0.05, abs=0.02)
    assert t.at["b", "seconds_per_image"] == pytest.approx(0.02, abs=0.02)
    assert t.at["a", "seconds_per_image"] > t.at["b", "seconds_per_image"]
    assert (t["seconds_min"] <= t["seconds_per_image"]).all() and (t["seconds_per_image"] <= t["seconds_max"]).all()
    assert list(df.columns) == timing.COLUMNS and (t["nfe"] == 3).all() and (t["dip_iterations"] == 7).all()


def test_repeats_warmup_and_batch_are_respected():
    calls, warm_calls, setups = [], [], []
    case = timing.Case(key="c", method="m", nfe=0, dip_iterations=0, fn=lambda x: calls.append(x),
                       setup=lambda b: setups.append(b) or f"batch of {b}", warm=lambda x: warm_calls.append(x))
    df = timing.run([case, _sleeper("d", 0.0, calls2 := [])], batch=3, repeats=4, warmup=2)
    assert calls == ["batch of 3"] * 4 and warm_calls == ["batch of 3"] * 2 and setups == [3]
    assert calls2 == [3] * 6  # no warm: the warm-up calls fn itself
    assert (df["batch"] == 3).all() and (df["repeats"] == 4).all() and (df["warmup"] == 2).all()


def test_per_image_seconds_divide_by_the_batch():
    one = timing.run([_sleeper("a", 0.03)], batch=1, repeats=1, warmup=0)
    four = timing.run([_sleeper("a", 0.03)], batch=4, repeats=1, warmup=0)
    assert four["seconds_per_image"].iloc[0] == pytest.approx(one["seconds_per_image"].iloc[0], abs=0.015)


@pytest.mark.parametrize("kw, bad", [(dict(batch=0), "batch"), (dict(batch=1, repeats=0), "repeats"),
                                     (dict(batch=1, warmup=-1), "warmup")])
def test_bad_settings_name_the_parameter(kw, bad):
    with pytest.raises(ValueError, match=bad):
        timing.run([_sleeper("a", 0.0)], **kw)


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="twice"):
        timing.run([_sleeper("a", 0.0), _sleeper("a", 0.0)], batch=1)


def _stat(path, user, idle):
    path.write_text(f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\n")


def test_cpu_probe_subtracts_this_process(tmp_path):
    stat, own = tmp_path / "stat", iter([0.0, 1.0])
    _stat(stat, 100, 900)
    probe = timing.CpuProbe(stat, own_cpu=lambda: next(own), clock_ticks=100, min_seconds=0)
    probe.start()
    _stat(stat, 300, 1500)  # 200 busy ticks of 800; this process used 1 s = 100 ticks
    assert probe.stop() == pytest.approx(100 / 800)
    own = iter([0.0, 2.0])  # this process used all of the busy time: nobody else ran
    probe = timing.CpuProbe(stat, own_cpu=lambda: next(own), clock_ticks=100, min_seconds=0)
    _stat(stat, 100, 900)
    probe.start()
    _stat(stat, 300, 1500)
    assert probe.stop() == 0.0


def test_quiet_is_decided_from_the_probe(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, 0, 1000)

    def busy_others(_):
        _stat(stat, 400, 1600)  # others took 400 of 1000 ticks (this process: ~0 CPU while sleeping)

    loud = timing.Case(key="loud", method="m", nfe=0, dip_iterations=0, fn=busy_others)
    df = timing.run([loud], batch=1, warmup=0, probe=timing.CpuProbe(stat, own_cpu=lambda: 0.0, clock_ticks=100, min_seconds=0))
    assert df.at[0, "others_cpu_share"] == pytest.approx(0.4)
    assert df.at[0, "quiet"] is not None and not df.at[0, "quiet"]
    _stat(stat, 0, 1000)
    calm = timing.Case(key="calm", method="m", nfe=0, dip_iterations=0, fn=lambda _: _stat(stat, 20, 1980))
    df2 = timing.run([calm], batch=1, warmup=0, probe=timing.CpuProbe(stat, own_cpu=lambda: 0.0, clock_ticks=100, min_seconds=0))
    assert df2.at[0, "others_cpu_share"] == pytest.approx(0.02) and bool(df2.at[0, "quiet"])
    both = pd.concat([df, df2]).assign(seconds_per_image=1.0)  # the fake cases take no time; say they took 1 s
    assert timing.quiet(both) is False and timing.quiet(both.iloc[1:]) is True


def test_a_span_shorter_than_the_probe_can_measure_has_no_share(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, 0, 1000)
    case = timing.Case(key="short", method="m", nfe=0, dip_iterations=0, fn=lambda _: _stat(stat, 400, 1600))
    df = timing.run([case], batch=1, warmup=0, probe=timing.CpuProbe(stat, own_cpu=lambda: 0.0, clock_ticks=100))
    assert np.isnan(df.at[0, "others_cpu_share"]) and df.at[0, "quiet"] is None  # 400 of 1000 ticks, but in no time
    # a committed file from before: its short cases do not decide the verdict, its long ones do
    old = pd.DataFrame(dict(seconds_per_image=[0.003, 2.0, 2.0], batch=[1, 1, 1], repeats=[1, 1, 1],
                            quiet=[False, True, True]))
    assert timing.measurable(old).tolist() == [False, True, True] and timing.quiet(old) is True
    assert timing.quiet(old.assign(quiet=[True, True, False])) is False


def test_without_proc_the_share_is_unknown(tmp_path):
    df = timing.run([_sleeper("a", 0.0)], batch=1, warmup=0, probe=timing.CpuProbe(tmp_path / "absent"))
    assert np.isnan(df.at[0, "others_cpu_share"]) and df.at[0, "quiet"] is None
    assert timing.quiet(df) is None


def _frame():
    rows = [dict(key="gen_ddpm", seconds_per_image=20.0), dict(key="gen_tdpm_report", seconds_per_image=2.5),
            dict(key="s25_dip_official", seconds_per_image=4.0)]
    return pd.DataFrame([{c: r.get(c, 0) for c in timing.COLUMNS} for r in rows])


def test_seconds_for_and_the_one_generation_speedup():
    f = _frame()
    assert timing.seconds_for(f, timing.study_key(25, "dip_official")) == 4.0
    assert timing.generation_speedup(f) == pytest.approx(8.0)
    assert timing.seconds_or_none(f, "nope") is None and timing.seconds_or_none(None, "gen_ddpm") is None
    with pytest.raises(ValueError, match="nope"):
        timing.seconds_for(f, "nope")
    with pytest.raises(ValueError, match="gen_tdpm_report"):
        timing.generation_speedup(f[f["key"] != "gen_tdpm_report"])


def test_write_and_read_round_trip(tmp_path):
    df = timing.run([_sleeper("a", 0.0)], batch=1, warmup=0)
    path = timing.path_for(tmp_path, "smoke")
    timing.write(df, path)
    assert path == tmp_path / "smoke" / "08_performance" / "timings.csv"
    back = timing.read(path)
    assert timing.seconds_for(back, "a") == pytest.approx(df.at[0, "seconds_per_image"])
    with pytest.raises(FileNotFoundError, match="08_performance"):
        timing.read(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="seconds_per_image"):
        timing.write(df.drop(columns="seconds_per_image"), path)


def test_audit_finds_seconds_columns(tmp_path):
    (tmp_path / "02_dip_fitting").mkdir()
    (tmp_path / "02_dip_fitting" / "test_images.csv").write_text("method,image,psnr,seconds\nm,0,20,1.5\n")
    (tmp_path / "02_dip_fitting" / "clean.csv").write_text("method,image,psnr,nfe,dip_iterations\nm,0,20,0,400\n")
    (tmp_path / "04_example1_dip_init_ddpm").mkdir()
    (tmp_path / "04_example1_dip_init_ddpm" / "table.csv").write_text("σ,method,s / image\n25,m,1\n")
    (tmp_path / "07_conclusions").mkdir()
    (tmp_path / "07_conclusions" / "hybrids.csv").write_text("sigma,time_ratio\n25,2\n")
    (tmp_path / "08_performance").mkdir()
    (tmp_path / "08_performance" / "timings.csv").write_text("key,seconds_per_image\na,1\n")
    (tmp_path / "01_ddpm_training").mkdir()  # a sampler's seconds are a method's per-image cost, training hours are not
    (tmp_path / "01_ddpm_training" / "cost.csv").write_text("schedule,DDPM-1000 s per image,training (h)\nlinear,3,2\n")
    (tmp_path / "04b_example1_training").mkdir()  # training wall clock is not a method's per-image cost
    (tmp_path / "04b_example1_training" / "variants.csv").write_text("Variant,s / step\na,1\n")
    found = timing.audit(tmp_path).set_index("path")["columns"].to_dict()
    assert found == {"01_ddpm_training/cost.csv": "DDPM-1000 s per image",
                     "02_dip_fitting/test_images.csv": "seconds", "04_example1_dip_init_ddpm/table.csv": "s / image",
                     "07_conclusions/hybrids.csv": "time_ratio"}
    with pytest.raises(ValueError, match="results_root"):
        timing.audit(tmp_path / "nowhere")


def test_committed_results_have_one_source_of_seconds():
    found = timing.audit(ROOT / "results" / "cpu")
    assert found.empty, f"results files with seconds of their own:\n{found.to_string(index=False)}"


def test_chapter_08_runs_before_chapter_07():
    sys.path.insert(0, str(ROOT / "scripts"))
    import run_notebooks

    order = [p.stem for p in run_notebooks.toc_notebooks()]
    assert order.index("07_conclusions") < order.index("08_performance")  # the table of contents keeps 07 first
    ran = [p.stem for p in run_notebooks.run_order(run_notebooks.toc_notebooks())]
    assert ran.index("08_performance") < ran.index("07_conclusions")
    assert sorted(ran) == sorted(order)  # nothing added or dropped
    picked = [p for p in run_notebooks.toc_notebooks() if p.stem in ("02_dip_fitting", "07_conclusions", "08_performance")]
    assert [p.stem for p in run_notebooks.run_order(picked)] == ["02_dip_fitting", "08_performance", "07_conclusions"]
    only07 = [p for p in picked if p.stem == "07_conclusions"]
    assert [p.stem for p in run_notebooks.run_order(only07)] == ["07_conclusions"]  # 08 is not added, only ordered


# ------------------------------------------------------------------------------------------------------
# tdpmlib.studies.timing_cases: every case runs its method at its chapter's budget
# ------------------------------------------------------------------------------------------------------

def _committed(root):
    """A hand-made results tree of the smoke profile: chapter 03's study at σ = 25 (t = 5), its t = 600 row set
    and generation table, chapter 02's budgets and chapter 05's guided rule."""
    study_rows = [("tweedie", 1, 0, ""), ("ddpm", 5, 0, ""), ("ddim", 5, 0, ""), ("mean_k", 10, 0, "K=2"),
                  ("nlm", 0, 0, "h=0.6*sigma, patch=3"), ("dip_official", 0, 4, "k=4"), ("dip_plain", 0, 2, "k=2"),
                  ("tdpm_matched", 3, 4, "k=4, T_trunc=3"), ("tdpm_matched_pm", 1, 2, "k=2, T_trunc=4"),
                  ("tdpm_matched_mean", 9, 4, "k=4, T_trunc=3, n=3"), ("sdedit", 2, 2, "k=2, t0=2"),
                  ("dip_polish", 3, 4, "k=4, T_trunc=3"), ("noisy", 0, 0, ""), ("dip_official_oracle", 0, 4, "per image")]
    d = root / "smoke" / "03_tdpm_dip"
    d.mkdir(parents=True)
    pd.DataFrame([dict(sigma=25, t=5, method_key=k, split=s, image=0, psnr=20.0, nfe=n, dip_iterations=i, params=p)
                  for k, n, i, p in study_rows for s in ("val", "test")]).to_csv(d / "study_rows.csv", index=False)
    pd.DataFrame([dict(setting="t = 600 (linear)", method_key=k, schedule="linear", t=600, protocol="corrected", nfe=n,
                       dip_iterations=i) for k, n, i in (("ddpm", 600, 0), ("dip_short", 0, 3), ("tweedie", 1, 0))]
                 ).to_csv(d / "denoising_summary.csv", index=False)
    pd.DataFrame([dict(method_key=k, nfe=n, dip_iterations=i) for k, n, i in
                  (("ddpm", 1000, 0), ("ddim50", 50, 0), ("ddim100", 100, 0), ("tdpm_train", 11, 3),
                   ("tdpm_held", 11, 3), ("real", 0, 0))]).to_csv(d / "generation.csv", index=False)
    d4 = root / "smoke" / "04_example1_dip_init_ddpm"
    d4.mkdir(parents=True)
    pd.DataFrame([dict(sigma=25, t=5, method_key=k, split="test", image=0, psnr=20.0, nfe=n, dip_iterations=i, params=p)
                  for k, n, i, p in (("sdedit", 4, 2, "k=2, t0=4"), ("tdpm_matched", 1, 2, "k=2, T_trunc=1"),
                                     ("ddpm", 5, 0, ""))]).to_csv(d4 / "denoise_rows.csv", index=False)
    (root / "smoke" / "02_dip_fitting").mkdir()
    (root / "smoke" / "02_dip_fitting" / "config.json").write_text(
        '{"sigma": 15, "t": 3, "chosen_budgets": {"plain": 2, "official": 3}}')
    d5 = root / "smoke" / "05_example2_guided_early_stopping"
    d5.mkdir()
    pd.DataFrame([dict(sigma=25, t_obs=5, rule_key=k, image=i, iterations=it) for k in ("guided", "fixed")
                  for i, it in ((0, 3), (1, 4))]).to_csv(d5 / "per_image.csv", index=False)
    (d5 / "config.json").write_text('{"settings": {"n_stages": 2, "iters_per_stage_max": 3, "noise_factor": 2.0}}')


def test_cases_run_each_method_at_its_committed_budget(tmp_path, monkeypatch):
    import torch

    from tdpmlib.methods import dip, models, schedules
    from tdpmlib.studies import timing_cases
    from tdpmlib.workflow import config

    _committed(tmp_path)
    cfg = config.Config.from_params(profile="smoke", notebook="08_performance", results_dir=str(tmp_path), device="cpu")
    unet = models.make_unet("tiny", resolution=cfg.resolution).eval()
    cases, missing = timing_cases.build(cfg, unet=unet, scheduler=schedules.make_scheduler("linear"))
    assert missing == []
    by = {c.key: c for c in cases}
    assert set(by) == {f"s25_{k}" for k in timing_cases.STUDY_METHODS} | {
        "s25_sdedit_ch04",  # chapter 04 validated another t0; its tdpm_matched is not a method it shows; ddpm is the same
        "s15_dip_plain", "s15_dip_official", "s25_guided", "t600_ddpm", "dip_report", "gen_ddpm", "gen_ddim50",
        "gen_ddim100", "gen_tdpm_report"}  # no floors without computation, no oracles, tdpm_held timed once
    assert (by["s25_guided"].dip_iterations, by["gen_tdpm_report"].nfe) == (4, 11)  # mean stop 3.5 -> 4

    # count what each case really does on one image: network evaluations (images through the DDPM) and DIP steps
    evaluated, steps = [0], [0]
    unet.register_forward_hook(lambda mod, args, out: evaluated.__setitem__(0, evaluated[0] + args[0].shape[0]))
    step = dip.DIPFitter.step
    monkeypatch.setattr(dip.DIPFitter, "step", lambda self, target: steps.__setitem__(0, steps[0] + 1) or step(self, target))
    torch.manual_seed(0)
    for c in cases:
        evaluated[0] = steps[0] = 0
        c.fn(c.setup(1) if c.setup else 1)
        assert (evaluated[0], steps[0]) == (c.nfe, c.dip_iterations), c.key
