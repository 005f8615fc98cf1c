"""Tests for tdpmlib.example2: the guided stopping rule and notebook 05's study of stopping rules."""

import numpy as np
import pytest
import torch

from tdpmlib import dip, example1, example2, metrics, schedules, stopping, tdpm


@pytest.fixture(scope="module")
def sched():
    return schedules.make_scheduler("linear")


def smooth(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 1.6 - 0.8, size=size,
                                           mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------------
# Example 2
# ---------------------------------------------------------------------------------------------------------


def test_guided_stages_have_the_stated_noise_variances(sched):
    x0 = smooth(1, size=128)
    t_obs = 100
    y = tdpm.observe(x0, t_obs, sched, generator=torch.Generator().manual_seed(0))
    stages = example2.guided_stages(y, t_obs, sched, n_stages=4, generator=torch.Generator().manual_seed(1))
    levels = [s.level for s in stages]
    variances = [s.noise_var for s in stages]
    assert levels[-1] == t_obs and all(a > b for a, b in zip(levels, levels[1:]))
    assert all(a > b for a, b in zip(variances, variances[1:]))
    # the first stage's noise std is about twice the observation's (the default noise_factor)
    assert float(schedules.sigma_at(sched, levels[0]) / schedules.sigma_at(sched, t_obs)) == pytest.approx(2.0, rel=0.03)
    assert torch.equal(stages[-1].target, example1.observation_x0(y, t_obs, sched))
    for level, target, v in stages:  # unpacks as (level, target, noise_var)
        assert v == pytest.approx(schedules.noise_var(sched, level))
        assert abs((target - x0).var().item() / v - 1) < 0.03
        # scaled to its level the target is a sample of q(x_s | x_0)
        ab = float(schedules.alpha_bar(sched, level))
        assert abs(((ab ** 0.5) * (target - x0)).var().item() / (1 - ab) - 1) < 0.03
    # the increments between consecutive stages are independent fresh noise of the variance difference
    inc = stages[0].target - stages[1].target
    assert abs(inc.var().item() / (variances[0] - variances[1]) - 1) < 0.03
    assert abs(torch.corrcoef(torch.stack([inc.flatten(), (stages[1].target - x0).flatten()]))[0, 1].item()) < 0.02
    with pytest.raises(ValueError, match="levels="):
        example2.guided_stages(y, t_obs, sched, n_stages=2, generator=torch.Generator(), levels=[90, 100])
    with pytest.raises(ValueError, match="n_stages=30"):
        example2.stage_levels(sched, 5, 30)


def test_single_stage_guided_dip_is_the_discrepancy_rule(sched):
    clean = smooth(3)
    t_obs = 100
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    z = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    kw = dict(preset="tiny", lr=1e-2, seed=4)
    g = example2.guided_dip(y, t_obs, sched, n_stages=1, iters_per_stage_max=20, generator=torch.Generator(), z=z, **kw)
    disc = stopping.Discrepancy(schedules.noise_var(sched, t_obs))
    dip.fit_dip(example1.observation_x0(y, t_obs, sched), iterations=20, z=z, monitors=[disc], **kw)
    assert disc.fired.any()
    assert torch.equal(g.stop_iteration, disc.stop_iteration)
    assert torch.equal(g.fired[:, 0], disc.fired)
    torch.testing.assert_close(g.output, disc.output)
    # where it fired, the residual variance at the stop is <= v_obs and above it just before
    h = g.history
    for i in torch.nonzero(disc.fired).flatten().tolist():
        k = int(g.stop_iteration[i])
        hi = h[h.image == i].set_index("iteration")
        assert hi.residual_var[k] <= schedules.noise_var(sched, t_obs)
        assert (hi.residual_var.loc[: k - 1] > schedules.noise_var(sched, t_obs)).all()


@pytest.mark.parametrize("cap", [12, 2])
def test_guided_dip_stages_and_the_rule_never_sees_the_reference(sched, cap):
    clean = smooth(2)
    t_obs = 60
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    kw = dict(n_stages=3, iters_per_stage_max=cap, preset="tiny", lr=1e-2, seed=1)
    a = example2.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), reference=clean, **kw)
    b = example2.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), **kw)
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


