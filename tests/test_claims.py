"""tdpmlib.claims: the claims table, the lookup of measurements, comparability and the verdict rule."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tdpmlib import claims
from tdpmlib.claims import NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, verdict


# ------------------------------------------------------------------------------------------- the table

def test_claims_table_is_consistent():
    t = claims.claims_table()
    assert t["claim_id"].is_unique
    assert set(t["kind"]) == {"value", "direction"}
    assert set(t["table"]) == {"Table 1", "Table 2", "Table 3", "Table 4"}
    values = t[t["kind"] == "value"].set_index("claim_id")
    for c in t[t["kind"] == "direction"].to_dict("records"):
        assert c["a"] in values.index and c["b"] in values.index
        assert values.at[c["a"], "metric"] == values.at[c["b"], "metric"] == c["metric"]
    for c in values.reset_index().to_dict("records"):
        assert c["source"] in ("generation", "denoising", "ablations") and c["same"] and c["corrected"]
    assert t["tolerance"].notna().all() and t["claimed"].notna().all()


@pytest.mark.parametrize("claim_id, expected", [
    ("T2-tdpm-psnr", 32.63), ("T1-ddpm-fid", 69.05), ("T3-50-psnr", 28.70), ("T4-tdpm-ssim", 0.979),
    ("T2-dir-tdpm-ddpm", 32.63 - 13.40), ("T1-dir-fid", 20.12 - 69.05), ("T4-dir-ddpm", 18.68 - 13.40),
    ("T3-dir-5-0", 32.77 - 32.12),
])
def test_claimed_values_and_differences(claim_id, expected):
    t = claims.claims_table().set_index("claim_id")
    assert t.at[claim_id, "claimed"] == pytest.approx(expected)


def test_claimed_reads_value_claims_and_rejects_others():
    t = claims.claims_table().set_index("claim_id")
    for claim_id in ("T2-dip-psnr", "T1-tdpm-seconds", "T4-ddpm-ssim"):
        assert claims.claimed(claim_id) == t.at[claim_id, "claimed"]
    for bad in ("T2-dir-tdpm-ddpm", "no-such-claim"):  # a direction has no number of its own in the report
        with pytest.raises(ValueError, match=f"claim_id='{bad}' is not a value claim"):
            claims.claimed(bad)


# ----------------------------------------------------------------------------------------- the verdict

def test_value_within_tolerance_is_reproduced():
    v, reason = verdict(32.63, 32.5, 32.0, metric="psnr", tolerance=1.0)
    assert v == REPRODUCED
    assert "32.00" in reason and "32.63" in reason and "32.50" in reason


def test_value_outside_tolerance_is_not_reproduced():
    v, reason = verdict(32.63, 32.4, 12.1, metric="psnr", tolerance=1.0)
    assert v == NOT_REPRODUCED
    assert "12.10" in reason and "-20.53" in reason and "report's protocol gives 32.40" in reason


def test_value_not_comparable_or_missing():
    v, reason = verdict(20.12, None, 35.0, metric="fid", tolerance=5.0, comparable=False, why="FID is biased")
    assert v == NOT_COMPARABLE and reason.startswith("FID is biased") and "35.00" in reason
    v, reason = verdict(20.12, 18.0, float("nan"), metric="fid", tolerance=5.0, why="offline")
    assert v == NOT_COMPARABLE and "offline" in reason and "18.00" in reason
    v, _ = verdict(20.12, None, None, metric="fid", tolerance=5.0)
    assert v == NOT_COMPARABLE


def test_direction_holds_reverses_or_vanishes():
    v, reason = verdict(19.23, 25.0, 3.2, metric="psnr", tolerance=0.1, kind="direction")
    assert v == REPRODUCED and "+3.20" in reason and "+19.23" in reason and "+25.00" in reason
    v, reason = verdict(0.51, 0.7, -1.5, metric="psnr", tolerance=0.1, kind="direction")
    assert v == NOT_REPRODUCED and "reversed" in reason and "-1.50" in reason
    v, reason = verdict(0.51, None, 0.05, metric="psnr", tolerance=0.1, kind="direction")
    assert v == NOT_REPRODUCED and "no difference" in reason
    v, reason = verdict(-48.93, None, -10.0, metric="fid", tolerance=1.0, kind="direction")
    assert v == REPRODUCED  # lower FID claimed and measured: same (negative) sign
    v, _ = verdict(-48.93, None, None, metric="fid", tolerance=1.0, kind="direction", why="offline")
    assert v == NOT_COMPARABLE


def test_direction_ignores_the_comparable_flag_but_not_missing_values():
    # Directions are checked under every profile: only a missing measurement makes them not comparable.
    v, _ = verdict(2.13, None, 1.0, metric="psnr", tolerance=0.1, kind="direction", comparable=False)
    assert v == REPRODUCED


def test_verdict_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind="):
        verdict(1.0, 1.0, 1.0, metric="psnr", tolerance=0.1, kind="ordering")


# ------------------------------------------------------------------------------------------ comparability

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
    assert got is ok and (why == "") is ok


# ------------------------------------------------------------------------------- measuring from results

def fake_generation(fid_ok=True):
    def row(key, fid, secs, nfe, its, frac=None):
        return dict(method=key.upper(), method_key=key, n=1000, n_reference=1000, fid=fid if fid_ok else None,
                    fid_status="ok" if fid_ok else "unavailable: Inception weights not found (offline)",
                    seconds_per_image=secs, nfe=nfe, dip_iterations=its, frac_copies_fit=frac)
    return pd.DataFrame([row("ddpm", 60.0, 2.0, 1000, 0), row("tdpm_train", 15.0, 0.5, 10, 100, 1.0),
                         row("tdpm_held", 25.0, 0.5, 10, 100, 0.9)])


def fake_denoising():
    rows = []
    for schedule, shift in (("linear", 0.0), ("cosine", 1.0)):
        for key, protocol, p, s in (("ddpm", "corrected", 9.0, 0.20), ("dip_short", "corrected", 8.0, 0.10),
                                    ("tdpm_dip", "corrected", 8.5, 0.12), ("report_dip_clean", "report", 33.0, 0.95),
                                    ("report_tdpm_clean", "report", 32.0, 0.96)):
            rows.append(dict(setting=f"t = 600 ({schedule})", schedule=schedule, t=600, method=key, method_key=key,
                             protocol=protocol, psnr_mean=p + shift, ssim_mean=s, n=8, seconds_per_image=1.0,
                             nfe=600 if key == "ddpm" else 10, dip_iterations=0 if key == "ddpm" else 100))
    # A sigma setting of the same schedule at another level must not be picked up.
    rows.append(dict(rows[0], setting="σ = 25/255 (linear, t = 57)", t=57, psnr_mean=25.0))
    return pd.DataFrame(rows)


def fake_ablations():
    rows = []
    for tt, p in ((0, 8.0), (5, 8.3), (10, 8.5), (50, 9.5)):
        rows.append(dict(ablation="t_trunc", value=str(tt), schedule="linear", protocol="corrected", psnr_mean=p,
                         ssim_mean=0.1, n=8))
        rows.append(dict(ablation="t_trunc", value=str(tt), schedule="linear", protocol="report", psnr_mean=30 - tt / 10,
                         ssim_mean=0.9, n=8))
    rows.append(dict(ablation="dip_preset", value="dip-cpu", schedule="linear", protocol="corrected", psnr_mean=1.0,
                     ssim_mean=0.0, n=8))
    return pd.DataFrame(rows)


def measured(**kw):
    m = claims.measure(claims.claims_table(), generation=fake_generation(**kw), denoising=fake_denoising(),
                       ablations=fake_ablations())
    return m.set_index("claim_id")


def test_measure_looks_up_both_protocols():
    m = measured()
    assert m.at["T1-tdpm-fid", "same"] == 15.0 and m.at["T1-tdpm-fid", "corrected"] == 25.0
    assert m.at["T1-tdpm-steps", "same"] == 110 and m.at["T1-ddpm-steps", "corrected"] == 1000
    assert m.at["T1-tdpm-new", "corrected"] == 0.9
    assert m.at["T2-tdpm-psnr", "same"] == 32.0 and m.at["T2-tdpm-psnr", "corrected"] == 8.5
    assert m.at["T2-ddpm-psnr", "corrected"] == 9.0  # not the sigma setting's 25.0
    assert m.at["T2-dip-psnr", "same"] == 33.0 and m.at["T2-dip-psnr", "corrected"] == 8.0
    assert m.at["T4-dip-psnr", "corrected"] == 9.0
    assert m.at["T3-5-psnr", "corrected"] == 8.3 and m.at["T3-50-psnr", "same"] == 25.0
    assert m.at["T1-ddpm-fid", "fid_status"] == "ok" and m.at["T1-ddpm-fid", "n"] == 1000


def test_measure_computes_directions_from_the_value_rows():
    m = measured()
    assert m.at["T2-dir-tdpm-ddpm", "corrected"] == pytest.approx(8.5 - 9.0)
    assert m.at["T2-dir-tdpm-ddpm", "same"] == pytest.approx(32.0 - 9.0)
    assert m.at["T4-dir-tdpm", "corrected"] == pytest.approx(1.0)
    assert m.at["T3-dir-50-10", "corrected"] == pytest.approx(1.0)
    assert m.at["T1-dir-seconds", "corrected"] == pytest.approx(-1.5)


def test_missing_tables_and_rows_give_none():
    m = claims.measure(claims.claims_table(), denoising=fake_denoising()).set_index("claim_id")
    assert m.at["T1-ddpm-fid", "corrected"] is None and m.at["T3-5-psnr", "corrected"] is None
    assert m.at["T3-dir-5-0", "corrected"] is None
    with pytest.raises(ValueError, match="method_key"):
        claims.measure(claims.claims_table(), generation=fake_generation().drop(columns="method_key"))


def test_assess_under_paper_and_cpu():
    m = claims.measure(claims.claims_table(), generation=fake_generation(), denoising=fake_denoising(),
                       ablations=fake_ablations())
    paper = claims.assess(m, profile="paper").set_index("claim_id")
    assert paper.at["T2-tdpm-psnr", "verdict"] == NOT_REPRODUCED       # 8.5 vs 32.63
    assert paper.at["T1-ddpm-steps", "verdict"] == REPRODUCED          # 1000 == 1000
    assert paper.at["T1-tdpm-new", "verdict"] == NOT_REPRODUCED        # 90 % copies
    assert paper.at["T1-ddpm-seconds", "verdict"] == NOT_COMPARABLE    # hardware
    assert paper.at["T1-dir-fid", "verdict"] == REPRODUCED             # 25 < 60
    assert paper.at["T2-dir-tdpm-ddpm", "verdict"] == NOT_REPRODUCED   # reversed: 8.5 < 9.0
    assert paper.at["T3-dir-50-10", "verdict"] == NOT_REPRODUCED       # reversed: 50 is better here
    assert paper.at["T4-dir-ddpm", "verdict"] == REPRODUCED
    assert paper.at["T3-5-psnr", "verdict"] == NOT_REPRODUCED
    cpu = claims.assess(m, profile="cpu").set_index("claim_id")
    assert cpu.at["T2-tdpm-psnr", "verdict"] == NOT_COMPARABLE and "cpu profile" in cpu.at["T2-tdpm-psnr", "reason"]
    assert cpu.at["T2-dir-tdpm-ddpm", "verdict"] == NOT_REPRODUCED     # directions still checked
    assert set(cpu["verdict"]) <= set(claims.VERDICTS)
    short = claims.measure(claims.claims_table(), generation=fake_generation().assign(dip_iterations=20))
    short = claims.assess(short, profile="paper").set_index("claim_id")
    assert short.at["T1-tdpm-steps", "verdict"] == NOT_COMPARABLE and "20 iterations" in short.at["T1-tdpm-steps", "reason"]
    counts = claims.counts(cpu.reset_index())
    assert counts.loc["all"].sum() == len(cpu)


def test_assess_says_when_fid_is_unavailable():
    m = claims.measure(claims.claims_table(), generation=fake_generation(fid_ok=False), denoising=fake_denoising())
    a = claims.assess(m, profile="paper").set_index("claim_id")
    for cid in ("T1-ddpm-fid", "T1-tdpm-fid", "T1-dir-fid"):
        assert a.at[cid, "verdict"] == NOT_COMPARABLE and "FID is not available" in a.at[cid, "reason"]
    assert "not run under this profile" in a.at["T3-5-psnr", "reason"]


def test_display_table_formats_per_metric():
    m = claims.measure(claims.claims_table(), generation=fake_generation(), denoising=fake_denoising(),
                       ablations=fake_ablations())
    d = claims.display_table(claims.assess(m, profile="paper")).set_index("claim")
    assert d.at["T2-tdpm-ssim", "claimed"] == "0.970" and d.at["T2-tdpm-psnr", "corrected protocol"] == "8.50"
    assert d.at["T2-dir-tdpm-ddpm", "claimed"] == "+19.23" and d.at["T1-ddpm-steps", "claimed"] == "1000"
    assert d.at["T1-ddpm-fid", "report's protocol"] == "60.00"


# ------------------------------------------------------------------------------------------ standalone

def test_ensure_results(tmp_path):
    cfg = SimpleNamespace(results_dir=str(tmp_path / "results"), profile="smoke", data_source="", seed=0,
                          device="cpu", out_dir=lambda: tmp_path)
    done = tmp_path / "results" / "smoke" / "03_tdpm_dip" / "generation.csv"
    done.parent.mkdir(parents=True)
    done.write_text("a\n1\n")
    assert claims.ensure_results(cfg, "03_tdpm_dip", "generation.csv", notebooks_dir=tmp_path) == done
    with pytest.raises(FileNotFoundError, match="run notebooks/06_ablations.ipynb with profile='smoke'"):
        claims.ensure_results(cfg, "06_ablations", "ablations.csv", notebooks_dir=tmp_path)  # no notebook there
    (tmp_path / "06_ablations.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="06_ablations"):
        claims.ensure_results(cfg, "06_ablations", "ablations.csv", notebooks_dir=tmp_path, run=False)


def test_sentences_follow_the_verdicts():
    m = claims.measure(claims.claims_table(), generation=fake_generation(), denoising=fake_denoising(),
                       ablations=fake_ablations())
    a = claims.assess(m, profile="paper")
    t2 = claims.table_sentence(a, "Table 2")
    assert t2.startswith("Of the 10 claims taken from Table 2,")
    text = claims.closing_text(a)
    assert f"Of the {len(a)} claims checked" in text
    assert "33.00 dB for the DIP and 32.00 dB for TDPM-DIP" in text and "8.00 and 8.50 dB" in text
    assert "at least 23.5 dB lower: the report's protocol overstates" in text
    assert "does not beat the DDPM (-0.50 dB) and beats the DIP alone (+0.50 dB)" in text
    assert "100% of TDPM-DIP's samples" in text and "90% when" in text and "rather than generating" in text
    assert "raises every method's PSNR" in text and "DDPM +1.00 dB" in text
    # Without the generation table its sentence is left out.
    m2 = claims.measure(claims.claims_table(), denoising=fake_denoising())
    assert "In generation" not in claims.closing_text(claims.assess(m2, profile="cpu"))
    # The copy sentence follows the fractions, whatever the verdict (here: not comparable, 20 iterations).
    few = fake_generation().assign(dip_iterations=20, frac_copies_fit=0.0)
    m3 = claims.measure(claims.claims_table(), generation=few, denoising=fake_denoising())
    assert "most of its samples are not copies" in claims.closing_text(claims.assess(m3, profile="paper"))
