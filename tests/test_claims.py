"""tdpmlib.studies.claims (the claims table, the verdict rules), tdpmlib.studies.claims_audit (the lookup of measurements, the
assessed tables) and tdpmlib.studies.conclusions (chapter 07's synthesis)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tdpmlib.book import comparison
from tdpmlib.studies import claims, claims_audit, conclusions, headline, timing
from tdpmlib.studies.claims import CONFIGURATION, NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, verdict


# ------------------------------------------------------------------------------------------- the table

def test_claims_table_is_consistent():
    t = claims.claims_table()
    assert t["claim_id"].is_unique
    assert set(t["kind"]) == {"value", "direction", "configuration"}
    assert set(t["table"]) == {"Table 1", "Table 2", "Table 3", "Table 4"}
    values = t[t["kind"] != "direction"].set_index("claim_id")
    for c in t[t["kind"] == "direction"].to_dict("records"):
        assert c["a"] in values.index and c["b"] in values.index
        assert values.at[c["a"], "metric"] == values.at[c["b"], "metric"] == c["metric"]
        assert c["a_label"] and c["b_label"]
        if c["source"] not in ("generation", "timings"):  # every per-image direction says how to select both sides
            assert c["sel_a"] and c["sel_b"] and c["source"] in claims.SOURCES
    for c in values.reset_index().to_dict("records"):
        assert c["source"] in ("generation", "denoising", "table3", "timings") and c["same"] and c["corrected"]
    # seconds are read from chapter 08's timing benchmark only, and name its cases
    assert set(t.loc[t["metric"] == "seconds", "source"]) == {"timings"}
    assert set(t.loc[(t["metric"] == "seconds") & (t["kind"] == "value"), "corrected"]) == {
        timing.GEN_DDPM, timing.GEN_TDPM, claims.T600_DDPM}
    # step counts are configuration, not claims; nothing else is
    assert set(t.loc[t["kind"] == "configuration", "metric"]) == {"steps"}
    assert set(t.loc[t["metric"] == "steps", "kind"]) == {"configuration"}
    assert t["claimed"].notna().all()
    # schedules are checked at matched t and at matched sigma
    t4 = t[(t["table"] == "Table 4") & (t["kind"] == "direction")]
    assert {s.split(":")[0] for s in t4["setting"]} == {"matched t", "matched σ"}


@pytest.mark.parametrize("claim_id, expected", [
    ("T2-tdpm-psnr", 32.63), ("T1-ddpm-fid", 69.05), ("T3-50-psnr", 28.70), ("T4-tdpm-ssim", 0.979),
    ("T2-dir-tdpm-ddpm", 32.63 - 13.40), ("T1-dir-fid", 20.12 - 69.05), ("T4-dir-ddpm", 18.68 - 13.40),
    ("T3-dir-5-0", 32.77 - 32.12), ("T3-dir-5-0-s25", 32.77 - 32.12), ("T4-dir-tdpm-s50", 34.76 - 32.63),
    ("T1-tdpm-steps", 110),
])
def test_claimed_values_and_differences(claim_id, expected):
    t = claims.claims_table().set_index("claim_id")
    assert t.at[claim_id, "claimed"] == pytest.approx(expected)


def test_claimed_reads_value_and_configuration_claims_and_rejects_others():
    t = claims.claims_table().set_index("claim_id")
    for claim_id in ("T2-dip-psnr", "T1-tdpm-seconds", "T4-ddpm-ssim", "T1-tdpm-steps", "T1-ddpm-steps"):
        assert claims.claimed(claim_id) == t.at[claim_id, "claimed"]
    for bad in ("T2-dir-tdpm-ddpm", "no-such-claim"):  # a direction has no number of its own in the report
        with pytest.raises(ValueError, match=f"claim_id='{bad}' is not a value claim"):
            claims.claimed(bad)


# ----------------------------------------------------------------------------------------- the verdicts

def test_value_within_tolerance_is_reproduced():
    assert verdict(32.63, 32.0, tolerance=1.0) == (REPRODUCED, claims.WHY_WITHIN)
    assert verdict(32.5, 31.5, tolerance=1.0) == (REPRODUCED, claims.WHY_WITHIN)  # the tolerance is inclusive


def test_value_outside_tolerance_is_not_reproduced():
    assert verdict(32.63, 12.1, tolerance=1.0) == (NOT_REPRODUCED, claims.WHY_OUTSIDE)
    assert verdict(32.63, 33.64, tolerance=1.0) == (NOT_REPRODUCED, claims.WHY_OUTSIDE)


def test_value_not_comparable_or_missing():
    assert verdict(20.12, 20.0, tolerance=5.0, comparable=False, why=claims.WHY_FID_SAMPLES) == (
        NOT_COMPARABLE, claims.WHY_FID_SAMPLES)  # even within the tolerance
    assert verdict(20.12, float("nan"), tolerance=5.0, why=claims.WHY_NO_FID) == (NOT_COMPARABLE, claims.WHY_NO_FID)
    assert verdict(20.12, None, tolerance=5.0) == (NOT_COMPARABLE, claims.WHY_NOT_RUN)


def test_every_reason_is_a_short_phrase():  # the rows carry the numbers; chapter 07 explains each phrase once
    assert len(set(claims.WHYS)) == len(claims.WHYS)
    assert all(len(w + claims.WHY_SIGN) <= 80 and "." not in w for w in claims.WHYS)


def summary(d, lo, hi, wins=3, n=4):
    return dict(mean_diff=d, ci_low=lo, ci_high=hi, wins=wins, n=n)


def test_direction_rests_on_the_interval_not_on_a_threshold():
    # a tiny difference whose interval excludes 0 holds; a large one whose interval contains 0 does not
    assert claims.direction_verdict(19.23, summary(0.03, 0.01, 0.05)) == (REPRODUCED, claims.WHY_AS_CLAIMED, "better than")
    assert claims.direction_verdict(19.23, summary(3.0, -0.5, 6.0)) == (
        NOT_REPRODUCED, claims.WHY_UNCLEAR, "not clearly different from")
    assert claims.direction_verdict(0.51, summary(-1.5, -2.0, -1.0)) == (NOT_REPRODUCED, claims.WHY_REVERSED, "worse than")
    assert claims.direction_verdict(-3.93, summary(-0.4, -0.5, -0.3))[:2] == (REPRODUCED, claims.WHY_AS_CLAIMED)  # a drop
    assert claims.direction_verdict(1.0, None, why=claims.WHY_NO_FID) == (NOT_COMPARABLE, claims.WHY_NO_FID, None)
    assert claims.direction_verdict(1.0, dict(mean_diff=float("nan"))) == (NOT_COMPARABLE, claims.WHY_NOT_RUN, None)


def test_unpaired_directions_read_the_sign_and_say_so():
    v, why, out = claims.direction_verdict(-48.93, dict(mean_diff=-10.0), paired=False)
    assert (v, out) == (REPRODUCED, "lower than") and why == claims.WHY_AS_CLAIMED + claims.WHY_SIGN
    v, why, out = claims.direction_verdict(-31.0, dict(mean_diff=0.5), paired=False)
    assert (v, out) == (NOT_REPRODUCED, "higher than") and why == claims.WHY_REVERSED + claims.WHY_SIGN


@pytest.mark.parametrize("metric, kw, ok", [
    ("steps", dict(profile="smoke"), True),
    ("frac_copies_fit", dict(profile="cpu"), True),
    ("seconds", dict(profile="paper"), False),
    ("psnr", dict(profile="cpu"), False),
    ("psnr", dict(profile="paper"), True),
    ("fid", dict(profile="paper", fid_status="ok", n=1000, n_reference=1000), True),
    ("fid", dict(profile="paper", fid_status="unavailable: Inception weights not found (x)", n=1000,
                 n_reference=1000), False),
    ("fid", dict(profile="paper", fid_status="ok", n=64, n_reference=1000), False),
    ("fid", dict(profile="paper", fid_status="ok", n=1000, n_reference=82), False),
    ("steps", dict(profile="paper", dip_iterations=20, report_dip_iterations=100), False),
    ("psnr", dict(profile="paper", dip_iterations=100, report_dip_iterations=100), True),
    ("psnr", dict(profile="paper", dip_iterations=0, report_dip_iterations=0), True),
])
def test_comparability(metric, kw, ok):
    got, why = claims.comparability(metric, **kw)
    assert got is ok and (why == "") is ok and (ok or why in claims.WHYS)


def test_value_verdict_uses_the_same_rule_as_assess():
    assert claims.value_verdict("T2-dip-psnr", 32.0, profile="paper", dip_iterations=100)[0] == REPRODUCED
    assert claims.value_verdict("T2-dip-psnr", 22.0, profile="paper", dip_iterations=100)[0] == NOT_REPRODUCED
    v, reason = claims.value_verdict("T2-dip-psnr", 32.0, profile="cpu")
    assert (v, reason) == (NOT_COMPARABLE, claims.WHY_PROFILE)
    with pytest.raises(ValueError, match="not a value claim"):
        claims.value_verdict("T1-tdpm-steps", 110, profile="paper")


# ------------------------------------------------------------------------------- measuring from results

def fake_generation(fid_ok=True):
    def row(key, fid, secs, nfe, its, frac=None):
        return dict(method=key.upper(), method_key=key, n=1000, n_reference=1000, fid=fid if fid_ok else None,
                    fid_status="ok" if fid_ok else "unavailable: Inception weights not found (offline)",
                    seconds_per_image=secs, nfe=nfe, dip_iterations=its, frac_copies_fit=frac)
    return pd.DataFrame([row("ddpm", 60.0, 2.0, 1000, 0), row("tdpm_train", 15.0, 0.5, 10, 100, 1.0),
                         row("tdpm_held", 25.0, 0.5, 10, 100, 0.9)])


DEN = (("ddpm", "corrected", 9.0, 0.20), ("dip_short", "corrected", 8.0, 0.10), ("tdpm_dip", "corrected", 8.5, 0.12),
       ("report_dip_clean", "report", 33.0, 0.95), ("report_tdpm_clean", "report", 32.0, 0.96))


def fake_denoising_rows():
    """Per-image t = 600 rows: cosine is +1 on every image (+0.5 and +1.5 alternately), TDPM-DIP = DDPM - 0.5."""
    rows = []
    for schedule, shift in (("linear", 0.0), ("cosine", 1.0)):
        for key, protocol, p, s in DEN:
            for i in range(4):
                rows.append(dict(setting=f"t = 600 ({schedule})", schedule=schedule, t=600, method=key, method_key=key,
                                 protocol=protocol, image=i, psnr=p + shift + (0.5 if i % 2 else -0.5) * shift + 0.1 * i,
                                 ssim=s, seconds=1.0, nfe=600 if key == "ddpm" else 10,
                                 dip_iterations=0 if key == "ddpm" else 100))
    return pd.DataFrame(rows)


def fake_denoising():
    rows = fake_denoising_rows()
    g = rows.groupby(["setting", "schedule", "t", "method", "method_key", "protocol"], sort=False)
    out = g.agg(psnr_mean=("psnr", "mean"), ssim_mean=("ssim", "mean"), n=("image", "size"),
                seconds_per_image=("seconds", "first"), nfe=("nfe", "first"),
                dip_iterations=("dip_iterations", "first")).reset_index()
    # A sigma setting of the same schedule at another level must not be picked up.
    extra = out.iloc[[0]].assign(setting="σ = 25/255 (linear, t = 57)", t=57, psnr_mean=25.0)
    return pd.concat([out, extra], ignore_index=True)


def fake_table3_rows():
    return pd.DataFrame([dict(protocol=p, t_obs=600, t_trunc=tt, image=i,
                              psnr=(30 - tt / 10 if p == "report" else 8 + (0.2 if tt == 5 else 0) + tt / 50) + 0.01 * i,
                              ssim=0.9 if p == "report" else 0.1, seconds=1.0, nfe=tt, dip_iterations=100)
                         for p in ("report", "corrected") for tt in (0, 5, 10, 50) for i in range(4)])


def fake_table3():
    r = fake_table3_rows()
    return r.groupby(["protocol", "t_trunc"], sort=False).agg(
        psnr_mean=("psnr", "mean"), ssim_mean=("ssim", "mean"), n=("image", "size"), nfe=("nfe", "first"),
        dip_iterations=("dip_iterations", "first")).reset_index()


def fake_study_rows():
    """Chapter 03's rows at sigma 25 and 50: the matched hybrid is +0.3 over the DIP and -2 below the DDPM."""
    rows = []
    methods = (("ddpm", "DDPM ancestral from t", "DDPM", 25.0, 10.0, 57), ("tweedie", "DDPM posterior mean", "DDPM", 26.0, 0.1, 1),
               ("dip_official", "DIP, official protocol", "DIP", 23.0, 5.0, 0),
               ("tdpm_matched", "TDPM-DIP, matched state", "hybrid", 23.3, 5.5, 7),
               ("sdedit", "DIP then SDEdit (Example 1)", "hybrid", 22.0, 6.0, 14),
               ("nlm", "non-local means (floor)", "floor", 18.0, 0.2, 0))
    for sigma in (25, 50):
        for key, label, fam, p, sec, nfe in methods:
            for split, n in (("val", 2), ("test", 4)):
                for i in range(n):
                    rows.append(dict(sigma=sigma, t=57, method_key=key, method=label, family=fam, split=split, image=i,
                                     psnr=p - (sigma - 25) / 10 + 0.1 * i + (0.05 * (i % 2) if fam == "hybrid" else 0),
                                     ssim=0.5, seconds=sec, nfe=nfe, dip_iterations=400 if fam != "DDPM" else 0,
                                     params="", noise_ratio=np.nan))
    return pd.DataFrame(rows)