STUDY = dict(fixed=[3, 8], iterations=10, n_stages=2, iters_per_stage_max=5, preset="tiny", lr=1e-2, seed=0,
             device="cpu", eswmv_preset="skip-tiny")


def test_stopping_study_oracle_bounds_the_plain_rules(sched):
    clean = smooth(2)
    t_obs = 60
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    rows, hist, guided, eswmv = example2.stopping_study(
        clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1), window=3, patience=100,
        eswmv_max_iterations=20, **STUDY)
    assert set(rows.rule) == {"fixed 3", "fixed 8", "ES-WMV", "discrepancy (single stage)", "guided (2 stages)",
                              "oracle (best PSNR)", "oracle of ES-WMV's fit"}
    by = rows.pivot(index="image", columns="rule", values="psnr")
    for rule in ("fixed 3", "fixed 8", "discrepancy (single stage)"):  # points on the plain fit's path
        assert (by[rule] <= by["oracle (best PSNR)"] + 1e-5).all()
    fixed8 = rows[rows.rule == "fixed 8"].sort_values("image")
    np.testing.assert_allclose(fixed8.psnr.values, hist[hist.iteration == 8].sort_values("image").psnr_ref.values, rtol=1e-5)
    assert (rows.oracle_gap == (rows.stop - rows.oracle).abs()).all()
    assert (rows[rows.rule == "oracle (best PSNR)"].oracle_gap == 0).all()
    # ES-WMV watches its own fit: its oracle is that fit's best iteration, which bounds it
    e = rows[rows.rule == "ES-WMV"].sort_values("image")
    assert (e.fit == "ES-WMV's own (lr 0.01)").all() and (rows[rows.rule == "fixed 3"].fit == "plain (lr 0.01)").all()
    assert e.oracle.tolist() == eswmv.best_iteration.tolist()
    own = rows[rows.rule == "oracle of ES-WMV's fit"].sort_values("image")
    assert (e.psnr.values <= own.psnr.values + 1e-5).all() and (own.oracle_gap == 0).all()
    np.testing.assert_allclose(own.psnr.values, eswmv.best_psnr.numpy(), rtol=1e-5)
    # patience 100 in a 20-iteration budget: the rule cannot fire, and the row says so
    assert eswmv.iterations == 20 and not e.rule_fired.any() and eswmv.fired_fraction == 0
    with pytest.raises(ValueError, match="iterations=5"):
        example2.stopping_study(clean, y, t_obs, sched, generator=torch.Generator(), **dict(STUDY, iterations=5))


def test_stopping_study_runs_eswmv_until_it_fires(sched):
    """With a budget past W + P beyond the variance minimum the rule fires for every image, P iterations after
    the minimum it returns; the rows report it, and the rules on the other fits are unchanged by ES-WMV's budget."""
    clean = smooth(3)
    t_obs = 60
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    kw = dict(window=3, patience=5, **STUDY)
    rows, _, _, eswmv = example2.stopping_study(clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1),
                                                eswmv_max_iterations=300, **kw)
    m = eswmv.monitor
    assert m.stopped.all() and eswmv.fired_fraction == 1.0
    assert torch.equal(m.stop_k, m.detected + 5)
    assert eswmv.iterations == int(m.stop_k.max()) < 300  # the fit ends once every image has stopped
    e = rows[rows.rule == "ES-WMV"].sort_values("image")
    assert e.rule_fired.tolist() == [True] * 3 and e.stop.tolist() == m.detected.tolist()
    short, _, _, _ = example2.stopping_study(clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1),
                                             eswmv_max_iterations=4, **kw)
    assert not short[short.rule == "ES-WMV"].rule_fired.any()
    plain = [r[~r.fit.str.startswith("ES-WMV")].reset_index(drop=True) for r in (rows, short)]
    assert len(plain[0]) == 5 * 3 and plain[0].equals(plain[1])


def test_example2_settings_cap_the_eswmv_fit_per_profile():
    from tdpmlib import config

    for profile, cap in (("paper", 5000), ("cpu", 3000), ("smoke", None)):
        cfg = config.Config.from_params(profile=profile, notebook="05_example2_guided_early_stopping")
        s = example2.example2_settings(cfg)
        assert s["eswmv_max_iterations"] == (cap or 2 * s["iterations"]) and s["eswmv_lr"] == 0.01
        assert (s["window"], s["patience"]) == (100, 1000)
