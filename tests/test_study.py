import pandas as pd
import pytest
import torch

from tdpmlib.methods import models, schedules, tdpm
from tdpmlib.studies import denoising, denoising_hybrids


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = models.make_unet("tiny", resolution=8).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(12, 3, 2, 2, generator=g) * 2 - 1, size=8, mode="bilinear")
    return unet, schedules.make_scheduler("linear"), images


def run(unet, sched, val, test, **kw):
    return denoising.run(unet, sched, val=val, test=test, train_mean=torch.zeros(1, 3, 8, 8), sigma=50, seed=0, device="cpu",
                     budgets_plain=(2, 4), budgets_official=(2, 4), t_truncs=(0.25, 0.5), t0s=(0.5,), n_chains=2,
                     dip_presets={"plain": "tiny", "official": "skip-tiny"}, **kw)


MATCHED = ["tdpm_matched", "tdpm_matched_pm", "tdpm_matched_mean"]


def test_every_method_on_both_splits_and_the_validated_choice_is_used_on_test(tiny):
    unet, sched, images = tiny
    rows, sel, outputs, fits = run(unet, sched, images[:3], images[3:7])
    assert set(rows["method_key"]) == set(denoising.METHOD_LABELS)
    assert "seconds" not in rows and "seconds" not in sel  # cost is NFE and DIP iterations only
    counts = rows.groupby(["method_key", "split"]).size().unstack()
    assert (counts["val"] == 3).all() and (counts["test"] == 4).all()
    for key in ("nlm", "dip_plain", "dip_official", *MATCHED, "sdedit"):
        cand = sel[sel["method_key"] == key]
        chosen = cand.loc[cand["val_psnr"].idxmax(), "params"]
        assert cand["chosen"].sum() == 1 and cand.loc[cand["chosen"], "params"].item() == chosen
        assert set(rows.loc[rows["method_key"] == key, "params"]) == {chosen}
        val_mean = rows[(rows["method_key"] == key) & (rows["split"] == "val")]["psnr"].mean()
        assert val_mean == pytest.approx(cand["val_psnr"].max(), abs=1e-4)
    assert list(sel.columns) == denoising.SELECTION_COLUMNS
    t = int(rows["t"].iloc[0])
    assert t == schedules.t_for_sigma(sched, 50)
    levels = {max(1, round(0.25 * t)), max(1, round(0.5 * t))}
    assert len(sel[sel["method_key"] == "nlm"]) == 5 * 2  # h factors x patch sizes
    assert len(sel[sel["method_key"] == "tdpm_matched_pm"]) == len(sel[sel["method_key"] == "tdpm_matched"]) == 2 * 2
    tm = rows[rows["method_key"] == "tdpm_matched"].iloc[0]
    assert tm["nfe"] in levels and tm["dip_iterations"] in (2, 4)
    # the selection table carries the chosen (k, T_trunc) as numbers, as chapter 06 reads them
    c = sel[(sel["method_key"] == "tdpm_matched") & sel["chosen"]].iloc[0]
    assert (c["k"], c["level"]) == (tm["dip_iterations"], tm["nfe"]) and c["params"] == tm["params"]
    # readouts: posterior mean costs 1 NFE; the mean of n chains sits at tdpm_matched's (k, T_trunc), n * T_trunc
    pm = rows[rows["method_key"] == "tdpm_matched_pm"].iloc[0]
    assert pm["nfe"] == 1
    mc = rows[rows["method_key"] == "tdpm_matched_mean"].iloc[0]
    n = int(mc["params"].rsplit("n=", 1)[1])
    assert mc["params"] == f"{tm['params']}, n={n}" and n in (1, 4, 8)
    assert (mc["nfe"], mc["dip_iterations"]) == (n * tm["nfe"], tm["dip_iterations"])
    assert set(sel.loc[sel["method_key"] == "tdpm_matched_mean", "params"]) == {f"{tm['params']}, n={m}" for m in (1, 4, 8)}
    # the same state: where (k, T_trunc) coincide the noise ratio of every readout is the same, image by image
    ratio = rows.set_index(["method_key", "split", "image"])["noise_ratio"]
    pd.testing.assert_series_equal(ratio["tdpm_matched_mean"], ratio["tdpm_matched"])
    # diagnostics only on the matched rows (noise_ratio also on the polishing variant)
    with_ratio = MATCHED + ["dip_polish"]
    assert rows.loc[rows["method_key"].isin(with_ratio), "noise_ratio"].notna().all()
    assert rows.loc[~rows["method_key"].isin(with_ratio), "noise_ratio"].isna().all()
    for d in ("absorbed", "noise_ratio_at_t", "noise_ratio_at_t_uncalibrated"):
        assert rows.loc[rows["method_key"].isin(MATCHED), d].notna().all()
        assert rows.loc[~rows["method_key"].isin(MATCHED), d].isna().all()
    # absorbed is the calibration on the validation images of the chosen budget's DIP output
    k = int(tm["dip_iterations"])
    y, _ = denoising.observe(images[:7], 50, sched, seed=0)
    ab = float(schedules.alpha_bar(sched, t))
    a = tdpm.calibrate_absorbed(fits["official"]["outputs"][k][:3], (y / ab ** 0.5)[:3], images[:3], (1 - ab) / ab)
    assert tm["absorbed"] == pytest.approx(a, abs=1e-6)
    assert sel.loc[(sel["method_key"] == "tdpm_matched") & (sel["k"] == k), "absorbed"].tolist() == [tm["absorbed"]] * 2
    pol = rows[rows["method_key"] == "dip_polish"].iloc[0]
    assert (pol["nfe"], pol["dip_iterations"]) == (tm["nfe"], tm["dip_iterations"])
    # the floors: the training-mean row scores the constant image given
    tr = rows[(rows["method_key"] == "train_mean")]
    assert outputs["train_mean"].abs().max() == 0 and len(tr) == 7
    # the upper bound is at least as good as the validated budget on every image
    for p in ("plain", "official"):
        a = rows[rows["method_key"] == f"dip_{p}_oracle"].set_index(["split", "image"])["psnr"]
        b = rows[rows["method_key"] == f"dip_{p}"].set_index(["split", "image"])["psnr"]
        assert (a >= b - 1e-4).all()


