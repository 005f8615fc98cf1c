"""The training record: held-out quality rows and grids at their steps, exact on resume; final samples cached."""

import pandas as pd
import pytest
import torch

from tdpmlib.evaluation import metrics, sample_metrics
from tdpmlib.methods import ddpm
from tdpmlib.workflow import data, pipeline, train


@pytest.fixture
def setup(tmp_path):
    parquet = data.write_synthetic_parquet(tmp_path / "imgs.parquet", n=24, size=16)
    cfg = pipeline.setup("train", show=False, profile="smoke", data_source=str(parquet), results_dir=str(tmp_path / "r"),
                         schedule="linear", train_steps=6, checkpoint_every=2)
    tr, held = pipeline.load_split(cfg)
    return cfg, tr, held


def run(cfg, tr, held, **kw):
    monitor = train.make_monitor(cfg, "linear", train=tr, held=held, eval_every=4, grid_every=3)
    unet, _, info = pipeline.train_or_load(cfg, tr, callback=monitor, callback_every=monitor.every, **kw)
    return monitor, unet, info


def test_record_rows_at_eval_steps_and_the_last_step(setup):
    cfg, tr, held = setup
    monitor, unet, _ = run(cfg, tr, held)
    assert monitor.every == 1
    q = train.load_quality(cfg, "linear")
    assert q["step"].tolist() == [4, 6]
    assert set(train.load_grids(cfg, "linear", monitor.tcfg)) == {3, 6}
    # the record is the held-out evaluation of the EMA network: recompute the last row's posterior mean by hand
    row = train.quality(unet, monitor.scheduler, train=tr, held=held, generator=cfg.generator(train.EVAL_SEED),
                        device="cpu", n_samples=8, batch_size=8)
    assert row["psnr_posterior_mean_t600"] == pytest.approx(q["psnr_posterior_mean_t600"].iloc[-1], abs=1e-5)
    assert row["psnr_training_mean"] == pytest.approx(float(metrics.psnr(tr.mean(0, keepdim=True).expand_as(held), held).mean()))
    assert (q["eval_seconds"] > 0).all()


def test_resumed_run_rewrites_the_same_record(setup, tmp_path):
    cfg, tr, held = setup
    run(cfg, tr, held)
    q_full = train.load_quality(cfg, "linear")
    # a second profile directory: stop after 4 steps (checkpoint at 4), then resume to 6
    cfg2 = pipeline.setup("train", show=False, profile="smoke", data_source=cfg.data_source,
                          results_dir=str(tmp_path / "r2"), schedule="linear", train_steps=6, checkpoint_every=2)

    class Stop(Exception):
        pass

    monitor = train.make_monitor(cfg2, "linear", train=tr, held=held, eval_every=4, grid_every=3)

    def stop_after_4(step, unet):
        monitor(step, unet)
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        pipeline.train_or_load(cfg2, tr, callback=stop_after_4, callback_every=1)
    run(cfg2, tr, held)
    pd.testing.assert_frame_equal(train.load_quality(cfg2, "linear").drop(columns="eval_seconds"),
                                  q_full.drop(columns="eval_seconds"))


def test_final_samples_are_drawn_once_per_config(setup, monkeypatch):
    cfg, tr, held = setup
    monitor, unet, _ = run(cfg, tr, held)
    first = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    assert set(first) == set(train.FINAL_SAMPLERS)
    assert first["DDPM-1000"]["nfe"] == 1000 and first["DDIM-50"]["nfe"] == 50
    for f in first.values():
        assert f["images"].shape == (3, 3, 16, 16) and f["images"].abs().max() <= 1
        # stored as 8-bit images: every value is on the 1/127.5 grid
        torch.testing.assert_close(((f["images"] + 1) * 127.5).round(), (f["images"] + 1) * 127.5, atol=1e-4, rtol=0)

    def boom(*a, **k):
        raise AssertionError("sampled again")

    monkeypatch.setattr(ddpm, "sample", boom)
    again = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    torch.testing.assert_close(again["DDIM-50"]["images"], first["DDIM-50"]["images"])
    with pytest.raises(AssertionError, match="sampled again"):  # another n, or another training config, resamples
        train.final_samples(cfg, "linear", unet, n=4, tcfg=monitor.tcfg)


