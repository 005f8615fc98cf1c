"""Tests for tdpmlib.studies.generation: notebook 03's generation protocol runner (tiny models, 8 px)."""

from __future__ import annotations

import math

import warnings

import pytest
import torch
import torch.nn.functional as F

from tdpmlib.evaluation import sample_metrics
from tdpmlib.methods import models, schedules
from tdpmlib.studies import generation as G


def smooth(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 2 - 1, size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def generation():
    torch.manual_seed(0)
    unet = models.make_unet("tiny", resolution=8).eval()
    sched = schedules.make_scheduler("linear", num_train_timesteps=20)  # a short chain keeps the test fast
    images = smooth(17, 8, 6)
    train, held = images[:14], images[14:]
    feats = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    gen_fn = lambda off: torch.Generator().manual_seed(off)  # noqa: E731
    kw = dict(train=train, held=held, n=4, resolution=8, device="cpu", generator_fn=gen_fn, dip_preset="tiny",
              dip_lr=1e-2, sample_batch=3, seed=0, feature_extractor=feats)
    table, samples = G.run_generation(unet, sched, dip_iterations=2, t_trunc=2, **kw)
    return unet, sched, train, held, gen_fn, kw, table, samples


def test_generation_table(generation):
    _, sched, train, held, gen_fn, _, table, samples = generation
    assert list(table.method_key) == list(G.GENERATION_METHODS)
    assert list(table.method) == list(samples) == list(G.GENERATION_METHODS.values())
    t = table.set_index("method_key")
    assert list(t.nfe) == [20, 20, 20, 3, 3, 0]  # T = 20 here: DDIM's 50 / 100 levels collapse to 20; T_trunc = 2: 3 steps
    assert list(t.dip_iterations) == [0, 0, 0, 2, 2, 0]
    assert list(t.n) == [4, 4, 4, 4, 3, 4] and "capped" in t.loc["tdpm_held", "note"]
    assert t.loc["tdpm_held", "reference_set"].startswith("training images it did not fit")
    assert not {"seconds", "seconds_per_image"} & set(table.columns)  # seconds: chapter 08's benchmark only
    assert (t.fid_status == "ok (custom feature extractor)").all() and t.kid_mean.notna().all()
    # the floor row is the shuffled training images the train-fit TDPM-DIP used: exact copies of training data
    perm = torch.randperm(len(train), generator=gen_fn(G.OFFSETS["gen_shuffle"]))
    assert torch.equal(samples[G.GENERATION_METHODS["real"]], train[perm[:4]])
    assert t.loc["real", "ratio_median"] == 0 and t.loc["real", "frac_copies"] == 1
    # metrics are the library's, against the stated reference set
    ddpm_s = samples[G.GENERATION_METHODS["ddpm"]]
    assert t.loc["ddpm", "swd"] == pytest.approx(sample_metrics.swd(held, ddpm_s, seed=0)["swd_mean"])
    assert t.loc["ddpm", "ratio_median"] == pytest.approx(sample_metrics.memorisation(ddpm_s, train, held)["ratio_median"])
    assert math.isnan(t.loc["ddpm", "d_fit_mean"])
    fake = samples[G.GENERATION_METHODS["tdpm_train"]]
    d = ((fake - train[perm[:4]]).flatten(1).norm(dim=1) / math.sqrt(fake[0].numel())).mean()
    assert t.loc["tdpm_train", "d_fit_mean"] == pytest.approx(float(d))
    assert all(s.min() >= -1 and s.max() <= 1 and s.shape[1:] == (3, 8, 8) for s in samples.values())


def test_tdpm_dip_generation_reproduces_the_images_it_was_fit_to(generation):
    """The report's "generation": fit long enough, TDPM-DIP returns the images it was given."""
    unet, sched, train, held, _, kw, _, _ = generation
    table, samples = G.run_generation(unet, sched, dip_iterations=20, t_trunc=0, methods=["tdpm_train", "tdpm_held"],
                                      **dict(kw, dip_lr=3e-2))
    t = table.set_index("method_key")
    assert list(t.index) == ["tdpm_train", "tdpm_held", "real"]
    assert t.loc["tdpm_train", "frac_copies_fit"] == 1 and t.loc["tdpm_held", "frac_copies_fit"] == 1
    assert t.loc["tdpm_train", "frac_copies"] == 1  # copies of training images...
    assert t.loc["tdpm_held", "ratio_median"] > 1   # ...and, fit to held-out images, copies of those
    assert G.copy_verdict(t.loc["tdpm_train"]) == G.COPIES


def test_generation_validation(generation):
    unet, sched, *_, kw, _, _ = generation
    with pytest.raises(ValueError, match="n=99"):
        G.run_generation(unet, sched, **dict(kw, n=99))
    with pytest.raises(ValueError, match="methods"):
        G.run_generation(unet, sched, methods=["gan"], **kw)


def test_copy_verdict_thresholds():
    assert G.copy_verdict(dict(frac_copies_fit=0.6, ratio_median_fit=0.9)) == G.COPIES
    assert G.copy_verdict(dict(frac_copies_fit=0.1, ratio_median_fit=0.3)) == G.COPIES
    assert G.copy_verdict(dict(frac_copies_fit=0.1, ratio_median_fit=0.9)) == G.NO_COPIES
    assert G.copy_verdict(dict(frac_copies_fit=0.5, ratio_median_fit=0.5)) == G.COPIES  # copy_fraction is inclusive
    assert G.copy_verdict(dict(frac_copies_fit=0.49, ratio_median_fit=0.49)) == G.COPIES  # ratio is exclusive
    assert G.copy_verdict(dict(frac_copies_fit=0.49, ratio_median_fit=0.5)) == G.NO_COPIES
    assert G.COPIES != G.NO_COPIES and max(len(G.COPIES), len(G.NO_COPIES)) <= 80  # short glue phrases


def test_nearest_rows(generation):
    _, _, train, held, _, _, _, samples = generation
    g = samples[G.GENERATION_METHODS["ddpm"]]
    rows = G.nearest_rows(g, train, held, k=3, prefix="DDPM: ")
    vals = list(rows.values())
    assert list(rows)[0] == "DDPM: generated" and all(len(v) == 3 for v in vals)
    _, idx = sample_metrics.nearest_distances(g[:3], train)
    assert torch.equal(vals[1], train[idx])


def test_generation_size_is_capped_by_the_training_set():
    # the paper profile asks for 1000 samples; the shared parquet leaves 737 training images
    with pytest.warns(UserWarning, match="737 training images"):
        assert G.generation_size(1000, 737) == 737
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is capped
        assert G.generation_size(48, 737) == 48
    with pytest.raises(ValueError, match="n_generate"):
        G.generation_size(1, 737)
