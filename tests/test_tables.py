"""The book's table style: readable headers, no index, 3 significant digits, no all-missing column."""

import math

import pandas as pd
import pytest

from tdpmlib.book import tables


@pytest.mark.parametrize("v, text", [(3.822159, "3.82"), (1000.0, "1\u2009000"), (0.0123456, "0.0123"), (12, "12"),
                                     (123.456, "123"), (0.0, "0"), (None, "–"), (math.nan, "–"), (-2.5e-5, "-0.0000250")])
def test_numbers_at_three_significant_digits(v, text):
    assert tables.number(v) == text


def test_shown_table_drops_missing_columns_and_renames():
    df = pd.DataFrame(dict(method=["DIP", "DDPM"], psnr=[27.4312, 26.0], fid=[None, None], seconds_per_image=[3.822159, 0.5],
                           kid_mean=[math.nan, math.nan]))
    shown = tables.frame(df)
    assert list(shown.columns) == ["Method", "PSNR (dB)", "s / image"]
    assert shown.iloc[0].tolist() == ["DIP", "27.43", "3.82"] and shown.iloc[1, 1] == "26.00"
    html = tables.html_table(df, source="/abs/machine/path/results/cpu/02/rows.csv", command="make report")
    assert "<th>Method</th>" in html and "results/cpu/02/rows.csv" in html and "/abs/machine" not in html
    assert "FID" not in html and "None" not in html and "nan" not in html.lower()
    assert "<tbody><tr><td class='text'>DIP</td><td class='num'>27.43</td>" in html  # no index; text left, numbers right


def test_mean_ci_in_one_cell_and_wide_tables_warn():
    assert tables.mean_ci(0.0912, 0.05, 0.131) == "0.09 [0.05, 0.13]"
    assert tables.mean_ci(1.0, math.nan, math.nan) == "1.00"
    wide = pd.DataFrame({f"column_number_{i}": [1.23456] for i in range(12)})
    with pytest.warns(UserWarning, match="pivot or split"):
        tables.html_table(wide)
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the table"):
        tables.frame(wide, columns=["nope"])


def test_width_counts_wrapping_text_at_wrap_and_single_words_in_full():
    long_text = " ".join(["word"] * 30)  # 149 characters that wrap in their cell
    shown = pd.DataFrame({"Text": [long_text], "Id": ["x" * 50]})
    assert tables.width(shown) == tables.WRAP + 50 + 2
    with pytest.warns(UserWarning, match="132 characters wide"):
        tables.html_table(pd.DataFrame({"a": ["y" * 65], "b": ["z" * 65]}))


def test_html_table_bolds_the_flagged_cells_only():
    df = pd.DataFrame({"method": ["a", "b"], "psnr": [1.5, 2.5]})
    out = tables.html_table(df, columns={"method": "Method", "psnr": "PSNR (dB)"}, bold={"psnr": [False, True]})
    assert out.count("<strong>") == 1 and "<strong>2.5" in out and "<strong>1.5" not in out
    assert "<strong>" not in tables.html_table(df)
