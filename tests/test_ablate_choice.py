"""tdpmlib.studies.ablations_choice (chapter 03's chosen T_trunc read, the other schedule's validated in chapter 06) and
ablate_paired.readout_paired (every readout at the chosen T_trunc against the DIP alone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tdpmlib.studies import ablations, ablations_choice, ablations_paired


def selection(chosen=None):
    """Chapter 03's study_selection.csv at two sigmas: at 50 a near-tie that T_trunc = 29 wins by 1e-6 dB."""
    rows = [(25, "dip_official", "k=300", 24.0), (25, "tdpm_matched", "k=300, T_trunc=7", 25.0),
            (25, "tdpm_matched", "k=300, T_trunc=14", 24.5), (25, "tdpm_matched", "k=400, T_trunc=7", 25.0),
            (50, "tdpm_matched", "k=200, T_trunc=14", 22.0), (50, "tdpm_matched", "k=300, T_trunc=29", 22.000001)]
    df = pd.DataFrame(rows, columns=["sigma", "method_key", "params", "val_psnr"])
    if chosen is not None:
        df["chosen"] = chosen
    return df


def test_study_choice_reads_chapter_03s_chosen_candidate(tmp_path):
    sel = selection()
    # no chosen column: the best val_psnr, the first listed on ties (study._best's rule)
    assert ablations_choice.study_choice(sel, sigma=25) == (300, 7)
    assert ablations_choice.study_choice(sel, sigma=50.0) == (300, 29)
    # the chosen column wins over the means, also read back from a CSV (as booleans)
    marked = selection(chosen=[True, False, False, True, True, False])
    path = tmp_path / "study_selection.csv"
    marked.to_csv(path, index=False)
    assert ablations_choice.study_choice(path, sigma=25) == (400, 7)
    assert ablations_choice.study_choice(str(path), sigma=50) == (200, 14)
    # study_rows.csv: the rows of the tuned method carry the chosen params
    rows = pd.DataFrame(dict(sigma=[50] * 4, method_key=["tdpm_matched"] * 2 + ["dip_official"] * 2, split="test",
                             image=[0, 1, 0, 1], params=["k=300, T_trunc=29"] * 2 + ["k=300"] * 2))
    assert ablations_choice.study_choice(rows, sigma=50) == (300, 29)
    with pytest.raises(ValueError, match="sigma=15"):
        ablations_choice.study_choice(sel, sigma=15)
    with pytest.raises(ValueError, match="3 candidates are marked"):
        ablations_choice.study_choice(selection(chosen=[True] * 6), sigma=25)
    with pytest.raises(ValueError, match="name no k and T_trunc"):
        ablations_choice.study_choice(sel, sigma=25, method_key="dip_official")
    with pytest.raises(ValueError, match="source="):
        ablations_choice.study_choice(3, sigma=25)


def test_study_n_chains_reads_n_or_gives_none(tmp_path):
    rows = pd.DataFrame(dict(sigma=[25, 25, 50], method_key=["tdpm_matched_mean", "tdpm_matched", "tdpm_matched_mean"],
                             params=["k=300, T_trunc=7, n=8", "k=300, T_trunc=7", "k=300, T_trunc=29, n=8"]))
    assert ablations_choice.study_n_chains(rows) == 8 and ablations_choice.study_n_chains(rows, sigma=50) == 8
    assert ablations_choice.study_n_chains(rows.iloc[1:2]) is None            # chapter 03 without the method
    assert ablations_choice.study_n_chains(tmp_path / "missing.csv") is None  # no chapter 03 results at all
    sel = pd.DataFrame(dict(sigma=25, method_key="tdpm_matched_mean", params=["n=2", "n=4", "n=8"],
                            val_psnr=[1.0, 3.0, 2.0]))
    assert ablations_choice.study_n_chains(sel) == 4  # a selection: the best candidate's n
    two = rows.assign(params=["k=300, T_trunc=7, n=8", "", "k=300, T_trunc=29, n=4"])
    with pytest.raises(ValueError, match="pass sigma"):
        ablations_choice.study_n_chains(two)
    assert ablations_choice.study_n_chains(two, sigma=50) == 4


