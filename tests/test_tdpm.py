import pandas as pd
import pytest
import torch

from tdpmlib.methods import dip, models, schedules, tdpm


@pytest.fixture
def setup():
    torch.manual_seed(0)
    unet = models.make_unet("tiny", resolution=8).eval()
    return unet, schedules.make_scheduler("linear")


def test_report_t_trunc_zero_is_one_network_evaluation(setup, tiny_images):
    """The author's loop runs range(0, T_trunc + 1): T_trunc = 0 still steps once, from diffusers timestep 0."""
    unet, s = setup
    x0 = tiny_images[:2]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    net = CountingUNet(unet)
    res = tdpm.tdpm_dip(net, s, x0, t_trunc=0, dip_iterations=5, z=z, generator=torch.Generator().manual_seed(0),
                        preset="tiny", seed=1)
    assert net.calls == [0]
    assert res.network_evaluations == res.level == 1 and res.t_trunc == 0 and res.dip_iterations == 5
    assert res.seconds > 0 and not torch.equal(res.x0, res.dip_output.clamp(-1, 1))


def test_matched_level_zero_returns_exactly_the_dip_output(setup, tiny_images):
    unet, s = setup
    x0 = tiny_images[:2]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    y = tdpm.observe(x0, 50, s, generator=torch.Generator().manual_seed(2))
    res = tdpm.denoise(unet, s, y, 50, t_trunc=0, dip_iterations=5, z=z, generator=torch.Generator().manual_seed(0),
                       preset="tiny", seed=1)
    ref = dip.fit_dip(y / abar(s, 50) ** 0.5, iterations=5, z=z, preset="tiny", seed=1)
    torch.testing.assert_close(res.dip_output, ref.output, rtol=0, atol=1e-6)
    assert torch.equal(res.x0, res.dip_output.clamp(-1, 1)) and res.network_evaluations == 0


