"""tdpmlib.studies.ablations (chapter 06's grid, the matched state across schedules, the rows), tdpmlib.book.comparison (choices,
paired comparisons, their vocabulary) and tdpmlib.studies.ablations_paired (the paired tables, the sentences)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tdpmlib.book import comparison
from tdpmlib.evaluation import stats
from tdpmlib.methods import models, schedules, tdpm
from tdpmlib.studies import ablations, ablations_paired, denoising


# ------------------------------------------------------------------------------------------------ settings

def test_settings_fill_the_plan_and_check_every_parameter():
    cpu = ablations.settings("cpu")
    assert cpu["sigmas"] == (25, 50) and cpu["fractions"][0] == 0.0 and cpu["chains"][0] == 1
    assert cpu["lr_factors"] == () and cpu["report_t_truncs"] == (0, 5, 10, 50)
    assert ablations.FEW in cpu["fractions"] and ablations.MANY in cpu["fractions"]
    s = ablations.settings("smoke", fractions="0.5,0.25", chains="4", lr_factors="1,2")
    assert s["fractions"] == (0.0, 0.25, 0.5) and s["chains"] == (1, 4) and s["lr_factors"] == (2.0,)
    for bad in (dict(fractions="0,2"), dict(sigmas="25,x"), dict(chains="0"), dict(sigmas="2.5"),
                dict(report_t_truncs="700")):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"{name}="):
            ablations.settings("cpu", **bad)
    with pytest.raises(ValueError, match="lr_sigmas="):
        ablations.settings("cpu", lr_sigmas="15")
    assert ablations.settings("paper", sigmas="15,50")["lr_sigmas"] == (50,)   # the plan's levels cut to this run's
    assert ablations.settings("cpu", sigmas="15")["lr_sigmas"] == (15,)
    assert cpu["readouts"] == tdpm.READOUTS and cpu["readout_chains"] == 4
    r = ablations.settings("cpu", readouts="posterior_mean", readout_chains="8")
    assert r["readouts"] == ("ancestral", "posterior_mean") and r["readout_chains"] == 8  # ancestral always runs
    for bad in (dict(readouts="tweedie"), dict(readout_chains="0"), dict(readout_chains="2,4"), dict(readout_chains="x")):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}="):
            ablations.settings("cpu", **bad)
    with pytest.raises(ValueError, match='or "" for none'):
        ablations.settings("cpu", lr_factors="x")
    with pytest.raises(ValueError, match="unknown ablation parameter"):
        ablations.settings("cpu", t_trunc="5")
    with pytest.raises(ValueError, match="profile="):
        ablations.settings("gpu")
    with pytest.raises(ValueError, match="chains=3 is not allowed"):
        ablations.check_optional_list("chains", 3)


def test_levels_round_fractions_and_keep_the_first():
    assert ablations.levels(57, (0, 0.0625, 0.125, 0.25, 0.5)) == {0: 0, 4: 0.0625, 7: 0.125, 14: 0.25, 28: 0.5}
    assert ablations.levels(4, (0, 0.0625, 0.125, 1)) == {0: 0, 1: 0.0625, 4: 1}  # 0.125 * 4 lands on 1 too
    # chapter 03's level joins the grid at level / t, in level order; a level the grid has keeps its fraction
    assert ablations.levels(115, (0, 0.125, 0.5), extra_levels=(29, 14)) == {0: 0, 14: 0.125, 29: 29 / 115, 58: 0.5}
    assert list(ablations.levels(115, (0, 0.5), extra_levels=(29,))) == [0, 29, 58]
    for bad in ((116,), (-1,), (2.0,), (True,)):
        with pytest.raises(ValueError, match="extra_levels="):
            ablations.levels(115, (0,), extra_levels=bad)
    assert ablations_paired.fmt_level(7, 0.125) == "7 (t/8)" and ablations_paired.fmt_level(0, 0) == "0 (DIP alone)"
    assert ablations_paired.fmt_level(57, 1.0) == "57 (t)" and ablations_paired.fmt_level(20, 0.35) == "20 (0.35 t)"


# ----------------------------------------------------------------------------------- the matched state

def test_matched_state_equals_tdpm_for_the_observations_own_schedule():
    sched = schedules.make_scheduler("linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    t_obs, level = 57, 14
    y = schedules.q_sample(x0, t_obs, torch.randn(x0.shape, generator=g), sched).float()
    x_hat = (x0 + 0.1 * torch.randn(x0.shape, generator=g)).float()
    ab = float(schedules.alpha_bar(sched, t_obs))
    ours = ablations.matched_state(x_hat, y / ab ** 0.5, schedules.noise_var(sched, t_obs), level, sched,
                                generator=torch.Generator().manual_seed(5))
    ref = tdpm.matched_state(x_hat, y, t_obs, level, sched, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ablations.matched_state(x_hat, y, 0.1, 0, sched, generator=g) is x_hat
    # an estimate that has fitted half the observation noise: the calibrated state is tdpm's and carries the
    # noise the level expects; the uncalibrated one (error estimate low by 2 a v_obs) tops up too much
    v_obs = schedules.noise_var(sched, t_obs)
    x_half = (x0 + 0.5 * (y / ab ** 0.5 - x0)).float()
    a = tdpm.calibrate_absorbed(x_half, y / ab ** 0.5, x0, v_obs)
    assert a == pytest.approx(0.5, abs=1e-4)
    states = {aa: ablations.matched_state(x_half, y / ab ** 0.5, v_obs, t_obs, sched, absorbed=aa,
                                       generator=torch.Generator().manual_seed(5)) for aa in (0.0, a)}
    ref_a = tdpm.matched_state(x_half, y, t_obs, t_obs, sched, generator=torch.Generator().manual_seed(5), absorbed=a)
    torch.testing.assert_close(states[a], ref_a, rtol=1e-5, atol=1e-5)
    ratio = {aa: float(tdpm.noise_ratio(st, x0, t_obs, sched).mean()) for aa, st in states.items()}
    assert abs(ratio[a] - 1) < 0.1 and ratio[0.0] > ratio[a] + 0.05
    with pytest.raises(ValueError, match="absorbed="):
        ablations.matched_state(x_hat, y, v_obs, level, sched, generator=g, absorbed=float("nan"))


def test_matched_state_carries_the_noise_the_other_schedule_expects():
    # a perfect estimate (e_hat ~ 0 for a large image) topped up to the cosine level: noise ratio ~ 1
    cos = schedules.make_scheduler("cosine")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    v_obs = 0.04
    y_scaled = x0 + v_obs ** 0.5 * torch.randn(x0.shape, generator=g)
    state = ablations.matched_state(x0, y_scaled, v_obs, 200, cos, generator=g)
    assert tdpm.noise_ratio(state, x0, 200, cos).tolist() == pytest.approx([1.0, 1.0], abs=0.02)


def test_schedule_level_is_exact_for_the_own_schedule_and_near_for_the_other():
    lin, cos = schedules.make_scheduler("linear"), schedules.make_scheduler("cosine")
    for t in (33, 57, 115):
        v = schedules.noise_var(lin, t)
        assert ablations.schedule_level(lin, v) == (t, pytest.approx(1.0))
        tc, ratio = ablations.schedule_level(cos, v)
        assert tc > t and abs(ratio - 1) < 0.02


def test_observe_is_the_studys_observation():
    sched = schedules.make_scheduler("linear")
    g = torch.Generator().manual_seed(0)
    val, test = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    obs = ablations.observe(val, test, 25, sched, seed=3)
    y, t = denoising.observe(torch.cat([val, test]), 25, sched, seed=3)
    assert obs.t == t and obs.split == ["val"] * 2 + ["test"] * 3 and obs.test == slice(2, 5)
    ab = float(schedules.alpha_bar(sched, t))
    torch.testing.assert_close(obs.y_scaled, y / ab ** 0.5)
    assert obs.v_obs == pytest.approx((1 - ab) / ab)
    assert math.sqrt(obs.v_obs) * 127.5 == pytest.approx(25, rel=0.02)


# ------------------------------------------------------------------------------------ rows on a tiny model

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    models_ = {s: (models.make_unet("tiny", resolution=8).eval(), schedules.make_scheduler(s)) for s in ("linear", "cosine")}
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(7, 3, 2, 2, generator=g) * 2 - 1, size=8, mode="bilinear")
    obs = ablations.observe(images[:3], images[3:], 50, models_["linear"][1], seed=0)
    return models_, obs


def test_official_fit_shares_the_studys_cache(tiny, tmp_path):
    _, obs = tiny
    fit = ablations.official_fit(obs, budgets=(2, 4), seed=0, device="cpu", preset="skip-tiny", cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1
    # study.run's own call (same arguments) loads that file instead of fitting again
    again = denoising.fit_budgets(obs.y_scaled, obs.clean, protocol="official", budgets=(2, 4), seed=0, sigma=50,
                              device="cpu", preset="skip-tiny", cache_dir=tmp_path)
    assert sorted(tmp_path.iterdir()) == files
    torch.testing.assert_close(again["outputs"][4], fit["outputs"][4])
    k, means = ablations.validated_budget(fit, obs)
    assert k == int(means.idxmax()) and list(means.index) == [2, 4]


@pytest.fixture(scope="module")
def fit(tiny):
    _, obs = tiny
    return ablations.official_fit(obs, budgets=(2, 4), seed=0, device="cpu", preset="skip-tiny")


def test_t_trunc_rows_start_from_the_dip_alone(tiny, fit):
    models_, obs = tiny
    rows = ablations.t_trunc_rows(*models_["linear"], "linear", obs, fit, 4, (0, 0.125, 0.5), seed=0)
    assert list(rows.columns) == list(ablations.ROW_COLUMNS) and "seconds" not in rows.columns
    assert sorted(rows["nfe"].unique()) == [0, 14, 58] and len(rows) == 3 * 7 and set(rows["readout"]) == {"ancestral"}
    dip_alone = rows[rows["nfe"] == 0].sort_values("image")["psnr"].to_numpy()
    np.testing.assert_allclose(dip_alone, denoising.metrics.psnr(fit["outputs"][4].clamp(-1, 1), obs.clean).numpy(), rtol=1e-5)
    assert rows.loc[rows["nfe"] > 0, "noise_ratio"].notna().all() and rows.loc[rows["nfe"] == 0, "noise_ratio"].isna().all()
    cos = ablations.t_trunc_rows(*models_["cosine"], "cosine", obs, fit, 4, (0, 0.5), seed=0)
    assert cos["t"].iloc[0] == ablations.schedule_level(models_["cosine"][1], obs.v_obs)[0] > obs.t
    # the same DIP output under both schedules: the DIP alone is identical
    np.testing.assert_allclose(cos[cos["nfe"] == 0]["psnr"], rows[rows["nfe"] == 0]["psnr"])
    # chapter 03's level joins the grid; the other levels' draws do not change
    extra = ablations.t_trunc_rows(*models_["linear"], "linear", obs, fit, 4, (0, 0.125, 0.5), seed=0, extra_levels=(29,))
    assert sorted(extra["nfe"].unique()) == [0, 14, 29, 58]
    assert extra.loc[extra["nfe"] == 29, "value"].iloc[0] == pytest.approx(29 / 115)
    pd.testing.assert_frame_equal(extra[extra["nfe"] != 29].reset_index(drop=True), rows)


def test_every_readout_reads_the_same_state(tiny, fit):
    """The readouts of one level read the one state: "ancestral" is the draw without other readouts, the mean of
    one chain is that draw, the posterior mean is Tweedie on the state; the NFE are ``tdpm.readout_nfe``'s."""
    models_, obs = tiny
    unet, sched = models_["linear"]
    a = ablations.absorbed(fit, 4, obs)
    val = slice(0, obs.n_val)
    assert a == tdpm.calibrate_absorbed(fit["outputs"][4][val], obs.y_scaled[val], obs.clean[val], obs.v_obs)
    kw = dict(seed=0, absorbed=a)
    anc = ablations.t_trunc_rows(unet, sched, "linear", obs, fit, 4, (0, 0.125, 0.5), **kw)
    allr = ablations.t_trunc_rows(unet, sched, "linear", obs, fit, 4, (0, 0.125, 0.5), readouts=tdpm.READOUTS,
                               n_chains=3, **kw)
    pd.testing.assert_frame_equal(allr[allr["readout"] == "ancestral"].reset_index(drop=True), anc)
    assert len(allr[allr["nfe"] == 0]) == 7  # the DIP alone once, whatever the readouts
    key = allr.set_index(["readout", "value"])["method_key"].groupby(level=[0, 1]).first()
    assert key[("ancestral", 0.125)] == "t_trunc=14" and key[("posterior_mean", 0.125)] == "t_trunc=14, posterior_mean"
    assert key[("mean_chains", 0.5)] == "t_trunc=58, mean_chains n=3"
    nfe = allr.groupby(["readout", "value"])["nfe"].first()
    assert nfe[("posterior_mean", 0.5)] == 1 and nfe[("mean_chains", 0.5)] == 3 * 58 and nfe[("ancestral", 0.5)] == 58
    # the same state: rebuilt from the same generator, its posterior mean is the posterior_mean rows
    state = ablations.matched_state(fit["outputs"][4], obs.y_scaled, obs.v_obs, 14, sched, absorbed=a,
                                 generator=ablations.generator(0, "t_trunc", 50, "linear", 14))
    pm = denoising.metrics.psnr(tdpm.tweedie(unet, sched, state, 14), obs.clean).numpy()
    got = allr[allr["method_key"] == "t_trunc=14, posterior_mean"].sort_values("image")["psnr"].to_numpy()
    np.testing.assert_allclose(got, pm, rtol=1e-5)
    # the mean of one chain is the ancestral draw; the noise ratio is the state's, the same for every readout
    one = ablations.t_trunc_rows(unet, sched, "linear", obs, fit, 4, (0, 0.125), readouts=("ancestral", "mean_chains"),
                              n_chains=1, **kw)
    by = one[one["nfe"] == 14].pivot(index="image", columns="readout", values="psnr")
    np.testing.assert_array_equal(by["mean_chains"].to_numpy(), by["ancestral"].to_numpy())
    ratios = allr[allr["value"] == 0.125].pivot(index="image", columns="readout", values="noise_ratio")
    assert (ratios.nunique(axis=1) == 1).all()
    # the other readouts only at readout_levels
    some = ablations.t_trunc_rows(unet, sched, "linear", obs, fit, 4, (0, 0.125, 0.5), readouts=tdpm.READOUTS,
                               readout_levels=(58,), **kw)
    assert set(some.loc[some["readout"] != "ancestral", "value"]) == {0.5}
    for bad in (("posterior_mean",), ("ancestral", "ancestral"), ("ancestral", "tweedie")):
        with pytest.raises(ValueError, match="readout"):
            ablations.t_trunc_rows(unet, sched, "linear", obs, fit, 4, (0,), seed=0, readouts=bad)


