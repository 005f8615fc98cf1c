"""Tests for tdpmlib.studies.guided_stopping: the guided stopping rule and notebook 05's study of stopping rules."""

import numpy as np
import pytest
import torch

from tdpmlib.evaluation import metrics
from tdpmlib.methods import dip, schedules, stopping, tdpm
from tdpmlib.studies import dip_init, guided_stopping


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
    stages = guided_stopping.guided_stages(y, t_obs, sched, n_stages=4, generator=torch.Generator().manual_seed(1))
    levels = [s.level for s in stages]
    variances = [s.noise_var for s in stages]
    assert levels[-1] == t_obs and all(a > b for a, b in zip(levels, levels[1:]))
    assert all(a > b for a, b in zip(variances, variances[1:]))
    # the first stage's noise std is about twice the observation's (the default noise_factor)
    assert float(schedules.sigma_at(sched, levels[0]) / schedules.sigma_at(sched, t_obs)) == pytest.approx(2.0, rel=0.03)
    assert torch.equal(stages[-1].target, dip_init.observation_x0(y, t_obs, sched))
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
        guided_stopping.guided_stages(y, t_obs, sched, n_stages=2, generator=torch.Generator(), levels=[90, 100])
    with pytest.raises(ValueError, match="n_stages=30"):
        guided_stopping.stage_levels(sched, 5, 30)


@pytest.mark.parametrize("protocol, preset, lr, t_obs, n", [("plain", "tiny", 1e-2, 100, 20),
                                                           ("official", "skip-tiny", 5e-2, 200, 120)])
def test_single_stage_guided_dip_is_the_discrepancy_rule(sched, protocol, preset, lr, t_obs, n):
    """One stage is the discrepancy principle on the fit that dip.fit_dip runs under the same protocol (for the
    official one: the same jitter, drawn the same way, and the running average the rule watches)."""
    clean = smooth(3)
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    z = dip.draw_input(protocol, (3, 8, 8), torch.Generator().manual_seed(1))
    kw = dict(preset=preset, lr=lr, seed=4, protocol=protocol)
    g = guided_stopping.guided_dip(y, t_obs, sched, n_stages=1, iters_per_stage_max=n, z=z,
                            generator=torch.Generator().manual_seed(5), **kw)
    disc = stopping.Discrepancy(schedules.noise_var(sched, t_obs))
    fit = dip.fit_dip(dip_init.observation_x0(y, t_obs, sched), iterations=n, z=z, monitors=[disc],
                      generator=torch.Generator().manual_seed(5), keep=range(n + 1), **kw)
    assert disc.fired.any() and g.protocol == protocol
    assert torch.equal(g.stop_iteration, disc.stop_iteration)
    assert torch.equal(g.fired[:, 0], disc.fired)
    torch.testing.assert_close(g.output, disc.output)
    for i in range(3):  # the output at the stop is the protocol's reported output (the average, officially)
        torch.testing.assert_close(g.output[i], fit.outputs[int(g.stop_iteration[i])][i])
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
    a = guided_stopping.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), reference=clean, **kw)
    b = guided_stopping.guided_dip(y, t_obs, sched, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.stop_iteration, b.stop_iteration) and torch.equal(a.output, b.output)
    assert "psnr_ref" in a.history and "psnr_ref" not in b.history
    S = 3
    assert a.stage_ends.shape == (2, S) and a.stage_outputs.shape == (2, S, 3, 8, 8)
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
            # the output kept where stage j ended is the one recorded at that iteration
            p = metrics.psnr(a.stage_outputs[i, j:j + 1], clean[i:i + 1]).item()
            assert p == pytest.approx(hi.psnr_ref[ends[j]], rel=1e-5)
        # the stop's PSNR is the one recorded at that iteration
        assert metrics.psnr(a.output[i:i + 1], clean[i:i + 1]).item() == pytest.approx(hi.psnr_ref[ends[-1]], rel=1e-5)
        torch.testing.assert_close(a.stage_outputs[i, -1], a.output[i])
    assert a.fired.all() if cap == 12 else not a.fired.all()  # both branches of the rule are exercised
    # best_iteration is the argmax of the recorded PSNR
    for i in range(2):
        hi = h[h.image == i]
        assert int(a.best_iteration[i]) == int(hi.iteration.values[np.argmax(hi.psnr_ref.values)])


# validation images first (2), then test images (3); the official protocol on the tiny skip network at 8 px
STUDY = dict(n_val=2, budgets=[3, 8, 12], n_stages=2, iters_per_stage_max=6, seed=0, device="cpu",
             protocol="official", preset="skip-tiny", eswmv_preset="skip-tiny", window=3)