class CountingUNet(torch.nn.Module):
    """Wraps a network and records the diffusers timestep of every call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x, t):
        self.calls.append(int(torch.as_tensor(t).flatten()[0]))
        return self.unet(x, t)


def spy_fit(monkeypatch):
    """Replace dip.fit_dip by a spy that records the target and returns the target itself as the DIP output."""
    seen = {}

    def fake_fit(target, **kw):
        seen["target"], seen["kw"] = target.clone(), kw
        return dip.DIPResult(output=target.clone(), history=pd.DataFrame())

    monkeypatch.setattr(dip, "fit_dip", fake_fit)
    return seen


def abar(s, t):  # independent of schedules.alpha_bar: diffusers' array, level t is index t - 1
    return float(s.alphas_cumprod[t - 1])


def test_tdpm_target_is_the_forward_sample_and_chain_length(setup, tiny_images, monkeypatch):
    unet, s = setup
    x0 = tiny_images[:2]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    seen = spy_fit(monkeypatch)
    net = CountingUNet(unet)
    tdpm.tdpm_dip(net, s, x0, t_trunc=10, dip_iterations=3, z=z, generator=torch.Generator().manual_seed(0))
    a = abar(s, 11)  # the report's T_trunc = 10 is diffusers timestep 10, level 11
    torch.testing.assert_close(seen["target"], a ** 0.5 * x0 + (1 - a) ** 0.5 * z)
    assert seen["kw"]["z"] is z and seen["kw"]["iterations"] == 3
    assert net.calls == list(range(10, -1, -1))  # diffusers timesteps 10..0: T_trunc + 1 calls, as the author's loop


@pytest.mark.parametrize("t_trunc", [0, 10, 300])
def test_denoise_target_is_y_rescaled_to_t_trunc(setup, tiny_images, monkeypatch, t_trunc):
    """A variant that drops T_trunc from the rescaling (or rescales to level 0) fits another target."""
    unet, s = setup
    x0 = tiny_images[:2]
    y = tdpm.observe(x0, 600, s, generator=torch.Generator().manual_seed(0))
    seen = spy_fit(monkeypatch)
    net = CountingUNet(unet)
    tdpm.denoise(net, s, y, 600, t_trunc=t_trunc, dip_iterations=3, generator=torch.Generator().manual_seed(0))
    expected = (abar(s, t_trunc) / abar(s, 600)) ** 0.5 * y if t_trunc else y / abar(s, 600) ** 0.5
    torch.testing.assert_close(seen["target"], expected.float())
    assert len(net.calls) == t_trunc


def test_denoise_targets(setup, tiny_images):
    unet, s = setup
    x0 = tiny_images[:2]
    y = tdpm.observe(x0, 600, s, generator=torch.Generator().manual_seed(0))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    kw = dict(dip_iterations=3, z=z, generator=torch.Generator().manual_seed(0), preset="tiny", seed=2)
    r0 = tdpm.denoise(unet, s, y, 600, t_trunc=0, **kw)
    ref = dip.fit_dip(y / abar(s, 600) ** 0.5, iterations=3, z=z, preset="tiny", seed=2)
    torch.testing.assert_close(r0.x0, ref.output.clamp(-1, 1))
    with pytest.raises(ValueError, match="t_trunc=601"):
        tdpm.denoise(unet, s, y, 600, t_trunc=601, **kw)


def test_estimated_error_var_by_hand():
    x_hat = torch.zeros(2, 3, 4, 4)
    y_scaled = torch.full((2, 3, 4, 4), 0.5)
    y_scaled[1] = 0.1
    torch.testing.assert_close(tdpm.estimated_error_var(x_hat, y_scaled, 0.05), torch.tensor([0.2, 0.0]))


def test_matched_state_has_the_noise_level_t_trunc_expects(setup, monkeypatch):
    """With a DIP estimate of known error variance below v_T, the state handed to the chain has noise std
    sqrt(v_T) in x0 units (ratio ~ 1); the unmatched polishing variant's state is far noisier."""
    unet, s = setup
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 32, 32, generator=g) * 1.6 - 0.8
    # sigma = 25/255 and a level with a quarter of its noise variance (the error estimate's spread grows
    # with v_obs / v_T: near the book's operating points it is a few per cent)
    t_obs = schedules.t_for_sigma(s, 25)
    t_trunc = schedules.t_for_sigma(s, 12.5)
    y = tdpm.observe(x0, t_obs, s, generator=g)
    v_t = (1 - abar(s, t_trunc)) / abar(s, t_trunc)
    err = torch.randn(x0.shape, generator=g) * (0.3 * v_t) ** 0.5  # DIP error: 0.3 of the expected variance

    def oracle_fit(target, **kw):
        return dip.DIPResult(output=x0 + err, history=pd.DataFrame())

    monkeypatch.setattr(dip, "fit_dip", oracle_fit)
    res = tdpm.denoise_matched(unet, s, y, t_obs, t_trunc=t_trunc, generator=torch.Generator().manual_seed(1),
                               reference=x0)
    assert res.noise_ratio.shape == (4,)
    assert torch.all((res.noise_ratio - 1).abs() < 0.1), res.noise_ratio
    assert res.network_evaluations == t_trunc and res.t_trunc == t_trunc
    # the polishing variant hands over y rescaled, with all of its noise: sqrt(v_obs / v_T) times too much
    spy_fit(monkeypatch)  # a DIP that returns its target unchanged (no fit at all)
    polish = tdpm.denoise(unet, s, y, t_obs, t_trunc=t_trunc, generator=torch.Generator().manual_seed(1), reference=x0)
    v_obs = (1 - abar(s, t_obs)) / abar(s, t_obs)
    assert torch.all((polish.noise_ratio / (v_obs / v_t) ** 0.5 - 1).abs() < 0.1), polish.noise_ratio
    # an estimate already noisier than v_T gets no fresh noise: the state is sqrt(abar_T) x_hat
    err_big = torch.randn(x0.shape, generator=g) * (4 * v_t) ** 0.5
    monkeypatch.setattr(dip, "fit_dip", lambda target, **kw: dip.DIPResult(output=x0 + err_big, history=pd.DataFrame()))
    big = tdpm.denoise_matched(unet, s, y, t_obs, t_trunc=t_trunc, generator=torch.Generator().manual_seed(1), reference=x0)
    torch.testing.assert_close(big.state, abar(s, t_trunc) ** 0.5 * (x0 + err_big))