def test_ddpm_and_chain_rows_on_the_test_images(tiny, fit):
    models_, obs = tiny
    d = ablations.ddpm_rows(*models_["cosine"], "cosine", obs, seed=0, device="cpu")
    assert set(d["split"]) == {"test"} and set(d["method_key"]) == {"tweedie", "ddpm"}
    assert d.loc[d["method_key"] == "ddpm", "nfe"].iloc[0] == d["t"].iloc[0]
    assert d.groupby("method_key")["readout"].first().to_dict() == dict(ddpm="ancestral", tweedie="posterior_mean")
    c = ablations.chains_rows(*models_["linear"], "linear", obs, fit, 4, 7, (1, 2, 4), seed=0)
    assert set(c["value"]) == {1, 2, 4} and set(c["split"]) == {"test"} and list(c["nfe"].unique()) == [7, 14, 28]
    assert sorted(c["image"].unique()) == [3, 4, 5, 6]  # the test images keep their index among val + test


def test_the_first_chain_can_be_the_t_trunc_draw(tiny, fit):
    """With ``first`` from ``t_trunc_rows(keep=...)``, K = 1 is exactly that T_trunc row on the test images, and
    the mean of K chains includes it."""
    models_, obs = tiny
    keep = {}
    rows = ablations.t_trunc_rows(*models_["linear"], "linear", obs, fit, 4, (0, 0.125), seed=0, keep=keep,
                               readouts=tdpm.READOUTS, n_chains=2)
    assert list(keep) == [(50, "linear", 14)]
    x1 = keep[(50, "linear", 14)]
    assert x1.shape == obs.clean[obs.test].shape
    c = ablations.chains_rows(*models_["linear"], "linear", obs, fit, 4, 14, (1, 3), seed=0, first=x1)
    one = c[c["value"] == 1].sort_values("image")
    same = rows[(rows["method_key"] == "t_trunc=14") & (rows["split"] == "test")].sort_values("image")
    np.testing.assert_array_equal(one["psnr"].to_numpy(), same["psnr"].to_numpy())
    three = c[c["value"] == 3]
    assert not np.allclose(three["psnr"].to_numpy(), one["psnr"].to_numpy())
    assert list(c["nfe"].unique()) == [14, 42]
    c1 = ablations.chains_rows(*models_["linear"], "linear", obs, fit, 4, 14, (1,), seed=0, first=x1)
    np.testing.assert_array_equal(c1["psnr"].to_numpy(), one["psnr"].to_numpy())
    with pytest.raises(ValueError, match="first chain"):
        ablations.chains_rows(*models_["linear"], "linear", obs, fit, 4, 14, (1, 2), seed=0, first=x1[:1])


