"""How the book shows a table: one helper, ``show``, for every table a chapter displays.

A shown table has readable headers, no index column, numbers at 3 significant digits (2 decimals for dB),
a mean and its confidence interval in one cell, no column that is entirely missing, and a short note under
it naming the results file it comes from and the command that recomputes it. The full-precision CSV stays
in ``results/``; this is only its face. Wide results should be pivoted or split before they get here:
``show`` warns when a table is wider than the book's text column (``MAX_CHARS`` characters per row).
"""

from __future__ import annotations

import html
import math
import re
import warnings
from pathlib import Path

import pandas as pd

# Readable headers for the column names the library writes; anything else gets its underscores replaced.
HEADERS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "psnr_mean": "PSNR (dB)", "ssim_mean": "SSIM", "sigma": "σ (0–255)",
    "method": "Method", "schedule": "Schedule", "nfe": "Network evals", "dip_iterations": "DIP iterations",
    "seconds": "Seconds", "seconds_per_image": "s / image", "swd": "SWD", "n": "n", "t": "t", "level": "Noise",
    "frac_copies": "Copies", "ratio_median": "NN ratio (median)", "fid": "FID", "kid_mean": "KID",
    "wins": "Wins", "diff": "Δ PSNR (dB)", "outcome": "Outcome", "rule": "Rule", "budget": "Budget",
    "t_trunc": "T_trunc", "t0": "t₀", "k": "k", "lr": "Learning rate", "step": "Step", "steps": "Steps",
}
MAX_CHARS = 120  # the 836 px text column at the table font (0.85 em, about 6.5 px per character, 128 characters)
MISSING = "–"