def fake_ablation_rows():
    """Chapter 06's rows: T_trunc t/8 beats the DIP alone by 0.2, t/2 loses 1; cosine DDPM +0.5 at matched sigma."""
    rows = []
    for sigma in (25, 50):
        for sch in ("linear", "cosine"):
            for level, frac, d in ((0, 0.0, 0.0), (7, 0.125, 0.2), (28, 0.5, -1.0)):
                for split, images in (("val", range(2)), ("test", range(2, 6))):
                    for i in images:
                        rows.append(dict(ablation="t_trunc", sigma=sigma, schedule=sch, t=57, method_key=f"t_trunc={level}",
                                         method="x", value=frac, split=split, image=i,
                                         psnr=20 + i + d + 0.02 * (i % 2) * (level > 0) + (0.1 if sch == "cosine" and level else 0),
                                         ssim=0.5, seconds=1.0, nfe=level, dip_iterations=4, noise_ratio=1.0))
            for i in range(2, 6):
                rows.append(dict(ablation="schedule", sigma=sigma, schedule=sch, t=57, method_key="ddpm", method="ddpm",
                                 value=57, split="test", image=i, psnr=18 + i + (0.5 + 0.1 * (i % 2) if sch == "cosine" else 0),
                                 ssim=0.5, seconds=1.0, nfe=57, dip_iterations=0, noise_ratio=np.nan))
    return pd.DataFrame(rows)


