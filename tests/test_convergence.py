"""The training reading of Example 1 (tdpmlib.studies.dip_init_training) on the smoke profile and a synthetic parquet."""
import math

import pandas as pd
import pytest
import torch

from tdpmlib.evaluation import metrics
from tdpmlib.methods import ddpm, schedules, tdpm
from tdpmlib.studies import denoising, dip_init_training
from tdpmlib.workflow import data, pipeline


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading")
    src = data.write_synthetic_parquet(root / "d.parquet", n=48, size=32)
    cfg = pipeline.setup("train", show=False, profile="smoke", data_source=str(src), results_dir=str(root / "r"))
    train, held = pipeline.load_split(cfg)
    return cfg, train, held


def test_truncated_variant_scores_only_the_levels_it_was_trained_for(setup):
    cfg, train, held = setup
    dip_init_training.train_variant(cfg, "trunc60", train=train, held=held)
    d = dip_init_training.variant_dir(cfg, "trunc60")
    q = pd.read_csv(d / "quality.csv")
    assert q.step.tolist() == [3, 6]
    t25, t50 = (schedules.t_for_sigma(schedules.make_scheduler("linear"), s) for s in (25, 50))
    assert t25 <= 60 < t50  # the grid's premise: T_trunc = 60 reaches sigma 25, not 50
    assert q.psnr_reverse_s25.notna().all() and q.psnr_posterior_mean_s25.notna().all()
    assert q.psnr_reverse_s50.isna().all() and q.psnr_posterior_mean_s50.isna().all()
    last = q.iloc[-1]
    assert math.isnan(last.swd_gen200) and last.swd_ddim100 > 0 and 0 <= last.copies_gen50 <= 1
    per = pd.read_csv(d / "per_image.csv")
    assert len(per) == 2 * 2 * cfg.n_test and set(per.sigma) == {25}
    assert not (d / "checkpoint.pt").exists() and (d / "unet_ema" / "config.json").exists()


def test_record_equals_an_independent_recomputation_from_the_saved_network(setup):
    cfg, train, held = setup
    dip_init_training.train_variant(cfg, "full", train=train, held=held)
    d = dip_init_training.variant_dir(cfg, "full")
    q = pd.read_csv(d / "quality.csv").set_index("step")
    unet = ddpm.load_unet(d / "unet_ema")
    sched = schedules.make_scheduler("linear")
    _, test = denoising.split_eval(held, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    for s in (25, 50):
        y, t = denoising.observe(test, s, sched, seed=cfg.seed)
        x0 = tdpm.tweedie(unet, sched, y, t)
        assert float(metrics.psnr(x0, test).mean()) == pytest.approx(q.loc[6, f"psnr_posterior_mean_s{s}"], abs=1e-4)
    # training seconds leave out the evaluation that ran before them; the loss log's clock does not
    log = pd.read_csv(d / "loss.csv").set_index("step")
    assert q.loc[6, "train_seconds"] == pytest.approx(log.loc[6, "seconds"] - q.loc[3, "eval_seconds"])
    assert q.swd_gen200.iloc[-1] > 0 and q.swd_floor.nunique() == 1


def test_finished_variant_is_skipped_and_dip_images_are_cached(setup):
    cfg, train, held = setup
    dip_init_training.train_variant(cfg, "curriculum", train=train, held=held)
    d = dip_init_training.variant_dir(cfg, "curriculum")
    before = (d / "quality.csv").stat().st_mtime_ns
    dip_init_training.train_variant(cfg, "curriculum", train=train, held=held)
    assert (d / "quality.csv").stat().st_mtime_ns == before
    first, secs = dip_init_training.dip_images(cfg, train, lr=dip_init_training.DIP_LR)
    again, secs2 = dip_init_training.dip_images(cfg, train, lr=dip_init_training.DIP_LR)
    assert torch.equal(first, again) and secs == secs2 > 0
    assert first.shape == train.shape and not torch.allclose(first, train, atol=0.05)  # a short fit smooths
    rec = dip_init_training.load_records(cfg)
    assert {"curriculum", "full", "trunc60"} <= set(rec) and rec["curriculum"]["summary"]["dip_seconds"] > 0


def test_bad_variant_list_is_named():
    with pytest.raises(ValueError, match="variants"):
        dip_init_training.check_variants("full,nope")
    assert dip_init_training.main(["--profile", "smoke", "--variants", "nope"]) == 2