def test_iteration_rows_and_report_table3(tiny, fit):
    models_, obs = tiny
    r = ablations.iteration_rows(fit, obs, schedule="linear")
    assert set(r["method_key"]) == {"k=2", "k=4"} and set(r["dip_iterations"]) == {2, 4}
    lr = ablations.iteration_rows(fit, obs, schedule="linear", ablation="dip_lr", lr=0.01)
    assert set(lr["value"]) == {0.01} and set(lr["method_key"]) == {"lr=0.01, k=2", "lr=0.01, k=4"}
    t3 = ablations.report_table3(*models_["linear"], obs.clean[:2], t_truncs=(0, 5), dip_iterations=2, preset="tiny",
                              lr=1e-3, seed=0, device="cpu")
    assert len(t3) == 2 * 2 * 2 and set(t3["protocol"]) == {"report", "corrected"} and "seconds" not in t3.columns
    summ = ablations_paired.table3_summary(t3)
    assert list(summ["protocol"]) == ["report", "report", "corrected", "corrected"] and (summ["n"] == 2).all()
    assert list(summ["nfe"]) == [1, 6, 1, 6] and not any("second" in c for c in summ.columns)


# ------------------------------------------------------------------------------- choices and comparisons

def fake_rows():
    """t_trunc rows (2 schedules, levels 0/7/28 as fractions 0/0.125/0.5), DDPM rows, chains and budgets, with
    known per-image differences: on test images T_trunc 7 beats the DIP alone by +1 on every image, 28 loses 1."""
    rows = []
    for sigma in (25, 50):
        for sch, shift in (("linear", 0.0), ("cosine", 0.5)):
            for level, frac, d in ((0, 0.0, 0.0), (7, 0.125, 1.0), (28, 0.5, -1.0)):
                for split, images in (("val", range(3)), ("test", range(3, 8))):
                    for i in images:
                        noise = 0.1 * ((i * 7 + level) % 3)
                        rows.append(dict(ablation="t_trunc", sigma=sigma, schedule=sch, t=57, method_key=f"t_trunc={level}",
                                         method="x", value=frac, split=split, image=i,
                                         psnr=20 + i + (d + shift if level else 0) + noise * (level > 0), ssim=0.5,
                                         readout="ancestral", nfe=level, dip_iterations=4,
                                         noise_ratio=np.nan if level == 0 else 28 / level + 0.01 * i))
            for key, d in (("tweedie", 0.3), ("ddpm", -0.2)):
                for i in range(3, 8):
                    rows.append(dict(ablation="schedule", sigma=sigma, schedule=sch, t=57, method_key=key, method=key,
                                     value=57, split="test", image=i, psnr=18 + i + (d if sch == "cosine" else 0) * (1 + i % 2),
                                     ssim=0.5, readout="ancestral", nfe=57, dip_iterations=0, noise_ratio=np.nan))
        for K in (1, 2):
            for i in range(3, 8):
                rows.append(dict(ablation="chains", sigma=sigma, schedule="linear", t=57, method_key=f"K={K}",
                                 method=f"mean of {K}", value=K, split="test", image=i, psnr=21 + i + 0.5 * (K - 1),
                                 ssim=0.5, readout="ancestral", nfe=7 * K, dip_iterations=4, noise_ratio=np.nan))
        for k, d in ((2, -1.0), (4, 0.0), (8, 0.2)):
            for split, images in (("val", range(3)), ("test", range(3, 8))):
                for i in images:
                    rows.append(dict(ablation="dip_iterations", sigma=sigma, schedule="linear", t=57, method_key=f"k={k}",
                                     method=f"DIP, {k} iterations", value=k, split=split, image=i,
                                     psnr=20 + i + (d if split == "test" or k < 8 else -5), ssim=0.5, nfe=0,
                                     readout="ancestral", dip_iterations=k, noise_ratio=np.nan))
    return pd.DataFrame(rows, columns=list(ablations.ROW_COLUMNS))