def fake_choices():
    return pd.DataFrame([dict(ablation="t_trunc (T_trunc > 0)", sigma=s, schedule=sch, method_key="t_trunc=7",
                              val_psnr=20.0, value=0.125, nfe=7, dip_iterations=4)
                         for s in (25, 50) for sch in ("linear", "cosine")])


def fake_timings(rows=None):
    """Chapter 08's timings.csv: each study method's seconds per image (the fake rows' ``seconds``) and the
    generation cases (DDPM 2 s, TDPM-DIP 0.5 s per image)."""
    rows = fake_study_rows() if rows is None else rows
    study = rows.groupby(["sigma", "method_key"])["seconds"].first()
    keys = [timing.study_key(s, k) for s, k in study.index] + [timing.GEN_DDPM, timing.GEN_TDPM]
    return pd.DataFrame(dict(key=keys, seconds_per_image=list(study) + [2.0, 0.5]))


def all_tables(**kw):
    return dict(generation=fake_generation(**kw), denoising=fake_denoising(), table3=fake_table3(),
                denoising_rows=fake_denoising_rows(), table3_rows=fake_table3_rows(), study_rows=fake_study_rows(),
                ablation_rows=fake_ablation_rows(), choices=fake_choices(), timings=fake_timings())


def measured(**kw):
    return claims_audit.measure(claims.claims_table(), **all_tables(**kw)).set_index("claim_id")