N_VAL, N_TEST = 2, 3


def study_inputs(sched, t_obs=60):
    clean = smooth(N_VAL + N_TEST)
    y = tdpm.observe(clean, t_obs, sched, generator=torch.Generator().manual_seed(0))
    z = dip.draw_input("official", (N_VAL + N_TEST, 8, 8), torch.Generator().manual_seed(3))
    return clean, y, z, t_obs


def test_stopping_study_rules_fixed_budget_on_validation_and_oracles(sched):
    clean, y, z, t_obs = study_inputs(sched)
    res = guided_stopping.stopping_study(clean, y, t_obs, sched, z=z, generator=torch.Generator().manual_seed(1), patience=100,
                                  eswmv_max_iterations=20, **STUDY)
    rows = res.rows
    assert list(dict.fromkeys(rows.rule_key)) == list(guided_stopping.RULE_LABELS)
    for key, r in rows.groupby("rule_key"):
        assert sorted(r.image) == list(range(N_TEST)) and (r.rule == guided_stopping.RULE_LABELS[key]).all()
    # the fit is dip.fit_dip's official fit of all five images from z (its jitter seed drawn from the generator)
    target = dip_init.observation_x0(y, t_obs, sched)
    ref = dip.fit_dip(target, iterations=12, z=z, generator=torch.Generator().manual_seed(1), protocol="official",
                      preset="skip-tiny", seed=0, reference=clean, keep=[3, 8, 12])
    val_means = {k: metrics.psnr(ref.outputs[k][:N_VAL], clean[:N_VAL]).mean().item() for k in (3, 8, 12)}
    sel = res.selection.set_index("budget")
    for k, v in val_means.items():
        assert sel.val_psnr[k] == pytest.approx(v, rel=1e-5)
    assert res.budget == max(val_means, key=val_means.get) and sel.chosen.sum() == 1 and sel.chosen[res.budget]
    by = rows.pivot(index="image", columns="rule_key", values="psnr")
    np.testing.assert_allclose(by["fixed"].values, metrics.psnr(ref.outputs[res.budget][N_VAL:], clean[N_VAL:]).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(by["oracle"].values, metrics.psnr(ref.best_output[N_VAL:], clean[N_VAL:]).numpy(), rtol=1e-5)
    for key in ("fixed", "discrepancy"):  # points on the fit's path: bounded by its best iteration
        assert (by[key] <= by["oracle"] + 1e-5).all()
    assert (by["eswmv"] <= by["eswmv_oracle"] + 1e-5).all()
    disc = stopping.Discrepancy(schedules.noise_var(sched, t_obs))  # the monitor on that fit, run afresh
    dip.fit_dip(target, iterations=12, z=z, generator=torch.Generator().manual_seed(1), protocol="official",
                preset="skip-tiny", seed=0, monitors=[disc])
    assert torch.equal(disc.stop_iteration, res.discrepancy.stop_iteration)
    # iterations, stops and the trajectory each rule watched
    r = rows.set_index(["rule_key", "image"])
    assert (r.loc["fixed"].stop == res.budget).all() and (r.loc["fixed"].iterations == res.budget).all()
    assert (r.loc["oracle"].iterations == 12).all() and (r.loc["oracle"].oracle_gap == 0).all()
    assert (rows.oracle_gap == (rows.stop - rows.oracle).abs()).all() and (rows.iterations >= rows.stop).all()
    assert set(rows.fit) == {"official DIP (lr 0.01)", "guided", "ES-WMV's own: eswmv DIP (lr 0.01)"}
    assert (r.loc["eswmv"].fit == "ES-WMV's own: eswmv DIP (lr 0.01)").all() and res.guided.protocol == "official"
    assert r.loc["guided"].stop.tolist() == res.guided.stop_iteration.tolist()
    assert r.loc["discrepancy"].stop.tolist() == res.discrepancy.stop_iteration[N_VAL:].tolist()
    assert rows[rows.rule_key.isin(["fixed", "oracle", "eswmv_oracle"])].rule_fired.isna().all()
    assert "seconds" not in rows.columns  # a rule's cost is its iterations; seconds come from chapter 08's benchmark
    # patience 100 in a 20-iteration budget: ES-WMV cannot fire, its fit runs to the cap, and the rows say so
    assert res.eswmv.iterations == 20 and not r.loc["eswmv"].rule_fired.any() and (r.loc["eswmv"].iterations == 20).all()
    assert set(res.outputs) == set(guided_stopping.RULE_LABELS) and res.outputs["fixed"].shape == (N_TEST, 3, 8, 8)
    h = res.history
    assert set(h.split) == {"val", "test"} and sorted(h[h.split == "test"].image.unique()) == list(range(N_TEST))


def test_stopping_study_never_uses_the_clean_test_images(sched):
    """Replacing the clean *test* images changes the scores and the oracles, never a rule's stop: the fixed
    budget is chosen on the validation images, the other rules see only the observation."""
    clean, y, z, t_obs = study_inputs(sched)
    other = clean.clone()
    other[N_VAL:] = smooth(N_TEST, seed=9)
    kw = dict(z=z, patience=5, eswmv_max_iterations=60, **STUDY)
    a = guided_stopping.stopping_study(clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1), **kw)
    b = guided_stopping.stopping_study(other, y, t_obs, sched, generator=torch.Generator().manual_seed(1), **kw)
    rules = ["guided", "discrepancy", "eswmv", "fixed"]
    sa, sb = (r.rows[r.rows.rule_key.isin(rules)].sort_values(["rule_key", "image"]) for r in (a, b))
    assert sa.stop.tolist() == sb.stop.tolist() and a.budget == b.budget
    assert not np.allclose(sa.psnr.values, sb.psnr.values)
    np.testing.assert_allclose(a.selection.val_psnr.values, b.selection.val_psnr.values)
    assert not np.allclose(a.selection.test_psnr.values, b.selection.test_psnr.values)
    # the validation images do decide it: scored against "clean" validation images that are (nearly) the fit's own
    # outputs at 3 iterations, the earliest budget wins there, while the test images prefer a later one, and the
    # validation choice is the one applied to the test images
    fit = dip.fit_dip(dip_init.observation_x0(y, t_obs, sched), iterations=3, z=z, protocol="official",
                      preset="skip-tiny", generator=torch.Generator().manual_seed(1), seed=0)
    rigged = clean.clone()
    rigged[:N_VAL] = fit.output[:N_VAL] + 0.01
    c = guided_stopping.stopping_study(rigged, y, t_obs, sched, generator=torch.Generator().manual_seed(1), **kw)
    sel = c.selection.set_index("budget")
    assert sel.val_psnr.idxmax() == 3 != sel.test_psnr.idxmax() and c.budget == 3
    assert (c.rows[c.rows.rule_key == "fixed"].stop == 3).all()
    with pytest.raises(ValueError, match="n_val=5"):
        guided_stopping.stopping_study(clean, y, t_obs, sched, generator=torch.Generator(), **dict(kw, n_val=5))
    with pytest.raises(ValueError, match="y has shape"):
        guided_stopping.stopping_study(clean, y[:4], t_obs, sched, generator=torch.Generator(), **kw)


