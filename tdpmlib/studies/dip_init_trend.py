"""The generation verdict of Example 1 (notebook 04): how re-noising to larger t0 changes what the outputs are.

``generation_trend`` reads ``example1.generation_sweep``'s tables and compares, image by image, the outputs at the
smallest and the largest t0 (``stats.paired``): the distance to the fitted image, the memorisation ratio and
being a copy. Its words follow the measured direction and size.
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


def _ci(summary: dict, digits: int) -> str:
    f = f"{{:+.{digits}f}}"
    return f"{f.format(summary['mean_diff'])} [{f.format(summary['ci_low'])}, {f.format(summary['ci_high'])}]"


def generation_trend(per_image: pd.DataFrame, summary: pd.DataFrame, *, seed: int = 0,
                     training: str = "DIP fit to training", held_out: str = "DIP fit to held-out",
                     full: str = "pure noise (DDPM)") -> str:
    """The generation verdict of notebook 04, in words that follow the measured direction and size.

    ``per_image`` and ``summary`` are ``generation_sweep``'s tables. For each DIP start the outputs at the
    smallest and the largest t0 are compared image by image (the same fitted images): the change of the
    distance to the fitted image (``d_fit``), and, for the training-image fits, of the memorisation ratio
    and of being a copy (d_train < d_held / 2, i.e. ratio < 1/2). A change is called a change when the
    95% bootstrap interval of the paired mean difference excludes 0 (``stats.verdict``, no fixed
    threshold); otherwise the text says there is no clear change. Values are quoted at both ends with
    their ratio, so the size of the change is stated too.
    """
    dip_rows = summary[summary.start.isin([training, held_out])]
    t_lo, t_hi = dip_rows.t0.min(), dip_rows.t0.max()
    if not t_hi > t_lo:
        raise ValueError("generation_trend needs at least two re-noising levels t0")
    at = lambda start, t0: summary[(summary.start == start) & (summary.t0 == t0)].iloc[0]
    lo_hi = f"from t₀ = {int(t_lo)} to t₀ = {int(t_hi)}"

    # distance to the fitted image, per start
    clauses, dirs = [], []
    for start, name in ((training, "training-image fits"), (held_out, "held-out fits")):
        if start not in set(summary.start):
            continue
        a, b = at(start, t_lo).d_fit_mean, at(start, t_hi).d_fit_mean
        ch = _paired_change(per_image, start, t_lo, t_hi, "d_fit", seed)
        d = _direction(ch)
        dirs.append(d)
        times = f"×{b / a:.2f}; " if a > 0 else ""
        detail = f"{times}paired difference {_ci(ch, 3)}, larger on {ch['wins']} of {ch['n']} images"
        if d == 0:
            clauses.append(f"does not clearly change for the {name} ({a:.3f} to {b:.3f}; {detail})")
        else:
            clauses.append(f"{'grows' if d > 0 else 'shrinks'} from {a:.3f} to {b:.3f} for the {name} ({detail})")
    lead = {1: "moves the outputs away from", -1: "brings the outputs closer to",
            0: "does not clearly change how far the outputs are from"}
    head = (lead[dirs[0]] if len(set(dirs)) == 1
            else "changes the distance of the outputs differently for the two fit sets from")
    text = (f"Re-noising to larger t₀ {head} the images the DIP fitted: {lo_hi} the mean distance to the fitted "
            f"image " + " and ".join(clauses) + ".")

    if training not in set(summary.start):
        return text
    r0, r1 = at(training, t_lo), at(training, t_hi)
    ratio = _paired_change(per_image, training, t_lo, t_hi, "mem_ratio", seed)
    copy_of = per_image.assign(copy=(per_image.mem_ratio < 0.5).astype(float))
    copies = _paired_change(copy_of, training, t_lo, t_hi, "copy", seed)
    d_ratio, d_copies = _direction(ratio), _direction(copies)
    r_verb = {1: "rises", -1: "falls", 0: "does not clearly change"}[d_ratio]
    ratio_text = (f"the median memorisation ratio {r_verb} from {r0.mem_ratio_median:.2f} to {r1.mem_ratio_median:.2f} "
                  f"(paired difference of the per-image ratio {_ci(ratio, 2)})")
    if r0.frac_copies == 0 and r1.frac_copies == 0:
        copies_text = (f"no output is a copy by the d_train < d_held/2 criterion at t₀ = {int(t_lo)} or "
                       f"t₀ = {int(t_hi)}")
    else:
        c_verb = {1: "rises", -1: "falls", 0: "does not clearly change"}[d_copies]
        n = copies["n"]
        copies_text = (f"the fraction of copies (d_train < d_held/2) {c_verb} from {r0.frac_copies:.0%} to "
                       f"{r1.frac_copies:.0%} ({copies['losses']} of {n} images stop being copies, "
                       f"{copies['wins']} become one)")
    full_text = ""
    if full in set(summary.start):
        f = summary[summary.start == full].iloc[0]
        full_text = (f" For comparison, the full DDPM chain from pure noise has a median ratio of "
                     f"{f.mem_ratio_median:.2f} and {f.frac_copies:.0%} copies.")
    # less memorisation: the ratio rises, the copies fall
    signs = {s for s in (d_ratio, -d_copies) if s != 0}
    verdict = ("does not clearly change" if not signs else "reduces" if signs == {1} else "increases" if signs == {-1}
               else "has no consistent effect on")
    text += (f" For the training-image fits, {lo_hi} {ratio_text}, and {copies_text}.{full_text} By these "
             f"paired measures, re-noising to larger t₀ {verdict} memorisation.")
    return text