def test_measure_looks_up_values_under_both_protocols():
    m = measured()
    assert m.at["T1-tdpm-fid", "same"] == 15.0 and m.at["T1-tdpm-fid", "corrected"] == 25.0
    assert m.at["T1-tdpm-steps", "same"] == 110 and m.at["T1-ddpm-steps", "corrected"] == 1000
    assert m.at["T1-tdpm-new", "corrected"] == 0.9
    assert m.at["T2-tdpm-psnr", "same"] == pytest.approx(32.15) and m.at["T2-tdpm-psnr", "corrected"] == pytest.approx(8.65)
    assert m.at["T2-ddpm-psnr", "corrected"] == pytest.approx(9.15)  # not the sigma setting's 25.0
    assert m.at["T4-dip-psnr", "corrected"] == pytest.approx(9.15)
    assert m.at["T3-5-psnr", "corrected"] == pytest.approx(8.315) and m.at["T3-50-psnr", "same"] == pytest.approx(25.015)
    assert m.at["T1-ddpm-fid", "fid_status"] == "ok" and m.at["T1-ddpm-fid", "n"] == 1000


def test_measure_pairs_the_directions_over_images():
    m = measured()
    # t = 600: TDPM-DIP is 0.5 below DDPM on every image; cosine is +1 on average (+0.5 / +1.5)
    assert m.at["T2-dir-tdpm-ddpm", "corrected"] == pytest.approx(-0.5) and m.at["T2-dir-tdpm-ddpm", "wins"] == 0
    assert m.at["T2-dir-tdpm-ddpm", "outcome"] == "worse than" and m.at["T2-dir-tdpm-ddpm", "n_pairs"] == 4
    assert m.at["T2-dir-tdpm-ddpm", "same"] == pytest.approx(23.0)
    assert m.at["T4-dir-ddpm", "corrected"] == pytest.approx(1.0) and m.at["T4-dir-ddpm", "ci_low"] > 0
    # sigma rows from chapter 03's test images
    assert m.at["T2-dir-tdpm-dip-s25", "corrected"] == pytest.approx(0.325) and m.at["T2-dir-tdpm-dip-s25", "n_pairs"] == 4
    assert m.at["T2-dir-tdpm-ddpm-s50", "outcome"] == "worse than"
    assert m.at["T2-dir-tdpm-ddpm-s15", "corrected"] is None  # not in the study
    # Table 3 at t = 600 (matched variant) and at sigma (fractions of t)
    assert m.at["T3-dir-5-0", "corrected"] == pytest.approx(0.3) and m.at["T3-dir-5-0", "same"] == pytest.approx(-0.5)
    assert m.at["T3-dir-5-0-s25", "corrected"] == pytest.approx(0.21) and m.at["T3-dir-50-10-s50", "outcome"] == "worse than"
    # matched sigma: the DIP is the same fit under both schedules (0 by construction), so it has no claim there;
    # TDPM-DIP at each schedule's validated T_trunc (via choices.csv)
    assert "T4-dir-dip-s25" not in m.index and "T4-dir-dip" in m.index
    assert m.at["T4-dir-tdpm-s25", "corrected"] == pytest.approx(0.1) and m.at["T4-dir-ddpm-s50", "corrected"] == pytest.approx(0.55)
    # set statistics: differences of the value measurements, not paired
    assert m.at["T1-dir-seconds", "corrected"] == pytest.approx(-1.5) and m.at["T1-dir-seconds", "paired"] is False


