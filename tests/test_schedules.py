import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tdpmlib import schedules

SCHED = {name: schedules.make_scheduler(name, clip_sample=False) for name in schedules.SCHEDULES}


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_equals_add_noise(name):
    s = SCHED[name]
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    levels = torch.tensor([1, 10, 300, 600, 1000])
    ours = schedules.q_sample(x0, levels, noise, s)
    ref = s.add_noise(x0, noise, levels - 1)  # level t is diffusers timestep t - 1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedules.q_sample(x0, 0, noise, s), x0)  # level 0 is the clean image


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 37, 600, 1000])
def test_posterior_step_equals_ddpm_scheduler_step(name, t):
    s = SCHED[name]
    s.set_timesteps(1000)
    g = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    ref = s.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))  # the draw step() makes
    torch.testing.assert_close(schedules.posterior_step(x_t, eps, t, noise, s), ref, rtol=1e-4, atol=1e-5)


def test_report_formula_differs_from_correct_step():
    """The report's 1/sqrt(abar_t) and beta_t*z step is not the DDPM posterior step."""
    s = SCHED["linear"]
    t = 600
    ab = schedules.alpha_bar(s, t)
    beta = 1 - ab / schedules.alpha_bar(s, t - 1)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))
    report = (x_t - float(beta / (1 - ab).sqrt()) * eps) / float(ab.sqrt()) + float(beta) * z
    assert (report - schedules.posterior_step(x_t, eps, t, z, s)).abs().max() > 1.0


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_equals_ddim_scheduler(clip):
    ddpm = schedules.make_scheduler("linear", clip_sample=clip)
    ddim = schedules.make_ddim_scheduler(ddpm)
    ddim.set_timesteps(50)
    g = torch.Generator().manual_seed(3)
    for ts in ddim.timesteps[[0, 10, 49]]:
        ts = int(ts)
        x, eps = torch.randn(2, 3, 4, 4, generator=g) * 2, torch.randn(2, 3, 4, 4, generator=g)
        ref = ddim.step(eps, ts, x).prev_sample
        prev = ts - 1000 // 50
        ours = schedules.ddim_step(x, eps, ts + 1, prev + 1 if prev >= 0 else 0, ddpm, clip=clip)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_alpha_bar_levels_and_report_numbers():
    s = SCHED["linear"]
    assert schedules.alpha_bar(s, 0) == 1
    ab = schedules.alpha_bar(s, torch.arange(0, 1001))
    assert torch.all(ab[1:] < ab[:-1])
    # The sanity check: at t = 600 the linear schedule keeps about 0.16 of the signal.
    assert abs(float(ab[600].sqrt()) - 0.16) < 0.01
    with pytest.raises(ValueError, match="t="):
        schedules.alpha_bar(s, 1001)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 5, 50, 200, 600, 900])
def test_t_for_sigma_round_trips(name, t):
    s = SCHED[name]
    assert schedules.t_for_sigma(s, float(schedules.sigma_at(s, t))) == t


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["linear", "cosine"]), st.integers(1, 999))
def test_alpha_bar_monotone_and_sigma_inverse_property(name, t):
    s = SCHED[name]
    assert schedules.alpha_bar(s, t + 1) < schedules.alpha_bar(s, t)
    sig = float(schedules.sigma_at(s, t))
    t_back = schedules.t_for_sigma(s, sig)
    assert abs(float(schedules.sigma_at(s, t_back)) - sig) <= 1e-6 * max(sig, 1.0) or t_back == t


def test_t_for_sigma_pixel_levels_are_ordered():
    s = SCHED["linear"]
    ts = [schedules.t_for_sigma(s, sg) for sg in (15, 25, 50)]
    assert ts == sorted(ts) and ts[0] >= 1
    # sigma = 25/255 on [0, 1] is 2*25/255 on [-1, 1]: sqrt((1 - abar)/abar) should match it closely.
    ab = schedules.alpha_bar(s, ts[1])
    assert math.isclose(float(((1 - ab) / ab).sqrt()), 50 / 255, rel_tol=0.05)


@pytest.mark.parametrize("bad", ["quadratic", "", None])
def test_unknown_schedule_names_allowed_values(bad):
    with pytest.raises(ValueError, match="schedule=.*linear"):
        schedules.make_scheduler(bad)


@pytest.mark.parametrize("bad", [0, -3, float("nan"), "25"])
def test_bad_sigma(bad):
    with pytest.raises(ValueError, match="sigma="):
        schedules.t_for_sigma(SCHED["linear"], bad)