def test_validated_picks_the_best_validation_mean_and_honours_exclude():
    rows = fake_rows()
    t = rows[rows["ablation"] == "t_trunc"]
    chosen = comparison.validated(t).set_index(["sigma", "schedule"])
    assert chosen.loc[(25, "linear"), "method_key"] == "t_trunc=7" and chosen.loc[(25, "linear"), "nfe"] == 7
    assert chosen.loc[(25, "cosine"), "value"] == 0.125
    no7 = comparison.validated(t, exclude=["t_trunc=7"]).set_index(["sigma", "schedule"])
    assert no7.loc[(25, "linear"), "method_key"] == "t_trunc=0"  # 28 loses on validation
    tie = pd.DataFrame(dict(sigma=25, method_key=["a", "b"], split="val", psnr=1.0, value=[1, 2], nfe=0, dip_iterations=0))
    assert comparison.validated(tie, by=("sigma",))["method_key"].iloc[0] == "a"
    with pytest.raises(ValueError, match="no validation rows"):
        comparison.validated(t[t["split"] == "test"])


def test_paired_needs_the_same_images():
    a = pd.DataFrame(dict(image=[0, 1, 2], psnr=[1.0, 2.0, 3.0]))
    s = comparison.paired(a, a.assign(psnr=[0.0, 1.0, 2.0]))
    assert s["mean_diff"] == pytest.approx(1.0) and s["wins"] == 3 and comparison.outcome(s) == "better than"
    assert comparison.outcome(stats.paired([1, 2, 3], [2, 3, 4])) == "worse than"
    assert comparison.outcome(stats.paired([1, 2, 3], [1.5, 1.5, 3])) == "not clearly different from"
    with pytest.raises(ValueError, match="same images"):
        comparison.paired(a, a.iloc[:2])
    with pytest.raises(ValueError, match="same images"):
        comparison.paired(a, pd.concat([a, a]))