def test_readouts_read_out_the_ancestral_rows_state(tiny, monkeypatch):
    """tdpm_matched_mean's test estimate is tdpm.read_out(mean_chains) of the state tdpm_matched's chain started
    from (same generator draws), and tdpm_matched_pm's is the posterior mean of the state at its own (k, T_trunc)."""
    unet, sched, images = tiny
    states = []
    real = denoising_hybrids.tdpm.matched_state

    def spy(*a, **kw):
        g = kw["generator"]
        before = g.get_state()
        out = real(*a, **kw)
        states.append((a[0].clone(), a[3], kw["absorbed"], before, out))
        return out

    monkeypatch.setattr(denoising_hybrids.tdpm, "matched_state", spy)
    rows, sel, outputs, fits = run(unet, sched, images[:3], images[3:7], readout_chains=(1, 2))
    tm = rows[rows["method_key"] == "tdpm_matched"].iloc[0]
    mc = rows[rows["method_key"] == "tdpm_matched_mean"].iloc[0]
    k, level, n = int(tm["dip_iterations"]), int(tm["nfe"]), int(mc["params"].rsplit("n=", 1)[1])
    test_x = fits["official"]["outputs"][k][3:]
    match = [s for s in states if s[1] == level and torch.equal(s[0], test_x)]
    assert len(match) == 1
    _, _, absorbed, g_state, state = match[0]
    g = torch.Generator()
    g.set_state(g_state)
    torch.testing.assert_close(real(test_x, denoising.observe(images[:7], 50, sched, seed=0)[0][3:], int(tm["t"]), level,
                                    sched, generator=g, absorbed=absorbed), state, rtol=0, atol=0)
    expect = tdpm.read_out(unet, sched, state, level, readout="mean_chains", n_chains=n, generator=g)
    torch.testing.assert_close(outputs["tdpm_matched_mean"], expect, rtol=0, atol=1e-6)
    g.set_state(g_state)
    real(test_x, denoising.observe(images[:7], 50, sched, seed=0)[0][3:], int(tm["t"]), level, sched, generator=g,
         absorbed=absorbed)
    torch.testing.assert_close(outputs["tdpm_matched"], tdpm.read_out(unet, sched, state, level, generator=g),
                               rtol=0, atol=0)
    pm = rows[rows["method_key"] == "tdpm_matched_pm"].iloc[0]
    kp, lp = int(pm["dip_iterations"]), int(pm["params"].rsplit("T_trunc=", 1)[1])
    (pm_state,) = [s[4] for s in states if s[1] == lp and torch.equal(s[0], fits["official"]["outputs"][kp][3:])]
    torch.testing.assert_close(outputs["tdpm_matched_pm"], tdpm.read_out(unet, sched, pm_state, lp, readout="posterior_mean"),
                               rtol=0, atol=0)


def test_nlm_images_h_factor_and_patch_size():
    """h_factor = 0.8 and patch_size = None are the earlier rule; a larger h smooths more; bad values are refused."""
    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear")
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    base = denoising.denoising_methods.nlm_images(noisy, 0.1)
    torch.testing.assert_close(denoising.denoising_methods.nlm_images(noisy, 0.1, h_factor=0.8, patch_size=3), base, rtol=0, atol=0)
    smooth = [float((denoising.denoising_methods.nlm_images(noisy, 0.1, h_factor=h) - noisy).pow(2).mean()) for h in (0.2, 0.8, 2.0)]
    assert smooth[0] < smooth[1] < smooth[2]  # a stronger filter moves further from the observation
    assert not torch.equal(denoising.denoising_methods.nlm_images(noisy, 0.1, patch_size=5), base)
    with pytest.raises(ValueError, match="h_factor=0"):
        denoising.denoising_methods.nlm_images(noisy, 0.1, h_factor=0)
    with pytest.raises(ValueError, match="patch_size=2.0"):
        denoising.denoising_methods.nlm_images(noisy, 0.1, patch_size=2.0)


