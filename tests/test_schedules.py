import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tdpmlib.methods import ddpm, schedules

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
    ours = schedules.posterior_step(x_t, eps, t, noise, s, clip=False)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


CLIPPED = {name: schedules.make_scheduler(name) for name in schedules.SCHEDULES}  # clip_sample=True, the default


def float64_scheduler(name: str, *, clip_sample: bool):
    """diffusers' DDPMScheduler doing its scalar arithmetic in float64 on the same (float32) alphas_cumprod.

    In float32, 1 - abar_t / abar_{t-1} loses ~4 digits at small t (steps agree to ~5e-5 only), which would
    hide the clip's effect on x_{t-1} near t = T (~1e-4). In float64 the step is exact to ~1e-12.
    """
    s = schedules.make_scheduler(name, clip_sample=clip_sample)
    s.alphas_cumprod = s.alphas_cumprod.double()
    s.one = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(1000)
    return s


def clipping_inputs(s, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and eps (float64) whose x_0 estimate is the chosen x_0, uniform on [-2, 2]: about half outside [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 4 - 2
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    return schedules.q_sample(x0, t, eps, s), eps


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 37, 600, 999, 1000])
def test_clipped_posterior_step_equals_ddpm_scheduler_step(name, t):
    """With clip_sample on (the sampler's setting) the step clips x0_hat to [-1, 1] and takes the posterior mean there."""
    s = float64_scheduler(name, clip_sample=True)
    x_t, eps = clipping_inputs(s, t, seed=t)
    x0_hat = schedules.predict_x0(x_t, eps, t, s)
    outside = (x0_hat.abs() > 1).double().mean()
    assert 0.3 < outside < 0.7  # the clip acts on part of the estimate (and not on all of it)

    out = s.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=x_t.dtype)  # step()'s draw
    torch.testing.assert_close(out.pred_original_sample, x0_hat.clamp(-1, 1), rtol=1e-9, atol=1e-9)
    ours = schedules.posterior_step(x_t, eps, t, noise, s)  # clip=True is the default, as in ddim_step
    torch.testing.assert_close(ours, out.prev_sample, rtol=1e-9, atol=1e-9)
    assert torch.equal(ours, schedules.posterior_step(x_t, eps, t, noise, s, clip=True))

    # Not vacuous: the unclipped step (ours, and diffusers' with clip_sample off) is far from the clipped one.
    unclipped = schedules.posterior_step(x_t, eps, t, noise, s, clip=False)
    ref_unclipped = float64_scheduler(name, clip_sample=False).step(
        eps, t - 1, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    torch.testing.assert_close(unclipped, ref_unclipped, rtol=1e-9, atol=1e-9)
    assert (unclipped - ours).abs().max() > 1e-5

    # The sampler's own float32 scheduler agrees to float32 rounding (as in the unclipped test above).
    s32 = CLIPPED[name]
    s32.set_timesteps(1000)
    ref32 = s32.step(eps.float(), t - 1, x_t.float(), generator=torch.Generator().manual_seed(7)).prev_sample
    noise32 = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))  # a float32 draw now
    ours32 = schedules.posterior_step(x_t.float(), eps.float(), t, noise32, s32)
    torch.testing.assert_close(ours32, ref32, rtol=1e-4, atol=1e-4)


