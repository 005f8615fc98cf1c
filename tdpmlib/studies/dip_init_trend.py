"""The generation trend of Example 1 (notebook 04): how re-noising to larger t0 changes what the outputs are.

``generation_trend`` reads ``example1.generation_sweep``'s tables and compares, image by image, the outputs at the
smallest and the largest t0 (``stats.paired``): the distance to the fitted image, the memorisation ratio and
being a copy. It returns numbers and short direction words (chosen by ``stats.verdict``'s rule, no threshold);
the notebook's markdown holds the sentences.
"""

from __future__ import annotations

import pandas as pd

from ..evaluation import stats


def _paired_change(per_image: pd.DataFrame, start: str, t_lo, t_hi, column: str, seed: int) -> dict:
    """``stats.paired`` of ``column`` at t0 = t_hi against t0 = t_lo, image by image (the same fitted images)."""
    def pick(t0):
        d = per_image[(per_image.start == start) & (per_image.t0 == t0)].set_index("image")[column]
        if d.empty or d.index.has_duplicates:
            raise ValueError(f"generation_trend: no unique per-image rows for start {start!r} at t0={t0}")
        return d

    hi, lo = pick(t_hi), pick(t_lo)
    if set(hi.index) != set(lo.index):
        raise ValueError(f"generation_trend: {start!r} is not scored on the same images at t0={t_lo} and t0={t_hi}")
    return stats.paired(hi.values.astype(float), lo.loc[hi.index].values.astype(float), seed=seed)


def _direction(summary: dict) -> int:
    """+1 if the paired interval lies above 0, -1 if below, 0 if it contains 0 (``stats.verdict``'s rule)."""
    return {"up": 1, "down": -1, "none": 0}[stats.verdict(summary, better="up", worse="down", unclear="none")]


def generation_trend(per_image: pd.DataFrame, summary: pd.DataFrame, *, seed: int = 0,
                     training: str = "DIP fit to training", held_out: str = "DIP fit to held-out",
                     full: str = "pure noise (DDPM)") -> dict:
    """The generation trend of notebook 04 as numbers and short words, from t0 = ``t_lo`` to t0 = ``t_hi``.

    ``per_image`` and ``summary`` are ``generation_sweep``'s tables. For each DIP start the outputs at the
    smallest and the largest t0 are compared image by image (the same fitted images): the change of the
    distance to the fitted image (``d_fit``), and, for the training-image fits, of the memorisation ratio
    and of being a copy (d_train < d_held / 2, i.e. ratio < 1/2). A change is called a change when the
    95% bootstrap interval of the paired mean difference excludes 0 (``stats.verdict``, no fixed threshold).

    Returns ``t_lo``, ``t_hi``; per start present, under ``"training"`` / ``"held_out"``: ``d_fit_lo``,
    ``d_fit_hi``, ``d_fit_change`` (the paired summary, t_hi minus t_lo) and ``d_fit_word`` ("grows",
    "shrinks" or "does not clearly change"). With the training start also ``ratio_lo``, ``ratio_hi`` (medians),
    ``ratio_change``, ``ratio_word`` and ``copies_lo``, ``copies_hi`` (fractions), ``copies_change``,
    ``copies_word`` ("rises", "falls", "does not clearly change"), and ``memorisation`` ("reduces", "increases",
    "does not clearly change", "has no consistent effect on"); with the ``full`` start ``full_ratio`` and
    ``full_copies``. Missing starts leave their keys out.
    """
    dip_rows = summary[summary.start.isin([training, held_out])]
    t_lo, t_hi = dip_rows.t0.min(), dip_rows.t0.max()
    if not t_hi > t_lo:
        raise ValueError("generation_trend needs at least two re-noising levels t0")
    at = lambda start, t0: summary[(summary.start == start) & (summary.t0 == t0)].iloc[0]
    out = {"t_lo": int(t_lo), "t_hi": int(t_hi)}
    starts = set(summary.start)
    for start, name in ((training, "training"), (held_out, "held_out")):
        if start not in starts:
            continue
        ch = _paired_change(per_image, start, t_lo, t_hi, "d_fit", seed)
        out[name] = dict(d_fit_lo=float(at(start, t_lo).d_fit_mean), d_fit_hi=float(at(start, t_hi).d_fit_mean),
                         d_fit_change=ch, d_fit_word=_GROWS[_direction(ch)])
    if training not in starts:
        return out
    r0, r1 = at(training, t_lo), at(training, t_hi)
    ratio = _paired_change(per_image, training, t_lo, t_hi, "mem_ratio", seed)
    copy_of = per_image.assign(copy=(per_image.mem_ratio < 0.5).astype(float))
    copies = _paired_change(copy_of, training, t_lo, t_hi, "copy", seed)
    d_ratio, d_copies = _direction(ratio), _direction(copies)
    # less memorisation: the ratio rises, the copies fall
    signs = {s for s in (d_ratio, -d_copies) if s != 0}
    memorisation = ("does not clearly change" if not signs else "reduces" if signs == {1} else "increases"
                    if signs == {-1} else "has no consistent effect on")
    out["training"].update(ratio_lo=float(r0.mem_ratio_median), ratio_hi=float(r1.mem_ratio_median), ratio_change=ratio,
                           ratio_word=_RISES[d_ratio], copies_lo=float(r0.frac_copies), copies_hi=float(r1.frac_copies),
                           copies_change=copies, copies_word=_RISES[d_copies], memorisation=memorisation)
    if full in starts:
        f = summary[summary.start == full].iloc[0]
        out["full_ratio"], out["full_copies"] = float(f.mem_ratio_median), float(f.frac_copies)
    return out


_GROWS = {1: "grows", -1: "shrinks", 0: "does not clearly change"}
_RISES = {1: "rises", -1: "falls", 0: "does not clearly change"}
