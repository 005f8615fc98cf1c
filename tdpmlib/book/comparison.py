"""Paired comparisons over images, the book's one way to say that one method does better than another.

Chapters 03, 05, 06 and 07 compare methods on the same test images: ``paired`` matches two per-image row sets on
``image`` and summarises the differences (``stats.paired``: mean difference, 95% bootstrap interval, wins);
``outcome`` reads the interval in one vocabulary (``WORDS``: "better than" / "not clearly different from" /
"worse than", no threshold). ``validated`` makes a choice on the validation images, ``pick`` and ``compare``
select rows and compare them on the test images. The formatting helpers (``fmt_diff``, ``fmt_ratio``, ``fmt_sigma``)
turn a summary into the short values a chapter glues into its sentences.
"""

from __future__ import annotations

import pandas as pd

from ..evaluation import stats

# One vocabulary for a paired comparison, shared by chapters 03, 06 and 07 (``outcome``).
WORDS = dict(better="better than", unclear="not clearly different from", worse="worse than")
BETTER, WORSE, UNCLEAR = WORDS["better"], WORDS["worse"], WORDS["unclear"]


def validated(rows: pd.DataFrame, *, by=("sigma", "schedule"), exclude=()) -> pd.DataFrame:
    """Per group of ``by``: the method_key with the best mean validation PSNR (ties: the first in row order),
    leaving out the keys in ``exclude``. Columns: by..., method_key, val_psnr, and the chosen rows' value, nfe
    and dip_iterations (those not in ``by``)."""
    by = list(by)
    v = rows[(rows["split"] == "val") & ~rows["method_key"].isin(list(exclude))]
    if v.empty:
        raise ValueError("validated: no validation rows to choose from")
    keys = [*by, "method_key"]
    means = v.groupby(keys, sort=False)["psnr"].mean().rename("val_psnr").reset_index()
    best = means.loc[means.groupby(by, sort=False)["val_psnr"].idxmax()]
    first = v.drop_duplicates(keys).set_index(keys)[[c for c in ("value", "nfe", "dip_iterations") if c not in by]]
    return best.join(first, on=keys).reset_index(drop=True)


def paired(a: pd.DataFrame, b: pd.DataFrame, *, seed: int = 0, metric: str = "psnr") -> dict:
    """``stats.paired`` of two per-image row sets (one row per image each, matched on ``image``); raises
    ValueError when they do not cover the same images."""
    sa, sb = a.set_index("image")[metric], b.set_index("image")[metric]
    if sa.empty or sa.index.has_duplicates or sb.index.has_duplicates or set(sa.index) != set(sb.index):
        raise ValueError(f"paired: the two row sets are not one row per image on the same images "
                         f"({len(sa)} and {len(sb)} rows)")
    return stats.paired(sa.values, sb.loc[sa.index].values, seed=seed)


def outcome(summary) -> str:
    """"better than" / "worse than" / "not clearly different from": where the 95% interval of the mean paired
    difference lies (``stats.verdict``, no threshold). The book's one vocabulary for a paired comparison."""
    return stats.verdict(summary, **WORDS)


def pick(rows: pd.DataFrame, sel: dict, *, split: str = "test") -> pd.DataFrame:
    """The rows of ``split`` whose columns equal ``sel``'s values."""
    m = rows["split"] == split
    for col, val in sel.items():
        m &= rows[col] == val
    return rows[m]


def compare(rows: pd.DataFrame, sel_a: dict, sel_b: dict, *, seed: int = 0, split: str = "test", **labels) -> dict:
    """Paired comparison of the rows selected by ``sel_a`` against those selected by ``sel_b`` (``pick``) on the
    ``split`` images: ``labels``, then ``stats.paired``'s summary, the two means and the ``outcome``."""
    ra, rb = pick(rows, sel_a, split=split), pick(rows, sel_b, split=split)
    if ra.empty or rb.empty:
        raise ValueError(f"compare: no {split} rows for {sel_a if ra.empty else sel_b}")
    s = paired(ra, rb, seed=seed)
    return dict(labels, **s, a_psnr=float(ra["psnr"].mean()), b_psnr=float(rb["psnr"].mean()), outcome=outcome(s))


# --------------------------------------------------------------------------------------------------------
# Short values for the chapters' sentences
# --------------------------------------------------------------------------------------------------------

def fmt_diff(r) -> str:
    """"+0.42 dB [+0.10, +0.75]": a paired summary's mean difference and 95% interval (3 decimals when all three
    are under 0.1 dB in size, so that a small difference does not print as +0.00)."""
    d = 3 if max(abs(r["mean_diff"]), abs(r["ci_low"]), abs(r["ci_high"])) < 0.1 else 2
    return f"{r['mean_diff']:+.{d}f} dB [{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}]"


def fmt_ratio(v) -> str:
    """A time ratio at 3 significant digits: 551×, 17.8×, 1.10×, 0.994×."""
    from .tables import number

    return f"{number(float(v), digits=3)}×"


def fmt_sigma(sigma) -> str:
    """25 for 25, 25.0 or "25" (values read back from CSV may be floats)."""
    return f"{float(sigma):g}"