def test_clip_does_nothing_when_the_estimate_is_in_range():
    s = CLIPPED["linear"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9
    eps, z = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    for t in (1, 300, 1000):
        x_t = schedules.q_sample(x0, t, eps, s)
        torch.testing.assert_close(schedules.posterior_step(x_t, eps, t, z, s, clip=True),
                                   schedules.posterior_step(x_t, eps, t, z, s, clip=False), rtol=1e-9, atol=1e-9)


class FakeEpsNet(torch.nn.Module):
    """A deterministic stand-in for the UNet: eps depends on x and on the timestep; records the timesteps."""

    def __init__(self) -> None:
        super().__init__()
        self.timesteps: list[list[int]] = []

    def forward(self, x, timesteps):
        self.timesteps.append(timesteps.tolist())
        scale = 0.3 + 1e-3 * timesteps.float().view(-1, 1, 1, 1)
        return SimpleNamespace(sample=scale * x + 0.2 * torch.sin(3 * x))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_reverse_chain_ddpm_equals_loop_of_ddpm_scheduler_steps(name):
    s = schedules.make_scheduler(name)  # clip_sample=True, as the sampler runs
    g = torch.Generator().manual_seed(0)
    x_t = 1.5 * torch.randn(3, 3, 8, 8, generator=g)
    t = 3

    net = FakeEpsNet()
    ours = ddpm.reverse_chain(net, s, x_t, t, method="ddpm", generator=torch.Generator().manual_seed(11))
    assert net.timesteps == [[2] * 3, [1] * 3, [0] * 3]  # level t is diffusers timestep t - 1

    ref_s = schedules.make_scheduler(name)
    ref_s.set_timesteps(1000)
    gen, x, clipped = torch.Generator().manual_seed(11), x_t, []
    for ts in (2, 1, 0):  # a plain loop of DDPMScheduler.step calls, one generator
        eps = FakeEpsNet()(x, torch.full((3,), ts)).sample
        clipped.append(float((schedules.predict_x0(x, eps, ts + 1, ref_s).abs() > 1).float().mean()))
        x = ref_s.step(eps, ts, x, generator=gen).prev_sample
    assert all(c > 0.1 for c in clipped)  # the clip acts at every step
    assert torch.equal(ours, x)

    # The same chain from the formula: posterior_step with the generator's draws (none at the last step).
    gen, x = torch.Generator().manual_seed(11), x_t
    for level in (3, 2, 1):
        eps = FakeEpsNet()(x, torch.full((3,), level - 1)).sample
        noise = torch.randn(x.shape, generator=gen) if level > 1 else torch.zeros_like(x)
        x = schedules.posterior_step(x, eps, level, noise, s)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-4)  # float32 rounding of diffusers' scalars
    unclipped = ddpm.reverse_chain(FakeEpsNet(), schedules.make_scheduler(name, clip_sample=False), x_t, t,
                                   method="ddpm", generator=torch.Generator().manual_seed(11))
    assert (unclipped - ours).abs().max() > 0.05


def test_report_formula_differs_from_correct_step():
    """The report's 1/sqrt(abar_t) and beta_t*z step is not the DDPM posterior step."""
    s = SCHED["linear"]
    t = 600
    ab = schedules.alpha_bar(s, t)
    beta = 1 - ab / schedules.alpha_bar(s, t - 1)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))
    report = (x_t - float(beta / (1 - ab).sqrt()) * eps) / float(ab.sqrt()) + float(beta) * z
    assert (report - schedules.posterior_step(x_t, eps, t, z, s, clip=False)).abs().max() > 1.0


@pytest.mark.parametrize("clip, clipped_eps", [(False, True), (True, False), (True, True)])
def test_ddim_step_equals_ddim_scheduler(clip, clipped_eps):
    """clipped_eps=True is diffusers' use_clipped_model_output=True; False is its default (raw eps)."""
    ddpm = schedules.make_scheduler("linear", clip_sample=clip)
    ddim = schedules.make_ddim_scheduler(ddpm)
    ddim.set_timesteps(50)
    g = torch.Generator().manual_seed(3)
    bites = 0
    for ts in ddim.timesteps[[0, 10, 49]]:
        ts = int(ts)
        x, eps = torch.randn(2, 3, 4, 4, generator=g) * 2, torch.randn(2, 3, 4, 4, generator=g)
        ref = ddim.step(eps, ts, x, use_clipped_model_output=clipped_eps).prev_sample
        prev = ts - 1000 // 50
        ours = schedules.ddim_step(x, eps, ts + 1, prev + 1 if prev >= 0 else 0, ddpm, clip=clip,
                                   clipped_eps=clipped_eps)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
        other = schedules.ddim_step(x, eps, ts + 1, prev + 1 if prev >= 0 else 0, ddpm, clip=clip,
                                    clipped_eps=not clipped_eps)
        bites += int((other - ours).abs().max() > 1e-3)
    assert bites == (2 if clip else 0)  # the two choices differ where clipping bites (not at the last step)


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


def test_levels_survive_the_scheduler_table_moving_off_the_cpu():
    # diffusers' add_noise moves alphas_cumprod to the images' device (CUDA after the first training step);
    # "meta" stands in for that device here: the levels must not read the moved table.
    s = schedules.make_scheduler("linear")
    torch.testing.assert_close(schedules.alpha_bar(s, torch.arange(1, 1001)), s.alphas_cumprod.double(), rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    x0, noise, eps = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))

    def outputs():
        return (schedules.q_sample(x0, torch.tensor([300, 700]), noise, s), schedules.t_for_sigma(s, 25.0), schedules.sigma_at(s, 500),
                schedules.ddim_step(x0, eps, 600, 500, s), schedules.posterior_step(x0, eps, 600, noise, s), schedules.predict_x0(x0, eps, 400, s))

    before = outputs()
    s.alphas_cumprod = s.alphas_cumprod.to("meta")
    for a, b in zip(outputs(), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