def header(name) -> str:
    """The readable header of a results column."""
    name = str(name)
    if name in HEADERS:
        return HEADERS[name]
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def number(v, *, digits: int = 3) -> str:
    """A number at ``digits`` significant digits (integers as integers); missing values as a dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 10 ** (digits - 1)):
        return f"{int(v):,}".replace(",", "\u2009")  # thin-space thousands
    if isinstance(v, float):
        if v == 0:
            return "0"
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
        return f"{v:.{decimals}f}"
    return str(v)


def typeset(text) -> str:
    """ASCII ratios and bounds as the book prints them: "3.37x" -> "3.37×", "x5" -> "×5", ">=" -> "≥"."""
    text = re.sub(r"(\d)x\b", "\\1×", str(text))
    return re.sub(r"\bx(\d)", "×\\1", text).replace(">=", "≥").replace("<=", "≤")


def db(v) -> str:
    """A PSNR or a PSNR difference: 2 decimals (a hundredth of a dB is the resolution worth reading)."""
    return MISSING if v is None or pd.isna(v) else f"{v:.2f}"


def mean_ci(mean, lo, hi, *, fmt=db) -> str:
    """``mean [lo, hi]`` in one cell."""
    if mean is None or pd.isna(mean):
        return MISSING
    if lo is None or pd.isna(lo):
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def _cell(v, column: str, digits: int) -> str:
    if isinstance(v, str):
        return v
    if column in ("psnr", "psnr_mean", "diff") or column.startswith("psnr") or column.endswith("_db"):
        return db(v) if not isinstance(v, int) else str(v)
    return number(v.item() if hasattr(v, "item") else v, digits=digits)


def _missing(v) -> bool:
    if isinstance(v, str):
        return v.strip() in ("", MISSING, "None", "nan", "NaN")
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def frame(df: pd.DataFrame, *, columns=None, digits: int = 3) -> pd.DataFrame:
    """The table as shown, all strings: the chosen columns (a list, or a {column: header} mapping), formatted,
    without the entirely missing ones, with readable headers."""
    if columns is None:
        columns = {c: header(c) for c in df.columns}
    elif not isinstance(columns, dict):
        columns = {c: header(c) for c in columns}
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(df.columns)}")
    keep = [c for c in columns if not df[c].map(_missing).all()]
    out = pd.DataFrame({columns[c]: [_cell(v, str(c), digits) for v in df[c]] for c in keep})
    return out


# Text with spaces wraps inside its cell (the book's CSS), so it needs only about this many characters; measured on
# chapter 08's four-column tables of 40-60-character cells, which fit the 836 px column wrapped.
WRAP = 16


def width(shown: pd.DataFrame) -> int:
    """Characters of the widest row as shown (header or body), counting a gap between columns; long text
    wraps in its cell and counts as ``WRAP`` characters."""
    def need(text: str) -> int:
        return min(WRAP, len(text)) if " " in text else len(text)  # one word cannot wrap

    cols = [max([need(str(c))] + [need(str(v)) for v in shown[c]]) for c in shown.columns]
    return sum(cols) + 2 * max(0, len(cols) - 1)


def note(source=None, command: str | None = None) -> str:
    """The line under a table: where its numbers are and how to recompute them."""
    parts = []
    if source is not None:
        parts.append(f"Data: <code>{html.escape(_relative(source))}</code>")
    if command:
        parts.append(f"recompute: <code>{html.escape(command)}</code>")
    return " · ".join(parts)


def figure_note(path, command: str | None = None):
    """Display the line under a figure: the file it was saved to and the command that recomputes it."""
    text = f"<p class='tdpm-source'>{note(path, command).replace('Data:', 'Figure:', 1)}</p>"
    try:
        from IPython.display import HTML, display
    except ImportError:  # plain Python
        print(text)
        return None
    display(HTML(text))
    return None


def _relative(path) -> str:
    """A results path relative to the repository (never a machine path)."""
    p = Path(path)
    parts = p.parts
    if "results" in parts:
        return str(Path(*parts[parts.index("results"):]))
    return p.name


_NUMERIC = re.compile(r"^[−+-]?[\d\u2009.,]+(?:\s?[%×x]|\s?dB)?(?: \[.*\])?$")


def _is_number(text: str) -> bool:
    return text == MISSING or bool(_NUMERIC.match(text))


def _html(shown: pd.DataFrame, marks: dict | None = None) -> str:
    """The shown table as HTML: numeric columns right-aligned (class ``num``), text left-aligned (``text``); the
    cells that ``marks`` ({shown header: one bool per row}) flags in bold."""
    kinds = ["num" if all(_is_number(str(v)) for v in shown[c]) else "text" for c in shown.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    flags = [list((marks or {}).get(c, [False] * len(shown))) for c in shown.columns]
    cell = lambda v, on: f"<strong>{html.escape(str(v))}</strong>" if on else html.escape(str(v))  # noqa: E731
    rows = "".join("<tr>" + "".join(f"<td class='{k}'>{cell(v, f[i])}</td>" for k, v, f in zip(kinds, r, flags)) + "</tr>"
                   for i, r in enumerate(shown.itertuples(index=False)))
    return f"<table class='tdpm-table'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def html_table(df: pd.DataFrame, *, columns=None, digits: int = 3, caption: str | None = None, source=None,
               command: str | None = None, bold: dict | None = None) -> str:
    """The HTML of a shown table (see ``show``); ``bold`` maps a column of ``df`` to one bool per row, the cells
    to print in bold (e.g. the best value)."""
    shown = frame(df, columns=columns, digits=digits)
    if width(shown) > MAX_CHARS:
        warnings.warn(f"table is {width(shown)} characters wide (more than {MAX_CHARS}); pivot or split it", stacklevel=3)
    names = columns if isinstance(columns, dict) else {c: header(c) for c in (columns or df.columns)}
    body = _html(shown, {names[c]: list(m) for c, m in (bold or {}).items() if names.get(c) in shown.columns})
    cap = f"<p class='tdpm-caption'>{html.escape(caption)}</p>" if caption else ""
    foot = note(source, command)
    foot = f"<p class='tdpm-source'>{foot}</p>" if foot else ""
    return f"<div class='tdpm-table-wrap'>{cap}{body}{foot}</div>"


def show(df: pd.DataFrame, *, columns=None, digits: int = 3, caption: str | None = None, source=None,
         command: str | None = None):
    """Display ``df`` as the book shows tables (an ``IPython.display.HTML``; printed outside IPython).

    ``columns`` picks and orders columns (a list, or a mapping to headers); ``source`` is the results file the
    numbers come from and ``command`` the command that recomputes it, both printed under the table."""
    text = html_table(df, columns=columns, digits=digits, caption=caption, source=source, command=command)
    try:
        from IPython.display import HTML, display
    except ImportError:  # plain Python
        print(frame(df, columns=columns, digits=digits).to_string(index=False))
        return None
    display(HTML(text))
    return None
