import pandas as pd
import pytest
import torch

from tdpmlib import models, schedules, study


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = models.make_unet("tiny", resolution=8).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(12, 3, 2, 2, generator=g) * 2 - 1, size=8, mode="bilinear")
    return unet, schedules.make_scheduler("linear"), images


def run(unet, sched, val, test, **kw):
    return study.run(unet, sched, val=val, test=test, train_mean=torch.zeros(1, 3, 8, 8), sigma=50, seed=0, device="cpu",
                     budgets_plain=(2, 4), budgets_official=(2, 4), t_truncs=(0.25, 0.5), t0s=(0.5,), n_chains=2,
                     dip_presets={"plain": "tiny", "official": "skip-tiny"}, **kw)


def test_every_method_on_both_splits_and_the_validated_choice_is_used_on_test(tiny):
    unet, sched, images = tiny
    rows, sel, outputs, fits = run(unet, sched, images[:3], images[3:7])
    assert set(rows["method_key"]) == set(study.METHOD_LABELS)
    counts = rows.groupby(["method_key", "split"]).size().unstack()
    assert (counts["val"] == 3).all() and (counts["test"] == 4).all()
    for key in ("dip_plain", "dip_official", "tdpm_matched", "sdedit"):
        cand = sel[sel["method_key"] == key]
        chosen = cand.loc[cand["val_psnr"].idxmax(), "params"]
        assert set(rows.loc[rows["method_key"] == key, "params"]) == {chosen}
        val_mean = rows[(rows["method_key"] == key) & (rows["split"] == "val")]["psnr"].mean()
        assert val_mean == pytest.approx(cand["val_psnr"].max(), abs=1e-4)
    t = int(rows["t"].iloc[0])
    assert t == schedules.t_for_sigma(sched, 50)
    tm = rows[rows["method_key"] == "tdpm_matched"].iloc[0]
    assert tm["nfe"] in {max(1, round(0.25 * t)), max(1, round(0.5 * t))} and tm["dip_iterations"] in (2, 4)
    assert rows.loc[rows["method_key"].isin(["tdpm_matched", "dip_polish"]), "noise_ratio"].notna().all()
    assert rows.loc[~rows["method_key"].isin(["tdpm_matched", "dip_polish"]), "noise_ratio"].isna().all()
    pol = rows[rows["method_key"] == "dip_polish"].iloc[0]
    assert (pol["nfe"], pol["dip_iterations"]) == (tm["nfe"], tm["dip_iterations"])
    # the hybrid's time includes its share of the DIP fit
    k = tm["dip_iterations"]
    assert tm["seconds"] >= fits["official"]["seconds"] * k / 4
    # the floors: the training-mean row scores the constant image given
    tr = rows[(rows["method_key"] == "train_mean")]
    assert outputs["train_mean"].abs().max() == 0 and len(tr) == 7
    # the upper bound is at least as good as the validated budget on every image
    for p in ("plain", "official"):
        a = rows[rows["method_key"] == f"dip_{p}_oracle"].set_index(["split", "image"])["psnr"]
        b = rows[rows["method_key"] == f"dip_{p}"].set_index(["split", "image"])["psnr"]
        assert (a >= b - 1e-4).all()


def test_selection_does_not_depend_on_the_test_images(tiny):
    unet, sched, images = tiny
    _, sel_a, _, _ = run(unet, sched, images[:3], images[3:7])
    rows_b, sel_b, _, _ = run(unet, sched, images[:3], images[7:11].flip(-1))
    pd.testing.assert_frame_equal(sel_a, sel_b)


def test_observation_noise_is_per_image():
    sched = schedules.make_scheduler("linear")
    x = torch.zeros(5, 3, 8, 8)
    y5, t = study.observe(x, 25, sched, seed=0)
    y2, _ = study.observe(x[:2], 25, sched, seed=0)
    torch.testing.assert_close(y5[:2], y2)
    assert t == schedules.t_for_sigma(sched, 25)


def test_split_eval_is_disjoint_and_checked():
    held = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    val, test = study.split_eval(held, n_val=5, n_test=10)
    assert not set(val[:, 0, 0, 0].tolist()) & set(test[:, 0, 0, 0].tolist())
    with pytest.raises(ValueError, match="n_val \\+ n_test = 21"):
        study.split_eval(held, n_val=11, n_test=10)


def test_fit_budgets_cache_reuses_and_refits_on_change(tiny, tmp_path, monkeypatch):
    _, _, images = tiny
    y = images[:2] + 0.1
    kw = dict(protocol="plain", budgets=(2, 3), seed=0, sigma=25, device="cpu", preset="tiny", cache_dir=tmp_path)
    first = study.fit_budgets(y, images[:2], **kw)
    assert len(list(tmp_path.iterdir())) == 1

    def boom(*a, **k):
        raise AssertionError("refitted although the cache holds this fit")
    from tdpmlib import dip
    monkeypatch.setattr(dip, "fit_dip", boom)
    again = study.fit_budgets(y, images[:2], **kw)
    for k in (2, 3):
        torch.testing.assert_close(again["outputs"][k], first["outputs"][k])
    pd.testing.assert_frame_equal(again["history"], first["history"])
    with pytest.raises(AssertionError, match="refitted"):
        study.fit_budgets(y + 0.01, images[:2], **kw)  # another observation: not the cached fit