def t_trunc_fake():
    """Ancestral t_trunc rows of two schedules at sigma 25 and 50 (levels 0/7/14/28), plus posterior-mean rows;
    on the validation images 14 is best for cosine, 7 for linear; the posterior mean is +2 dB on every image."""
    rows = []
    for sigma in (25, 50):
        for sch, best in (("linear", 7), ("cosine", 14)):
            for level, frac in ((0, 0.0), (7, 0.125), (14, 0.25), (28, 0.5)):
                for readout in ("ancestral", "posterior_mean") if level else ("ancestral",):
                    for split, images in (("val", range(3)), ("test", range(3, 9))):
                        for i in images:
                            bonus = (1.0 if level == best else 0.5 if level else 0.0) + (2.0 if readout != "ancestral" else 0)
                            key = f"t_trunc={level}" + ("" if readout == "ancestral" else ", posterior_mean")
                            rows.append(dict(ablation="t_trunc", sigma=sigma, schedule=sch, t=57, method_key=key,
                                             method=key, readout=readout, value=frac, split=split, image=i,
                                             psnr=20 + i + bonus + 0.1 * (i % 2) * (level > 0), ssim=0.5,
                                             nfe=1 if readout == "posterior_mean" else level, dip_iterations=300,
                                             noise_ratio=np.nan))
    return pd.DataFrame(rows, columns=list(ablations.ROW_COLUMNS))


def test_t_trunc_choices_read_03_for_the_study_schedule_and_validate_the_other():
    rows = t_trunc_fake()
    main = ablations_choice.t_trunc_choices(rows, {25: (400, 14), 50: (300, 28)}, schedule="linear", main_schedule="linear")
    assert list(main.columns) == list(ablations_choice.CHOICE_COLUMNS)
    assert main[["sigma", "t_trunc", "k", "chosen_by", "method_key"]].values.tolist() == [
        [25, 14, 400, "03", "t_trunc=14"], [50, 28, 300, "03", "t_trunc=28"]]  # read, although 7 wins validation here
    assert main["value"].tolist() == [0.25, 0.5] and main["val_psnr"].tolist() == pytest.approx([21.5 + 0.1 / 3] * 2)
    other = ablations_choice.t_trunc_choices(rows, {}, schedule="cosine", main_schedule="linear")
    assert other[["t_trunc", "k", "chosen_by"]].values.tolist() == [[14, 300, "06"], [14, 300, "06"]]
    # the +2 dB posterior-mean rows do not enter the choice
    assert set(other["method_key"]) == {"t_trunc=14"}
    with pytest.raises(ValueError, match="extra_levels"):
        ablations_choice.t_trunc_choices(rows, {25: (400, 29), 50: (300, 28)}, schedule="linear", main_schedule="linear")
    with pytest.raises(ValueError, match="study_choice_by_sigma has no sigma = 50"):
        ablations_choice.t_trunc_choices(rows, {25: (400, 14)}, schedule="linear", main_schedule="linear")
    with pytest.raises(ValueError, match="schedule='sqrt'"):
        ablations_choice.t_trunc_choices(rows, {}, schedule="sqrt", main_schedule="linear")


def test_readout_paired_compares_each_readout_at_the_choice_with_the_dip_alone():
    rows = t_trunc_fake()
    choices = pd.concat([ablations_choice.t_trunc_choices(rows, {25: (300, 14), 50: (300, 7)}, schedule="linear",
                                                       main_schedule="linear")], ignore_index=True)
    pr = ablations_paired.readout_paired(rows, choices, seed=0)
    assert pr[["sigma", "readout", "level", "nfe"]].values.tolist() == [
        [25, "ancestral", 14, 14], [25, "posterior_mean", 14, 1], [50, "ancestral", 7, 7], [50, "posterior_mean", 7, 1]]
    # test images 3..8: ancestral at 14 is +0.5 (+0.1 on odd images), at 7 +1.0 (+0.1); the posterior mean +2 more
    assert pr["mean_diff"].tolist() == pytest.approx([0.55, 2.55, 1.05, 3.05])
    assert (pr["wins"] == 6).all() and (pr["n"] == 6).all() and (pr["outcome"] == "better than").all()
    assert (pr["chosen_by"] == "03").all() and (pr["b"] == "DIP alone").all()
    # the T_trunc table keeps to the ancestral readout
    pt = ablations_paired.t_trunc_paired(rows, seed=0)
    assert len(pt) == 2 * 2 * 3 and pt["level"].tolist()[:3] == [7, 14, 28]
    # the facts read chapter 03's choice (14 at sigma 25) and the other schedule's own
    f = ablations_paired.t_trunc_facts(pt, choices, schedule="linear", sigma=25)
    assert f["pick"] == "14 (t/4)" and f["pick_verdict"] == "better than" and f["pick_diff"].startswith("+0.55 dB")
    other = ablations_choice.t_trunc_choices(rows, {}, schedule="cosine", main_schedule="linear")
    assert ablations_paired.t_trunc_facts(pt, other, schedule="cosine", sigma=25)["pick"].startswith("14")