def test_t_trunc_and_schedule_tables():
    rows = fake_rows()
    pt = ablations_paired.t_trunc_paired(rows, seed=0)
    assert len(pt) == 2 * 2 * 2 and set(pt["b"]) == {"DIP alone"}
    r = pt[(pt["sigma"] == 25) & (pt["schedule"] == "linear")].set_index("level")
    assert r.loc[7, "outcome"] == "better than" and r.loc[28, "outcome"] == "worse than"
    assert r.loc[7, "fraction"] == 0.125 and r.loc[7, "n"] == 5
    hybrid = comparison.validated(rows[rows["ablation"] == "t_trunc"], exclude=["t_trunc=0"])
    ps = ablations_paired.schedule_paired(rows, hybrid, seed=0)
    assert list(ps["method_key"]) == ["tweedie", "ddpm", "dip", "tdpm_matched"] * 2
    s25 = ps[ps["sigma"] == 25].set_index("method_key")
    assert s25.loc["tweedie", "outcome"] == "better than" and s25.loc["ddpm", "outcome"] == "worse than"
    assert s25.loc["dip", "mean_diff"] == 0 and s25.loc["dip", "outcome"] == "not clearly different from"
    assert s25.loc["tdpm_matched", "mean_diff"] == pytest.approx(0.5) and "cosine 7, linear 7" in s25.loc["tdpm_matched", "method"]


