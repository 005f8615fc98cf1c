import numpy as np
import pandas as pd
import pytest

from tdpmlib.evaluation import stats


def test_bootstrap_ci_matches_the_normal_interval_for_a_large_sample():
    """For n = 2000 draws the percentile bootstrap of the mean is close to mean ± z s / sqrt(n): its width tells a
    95% interval (z = 1.96, the default) from a 90% one (z = 1.645, 16% narrower) to within 4%."""
    v = np.random.default_rng(1).normal(2.0, 3.0, size=2000)
    se = v.std(ddof=1) / np.sqrt(len(v))
    lo, hi = stats.bootstrap_ci(v, seed=0)
    assert (hi - lo) / (2 * 1.96 * se) == pytest.approx(1, abs=0.04)
    assert (lo + hi) / 2 == pytest.approx(v.mean(), abs=0.1 * se)
    lo90, hi90 = stats.bootstrap_ci(v, confidence=0.90, seed=0)
    assert (hi90 - lo90) / (2 * 1.645 * se) == pytest.approx(1, abs=0.04)
    assert stats.paired(v, np.zeros_like(v))["confidence"] == 0.95


def test_bootstrap_of_a_constant_is_that_constant_and_seeded():
    assert stats.bootstrap_ci([1.5] * 7) == (1.5, 1.5)
    v = np.random.default_rng(0).normal(size=10)
    assert stats.bootstrap_ci(v, seed=3) == stats.bootstrap_ci(v, seed=3)
    assert stats.bootstrap_ci(v, seed=3) != stats.bootstrap_ci(v, seed=4)


def test_paired_counts_and_verdicts_without_threshold():
    a = np.array([10.0, 11.0, 12.0, 13.0])
    s = stats.paired(a + 0.01, a)  # a tiny but consistent gain: "better", whatever its size
    assert s["mean_diff"] == pytest.approx(0.01) and (s["wins"], s["losses"], s["ties"]) == (4, 0, 0)
    assert stats.verdict(s) == "better"
    assert stats.verdict(stats.paired(a - 0.01, a)) == "worse"
    mixed = stats.paired([1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0])
    assert stats.verdict(mixed) == "no clear difference"
    assert (mixed["wins"], mixed["losses"]) == (2, 2)
    assert stats.describe(s) == "+0.01 dB [+0.01, +0.01], wins 4 of 4"


def test_paired_is_on_differences_not_on_the_two_means():
    """Large spread across images but a consistent per-image gain: a paired test sees it."""
    base = np.random.default_rng(0).normal(20, 5, size=16)
    gain = 0.2 + np.random.default_rng(1).normal(0, 0.05, size=16)
    s = stats.paired(base + gain, base)
    assert s["ci_low"] > 0.1 and s["wins"] == 16


def test_compare_matches_images_and_refuses_missing_ones():
    df = pd.DataFrame(dict(method_key=["a"] * 3 + ["b"] * 3, image=[2, 0, 1, 0, 1, 2], psnr=[5, 3, 4, 1, 1, 1],
                           setting="s"))
    out = stats.compare(df, a="a", b="b", by=["setting"])
    assert out.loc[0, "mean_diff"] == pytest.approx(3.0) and out.loc[0, "wins"] == 3 and out.loc[0, "setting"] == "s"
    with pytest.raises(ValueError, match="same images"):
        stats.compare(df.iloc[:-1], a="a", b="b")
    with pytest.raises(ValueError, match="'c' has no rows"):
        stats.compare(df, a="a", b="c")


@pytest.mark.parametrize("kw, match", [(dict(confidence=1.0), "confidence=1.0"), (dict(resamples=10), "resamples=10")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        stats.bootstrap_ci([1.0, 2.0], **kw)
    with pytest.raises(ValueError, match="equally long"):
        stats.paired([1.0], [1.0, 2.0])