def test_missing_tables_and_rows_give_none():
    m = claims_audit.measure(claims.claims_table(), denoising=fake_denoising()).set_index("claim_id")
    assert m.at["T1-ddpm-fid", "corrected"] is None and m.at["T3-5-psnr", "corrected"] is None
    assert m.at["T3-dir-5-0", "corrected"] is None and m.at["T4-dir-tdpm-s25", "corrected"] is None
    no_choice = claims_audit.measure(claims.claims_table(), ablation_rows=fake_ablation_rows()).set_index("claim_id")
    assert no_choice.at["T4-dir-tdpm-s25", "corrected"] is None and no_choice.at["T4-dir-ddpm-s25", "corrected"] is not None
    with pytest.raises(ValueError, match="method_key"):
        claims_audit.measure(claims.claims_table(), generation=fake_generation().drop(columns="method_key"))


def test_assess_under_paper_and_cpu():
    m = claims_audit.measure(claims.claims_table(), **all_tables())
    paper = claims_audit.assess(m, profile="paper").set_index("claim_id")
    assert paper.at["T2-tdpm-psnr", "verdict"] == NOT_REPRODUCED       # 8.65 vs 32.63
    assert paper.at["T1-ddpm-steps", "verdict"] == CONFIGURATION and paper.at["T1-ddpm-steps", "reason"] == claims.WHY_SETTING
    assert paper.at["T1-tdpm-new", "verdict"] == NOT_REPRODUCED        # 90 % copies
    assert paper.loc["T1-ddpm-seconds", ["verdict", "reason"]].tolist() == [NOT_COMPARABLE, claims.WHY_HARDWARE]
    assert paper.at["T1-dir-fid", "verdict"] == REPRODUCED and paper.at["T1-dir-fid", "reason"].endswith(claims.WHY_SIGN)
    assert paper.at["T2-dir-tdpm-ddpm", "verdict"] == NOT_REPRODUCED and paper.at["T2-dir-tdpm-ddpm", "reason"] == claims.WHY_REVERSED
    assert paper.at["T2-dir-tdpm-dip-s25", "verdict"] == REPRODUCED
    assert paper.at["T3-dir-50-10", "verdict"] == NOT_REPRODUCED       # 50 is better than 10 here
    assert paper.at["T3-dir-50-10-s25", "verdict"] == REPRODUCED       # t/2 is worse than t/8
    assert paper.at["T4-dir-ddpm", "verdict"] == REPRODUCED
    assert paper.at["T2-dir-tdpm-ddpm-s15", "verdict"] == NOT_COMPARABLE
    cpu = claims_audit.assess(m, profile="cpu").set_index("claim_id")
    assert cpu.at["T2-tdpm-psnr", "verdict"] == NOT_COMPARABLE and cpu.at["T2-tdpm-psnr", "reason"] == claims.WHY_PROFILE
    assert cpu.at["T2-dir-tdpm-ddpm", "verdict"] == NOT_REPRODUCED     # directions still checked
    assert set(cpu["verdict"]) <= set(claims.VERDICTS) | {CONFIGURATION}
    short = claims_audit.measure(claims.claims_table(), generation=fake_generation().assign(dip_iterations=20))
    short = claims_audit.assess(short, profile="paper").set_index("claim_id")
    assert short.at["T1-tdpm-new", "verdict"] == NOT_COMPARABLE and short.at["T1-tdpm-new", "reason"] == claims.WHY_BUDGET
    counts = claims_audit.counts(cpu.reset_index())
    assert counts.loc["all"].sum() == len(cpu) and counts.loc["all", CONFIGURATION] == 3


