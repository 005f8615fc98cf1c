"""Tests for tdpmlib.studies.report_protocol and tdpmlib.studies.denoising_methods: the denoising protocol and its method tables (tiny models)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from tdpmlib.evaluation import metrics
from tdpmlib.methods import dip, models, schedules, tdpm
from tdpmlib.studies import denoising as S, denoising_methods as D, report_protocol as E


def smooth(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 2 - 1, size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    return {s: (models.make_unet("tiny", resolution=8).eval(), schedules.make_scheduler(s)) for s in ("linear", "cosine")}


DEN_KW = dict(device="cpu", dip_preset="tiny", dip_lr=1e-2, dip_iterations=2, dip_iterations_long=4, n_chains=2,
              t_trunc=10, seed=0)


@pytest.fixture(scope="module")
def denoised(unets):
    clean = smooth(2, 8, 1)
    settings = [dict(name="A", schedule="linear", t=12, sigma255=None),
                dict(name="B", schedule="cosine", t=5, sigma255=None)]  # t < t_trunc: TDPM-DIP's T_trunc is capped
    df, outs = E.run_denoising(unets, clean=clean, settings=settings, return_outputs=True, **DEN_KW)
    return clean, settings, df, outs


# --------------------------------------------------------------------------- #
# parameters and settings
# --------------------------------------------------------------------------- #
def test_check_sigmas():
    assert E.check_sigmas("sigmas", "15, 25,50") == (15, 25, 50)
    assert E.check_sigmas("sigmas", "") == ()
    for bad in ("a", "0", "15,15", "300", "15;25", 15, None):
        with pytest.raises(ValueError, match="sigmas="):
            E.check_sigmas("sigmas", bad)


def test_denoising_settings_map_sigma_to_its_level(unets):
    scheds = {k: v[1] for k, v in unets.items()}
    st = E.denoising_settings(scheds, t=600, sigmas=(15, 50))
    assert [s["schedule"] for s in st] == ["linear", "cosine", "linear", "linear"]
    assert [s["t"] for s in st[:2]] == [600, 600]
    for s, sig in zip(st[2:], (15, 50)):
        assert s["t"] == schedules.t_for_sigma(scheds["linear"], sig) and s["sigma255"] == sig
        assert abs(float(schedules.sigma_at(scheds["linear"], s["t"])) - sig) < 1.0  # nearest level
    assert len({s["name"] for s in st}) == 4


# --------------------------------------------------------------------------- #
# denoising
# --------------------------------------------------------------------------- #
def test_denoising_table_has_one_row_per_setting_method_image(denoised):
    clean, settings, df, _ = denoised
    assert len(df) == len(settings) * len(D.DENOISING_METHODS) * len(clean)
    assert list(df.columns) == ["setting", "schedule", "t", "sigma255", "sigma255_requested", "method", "method_key",
                                "protocol", "measured_against", "image", "psnr", "ssim", "lpips", "nfe",
                                "dip_iterations"]
    assert not df.duplicated(["setting", "method", "image"]).any()
    a = df[df.setting == "A"].set_index("method_key")
    assert set(df[df.protocol == "report"].method_key) == set(D.REPORT_PROTOCOL)
    assert set(df[df.measured_against == "dip_target"].method_key) == {"report_dip_clean", "report_dip_y"}
    nfe = a.groupby(level=0).nfe.first()
    assert nfe["ddpm"] == 12 and nfe["tweedie"] == 1 and nfe["ddim"] == 12 and nfe["mean_k"] == 24
    assert nfe["tdpm_dip"] == 11 and nfe["dip_long"] == 0  # the report's T_trunc = 10: 11 steps (tdpm.report_level)
    its = a.groupby(level=0).dip_iterations.first()
    assert its["dip_short"] == 2 and its["dip_long"] == 4 and its["dip_oracle"] == 4 and its["tdpm_dip"] == 2
    b = df[(df.setting == "B") & (df.method_key == "tdpm_dip")]
    assert (b.nfe == 5).all()  # T_trunc capped at t = 5
    # the equivalent sigma is the schedule's, the label carries the iteration counts
    assert a.sigma255.iloc[0] == pytest.approx(float(schedules.sigma_at(schedules.make_scheduler("linear"), 12)))
    assert "DIP on y/√ᾱ (2 it.)" in set(df.method) and "Mean of K = 2 ancestral samples" in set(df.method)


def test_denoising_scores_and_outputs_follow_the_definitions(unets, denoised):
    clean, _, df, outs = denoised
    o = outs["A"]
    off = E._setting_offset("A")
    y = tdpm.observe(clean, 12, unets["linear"][1], generator=D.generator(0, off))
    torch.testing.assert_close(o["y"], y)
    torch.testing.assert_close(o["y_scaled"], y / schedules.alpha_bar(unets["linear"][1], 12).sqrt().float())
    a = df[df.setting == "A"]
    for key in D.DENOISING_METHODS:
        target = o["y_scaled"] if key == "report_dip_y" else clean
        got = torch.tensor(a[a.method_key == key].sort_values("image").psnr.values, dtype=torch.float32)
        torch.testing.assert_close(got, metrics.psnr(o[key], target), rtol=1e-5, atol=1e-4)
    # the short DIP row (kept from the long fit) equals an independent short fit with the same z and seed
    z = torch.randn(clean.shape, generator=D.generator(0, off + 3))
    short = dip.fit_dip(o["y_scaled"], iterations=2, z=z, seed=0, preset="tiny", lr=1e-2)
    torch.testing.assert_close(o["dip_short"], short.output)
    # the oracle is the best iteration against the clean image
    per = a.pivot(index="image", columns="method_key", values="psnr")
    assert (per.dip_oracle >= per.dip_short - 1e-4).all() and (per.dip_oracle >= per.dip_long - 1e-4).all()
    # report rows that do not depend on y are identical in every setting
    for key in ("report_dip_clean",):
        torch.testing.assert_close(outs["A"][key], outs["B"][key])


def test_tdpm_dip_with_zero_truncation_is_one_step_from_level_one(unets, monkeypatch):
    """The report's T_trunc = 0 is one reverse step (diffusers timestep 0) in the author's code, so the corrected
    TDPM-DIP row at t_trunc=0 is tdpm.denoise from level 1, not the DIP alone."""
    levels = []
    real = E.tdpm.denoise

    def spy(*a, t_trunc, **kw):
        levels.append(t_trunc)
        return real(*a, t_trunc=t_trunc, **kw)

    monkeypatch.setattr(E.tdpm, "denoise", spy)
    clean = smooth(2, 8, 2)
    st = [dict(name="C", schedule="linear", t=15, sigma255=None)]
    df = E.run_denoising(unets, clean=clean, settings=st, methods=["dip_short", "tdpm_dip"], **dict(DEN_KW, t_trunc=0))
    assert levels == [1] and (df[df.method_key == "tdpm_dip"].nfe == 1).all()


def test_observations_do_not_depend_on_other_settings(unets):
    clean = smooth(1, 8, 3)
    a = dict(name="A", schedule="linear", t=20, sigma255=None)
    b = dict(name="B", schedule="linear", t=20, sigma255=None)
    kw = dict(DEN_KW, methods=["tweedie"], return_outputs=True)
    _, one = E.run_denoising(unets, clean=clean, settings=[a], **kw)
    _, two = E.run_denoising(unets, clean=clean, settings=[b, a], **kw)
    assert torch.equal(one["A"]["y"], two["A"]["y"]) and not torch.equal(two["A"]["y"], two["B"]["y"])


def test_non_local_means_removes_noise():
    clean = smooth(2, 16, 4)
    sigma01 = 0.1  # on [0, 1]: 0.2 on [-1, 1]
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    out = D.nlm_images(noisy, sigma01)
    assert out.shape == clean.shape
    assert (metrics.psnr(out, clean) > metrics.psnr(noisy, clean) + 3).all()


def test_denoising_validation(unets):
    clean = smooth(1, 8, 5)
    st = [dict(name="A", schedule="linear", t=20)]
    with pytest.raises(ValueError, match="dip_iterations=7"):
        E.run_denoising(unets, clean=clean, settings=st, **dict(DEN_KW, dip_iterations=7))
    with pytest.raises(ValueError, match="used twice"):
        E.run_denoising(unets, clean=clean, settings=st + st, **DEN_KW)
    with pytest.raises(ValueError, match="no model"):
        E.run_denoising(unets, clean=clean, settings=[dict(name="X", schedule="sqrt", t=5)], **DEN_KW)
    with pytest.raises(ValueError, match="methods"):
        E.run_denoising(unets, clean=clean, settings=st, methods=["bm3d"], **DEN_KW)
    with pytest.raises(ValueError, match="t of setting"):
        E.run_denoising(unets, clean=clean, settings=[dict(name="Z", schedule="linear", t=0)], **DEN_KW)


def test_summarise_mean_std_and_format(denoised):
    _, _, df, _ = denoised
    s = E.summarise(df)
    assert len(s) == 2 * len(D.DENOISING_METHODS)
    assert list(s.setting.unique()) == ["A", "B"]  # first-appearance order
    row = s[(s.setting == "A") & (s.method_key == "ddpm")].iloc[0]
    vals = df[(df.setting == "A") & (df.method_key == "ddpm")].psnr
    assert row.psnr_mean == pytest.approx(vals.mean()) and row.psnr_std == pytest.approx(vals.std(ddof=1))
    assert row.n == 2 and row.nfe == 12 and row.protocol == "corrected" and row.t == 12
    assert row.psnr_pm == f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}" and row.pm.startswith(row.psnr_pm + " dB / ")
    assert math.isnan(row.ssim_mean)  # 8 px images: SSIM's window does not fit
    by_method = E.summarise(df, by=["method"])
    assert len(by_method) == len(D.DENOISING_METHODS) and (by_method.n == 4).all()
    with pytest.raises(ValueError, match="not in the table"):
        E.summarise(df, by=["nope"])


# --------------------------------------------------------------------------- #
# the method tables
# --------------------------------------------------------------------------- #
class NoCleanContext(D.Context):
    """A context whose ``clean`` attribute raises: a method that reached for the clean image would fail."""

    @property
    def clean(self):
        raise AssertionError("a corrected-protocol method asked for the clean image")


def test_corrected_methods_are_never_handed_the_clean_image(unets, denoised):
    clean, _, _, outs = denoised
    for key, m in D.METHODS.items():
        assert list(inspect.signature(m.fn).parameters) == ["ctx", "y"], key
    for key, m in D.WITH_CLEAN.items():
        assert list(inspect.signature(m.fn).parameters) == ["ctx", "y", "clean"], key
    assert not set(D.METHODS) & set(D.WITH_CLEAN)
    assert set(D.DENOISING_METHODS) == {k for k, m in (D.METHODS | D.WITH_CLEAN).items() if m.in_report}
    assert {"dip_plain", "dip_official", "dip_official_oracle"} <= set(D.METHODS | D.WITH_CLEAN) - set(D.DENOISING_METHODS)
    assert all(m.protocol == "corrected" and m.target == "clean" for m in D.METHODS.values())
    # Setting A's context rebuilt by hand, minus anything clean: every corrected method, given only (ctx, y),
    # reproduces run_denoising's output exactly, so the runner handed it nothing more.
    unet, sched = unets["linear"]
    off = E._setting_offset("A")
    gens = {p: D.generator(0, off + i) for i, p in enumerate(E.SETTING_PURPOSES)}
    y = tdpm.observe(clean, 12, sched, generator=gens["observation"])
    z = torch.randn(clean.shape, generator=gens["z"])
    ctx = NoCleanContext(unet=unet, scheduler=sched, schedule="linear", schedule_index=1, t=12, t_trunc=10,
                         n_chains=2, dip_iterations=2, dip_iterations_long=4,
                         dip_kw=dict(preset="tiny", lr=1e-2, device="cpu"), device="cpu", seed=0, dip_seed=0, chunk=0,
                         z=z, generators={p: gens[p] for p in ("ddpm", "mean_k", "tdpm")})
    assert not any(torch.is_tensor(v) and v.shape == clean.shape and torch.equal(v, clean) for v in vars(ctx).values())
    for key, m in D.METHODS.items():
        if m.in_report:
            est = m.fn(ctx, y)
            assert torch.equal(est.x0, outs["A"][key]), key
    # the sigma study's grid entry reads the same shared fit: its candidates are the report's two budgets
    grid = D.METHODS["dip_plain"].fn(ctx, y)
    assert list(grid) == ["k=2", "k=4"] and [e.dip_iterations for e in grid.values()] == [2, 4]
    assert torch.equal(grid["k=2"].x0, outs["A"]["dip_short"]) and torch.equal(grid["k=4"].x0, outs["A"]["dip_long"])
    with pytest.raises(AssertionError, match="clean image"):
        ctx.clean


def test_a_method_is_one_function_and_one_table_entry(unets, monkeypatch):
    def observation(ctx, y):
        """y / sqrt(abar_t) as it is (the noisy image itself): no evaluations."""
        return D.Estimate(ctx.y_scaled(y).clamp(-1, 1), nfe=0, dip_iterations=0)

    monkeypatch.setitem(D.METHODS, "observation", D.Method("The observation y/√ᾱ", observation))
    clean = smooth(2, 8, 7)
    st = [dict(name="A", schedule="linear", t=30, sigma255=None)]
    df, outs = E.run_denoising(unets, clean=clean, settings=st, methods=["observation", "tweedie"],
                               return_outputs=True, **DEN_KW)
    row = df[df.method_key == "observation"]
    assert list(row.method) == ["The observation y/√ᾱ"] * 2 and (row.protocol == "corrected").all()
    torch.testing.assert_close(outs["A"]["observation"], outs["A"]["y_scaled"].clamp(-1, 1))
    torch.testing.assert_close(torch.tensor(row.psnr.values, dtype=torch.float32),
                               metrics.psnr(outs["A"]["observation"], clean), rtol=1e-5, atol=1e-4)


def test_the_oracle_must_watch_the_shared_fit_from_its_start(unets):
    """The oracle observes the shared plain DIP fit; attaching it after the fit ran is refused, not ignored."""
    clean = smooth(1, 8, 8)
    unet, sched = unets["linear"]
    y = tdpm.observe(clean, 20, sched, generator=torch.Generator().manual_seed(0))
    ctx = D.Context(unet=unet, scheduler=sched, schedule="linear", schedule_index=1, t=20, t_trunc=10, n_chains=1,
                    dip_iterations=2, dip_iterations_long=3, dip_kw=dict(preset="tiny", lr=1e-2, device="cpu"),
                    device="cpu", seed=0, chunk=0, z=torch.randn(clean.shape), generators={})
    D.dip_short(ctx, y)
    with pytest.raises(RuntimeError, match="observe it must run first"):
        D.dip_oracle(ctx, y, clean)


def test_one_table_entry_changes_both_studies(unets, monkeypatch):
    """The report's rows and the sigma study run a method through the same table entry and runner
    (``run_methods``): replacing the entry replaces the method in both."""
    calls = []

    def constant(ctx, y):
        calls.append(len(y))
        return D.Estimate(torch.zeros_like(y), nfe=0, dip_iterations=0)

    monkeypatch.setitem(D.METHODS, "nlm", D.Method("Non-local means (σ given)", constant))
    clean = smooth(3, 8, 9)
    st = [dict(name="A", schedule="linear", t=30, sigma255=None)]
    df = E.run_denoising(unets, clean=clean, settings=st, methods=["nlm"], **DEN_KW)
    gray = metrics.psnr(torch.zeros_like(clean), clean)
    torch.testing.assert_close(torch.tensor(df.psnr.values, dtype=torch.float32), gray, rtol=0, atol=1e-5)
    unet, sched = unets["linear"]
    rows, *_ = S.run(unet, sched, val=clean[:1], test=clean[1:], train_mean=torch.zeros(1, 3, 8, 8), sigma=50,
                     seed=0, device="cpu", budgets_plain=(1,), budgets_official=(1,), t_truncs=(0.5,), t0s=(0.5,),
                     n_chains=1, readout_chains=(1,), nlm_h_factors=(0.8, 1.2), nlm_patch_sizes=(3,),
                     dip_presets={"plain": "tiny", "official": "skip-tiny"}, polish=False)
    nlm = rows[rows.method_key == "nlm"].sort_values(["split", "image"])
    assert sorted(nlm.psnr.round(4)) == sorted(gray.double().round(decimals=4).tolist())
    assert calls == [3, 1, 1, 2]  # the report's chunk, then the study's two validation candidates and its test images


def test_run_methods_checks_its_keys_and_hands_clean_only_to_the_oracles(unets):
    unet, sched = unets["linear"]
    ctx = D.Context(unet=unet, scheduler=sched, t=20, device="cpu", generators={})
    y = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"methods \['bm3d'\] are not allowed"):
        D.run_methods(ctx, y, ["bm3d"])
    with pytest.raises(ValueError, match=r"methods \['dip_oracle'\] need the clean image"):
        D.run_methods(ctx, y, ["tweedie", "dip_oracle"])
    with pytest.raises(ValueError, match=r"methods \['dip_plain'\] are not allowed"):
        E.run_denoising(unets, clean=smooth(1, 8, 1), settings=[dict(name="A", schedule="linear", t=5)],
                        methods=["dip_plain"], **DEN_KW)  # a grid entry: the sigma study's, not a report row


def test_dip_batch_limit_is_the_cap_on_the_cpu():
    assert E.dip_batch_limit("dip-paper", resolution=64, device="cpu", cap=500) == 500
    with pytest.raises(ValueError, match="cap=0"):
        E.dip_batch_limit("tiny", resolution=8, device="cpu", cap=0)