def test_matched_t_trunc_zero_is_the_dip_on_the_scaled_observation(setup, tiny_images, monkeypatch):
    unet, s = setup
    y = tdpm.observe(tiny_images[:2], 200, s, generator=torch.Generator().manual_seed(0))
    seen = spy_fit(monkeypatch)
    res = tdpm.denoise_matched(unet, s, y, 200, t_trunc=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["target"], (y / abar(s, 200) ** 0.5).float())
    torch.testing.assert_close(res.x0, seen["target"].clamp(-1, 1))
    assert res.noise_ratio is None and res.network_evaluations == 0
    with pytest.raises(ValueError, match="t_trunc=201"):
        tdpm.denoise_matched(unet, s, y, 200, t_trunc=201, generator=torch.Generator())


def test_tweedie_is_exact_for_the_true_noise(setup, tiny_images):
    """If the network predicted the true noise, the one-step estimate would return x0."""
    _, s = setup
    x0 = tiny_images[:2] * 0.9
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    y = schedules.q_sample(x0, 600, eps, s).float()

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            return type("O", (), {"sample": eps})()

    torch.testing.assert_close(tdpm.tweedie(Oracle(), s, y, 600), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t_trunc", [-1, 1000, 1001, 2.0])
def test_bad_t_trunc(setup, tiny_images, t_trunc):
    unet, s = setup
    with pytest.raises(ValueError, match=r"t_trunc=.* is not allowed; use an integer in 0\.\.999"):
        tdpm.tdpm_dip(unet, s, tiny_images[:1], t_trunc=t_trunc, generator=torch.Generator())


def test_read_out_readouts_against_their_definitions(setup):
    """ancestral = reverse_from_state; mean_chains = the mean of chains drawn one after another from the same
    generator (its first chain is the ancestral readout); posterior_mean = Tweedie; NFE as charged."""
    unet, s = setup
    state = tdpm.observe(torch.rand(2, 3, 8, 8) * 2 - 1, 20, s, generator=torch.Generator().manual_seed(1))
    anc = tdpm.read_out(unet, s, state, 20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(anc, tdpm.reverse_from_state(unet, s, state, 20, generator=torch.Generator().manual_seed(3)),
                               rtol=0, atol=0)
    g = torch.Generator().manual_seed(3)
    chains = [tdpm.reverse_from_state(unet, s, state, 20, generator=g) for _ in range(4)]
    mean4 = tdpm.read_out(unet, s, state, 20, readout="mean_chains", n_chains=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mean4, torch.stack(chains).mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(chains[0], anc, rtol=0, atol=0)
    assert not torch.allclose(chains[0], chains[1])  # the chains are independent draws
    pm = tdpm.read_out(unet, s, state, 20, readout="posterior_mean")
    torch.testing.assert_close(pm, tdpm.tweedie(unet, s, state, 20), rtol=0, atol=0)
    assert [tdpm.readout_nfe(r, 20, n_chains=4) for r in tdpm.READOUTS] == [20, 1, 80]
    assert tdpm.readout_nfe("mean_chains", 0, n_chains=4) == 0
    torch.testing.assert_close(tdpm.read_out(unet, s, state * 3, 0, readout="posterior_mean"), (state * 3).clamp(-1, 1))


def test_mean_of_chains_is_closer_to_the_posterior_mean_as_n_grows(setup):
    """Averaging ancestral chains reduces their variance: the mean of 8 chains lies closer to the mean of 32
    than a single chain does (a property, not a number)."""
    unet, s = setup
    state = tdpm.observe(torch.zeros(1, 3, 8, 8), 30, s, generator=torch.Generator().manual_seed(1))
    ref = tdpm.read_out(unet, s, state, 30, readout="mean_chains", n_chains=32, generator=torch.Generator().manual_seed(9))
    dist = [float((tdpm.read_out(unet, s, state, 30, readout="mean_chains", n_chains=n,
                                 generator=torch.Generator().manual_seed(5)) - ref).pow(2).mean()) for n in (1, 8)]
    assert dist[1] < dist[0] / 2


@pytest.mark.parametrize("kw", [dict(readout="chains"), dict(readout="mean_chains", n_chains=0)])
def test_bad_readout(setup, kw):
    unet, s = setup
    with pytest.raises(ValueError, match=next(iter(kw)) if kw.get("readout") == "chains" else "n_chains"):
        tdpm.read_out(unet, s, torch.zeros(1, 3, 8, 8), 5, **kw)


def test_estimated_error_var_with_absorbed_by_hand_and_zero_is_the_old_estimate():
    """resid - v_obs (1 - 2a), clamped at 0: resid = [0.25, 0.01], v_obs = 0.05, a = 0.3 -> [0.23, 0.0]
    (0.01 - 0.02 < 0); a = 0 is the earlier estimate resid - v_obs bit for bit."""
    x_hat = torch.zeros(2, 3, 4, 4)
    y_scaled = torch.full((2, 3, 4, 4), 0.5)
    y_scaled[1] = 0.1
    torch.testing.assert_close(tdpm.estimated_error_var(x_hat, y_scaled, 0.05, absorbed=0.3), torch.tensor([0.23, 0.0]))
    g = torch.Generator().manual_seed(0)
    x_hat, y_scaled = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    old = ((x_hat.float() - y_scaled.float()).flatten(1).pow(2).mean(1) - 0.37).clamp_min(0)  # the earlier code
    assert torch.equal(tdpm.estimated_error_var(x_hat, y_scaled, 0.37), old)
    assert torch.equal(tdpm.estimated_error_var(x_hat, y_scaled, 0.37, absorbed=0.0), old)
    with pytest.raises(ValueError, match="absorbed=nan"):
        tdpm.estimated_error_var(x_hat, y_scaled, 0.37, absorbed=float("nan"))


def test_calibrate_absorbed_by_hand():
    """One image: ||x_hat - clean||^2/D = 0.04, resid = ||x_hat - y||^2/D = 0.09, v_obs = 0.1:
    (0.04 - 0.09 + 0.1) / 0.2 = 0.25; two images average their terms."""
    clean = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full((2, 3, 4, 4), 0.2)
    y_scaled = torch.full((2, 3, 4, 4), -0.1)
    y_scaled[1] = 0.2  # image 1: err 0.04, resid 0 -> (0.04 + 0.1) / 0.2 = 0.7
    assert tdpm.calibrate_absorbed(x_hat[:1], y_scaled[:1], clean[:1], 0.1) == pytest.approx(0.25, abs=1e-6)
    assert tdpm.calibrate_absorbed(x_hat, y_scaled, clean, 0.1) == pytest.approx((0.25 + 0.7) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="v_obs=0"):
        tdpm.calibrate_absorbed(x_hat, y_scaled, clean, 0)
    with pytest.raises(ValueError, match="same non-empty shape"):
        tdpm.calibrate_absorbed(x_hat[:1], y_scaled, clean, 0.1)


def test_calibrated_absorbed_recovers_a_and_brings_the_noise_ratio_to_one(setup):
    """x_hat = clean + e0 + a n with n the observation's own noise: calibrate_absorbed recovers a, and the state
    matched with it at T_trunc = t has the noise the level expects (ratio ~ 1), where absorbed = 0 (the
    estimate low by 2 a v_obs) hands over too much noise (ratio ~ sqrt(1 + 2 a v_obs / v_T) > 1)."""
    _, s = setup
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(8, 3, 32, 32, generator=g) * 1.6 - 0.8
    t_obs = schedules.t_for_sigma(s, 25)
    ab = abar(s, t_obs)
    v_obs = (1 - ab) / ab
    y = tdpm.observe(clean, t_obs, s, generator=g)
    y_scaled = (y / ab ** 0.5).float()
    noise = y_scaled - clean
    a = 0.3
    x_hat = clean + torch.randn(clean.shape, generator=g) * (0.05 * v_obs) ** 0.5 + a * noise
    a_hat = tdpm.calibrate_absorbed(x_hat, y_scaled, clean, v_obs)
    assert a_hat == pytest.approx(a, abs=0.03)
    ratios = {}
    for name, absorbed in (("old", 0.0), ("calibrated", a_hat)):
        state = tdpm.matched_state(x_hat, y, t_obs, t_obs, s, generator=torch.Generator().manual_seed(1),
                                   absorbed=absorbed)
        ratios[name] = tdpm.noise_ratio(state, clean, t_obs, s)
    assert torch.all((ratios["calibrated"] - 1).abs() < 0.04) and (ratios["calibrated"].mean() - 1).abs() < 0.015, ratios
    assert torch.all(ratios["old"] > 1.04), ratios  # sqrt(1 + 0.05 + 0.09) ~ 1.07 expected
    assert torch.all((ratios["calibrated"] - 1).abs() < (ratios["old"] - 1).abs())