def test_assess_says_when_fid_is_unavailable():
    m = claims_audit.measure(claims.claims_table(), generation=fake_generation(fid_ok=False), denoising=fake_denoising())
    a = claims_audit.assess(m, profile="paper").set_index("claim_id")
    for cid in ("T1-ddpm-fid", "T1-tdpm-fid", "T1-dir-fid"):
        assert a.at[cid, "verdict"] == NOT_COMPARABLE and a.at[cid, "reason"] == claims.WHY_NO_FID
    assert a.at["T3-5-psnr", "reason"] == claims.WHY_NOT_RUN


def test_display_and_schedule_tables():
    a = claims_audit.assess(claims_audit.measure(claims.claims_table(), **all_tables()), profile="paper")
    d = claims_audit.display_table(a).set_index("claim")
    assert d.at["T2-tdpm-ssim", "claimed"] == "0.970" and d.at["T2-tdpm-psnr", "corrected protocol"] == "8.65"
    assert d.at["T2-dir-tdpm-ddpm", "claimed"] == "+19.23" and d.at["T1-ddpm-steps", "claimed"] == "1000"
    assert d.at["T2-dir-tdpm-ddpm", "corrected protocol"] == "-0.50 [-0.50, -0.50], 0/4"
    assert d.at["T1-dir-seconds", "corrected protocol"] == "-1.50" and d.at["T1-ddpm-fid", "report's protocol"] == "60.00"
    st = claims_audit.schedule_table(a)
    assert len(st) == 7 and set(st["method"]) == {"DDPM", "DIP", "TDPM-DIP"}  # the DIP at matched t only
    none = claims_audit.assess(claims_audit.measure(claims.claims_table()), profile="cpu")
    assert set(claims_audit.schedule_table(none)["verdict"]) == {NOT_COMPARABLE}  # nothing measured


# ------------------------------------------------------------------------------------------ standalone

