"""The book's peer test: ``tdpm.tdpm_dip`` (the report's protocol) against the report author's own code.

``author_tdpm_dip`` below restates, in this file's words, what ``models/TDPM-DIP_model.py`` of
github.com/felixchao/Generative-Models-for-Visual-Signals does: the target is ``add_noise(x_0, z, T_trunc)``;
a fresh DIP (a diffusers UNet called with timestep 0 on the input z) is fitted to it by Adam at lr 1e-4 on
``nn.MSELoss`` for a fixed number of iterations; its output, with no noise added, is run through
``for t in range(0, T_trunc + 1)[::-1]: x = scheduler.step(unet(x, t).sample, t, x).prev_sample``.
The only liberties: the DIP's initial weights are drawn as ``tdpmlib.methods.dip`` draws network 0's (the recipe is
what is compared, not torch's initialiser), and ``scheduler.step`` gets an explicit generator (the author
relies on the global RNG) so that both sides draw the same noise.

The comparison is bitwise on the CPU with the DIP fitted as one ordinary module (``batched=False``); the
default batched fit (vmap over stacked networks, the classic attention processor) agrees to 1e-5.
"""

import pytest
import torch
from torch import nn

from tdpmlib.methods import dip, models, schedules, tdpm

RES = 8


def author_tdpm_dip(ddpm_unet, scheduler, x0, noise, *, truncated_step, dip_iterations, dip_seed, generator):
    torch.manual_seed(dip_seed * 100_003 + 0)  # tdpmlib.methods.dip's seed of network 0 (see the module doc)
    net = models.make_unet("tiny", resolution=RES)
    target = scheduler.add_noise(x0, noise, torch.LongTensor([truncated_step]))
    criterion, optimizer = nn.MSELoss(), torch.optim.Adam(net.parameters(), lr=1e-4)
    for _ in range(dip_iterations):
        out = net(noise, 0).sample
        loss = criterion(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        sample = net(noise, 0).sample
    for t in list(range(0, truncated_step + 1))[::-1]:
        with torch.no_grad():
            residual = ddpm_unet(sample, t).sample
        sample = scheduler.step(residual, t, sample, generator=generator).prev_sample
    return sample


@pytest.fixture
def ddpm_net():
    torch.manual_seed(0)
    return models.make_unet("tiny", resolution=RES).eval()


def _inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 3, RES, RES, generator=g) * 2 - 1
    return x0, torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t_trunc", [0, 5, 10])
def test_report_protocol_is_the_authors_code_bitwise(ddpm_net, schedule, t_trunc):
    scheduler = schedules.make_scheduler(schedule)
    x0, z = _inputs()
    ref = author_tdpm_dip(ddpm_net, scheduler, x0, z, truncated_step=t_trunc, dip_iterations=4, dip_seed=7,
                          generator=torch.Generator().manual_seed(11))
    res = tdpm.tdpm_dip(ddpm_net, scheduler, x0, t_trunc=t_trunc, dip_iterations=4, z=z, seed=7, batched=False,
                        preset="tiny", generator=torch.Generator().manual_seed(11))
    assert res.network_evaluations == t_trunc + 1
    assert torch.equal(res.x0, ref.clamp(-1, 1))


def test_batched_fit_agrees_with_the_authors_code(ddpm_net):
    scheduler = schedules.make_scheduler("linear")
    x0, z = _inputs(4)
    ref = author_tdpm_dip(ddpm_net, scheduler, x0, z, truncated_step=10, dip_iterations=4, dip_seed=2,
                          generator=torch.Generator().manual_seed(5))
    res = tdpm.tdpm_dip(ddpm_net, scheduler, x0, t_trunc=10, dip_iterations=4, z=z, seed=2, preset="tiny",
                        generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(res.x0, ref.clamp(-1, 1), rtol=0, atol=1e-5)


def test_the_comparison_sees_both_the_mapping_and_the_learning_rate(ddpm_net):
    """The two drifts the test guards against change the result far beyond rounding: the old level
    convention (T_trunc evaluations from level T_trunc) and the old DIP rate (1e-3)."""
    scheduler = schedules.make_scheduler("linear")
    x0, z = _inputs()
    kw = dict(dip_iterations=4, z=z, seed=7, batched=False, preset="tiny")
    ref = tdpm.tdpm_dip(ddpm_net, scheduler, x0, t_trunc=10, generator=torch.Generator().manual_seed(11), **kw).x0
    fast_lr = tdpm.tdpm_dip(ddpm_net, scheduler, x0, t_trunc=10, lr=1e-3, generator=torch.Generator().manual_seed(11),
                            **kw).x0
    assert (fast_lr - ref).abs().max() > 1e-3
    off_by_one = tdpm.tdpm_dip(ddpm_net, scheduler, x0, t_trunc=9, generator=torch.Generator().manual_seed(11), **kw).x0
    assert (off_by_one - ref).abs().max() > 1e-3
    assert dip.PROTOCOLS["plain"].lr == 1e-4
