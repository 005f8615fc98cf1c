"""Tests for tdpmlib.examples: the DIP-initialised DDPM (Example 1) and DDPM-guided early stopping (Example 2)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tdpmlib import ddpm, dip, examples, metrics, models, schedules, tdpm


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
    x = examples.dip_init_ddpm(net, sched, start, 40, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 40
    net.calls = 0
    x = examples.dip_init_ddpm(net, sched, start, 40, method="ddim", num_steps=5,
                               generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 5 == ddpm.network_evaluations(40, method="ddim", num_steps=5)
    net.calls = 0
    x = examples.from_noise(net, sched, n=3, resolution=8, nfe=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 7 and x.shape == (3, 3, 8, 8)
    net.calls = 0
    y = tdpm.observe(c.expand(2, -1, -1, -1), 30, sched, generator=torch.Generator().manual_seed(4))
    x = examples.from_observation(net, sched, y, 30, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
    assert net.calls == 30


def test_dip_init_ddpm_is_renoise_then_reverse_chain(sched, tiny_unet):
    x_hat = smooth(2)
    out = examples.dip_init_ddpm(tiny_unet, sched, x_hat, 12, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x_t = schedules.q_sample(x_hat, 12, torch.randn(x_hat.shape, generator=g), sched).float()
    ref = ddpm.reverse_chain(tiny_unet, sched, x_t, 12, generator=g).clamp(-1, 1)
    torch.testing.assert_close(out, ref)
    # t0 = 0: the estimate itself, nothing drawn
    torch.testing.assert_close(examples.dip_init_ddpm(tiny_unet, sched, 3 * x_hat, 0, generator=g), (3 * x_hat).clamp(-1, 1))
    with pytest.raises(ValueError, match="t0=1001"):
        examples.dip_init_ddpm(tiny_unet, sched, x_hat, 1001, generator=g)


def test_renoise_marginal_and_excess_noise_of_the_observation_estimate(sched):
    x0 = smooth(1, size=256)
    g = torch.Generator().manual_seed(0)
    ab = float(schedules.alpha_bar(sched, 50))
    resid = examples.renoise(x0, 50, sched, generator=g) - ab ** 0.5 * x0
    assert abs(resid.var().item() / (1 - ab) - 1) < 0.02
    # the observation estimate y / sqrt(abar_tobs) re-noised to t0 < t_obs carries too much noise
    t_obs, t0 = 200, 50
    y = tdpm.observe(x0, t_obs, sched, generator=g)
    est = examples.observation_x0(y, t_obs, sched)
    resid = examples.renoise(est, t0, sched, generator=g) - ab ** 0.5 * x0
    ratio = examples.excess_noise_ratio(sched, t_obs, t0)
    assert ratio > 1.5
    assert abs(resid.var().item() / (1 - ab) / ratio - 1) < 0.03
    assert examples.excess_noise_ratio(sched, t_obs, t_obs) == pytest.approx(2.0)


def test_denoising_sweep_rows_and_dip_outputs(sched, tiny_unet):
    clean = smooth(2)
    y = tdpm.observe(clean, 10, sched, generator=torch.Generator().manual_seed(1))
    df, outs = examples.denoising_sweep(tiny_unet, sched, clean, y, 10, ks=[2, 4], t0s=[1, 3], presets=["tiny", "tiny"],
                                        lr=1e-2, seed=3, device="cpu", generator=torch.Generator().manual_seed(5))
    # 2 DIP starts + the observation estimate, each at t0 in {0, 1, 3}, + the observation reversed from t_obs
    assert len(df) == 2 * (3 * 3 + 1)
    assert set(df.nfe) == {0, 1, 3, 10}
    assert (df.nfe == df.t0).all() and (df[df.start == "DIP only"].k > 0).all()
    assert df[df.start == "observation, reverse from t_obs"].nfe.eq(10).all()
    # the DIP-only rows are the fit's kept outputs (the same z: the generator's first draw)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(y.shape, generator=g)
    fit = dip.fit_dip(examples.observation_x0(y, 10, sched), iterations=4, z=z, preset="tiny", lr=1e-2, seed=3, keep=[2, 4])
    row = df[(df.start == "DIP only") & (df.k == 2)].sort_values("image")
    np.testing.assert_allclose(row.psnr.values, metrics.psnr(fit.outputs[2].clamp(-1, 1), clean).numpy(), rtol=1e-5)
    # the observation as is: PSNR of y / sqrt(abar) against the clean image
    row = df[(df.start == "observation as is")].sort_values("image")
    np.testing.assert_allclose(row.psnr.values, metrics.psnr(examples.observation_x0(y, 10, sched).clamp(-1, 1), clean).numpy(),
                               rtol=1e-5)
    assert df.ssim.isna().all()  # 8 px: SSIM's window does not fit
    assert (df[df.start != "observation as is"].seconds > 0).all() and (df[df.start == "observation as is"].seconds == 0).all()


def test_generation_sweep_metrics(tiny_unet):
    sched = schedules.make_scheduler("linear", num_train_timesteps=50)  # a short full chain keeps the test fast
    imgs = smooth(8, seed=2)
    train, held = imgs[:4], imgs[4:]
    per, summ, samples, fit = examples.generation_sweep(
        tiny_unet, sched, fit_sets={"held-out": held[:2], "training": train[:2]}, train=train, held=held,
        reference=held[2:], t0s=[3], dip_iterations=3, preset="tiny", lr=1e-2, seed=0, device="cpu",
        generator=torch.Generator().manual_seed(0), full_n=2, fid=False)
    assert list(summ.label) == ["DIP fit to held-out, t0=0", "DIP fit to training, t0=0", "DIP fit to held-out, t0=3",
                                "DIP fit to training, t0=3", "pure noise, DDIM 3 steps", "pure noise, DDPM 50 steps"]
    assert list(summ.nfe) == [0, 0, 3, 3, 3, 50]
    # t0 = 0 outputs are the DIP outputs; d_fit is their RMS distance to the fitted image
    x = samples["DIP fit to training, t0=0"]
    torch.testing.assert_close(x, fit.output[2:].clamp(-1, 1))
    d = ((x - train[:2]) ** 2).mean(dim=(1, 2, 3)).sqrt()
    np.testing.assert_allclose(per[per.label == "DIP fit to training, t0=0"].d_fit.values, d.numpy(), rtol=1e-5)
    assert per[per.start.str.startswith("pure noise")].d_fit.isna().all()
    mem = metrics.memorisation(x, train, held)
    assert summ.set_index("label").loc["DIP fit to training, t0=0", "mem_ratio_median"] == pytest.approx(mem["ratio_median"])
    assert (summ.swd >= 0).all() and (summ.fid_status == "not computed").all()


# ---------------------------------------------------------------------------------------------------------
# Example 2
# ---------------------------------------------------------------------------------------------------------


def test_guided_stages_have_the_stated_noise_variances(sched):
    x0 = smooth(1, size=128)
    t_obs = 100
    y = tdpm.observe(x0, t_obs, sched, generator=torch.Generator().manual_seed(0))
    stages = examples.guided_stages(y, t_obs, sched, n_stages=4, generator=torch.Generator().manual_seed(1))
    levels = [s.level for s in stages]
    variances = [s.noise_var for s in stages]
    assert levels[-1] == t_obs and all(a > b for a, b in zip(levels, levels[1:]))
    assert all(a > b for a, b in zip(variances, variances[1:]))
    # the first stage's noise std is about twice the observation's (the default noise_factor)
    assert float(schedules.sigma_at(sched, levels[0]) / schedules.sigma_at(sched, t_obs)) == pytest.approx(2.0, rel=0.03)
    assert torch.equal(stages[-1].target, examples.observation_x0(y, t_obs, sched))
    for level, target, v in stages:  # unpacks as (level, target, noise_var)
        assert v == pytest.approx(examples.noise_var(sched, level))
        assert abs((target - x0).var().item() / v - 1) < 0.03
        # scaled to its level the target is a sample of q(x_s | x_0)
        ab = float(schedules.alpha_bar(sched, level))
        assert abs(((ab ** 0.5) * (target - x0)).var().item() / (1 - ab) - 1) < 0.03
    # the increments between consecutive stages are independent fresh noise of the variance difference
    inc = stages[0].target - stages[1].target
    assert abs(inc.var().item() / (variances[0] - variances[1]) - 1) < 0.03
    assert abs(torch.corrcoef(torch.stack([inc.flatten(), (stages[1].target - x0).flatten()]))[0, 1].item()) < 0.02
    with pytest.raises(ValueError, match="levels="):
        examples.guided_stages(y, t_obs, sched, n_stages=2, generator=torch.Generator(), levels=[90, 100])
    with pytest.raises(ValueError, match="n_stages=30"):
        examples.stage_levels(sched, 5, 30)


def test_single_stage_guided_dip_is_the_discrepancy_rule(sched):
    clean = smooth(3)
    t_obs = 100
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    z = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    kw = dict(preset="tiny", lr=1e-2, seed=4)
    g = examples.guided_dip(y, t_obs, sched, n_stages=1, iters_per_stage_max=20, generator=torch.Generator(), z=z, **kw)
    disc = examples.Discrepancy(examples.noise_var(sched, t_obs))
    dip.fit_dip(examples.observation_x0(y, t_obs, sched), iterations=20, z=z, monitors=[disc], **kw)
    assert disc.fired.any()
    assert torch.equal(g.stop_iteration, disc.stop_iteration)
    assert torch.equal(g.fired[:, 0], disc.fired)
    torch.testing.assert_close(g.output, disc.output)
    # where it fired, the residual variance at the stop is <= v_obs and above it just before
    h = g.history
    for i in torch.nonzero(disc.fired).flatten().tolist():
        k = int(g.stop_iteration[i])
        hi = h[h.image == i].set_index("iteration")
        assert hi.residual_var[k] <= examples.noise_var(sched, t_obs)
        assert (hi.residual_var.loc[: k - 1] > examples.noise_var(sched, t_obs)).all()


@pytest.mark.parametrize("cap", [12, 2])
def test_guided_dip_stages_and_the_rule_never_sees_the_reference(sched, cap):
    clean = smooth(2)
    t_obs = 60
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    kw = dict(n_stages=3, iters_per_stage_max=cap, preset="tiny", lr=1e-2, seed=1)
    a = examples.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), reference=clean, **kw)
    b = examples.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.stop_iteration, b.stop_iteration) and torch.equal(a.output, b.output)
    assert "psnr_ref" in a.history and "psnr_ref" not in b.history
    S = 3
    assert a.stage_ends.shape == (2, S)
    assert torch.equal(a.stop_iteration, a.stage_ends[:, -1])
    h = a.history
    for i in range(2):
        ends = a.stage_ends[i].tolist()
        starts = [0] + ends[:-1]
        assert all(e1 <= e2 for e1, e2 in zip(ends, ends[1:])) and ends[-1] <= S * cap
        hi = h[h.image == i].set_index("iteration")
        for j in range(S):
            if a.fired[i, j]:
                assert hi.residual_var[ends[j]] <= a.stages[j].noise_var
            else:  # the cap ended the stage
                assert ends[j] - starts[j] == cap
        # the stop's PSNR is the one recorded at that iteration
        assert metrics.psnr(a.output[i:i + 1], clean[i:i + 1]).item() == pytest.approx(hi.psnr_ref[ends[-1]], rel=1e-5)
    assert a.fired.all() if cap == 12 else not a.fired.all()  # both branches of the rule are exercised
    # best_iteration is the argmax of the recorded PSNR
    for i in range(2):
        hi = h[h.image == i]
        assert int(a.best_iteration[i]) == int(hi.iteration.values[np.argmax(hi.psnr_ref.values)])


def brute_force_wmv(seq, window, patience):
    """Reference ES-WMV on a list of K x (B x D) arrays: windowed variance, frozen argmin after patience."""
    K, B = len(seq), seq[0].shape[0]
    var = np.full((K, B), np.nan)
    for k in range(window - 1, K):
        win = np.stack(seq[k - window + 1:k + 1])          # W x B x D
        var[k] = win.var(axis=0).mean(axis=1)
    det, stop = np.full(B, -1), np.full(B, -1)
    for i in range(B):
        best, best_k = np.inf, -1
        for k in range(window - 1, K):
            if var[k, i] < best:
                best, best_k = var[k, i], k
            if k - best_k >= patience:
                stop[i] = k
                break
        det[i] = best_k
    return var, det, stop


def test_eswmv_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    K, B, W = 80, 3, 6
    base = torch.randn(B, 3, 4, 4, generator=g)
    centres = torch.tensor([20.0, 45.0, 70.0])
    seq = []
    for k in range(K):  # fluctuation amplitude smallest around each image's centre
        amp = (0.05 + (k - centres).abs() / 40).view(B, 1, 1, 1)
        seq.append(base + amp * torch.randn(B, 3, 4, 4, generator=g))
    for patience in (1000, 8):
        m = examples.ESWMV(window=W, patience=patience)
        for k, x in enumerate(seq):
            m.update(k, x, None)
        var, det, stop = brute_force_wmv([x.reshape(B, -1).double().numpy() for x in seq], W, patience)
        assert m.detected.tolist() == det.tolist()
        assert m.stop_k.tolist() == stop.tolist()
        vf = m.variance_frame()
        np.testing.assert_allclose(vf[vf.image == 1].wmv.values, var[W - 1:, 1], rtol=1e-4)
        for i in range(B):
            torch.testing.assert_close(m.output[i], seq[det[i]][i])
    # with patience 1000 the detections follow the centres (the window ends a little after them)
    m = examples.ESWMV(window=W)
    for k, x in enumerate(seq):
        m.update(k, x, None)
    assert (m.detected.float() - centres).abs().max() <= W + 3
    assert not m.stopped.any()


def test_eswmv_without_a_full_window_and_as_a_fit_monitor():
    m = examples.ESWMV(window=50, patience=10)
    seq = [torch.full((2, 3, 4, 4), float(k)) for k in range(5)]
    for k, x in enumerate(seq):
        m.update(k, x, None)
    assert not m.valid.any() and m.detected.tolist() == [4, 4]
    torch.testing.assert_close(m.output, seq[-1])
    m = examples.ESWMV(window=4, patience=1000)
    res = dip.fit_dip(smooth(2), iterations=12, preset="tiny", generator=torch.Generator().manual_seed(0), monitors=[m],
                      keep=range(13))
    assert m.valid.all() and ((m.detected >= 3) & (m.detected <= 12)).all()
    for i in range(2):
        torch.testing.assert_close(m.output[i], res.outputs[int(m.detected[i])][i])
    with pytest.raises(ValueError, match="window=0"):
        examples.ESWMV(window=0)


def test_stopping_study_oracle_bounds_the_plain_rules(sched):
    clean = smooth(2)
    t_obs = 60
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    rows, hist, guided, wmv = examples.stopping_study(
        clean, y, t_obs, sched, fixed=[3, 8], iterations=10, n_stages=2, iters_per_stage_max=5, preset="tiny",
        lr=1e-2, seed=0, device="cpu", generator=torch.Generator().manual_seed(1), window=3, patience=100)
    assert set(rows.rule) == {"fixed 3", "fixed 8", "ES-WMV", "discrepancy (single stage)", "guided (2 stages)",
                              "oracle (best PSNR)"}
    by = rows.pivot(index="image", columns="rule", values="psnr")
    for rule in ("fixed 3", "fixed 8", "ES-WMV", "discrepancy (single stage)"):  # points on the plain fit's path
        assert (by[rule] <= by["oracle (best PSNR)"] + 1e-5).all()
    fixed8 = rows[rows.rule == "fixed 8"].sort_values("image")
    np.testing.assert_allclose(fixed8.psnr.values, hist[hist.iteration == 8].sort_values("image").psnr_ref.values, rtol=1e-5)
    assert (rows.oracle_gap == (rows.stop - rows.oracle).abs()).all()
    assert (rows[rows.rule == "oracle (best PSNR)"].oracle_gap == 0).all()
    with pytest.raises(ValueError, match="iterations=5"):
        examples.stopping_study(clean, y, t_obs, sched, fixed=[3, 8], iterations=5, n_stages=2, iters_per_stage_max=5,
                                preset="tiny", lr=1e-2, seed=0, device="cpu", generator=torch.Generator())


def test_check_int_list():
    assert examples.check_int_list("ks", [1, 2], low=1) == [1, 2]
    assert examples.check_int_list("ks", None) is None
    for bad in ([], [0], [1.5], "12", [True]):
        with pytest.raises(ValueError, match="ks="):
            examples.check_int_list("ks", bad, low=1)
