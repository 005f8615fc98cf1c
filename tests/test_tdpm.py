import pytest
import torch

from tdpmlib import dip, models, schedules, tdpm


@pytest.fixture
def setup():
    torch.manual_seed(0)
    unet = models.make_unet("tiny", resolution=8).eval()
    return unet, schedules.make_scheduler("linear")


def test_t_trunc_zero_returns_exactly_the_dip_output(setup, tiny_images):
    unet, s = setup
    x0 = tiny_images[:2]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    res = tdpm.tdpm_dip(unet, s, x0, t_trunc=0, dip_iterations=5, z=z, generator=torch.Generator().manual_seed(0),
                        preset="tiny", seed=1)
    ref = dip.fit_dip(x0, iterations=5, z=z, preset="tiny", seed=1)  # target at level 0 is x0 itself
    assert torch.equal(res.dip_output, ref.output)
    assert torch.equal(res.x0, ref.output.clamp(-1, 1))
    assert res.network_evaluations == 0 and res.dip_iterations == 5 and res.seconds > 0


def test_tdpm_target_is_the_forward_sample_and_chain_length(setup, tiny_images):
    unet, s = setup
    x0 = tiny_images[:2]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    res = tdpm.tdpm_dip(unet, s, x0, t_trunc=10, dip_iterations=0, z=z, generator=torch.Generator().manual_seed(0),
                        preset="tiny", seed=1)
    # zero DIP iterations: x_hat is the untrained network; the chain ran 10 steps from it
    from tdpmlib import ddpm
    expected = ddpm.reverse_chain(unet, s, res.dip_output, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.x0, expected.clamp(-1, 1))
    assert res.network_evaluations == 10
    # the recorded PSNR against the target uses q_sample(x0, 10, z)
    target = schedules.q_sample(x0, 10, z, s)
    from tdpmlib import metrics
    h = res.dip.history
    torch.testing.assert_close(torch.tensor(h[h.iteration == 0].psnr_target.values, dtype=torch.float32),
                               metrics.psnr(res.dip_output, target), rtol=1e-4, atol=1e-4)


def test_denoise_targets(setup, tiny_images):
    unet, s = setup
    x0 = tiny_images[:2]
    y = tdpm.observe(x0, 600, s, generator=torch.Generator().manual_seed(0))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    kw = dict(dip_iterations=3, z=z, generator=torch.Generator().manual_seed(0), preset="tiny", seed=2)
    r0 = tdpm.denoise(unet, s, y, 600, t_trunc=0, **kw)
    ref = dip.fit_dip(y / schedules.alpha_bar(s, 600).sqrt().float(), iterations=3, z=z, preset="tiny", seed=2)
    torch.testing.assert_close(r0.x0, ref.output.clamp(-1, 1))
    with pytest.raises(ValueError, match="t_trunc=601"):
        tdpm.denoise(unet, s, y, 600, t_trunc=601, **kw)


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