def test_ensure_and_optional_results(tmp_path):
    cfg = SimpleNamespace(results_dir=str(tmp_path / "results"), profile="smoke", data_source="", seed=0,
                          device="cpu", out_dir=lambda: tmp_path)
    done = tmp_path / "results" / "smoke" / "03_tdpm_dip" / "generation.csv"
    done.parent.mkdir(parents=True)
    done.write_text("a\n1\n")
    assert conclusions.ensure_results(cfg, "03_tdpm_dip", "generation.csv", notebooks_dir=tmp_path) == done
    with pytest.raises(FileNotFoundError, match="run notebooks/06_ablations.ipynb with profile='smoke'"):
        conclusions.ensure_results(cfg, "06_ablations", "rows.csv", notebooks_dir=tmp_path)  # no notebook there
    (tmp_path / "06_ablations.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="06_ablations"):
        conclusions.ensure_results(cfg, "06_ablations", "rows.csv", notebooks_dir=tmp_path, run=False)
    table, note = conclusions.optional_results(cfg, "03_tdpm_dip", "generation.csv")
    assert note == "" and table["a"].tolist() == [1]
    table, note = conclusions.optional_results(cfg, "05_example2_guided_early_stopping", "per_image.csv")
    assert table is None and "05_example2_guided_early_stopping/per_image.csv is not in this run's results" in note


# ------------------------------------------------------------------------------------------ the synthesis

def study_paired(rows, seed=0):
    """Chapter 03's study_paired.csv, built as chapter 03 builds it."""
    best = conclusions.best_by_family(rows).set_index(["sigma", "family"])["method_key"]
    test = rows[rows["split"] == "test"]
    out = []
    for sigma in (25, 50):
        h = best[(sigma, "hybrid")]
        for fam in ("DDPM", "DIP"):
            o = best[(sigma, fam)]
            t = test[test["sigma"] == sigma]
            s = comparison.paired(t[t["method_key"] == h], t[t["method_key"] == o], seed=seed)
            out.append(dict(sigma=sigma, hybrid=t.loc[t["method_key"] == h, "method"].iloc[0],
                            against=t.loc[t["method_key"] == o, "method"].iloc[0],
                            time_ratio=t.loc[t["method_key"] == h, "seconds"].mean() / t.loc[t["method_key"] == o, "seconds"].mean(),
                            a=h, b=o, **s))
    return pd.DataFrame(out)


def test_best_by_family_uses_the_validation_images():
    rows = fake_study_rows()
    best = conclusions.best_by_family(rows).set_index(["sigma", "family"])["method_key"]
    assert best[(25, "DDPM")] == "tweedie" and best[(25, "DIP")] == "dip_official" and best[(25, "hybrid")] == "tdpm_matched"
    # a method that is best on the test images only is not chosen
    rows.loc[(rows["method_key"] == "sdedit") & (rows["split"] == "test"), "psnr"] += 10
    assert conclusions.best_by_family(rows).set_index(["sigma", "family"])["method_key"][(25, "hybrid")] == "tdpm_matched"


def test_headline_reads_outcomes_time_ratios_and_glues_short_values():
    rows = fake_study_rows()
    head = headline.headline(study_paired(rows), timings=fake_timings(rows))
    assert list(head["phrase"]) == ["worse than", "better than"] * 2 and list(head["family"]) == ["DDPM", "DIP"] * 2
    assert head["time_ratio"].tolist() == pytest.approx([55.0, 1.1] * 2)  # 5.5 s against 0.1 s and 5.0 s
    assert headline.headline(study_paired(rows))["time_ratio"].isna().all()  # no benchmark, no time ratio
    values = headline.glue_values(head, prefix="x")
    assert values["x_hybrid_s25"] == "TDPM-DIP, one chain" and values["x_ddpm_s50"] == "DDPM posterior mean"
    assert values["x_vs_dip_s25"] == "better than" and values["x_vs_ddpm_time_s50"] == "55.0×"
    assert values["x_vs_dip_wins_s25"] == "4 of 4" and values["x_vs_ddpm_diff_s25"].startswith("-2.")
    assert len(values) == 2 * (1 + 2 * 5) and max(map(len, map(str, values.values()))) <= 80
    rows.loc[rows["method_key"] == "tdpm_matched", "psnr"] += 5  # now best on every image: the phrases flip
    assert set(headline.headline(study_paired(rows))["phrase"]) == {"better than"}


def test_headline_table_one_row_per_approach_with_the_best_marked():
    rows = fake_study_rows()
    ex2 = pd.DataFrame([dict(sigma255=s + 0.3, rule_key=k, rule=k, image=i, psnr=20.0 + i, ssim=0.4, iterations=100 + 10 * i)
                        for s in (25, 50) for k in ("guided", "fixed") for i in range(3)])
    t = headline.headline_table(rows, ex2, timings=fake_timings(rows))
    assert list(t["method"]) == ["DDPM posterior mean (best DDPM alone)", "DIP (official protocol)", "TDPM-DIP, one chain",
                                 "DIP then SDEdit (Example 1)", "DIP stopped by the DDPM (Example 2)",
                                 "non-local means (floor)"]
    assert t["best_s25"].tolist() == [True] + [False] * 5 and t["best_s50"].sum() == 1
    row = t.set_index("method").loc["TDPM-DIP, one chain"]
    assert row["nfe"] == "7" and row["dip_iterations"] == "400" and row["seconds"] == "5.5"
    assert row["psnr_s25"] - row["psnr_s50"] == pytest.approx(2.5)  # psnr - (sigma - 25) / 10
    assert t.set_index("method").loc["DIP stopped by the DDPM (Example 2)", "seconds"] == "–"  # no case in the benchmark
    assert headline.headline_table(rows, None, sigmas=(25,)).columns.tolist()[:2] == ["method", "psnr_s25"]


def test_hybrid_comparisons_and_speed():
    rows = fake_study_rows()
    comp = conclusions.hybrid_comparisons(rows, timings=fake_timings(rows))
    assert conclusions.hybrid_comparisons(rows)["time_ratio"].isna().all()  # no benchmark, no time ratio
    assert len(comp) == 2 * 2 * 2 and set(comp["against_key"]) == {"tweedie", "dip_official"}
    r = comp[(comp["sigma"] == 25) & (comp["hybrid_key"] == "sdedit") & (comp["family"] == "DIP")].iloc[0]
    assert r["mean_diff"] == pytest.approx(-0.975) and r["outcome"] == "worse than" and r["time_ratio"] == pytest.approx(1.2)
    assert conclusions.speed_table(rows)["seconds"].isna().all()  # seconds only from chapter 08's benchmark
    sp = conclusions.speed_table(rows, fake_timings(rows))
    assert sp.loc[0, "seconds"] == pytest.approx(0.1) and sp.loc[1, "seconds"] == pytest.approx(5.0)
    assert list(sp.loc[sp["sigma"] == 25, "method"]) == ["DDPM posterior mean", "DIP, official protocol",
                                                        "TDPM-DIP, matched state", "DIP then SDEdit (Example 1)"]
    assert sp.loc[0, "nfe"] == 1 and sp.loc[1, "dip_iterations"] == 400


def test_example2_pairs_the_guided_rule_with_the_others():
    rules = {"fixed 100": 22.0, "ES-WMV": 21.0, "discrepancy (single stage)": 22.5, "guided (4 stages)": 22.45,
             "oracle (best PSNR)": 30.0}
    per = pd.DataFrame([dict(sigma_nominal=s, t_obs=57, rule=r, image=i, psnr=p + 0.05 * (i % 3) * (r == "fixed 100"))
                        for s in (25,) for r, p in rules.items() for i in range(6)])
    comp = conclusions.example2_paired(per)
    assert list(comp["against"]) == ["fixed 100", "ES-WMV", "discrepancy (single stage)"]  # no oracle
    assert list(comp["outcome"]) == ["better than", "better than", "worse than"]
    assert conclusions.example2_paired(per.assign(sigma_nominal=25.0))["level"].iloc[0] == "σ = 25"  # read back as float
    by_level = conclusions.example2_paired(per.drop(columns="sigma_nominal"))
    assert by_level["level"].iloc[0] == "t = 57"
    split = pd.concat([per.assign(split="val", psnr=0.0), per.assign(split="test")])
    assert conclusions.example2_paired(split)["mean_diff"].tolist() == pytest.approx(comp["mean_diff"].tolist())
    with pytest.raises(ValueError, match="needs the columns"):
        conclusions.example2_paired(per.drop(columns="psnr"))
    # the rewritten chapter 05: rule keys, labels without "oracle", a sigma column
    labels = {"guided": "guided by the DDPM schedule", "fixed": "fixed budget (chosen on validation)",
              "oracle": "best iteration of the fit (upper bound)"}
    new = pd.DataFrame([dict(sigma=50, rule_key=k, rule=v, image=i, psnr=20.0 + (k == "guided") + 0.1 * i * (k == "fixed"))
                        for k, v in labels.items() for i in range(4)])
    c = conclusions.example2_paired(new)
    assert list(c["against"]) == ["fixed budget (chosen on validation)"] and c["level"].iloc[0] == "σ = 50"


def test_summary_table_one_row_per_approach_and_level():
    rows = fake_study_rows()
    rows.loc[(rows["method_key"] == "ddpm") & (rows["split"] == "test"), "psnr"] += 10  # best on test only: not chosen
    ex2 = pd.DataFrame([dict(sigma255=s + 0.3, rule_key=k, rule=k, image=i, psnr=20.0 + i, ssim=0.4, iterations=100 + 10 * i,
                             seconds=2.0) for s in (25, 50) for k in ("guided", "fixed") for i in range(3)])
    t = conclusions.summary_table(rows, ex2)
    at25 = t[t["sigma"] == 25]
    assert list(at25["method"]) == ["DDPM alone: DDPM posterior mean", "DIP, official protocol", "TDPM-DIP, matched state",
                                    "Example 1: DIP then SDEdit", "Example 2: DIP stopped by the DDPM schedule",
                                    "Floor: non-local means"]
    assert at25.set_index("method").loc["Floor: non-local means", "psnr"] == pytest.approx(18.15)
    tdpm = at25.set_index("method").loc["TDPM-DIP, matched state"]
    assert tdpm["psnr"] == pytest.approx(23.3 + 0.15 + 0.025) and tdpm["nfe"] == 7 and tdpm["n"] == 4  # test images only
    g = at25.iloc[-2]
    assert g["psnr"] == pytest.approx(21.0) and g["dip_iterations"] == pytest.approx(110) and g["nfe"] == 0 and g["n"] == 3
    assert set(t["sigma"]) == {25, 50} and set(conclusions.summary_table(rows, None, sigmas=(15, 25))["sigma"]) == {25}


def test_chapter_07_explains_every_reason_phrase():
    import json
    from pathlib import Path
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "07_conclusions.ipynb").read_text())
    text = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").replace("\n", " ")
    text = " ".join(text.split())
    missing = [w for w in (*claims.WHYS, claims.WHY_SIGN.strip(", ")) if f"*{w}*" not in text]
    assert not missing, missing