@pytest.mark.parametrize("kw", [dict(readout_chains=()), dict(readout_chains=(0, 4)), dict(nlm_h_factors=(-1.0,)),
                                dict(nlm_patch_sizes=(3.5,))])
def test_bad_grids(tiny, kw):
    unet, sched, images = tiny
    with pytest.raises(ValueError, match=f"{next(iter(kw))}=.* is not allowed"):
        run(unet, sched, images[:3], images[3:7], **kw)


def test_selection_does_not_depend_on_the_test_images(tiny):
    unet, sched, images = tiny
    _, sel_a, _, _ = run(unet, sched, images[:3], images[3:7])
    rows_b, sel_b, _, _ = run(unet, sched, images[:3], images[7:11].flip(-1))
    pd.testing.assert_frame_equal(sel_a, sel_b)


def test_observation_noise_is_per_image():
    sched = schedules.make_scheduler("linear")
    x = torch.zeros(5, 3, 8, 8)
    y5, t = denoising.observe(x, 25, sched, seed=0)
    y2, _ = denoising.observe(x[:2], 25, sched, seed=0)
    torch.testing.assert_close(y5[:2], y2)
    assert t == schedules.t_for_sigma(sched, 25)


def test_split_eval_is_disjoint_and_checked():
    held = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    val, test = denoising.split_eval(held, n_val=5, n_test=10)
    assert not set(val[:, 0, 0, 0].tolist()) & set(test[:, 0, 0, 0].tolist())
    with pytest.raises(ValueError, match="n_val \\+ n_test = 21"):
        denoising.split_eval(held, n_val=11, n_test=10)


def test_fit_budgets_cache_reuses_and_refits_on_change(tiny, tmp_path, monkeypatch):
    _, _, images = tiny
    y = images[:2] + 0.1
    kw = dict(protocol="plain", budgets=(2, 3), seed=0, sigma=25, device="cpu", preset="tiny", cache_dir=tmp_path)
    first = denoising.fit_budgets(y, images[:2], **kw)
    assert len(list(tmp_path.iterdir())) == 1
    assert "seconds" not in first  # a budget's cost is its iterations, never a share of the fit's time

    def boom(*a, **k):
        raise AssertionError("refitted although the cache holds this fit")
    from tdpmlib.methods import dip
    monkeypatch.setattr(dip, "fit_dip", boom)
    again = denoising.fit_budgets(y, images[:2], **kw)
    for k in (2, 3):
        torch.testing.assert_close(again["outputs"][k], first["outputs"][k])
    pd.testing.assert_frame_equal(again["history"], first["history"])
    assert set(again) == set(first)
    with pytest.raises(AssertionError, match="refitted"):
        denoising.fit_budgets(y + 0.01, images[:2], **kw)  # another observation: not the cached fit


def test_shared_rows_reads_chapter_03s_rows_only_for_the_same_configuration(tmp_path):
    from tdpmlib.workflow import config, pipeline
    (tmp_path / "x.npz").touch()
    make = lambda name, **kw: config.Config.from_params(  # noqa: E731
        profile="smoke", notebook=name, results_dir=str(tmp_path), data_source=str(tmp_path / "x.npz"),
        extra_checks={"t0s": lambda n, v: tuple(v), "sigmas": lambda n, v: tuple(v)}, **dict(dict(seed=0), **kw))
    kw = dict(sigmas=[25], keys=("nlm", "sdedit"), n_val=2, n_test=3)
    c04 = make("04_example1_dip_init_ddpm", t0s=(0.5,), sigmas=(25, 50))
    assert denoising.shared_rows(c04, **kw) is None  # chapter 03 has not run
    c03 = make("03_tdpm_dip", t0s=(0.5,), sigmas=(15, 25, 50))
    rows = pd.DataFrame(dict(sigma=[25, 25, 25, 50], method_key=["nlm", "sdedit", "tdpm_matched", "nlm"], psnr=[1., 2., 3., 4.]))
    sel = pd.DataFrame(dict(sigma=[25, 25], method_key=["sdedit", "tdpm_matched"], k=[2, 2], level=[1, 1]))
    out = c03.out_dir()
    rows.to_csv(out / "study_rows.csv", index=False)
    sel.to_csv(out / "study_selection.csv", index=False)
    assert denoising.shared_rows(c04, **kw) is None  # not finished: no results.csv yet
    pipeline.save_results(c03, rows, n_val_used=2, n_test_used=3)
    got_rows, got_sel = denoising.shared_rows(c04, **kw)
    assert got_rows.psnr.tolist() == [1., 2.] and got_sel.method_key.tolist() == ["sdedit"]
    assert denoising.shared_rows(c04, **dict(kw, n_test=4)) is None  # other images
    assert denoising.shared_rows(c04, **dict(kw, sigmas=[25, 35])) is None  # a sigma 03 did not run
    for other in (dict(seed=1), dict(t0s=(0.25,)), dict(dip_budgets_official="2,3")):
        c = make("04_example1_dip_init_ddpm", **dict(dict(t0s=(0.5,), sigmas=(25,)), **other))
        assert denoising.shared_rows(c, **kw) is None, other