def test_stopping_study_runs_eswmv_until_it_fires(sched):
    """With a budget past W + P beyond the variance minimum the rule fires for every image, P iterations after
    the minimum it returns; the rows report it, and the rules on the other fits are unchanged by ES-WMV's budget."""
    clean, y, z, t_obs = study_inputs(sched)
    kw = dict(z=z, patience=5, **STUDY)
    res = guided_stopping.stopping_study(clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1),
                                  eswmv_max_iterations=300, **kw)
    eswmv = res.eswmv
    m = eswmv.monitor
    assert m.stopped.all() and eswmv.fired_fraction == 1.0
    assert torch.equal(m.stop_k, m.detected + 5)
    assert eswmv.iterations == int(m.stop_k.max()) < 300  # the fit ends once every image has stopped
    e = res.rows[res.rows.rule_key == "eswmv"].sort_values("image")
    assert e.rule_fired.tolist() == [True] * N_TEST and e.stop.tolist() == m.detected.tolist()
    assert e.iterations.tolist() == m.stop_k.tolist()  # charged up to where it fired, not to where it points
    short = guided_stopping.stopping_study(clean, y, t_obs, sched, generator=torch.Generator().manual_seed(1),
                                    eswmv_max_iterations=4, **kw)
    assert not short.rows[short.rows.rule_key == "eswmv"].rule_fired.any()
    cols = ["rule_key", "image", "stop", "iterations", "psnr", "rule_fired"]
    others = [r.rows[~r.rows.rule_key.str.startswith("eswmv")][cols].reset_index(drop=True) for r in (res, short)]
    assert len(others[0]) == 4 * N_TEST and others[0].equals(others[1])