def test_handover_ratio_is_the_test_median_and_names_the_first_matched_level():
    rows = fake_rows()
    pt = ablations_paired.t_trunc_paired(rows, seed=0)
    r = pt[(pt["sigma"] == 25) & (pt["schedule"] == "linear")].set_index("level")
    # test images 3..7: 28 / level + 0.01 i, median at i = 5 (the validation images 0..2 do not count)
    assert r.loc[7, "noise_ratio"] == pytest.approx(4.05) and r.loc[28, "noise_ratio"] == pytest.approx(1.05)
    f = ablations_paired.handover_facts(pt, schedule="linear", sigma=25)
    assert f["ratios"] == "4.05, 1.05" and f["found"] == "the first within 0.8–1.25 is" and f["level"] == "28 (t/2)"
    assert f["verdict"] == "worse than" and f["diff"].startswith("-") and f["diff"].endswith("wins 0 of 5")
    far = ablations_paired.handover_facts(pt, schedule="linear", sigma=25, band=(0.5, 0.9))
    assert far["found"] == "none lies within 0.5–0.9; the nearest is" and far["level"] == "28 (t/2)"
    assert set(ablations_paired.handover_facts(pt, schedule="linear", sigma=75).values()) == {"n/a"}


def test_chain_budget_and_lr_tables():
    rows = fake_rows()
    pc = ablations_paired.chains_paired(rows, schedule="linear", seed=0)
    one = pc[(pc["b"] == "one chain")]
    assert list(one["K"]) == [2, 2] and (one["mean_diff"] == 0.5).all() and (one["outcome"] == "better than").all()
    assert len(pc[pc["b"] == "DIP alone"]) == 4 and (pc["level"] == 7).all()
    chosen = comparison.validated(rows[rows["ablation"] == "dip_iterations"], by=("sigma",))
    assert list(chosen["method_key"]) == ["k=4", "k=4"]  # k=8 wins on test only
    pk = ablations_paired.budget_paired(rows, chosen, seed=0)
    assert (pk["validated_k"] == 4).all() and len(pk) == 6
    fk = ablations_paired.budget_facts(pk, sigma=25)
    assert (fk["k"], fk["n_better"], fk["n_other"], fk["best_k"]) == (4, 1, 2, 8) and fk["best_diff"].startswith("+0.20 dB")
    fw = ablations_paired.budget_facts(pk[pk["k"] != 8], sigma=25)
    assert fw["n_better"] == 0 and fw["best_k"] != 8 and fw["best_diff"].startswith("-")
    lr = rows[rows["ablation"] == "dip_iterations"].assign(ablation="dip_lr")
    lr = pd.concat([lr.assign(value=0.01, method_key="a" + lr["method_key"]),
                    lr.assign(value=0.1, method_key="b" + lr["method_key"], psnr=lr["psnr"] - 1)])
    ch = comparison.validated(lr, by=("sigma", "value"))
    pl = ablations_paired.lr_paired(lr, ch, 0.01, seed=0)
    assert list(pl["lr"]) == [0.1, 0.1] and (pl["outcome"] == "worse than").all()