def test_interrupted_final_samples_keep_the_finished_samplers(setup, monkeypatch):
    cfg, tr, held = setup
    monitor, unet, _ = run(cfg, tr, held)
    real, calls = ddpm.sample, []

    def dies_on_third(*a, **k):
        calls.append(k["num_steps"] if k.get("method") == "ddim" else 1000)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ddpm, "sample", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    calls.clear()
    monkeypatch.setattr(ddpm, "sample", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    out = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    assert len(calls) == len(train.FINAL_SAMPLERS) - 2 and set(out) == set(train.FINAL_SAMPLERS)
    # the resumed samplers draw what an uninterrupted call draws: same seeds, same images
    monkeypatch.setattr(ddpm, "sample", real)
    (cfg.model_dir("linear") / "samples.pt").unlink()
    fresh = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    for k in out:
        torch.testing.assert_close(out[k]["images"], fresh[k]["images"])

def test_bad_periods_are_named(setup):
    cfg, tr, held = setup
    with pytest.raises(ValueError, match="eval_every=0"):
        train.make_monitor(cfg, "linear", train=tr, held=held, eval_every=0)


def _smooth_images(n, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_swd_difference_of_a_set_with_itself_is_exactly_zero():
    held, x = _smooth_images(12, 0), _smooth_images(16, 1)
    d = train.swd_difference(held, x, x.clone(), floor=2.0, resamples=3)
    assert d["diff"] == 0 and d["sd"] == 0 and d["ci_low"] == d["ci_high"] == 0
    assert d["a"] == pytest.approx(sample_metrics.swd(held, x, seed=0)["swd_mean"] / 2.0)


def test_swd_difference_finds_pixel_noise_farther_from_smooth_images_than_smooth_images():
    held, x = _smooth_images(24, 0), _smooth_images(16, 1)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    d = train.swd_difference(held, noise, x, floor=1.0, resamples=4)
    assert d["a"] > d["b"] and d["ci_low"] > 0            # worse, and by more than the resampling spread
    swapped = train.swd_difference(held, x, noise, floor=1.0, resamples=4)
    assert swapped["diff"] == pytest.approx(-d["diff"]) and swapped["ci_high"] < 0
    with pytest.raises(ValueError, match="resamples=1"):
        train.swd_difference(held, x, x, floor=1.0, resamples=1)


def test_dark_fraction_counts_pixels_by_channel_mean():
    img = torch.ones(2, 3, 4, 4)           # white on [-1, 1]
    img[0, :, 0, :] = -1.0                 # one black row of 4 pixels in image 0
    img[1, 0, 0, 0] = -1.0                 # one dark channel only: mean 2/3 on [0, 1], not dark
    assert train.dark_fraction(img) == pytest.approx(4 / 32)


def test_final_samples_stored_before_the_grid_had_a_name_are_reused_as_trailing(setup, monkeypatch):
    # samples.pt written before DDIM took diffusers' grid holds trailing-grid sets under the old names: they are
    # kept under their "trailing" names and only the leading-grid DDIM-50 is drawn
    cfg, tr, held = setup
    monitor, unet, _ = run(cfg, tr, held)
    fresh = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    old_names = {"DDPM-1000": "DDPM-1000", "DDIM-50": "DDIM-50, trailing", "DDIM-100": "DDIM-100, trailing",
                 "DDIM-50, raw ε": "DDIM-50, raw ε, trailing", "DDIM-100, raw ε": "DDIM-100, raw ε, trailing"}
    path = cfg.model_dir("linear") / "samples.pt"
    saved = torch.load(path, weights_only=False)
    legacy = {old: {k: v for k, v in saved["samples"][new].items() if k not in ("sampler", "seed")}
              for old, new in old_names.items()}
    torch.save(dict(saved, samples=legacy), path)
    real, calls = ddpm.sample, []
    monkeypatch.setattr(ddpm, "sample", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    out = train.final_samples(cfg, "linear", unet, n=3, tcfg=monitor.tcfg)
    assert [c.get("spacing") for c in calls] == ["leading"] and set(out) == set(train.FINAL_SAMPLERS)
    for k in out:
        torch.testing.assert_close(out[k]["images"], fresh[k]["images"])
    assert not torch.equal(out["DDIM-50"]["images"], out["DDIM-50, trailing"]["images"])