def test_example2_settings_per_profile():
    from tdpmlib.workflow import config

    for profile, cap in (("paper", 5000), ("colab", 5000), ("cpu", 5000), ("smoke", 1500)):
        cfg = config.Config.from_params(profile=profile, notebook="05_example2_guided_early_stopping")
        s = guided_stopping.example2_settings(cfg)
        assert s["eswmv_max_iterations"] == cap and s["eswmv_lr"] == 0.01
        assert (s["window"], s["patience"]) == (100, 1000)
        assert s["eswmv_max_iterations"] >= s["window"] + s["patience"]  # long enough for the rule to fire
        assert s["budgets"] == list(cfg.budgets("dip_budgets_official")) and s["iterations"] == s["budgets"][-1]
        assert s["n_stages"] * s["iters_per_stage_max"] <= s["iterations"]
        assert (s["n_val"], s["n_test"], s["preset"]) == (cfg.n_val, cfg.n_test, cfg.dip_preset_official)
        assert s["sigmas"] == [25, 50]
    cfg = config.Config.from_params(profile="cpu", notebook="05", n_test=24, dip_budgets_official="50,70",
                                    extra_checks={"n_stages": lambda n, v: v, "eswmv_max_iterations": lambda n, v: v},
                                    n_stages=5, eswmv_max_iterations=4000)
    s = guided_stopping.example2_settings(cfg)
    assert (s["n_test"], s["budgets"], s["n_stages"], s["iters_per_stage_max"], s["eswmv_max_iterations"]) == \
        (24, [50, 70], 5, 14, 4000)


def test_stopping_curves_fit_a_book_page(tmp_path):
    """At most 2 panels a row, at most 8.3 in wide as saved (so the page does not scale it down), fonts of at
    least 9 pt, titles naming σ and t (not "t_obs"), one legend outside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from PIL import Image

    from tdpmlib.workflow import results

    its = np.arange(0, 500, 5)
    levels = {25: 57, 50: 115, 75: 170}
    curve = lambda t, shift: pd.DataFrame(dict(t_obs=t, image=0, iteration=its, psnr_ref=20 + np.log1p(its) - shift,  # noqa: E731
                                              split="test"))
    hist = pd.concat([curve(t, 0) for t in levels.values()])
    ghist = pd.concat([curve(t, 1) for t in levels.values()])
    ehist = pd.concat([curve(t, 2) for t in levels.values()])
    rows = pd.DataFrame([dict(t_obs=t, sigma=s, sigma255=s + 0.3, image=0, rule=lab, stop=200, psnr=24.0)
                         for s, t in levels.items() for lab in guided_stopping.RULE_LABELS.values()])
    fig = guided_stopping.plot_stopping_curves(hist, ghist, rows, image=0, eswmv_hist=ehist)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(axes) == 3 and fig.axes[0].get_gridspec().ncols == 2
    titles = [ax.get_title() for ax in axes]
    assert all("σ = " in t and "t = " in t and "t_obs" not in t for t in titles), titles
    assert titles[0].startswith("σ = 25 (t = 57)")
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    texts = [t for ax in axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels())]
    texts += list(fig.legends[0].get_texts())
    assert min(t.get_fontsize() for t in texts) >= 9
    path = results.save_figure(fig, tmp_path / "curves.png", dpi=100)
    plt.close(fig)
    assert Image.open(path).size[0] <= 8.3 * 100


def test_stopping_curves_cut_the_axis_and_point_to_late_stops():
    """With ``x_max`` the x axis ends there; a stop beyond it sits at the right edge with its iteration written
    beside it, and a stop inside it is drawn where it is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    its = np.arange(0, 5000, 5)
    hist = pd.DataFrame(dict(t_obs=57, image=0, iteration=its, psnr_ref=20 + np.log1p(its), split="test"))
    rows = pd.DataFrame([dict(t_obs=57, sigma=25, image=0, rule="early", stop=300, psnr=24.0),
                         dict(t_obs=57, sigma=25, image=0, rule="late", stop=4969, psnr=22.0)])
    fig = guided_stopping.plot_stopping_curves(hist, hist, rows, image=0, x_max=1200)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 1200)
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert offsets == [(300, 24.0), (1200, 22.0)]
    assert [t.get_text() for t in ax.texts] == ["4969 →"]
    plt.close(fig)
    fig = guided_stopping.plot_stopping_curves(hist, hist, rows, image=0, x_max=None)
    assert fig.axes[0].get_xlim()[1] >= 4969 and not fig.axes[0].texts
    plt.close(fig)
    with pytest.raises(ValueError, match="x_max"):
        guided_stopping.plot_stopping_curves(hist, hist, rows, image=0, x_max=0)