def test_fmt_diff_keeps_small_differences_visible():
    assert comparison.fmt_diff(dict(mean_diff=0.42, ci_low=0.1, ci_high=0.75)) == "+0.42 dB [+0.10, +0.75]"
    assert comparison.fmt_diff(dict(mean_diff=-0.004, ci_low=-0.009, ci_high=-0.001)) == "-0.004 dB [-0.009, -0.001]"
    assert comparison.fmt_sigma(25.0) == "25" and comparison.fmt_sigma("50") == "50"


def test_facts_follow_the_outcomes():
    rows = fake_rows()
    t = rows[rows["ablation"] == "t_trunc"]
    pt = ablations_paired.t_trunc_paired(rows, seed=0)
    # when the DIP alone wins on validation, the facts say so
    t0 = t.assign(psnr=np.where((t["split"] == "val") & (t["nfe"] == 0), 99.0, t["psnr"]))
    f0 = ablations_paired.t_trunc_facts(pt, comparison.validated(t0), schedule="linear", sigma=25)
    assert f0["pick"] == "0 (DIP alone)" and f0["pick_verdict"] == "n/a"
    hybrid = comparison.validated(t, exclude=["t_trunc=0"])
    ps = ablations_paired.schedule_paired(rows, hybrid, seed=0)
    pc = ablations_paired.chains_paired(rows, schedule="linear", seed=0)
    fc = ablations_paired.chains_facts(pc, sigma=25)
    assert fc["level"] == 7 and fc["k2_verdict"] == "better than" and fc["k2_diff"].startswith("+0.50 dB")
    assert fc["k4_verdict"] == fc["k4_diff"] == "n/a" and fc["kmax"] == 2  # K = 4 was not run
    ft = ablations_paired.t_trunc_facts(pt, hybrid, schedule="linear", sigma=25)
    assert (ft["t"], ft["pick"], ft["pick_verdict"], ft["n"], ft["n_better"], ft["n_worse"]) == \
        (57, "7 (t/8)", "better than", 2, 1, 1)
    assert ft["best"] == "7 (t/8)" and ft["pick_diff"] == ft["best_diff"] and ft["pick_diff"].startswith("+1.")
    fs = ablations_paired.schedule_facts(ps, sigma=25)
    assert fs["tweedie_verdict"] == "better than" and fs["ddpm_verdict"] == "worse than"
    assert fs["tdpm_matched_diff"].startswith("+0.50 dB")
    assert all(len(str(v)) <= 80 for d in (fc, ft, fs) for v in d.values())
    t3 = pd.DataFrame([dict(protocol=p, t_trunc=tt, image=i, psnr=10 + tt / 10 + (5 if p == "report" else 0) + 0.1 * i,
                            ssim=0.5, nfe=tt, dip_iterations=100)
                       for p in ("report", "corrected") for tt in (0, 5, 10, 50) for i in range(4)])
    assert ablations_paired.table3_paired(t3, 5, 7) is None
    f3 = ablations_paired.table3_facts(t3)
    assert f3["t_truncs"] == "0, 5, 10, 50" and f3["report"] == "15.15, 15.65, 16.15, 20.15"
    assert f3["5v0_verdict"] == "better than" and f3["5v0_diff"].startswith("+0.50 dB")
    f3b = ablations_paired.table3_facts(t3[t3["t_trunc"] != 50])
    assert f3b["50v10_verdict"] == f3b["50v10_diff"] == "n/a"
