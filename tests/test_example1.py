"""Tests for tdpmlib.studies.dip_init: the DIP-initialised DDPM (Example 1), and the table helpers its notebook uses."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tdpmlib.evaluation import metrics, sample_metrics
from tdpmlib.methods import ddpm, dip, models, schedules, tdpm
from tdpmlib.studies import dip_init


@pytest.fixture(scope="module")
def sched():
    return schedules.make_scheduler("linear")


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return models.make_unet("tiny", resolution=8).eval()


def smooth(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 1.6 - 0.8, size=size,
                                           mode="bilinear", align_corners=False)


class PointMassUNet(torch.nn.Module):
    """The exact noise predictor for the data distribution delta(c): eps = (x_t - sqrt(abar) c) / sqrt(1 - abar).
    Called like a diffusers UNet with diffusers timesteps (level - 1); counts its calls."""

    def __init__(self, c, scheduler):
        super().__init__()
        self.c = c
        self.ab = scheduler.alphas_cumprod
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.calls = 0

    def forward(self, x, ts):
        self.calls += 1
        ab = self.ab[ts].view(-1, 1, 1, 1).to(x)
        return SimpleNamespace(sample=(x - ab.sqrt() * self.c) / (1 - ab).sqrt())


# ---------------------------------------------------------------------------------------------------------
# Example 1
# ---------------------------------------------------------------------------------------------------------


def test_exact_denoiser_brings_any_start_to_the_data_point(sched):
    """With the exact eps of a point mass, every chain ends on the point: levels and NFE are consistent."""
    c = smooth(1)
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net = PointMassUNet(c, sched)
    x = dip_init.dip_init_ddpm(net, sched, start, 40, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 40
    net.calls = 0
    x = dip_init.dip_init_ddpm(net, sched, start, 40, method="ddim", num_steps=5,
                               generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 5 == ddpm.network_evaluations(40, method="ddim", num_steps=5)
    net.calls = 0
    x = dip_init.from_noise(net, sched, n=3, resolution=8, nfe=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 7 and x.shape == (3, 3, 8, 8)
    net.calls = 0
    y = tdpm.observe(c.expand(2, -1, -1, -1), 30, sched, generator=torch.Generator().manual_seed(4))
    x = dip_init.from_observation(net, sched, y, 30, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 30


def test_dip_init_ddpm_is_renoise_then_reverse_chain(sched, tiny_unet):
    x_hat = smooth(2)
    out = dip_init.dip_init_ddpm(tiny_unet, sched, x_hat, 12, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x_t = schedules.q_sample(x_hat, 12, torch.randn(x_hat.shape, generator=g), sched).float()
    ref = ddpm.reverse_chain(tiny_unet, sched, x_t, 12, generator=g).clamp(-1, 1)
    torch.testing.assert_close(out, ref)
    # t0 = 0: the estimate itself, nothing drawn
    torch.testing.assert_close(dip_init.dip_init_ddpm(tiny_unet, sched, 3 * x_hat, 0, generator=g), (3 * x_hat).clamp(-1, 1))
    with pytest.raises(ValueError, match="t0=1001"):
        dip_init.dip_init_ddpm(tiny_unet, sched, x_hat, 1001, generator=g)


def test_renoise_marginal_and_excess_noise_of_the_observation_estimate(sched):
    x0 = smooth(1, size=256)
    g = torch.Generator().manual_seed(0)
    ab = float(schedules.alpha_bar(sched, 50))
    resid = dip_init.renoise(x0, 50, sched, generator=g) - ab ** 0.5 * x0
    assert abs(resid.var().item() / (1 - ab) - 1) < 0.02
    # the observation estimate y / sqrt(abar_tobs) re-noised to t0 < t_obs carries too much noise
    t_obs, t0 = 200, 50
    y = tdpm.observe(x0, t_obs, sched, generator=g)
    est = dip_init.observation_x0(y, t_obs, sched)
    resid = dip_init.renoise(est, t0, sched, generator=g) - ab ** 0.5 * x0
    ratio = dip_init.excess_noise_ratio(sched, t_obs, t0)
    assert ratio > 1.5
    assert abs(resid.var().item() / (1 - ab) / ratio - 1) < 0.03
    assert dip_init.excess_noise_ratio(sched, t_obs, t_obs) == pytest.approx(2.0)


def test_denoising_sweep_rows_and_dip_outputs(sched, tiny_unet):
    clean = smooth(2)
    y = tdpm.observe(clean, 10, sched, generator=torch.Generator().manual_seed(1))
    df, outs = dip_init.denoising_sweep(tiny_unet, sched, clean, y, 10, ks=[2, 4], t0s=[1, 3], presets=["tiny", "tiny"],
                                        lr=1e-2, seed=3, device="cpu", generator=torch.Generator().manual_seed(5))
    # 2 DIP starts + the observation estimate, each at t0 in {0, 1, 3}, + the observation reversed from t_obs
    assert len(df) == 2 * (3 * 3 + 1)
    assert set(df.nfe) == {0, 1, 3, 10}
    assert (df.nfe == df.t0).all() and (df[df.start == "DIP only"].k > 0).all()
    assert df[df.start == "observation, reverse from t_obs"].nfe.eq(10).all()
    # the DIP-only rows are the fit's kept outputs (the same z: the generator's first draw)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(y.shape, generator=g)
    fit = dip.fit_dip(dip_init.observation_x0(y, 10, sched), iterations=4, z=z, preset="tiny", lr=1e-2, seed=3, keep=[2, 4])
    row = df[(df.start == "DIP only") & (df.k == 2)].sort_values("image")
    np.testing.assert_allclose(row.psnr.values, metrics.psnr(fit.outputs[2].clamp(-1, 1), clean).numpy(), rtol=1e-5)
    # the observation as is: PSNR of y / sqrt(abar) against the clean image
    row = df[(df.start == "observation as is")].sort_values("image")
    np.testing.assert_allclose(row.psnr.values, metrics.psnr(dip_init.observation_x0(y, 10, sched).clamp(-1, 1), clean).numpy(),
                               rtol=1e-5)
    assert df.ssim.isna().all()  # 8 px: SSIM's window does not fit
    assert "seconds" not in df.columns  # cost: nfe and dip_iterations; seconds come from chapter 08's benchmark


def test_generation_sweep_metrics(tiny_unet):
    sched = schedules.make_scheduler("linear", num_train_timesteps=50)  # a short full chain keeps the test fast
    imgs = smooth(8, seed=2)
    train, held = imgs[:4], imgs[4:]
    reference = held[2:]
    # one fit set IS the reference: fitted for long enough, its DIP outputs must score far better than pure
    # noise from an untrained network and than a fit to other images
    per, summ, samples, fit = dip_init.generation_sweep(
        tiny_unet, sched, fit_sets={"reference": reference, "training": train[:2]}, train=train, held=held,
        reference=reference, t0s=[3], dip_iterations=20, preset="tiny", lr=3e-2, seed=0, device="cpu",
        generator=torch.Generator().manual_seed(0), full_n=2, fid=False)
    assert list(summ.label) == ["DIP fit to reference, t0=0", "DIP fit to training, t0=0", "DIP fit to reference, t0=3",
                                "DIP fit to training, t0=3", "pure noise, DDIM 3 steps", "pure noise, DDPM 50 steps"]
    assert list(summ.nfe) == [0, 0, 3, 3, 3, 50]
    # t0 = 0 outputs are the DIP outputs; d_fit is their RMS distance to the fitted image
    x = samples["DIP fit to training, t0=0"]
    torch.testing.assert_close(x, fit.output[2:].clamp(-1, 1))
    d = ((x - train[:2]) ** 2).mean(dim=(1, 2, 3)).sqrt()
    np.testing.assert_allclose(per[per.label == "DIP fit to training, t0=0"].d_fit.values, d.numpy(), rtol=1e-5)
    assert per[per.start.str.startswith("pure noise")].d_fit.isna().all()
    mem = sample_metrics.memorisation(x, train, held)
    s = summ.set_index("label")
    assert s.loc["DIP fit to training, t0=0", "mem_ratio_median"] == pytest.approx(mem["ratio_median"])
    assert (summ.fid_status == "not computed").all()
    # SWD is measured against the reference set, for every row
    for label, imgs_ in samples.items():
        assert s.loc[label, "swd"] == pytest.approx(sample_metrics.swd(reference, imgs_, seed=0)["swd_mean"])
    assert sample_metrics.swd(reference, reference, seed=0)["swd_mean"] == 0  # identical sets: the floor
    near = s.loc["DIP fit to reference, t0=0", "swd"]
    assert s.loc["DIP fit to reference, t0=0", "d_fit_mean"] < 0.1
    assert near < 0.5 * min(s.loc["pure noise, DDIM 3 steps", "swd"], s.loc["pure noise, DDPM 50 steps", "swd"])
    assert near < 0.5 * s.loc["DIP fit to training, t0=0", "swd"]


def test_check_int_list():
    assert dip_init.check_int_list("ks", [1, 2], low=1) == [1, 2]
    assert dip_init.check_int_list("ks", None) is None
    for bad in ([], [0], [1.5], "12", [True]):
        with pytest.raises(ValueError, match="ks="):
            dip_init.check_int_list("ks", bad, low=1)


def test_summarise_gives_mean_and_std_per_group_without_nans():
    """``metrics.summarise``, the table of notebooks 04 and 05."""
    nan = float("nan")
    df = pd.DataFrame(dict(g=["a", "b", "a", "b", None], x=[1.0, 2.0, 3.0, nan, 5.0], y=[nan] * 5))
    t = metrics.summarise(df, ["g"], ["x", "y"], digits=1)
    assert list(t.g[:2]) == ["a", "b"] and pd.isna(t.g.iloc[2])  # first-appearance order, a NaN key kept
    a, b = t.iloc[0], t.iloc[1]
    assert a.n_images == 2 and a.x_mean == 2.0 and a.x_std == pytest.approx(2 ** 0.5) and a.x == "2.0 ± 1.4"
    assert b.n_images == 2 and b.x_mean == 2.0 and b.x_std == 0.0  # the NaN is left out of the mean
    assert (t.y == "n/a").all() and t.y_mean.isna().all()


def _trend_tables(d_fit_train, d_fit_held, ratio_train, t0s=(0, 25, 200)):
    """generation_sweep-shaped tables: per start, one list of per-image values per t0."""
    rows, summ = [], []
    for start, d_fit, ratio in (("DIP fit to training", d_fit_train, ratio_train),
                                ("DIP fit to held-out", d_fit_held, [[2.0] * len(v) for v in ratio_train])):
        for t0, dv, rv in zip(t0s, d_fit, ratio):
            rows += [dict(start=start, t0=t0, image=i, d_fit=a, mem_ratio=b) for i, (a, b) in enumerate(zip(dv, rv))]
            summ.append(dict(start=start, t0=t0, d_fit_mean=float(np.mean(dv)), mem_ratio_median=float(np.median(rv)),
                             frac_copies=float(np.mean(np.asarray(rv) < 0.5))))
    rows += [dict(start="pure noise (DDPM)", t0=1000, image=i, d_fit=float("nan"), mem_ratio=0.9) for i in range(2)]
    summ.append(dict(start="pure noise (DDPM)", t0=1000, d_fit_mean=float("nan"), mem_ratio_median=0.9, frac_copies=0.0))
    return pd.DataFrame(rows), pd.DataFrame(summ)


def test_generation_trend_follows_the_measured_direction():
    """The chapter's case: the distance to the fitted image nearly doubles from the smallest to the largest t0,
    though not monotonically for the held-out fits, and copies fall from all to a quarter. The old wording
    (monotonic in every step, else "does not consistently move" / "does not clearly reduce") got this wrong."""
    base = [0.13, 0.14, 0.12, 0.15, 0.14, 0.13, 0.16, 0.12]
    per, summ = _trend_tables(
        d_fit_train=[base, [v - 0.005 for v in base], [v + 0.11 for v in base]],
        d_fit_held=[base, [v - 0.006 for v in base], [v + 0.12 for v in base]],  # dips at t0 = 25, then grows
        ratio_train=[[0.3] * 8, [0.3] * 8, [0.6, 0.7, 0.3, 0.6, 0.8, 0.6, 0.7, 0.4]])
    tr = dip_init.generation_trend(per, summ)
    assert (tr["t_lo"], tr["t_hi"]) == (0, 200)
    t, h = tr["training"], tr["held_out"]
    assert t["d_fit_word"] == h["d_fit_word"] == "grows"
    assert t["d_fit_lo"] == pytest.approx(np.mean(base)) and t["d_fit_hi"] == pytest.approx(np.mean(base) + 0.11)
    assert t["d_fit_change"]["mean_diff"] == pytest.approx(0.11) and t["d_fit_change"]["wins"] == 8
    assert h["d_fit_change"]["mean_diff"] == pytest.approx(0.12)
    assert (t["copies_lo"], t["copies_hi"], t["copies_word"]) == (1.0, 0.25, "falls")
    assert t["copies_change"]["losses"] == 6 and t["copies_change"]["wins"] == 0  # 6 of 8 stop being copies
    assert t["ratio_word"] == "rises" and t["ratio_lo"] == pytest.approx(0.3) and t["ratio_hi"] == pytest.approx(0.6)
    assert t["memorisation"] == "reduces"
    assert tr["full_ratio"] == pytest.approx(0.9) and tr["full_copies"] == 0.0
    assert "memorisation" not in h and "ratio_word" not in h  # only the training fits can be memorised


def test_generation_trend_says_no_clear_change_only_when_there_is_none():
    noisy = [0.10, 0.20, 0.15, 0.12, 0.18, 0.11, 0.19, 0.14]
    per, summ = _trend_tables(d_fit_train=[noisy, noisy, noisy[::-1]], d_fit_held=[noisy, noisy, noisy[::-1]],
                              ratio_train=[[0.3, 0.6] * 4, [0.3, 0.6] * 4, [0.6, 0.3] * 4])
    t = dip_init.generation_trend(per, summ)["training"]
    assert t["d_fit_word"] == "does not clearly change"
    assert t["ratio_word"] == "does not clearly change"
    assert (t["copies_lo"], t["copies_hi"], t["copies_word"]) == (0.5, 0.5, "does not clearly change")
    assert t["memorisation"] == "does not clearly change"
    # closer and more copies: the opposite direction is reported as such
    per, summ = _trend_tables(d_fit_train=[[0.3] * 8, [0.2] * 8, [v - 0.1 for v in noisy]],
                              d_fit_held=[[0.3] * 8, [0.2] * 8, [v - 0.1 for v in noisy]],
                              ratio_train=[[0.8] * 8, [0.8] * 8, [0.3] * 8])
    tr = dip_init.generation_trend(per, summ)
    t = tr["training"]
    assert t["d_fit_word"] == tr["held_out"]["d_fit_word"] == "shrinks" and t["d_fit_lo"] == pytest.approx(0.3)
    assert (t["copies_lo"], t["copies_hi"], t["copies_word"]) == (0.0, 1.0, "rises")
    assert t["ratio_word"] == "falls" and t["memorisation"] == "increases"
    # without the training start there is nothing to say about memorisation
    tr = dip_init.generation_trend(per[per.start != "DIP fit to training"], summ[summ.start != "DIP fit to training"])
    assert "training" not in tr and "full_ratio" not in tr and tr["held_out"]["d_fit_word"] == "shrinks"
    with pytest.raises(ValueError, match="two re-noising levels"):
        dip_init.generation_trend(per[per.t0 == 0], summ[summ.t0 == 0])
