"""Chapter 07's synthesis: does combining DDPM and DIP beat each alone, and what do the other chapters add?

``answer`` / ``answer_details`` / ``answer_overall`` read chapter 03's ``study_paired.csv`` (the best hybrid against
the best DDPM alone and the best DIP alone, chosen on validation images); ``hybrid_comparisons`` / ``hybrid_text``
pair every hybrid with those two; ``example2_paired`` / ``example2_text`` pair chapter 05's stopping rules. Every
comparison is paired over the test images and read in the book's one vocabulary (``tdpmlib.book.comparison``). Time
ratios come from chapter 08's timing benchmark (``timings``, ``tdpmlib.studies.timing.read``), never from the rows; the
summary tables and the generation sentence are in ``tdpmlib.studies.summary`` (read here as ``synthesis.*`` too).

Chapter 07 reads the other chapters' results: ``ensure_results`` runs a producing notebook when its file is
missing, ``optional_results`` reads an optional table if it is there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from ..book import comparison
from ..book.comparison import BETTER, WORDS, WORSE
from ..workflow.remote import BRANCH, REPOSITORY, raw_url  # noqa: F401  (REPOSITORY and BRANCH are read as synthesis.*)
from .summary import (FAMILIES, SUMMARY_FLOORS, SUMMARY_METHODS, best_by_family,  # noqa: F401  (read as synthesis.*)
                      generation_summary, seconds, speed_table, summary_table)


# ------------------------------------------------------------------------------------------------------
# Standalone runs
# ------------------------------------------------------------------------------------------------------

def ensure_results(cfg, producer: str, name: str, *, notebooks_dir=".", run: bool = True) -> Path:
    """The path of ``<results_dir>/<profile>/<producer>/<name>``; if it is missing, run the producing
    notebook (``<notebooks_dir>/<producer>.ipynb``) with papermill and this run's profile, data source, seed,
    device and results folder. Raises ``FileNotFoundError`` naming the notebook to run if that is impossible
    (``run=False``, or the notebook is not there) or the file is still missing afterwards."""
    path = Path(cfg.results_dir) / cfg.profile / producer / name
    if path.is_file():
        return path
    nb = Path(notebooks_dir) / f"{producer}.ipynb"
    hint = f"{path} is missing: run notebooks/{producer}.ipynb with profile={cfg.profile!r} first"
    if not run:
        raise FileNotFoundError(hint)
    if not nb.is_file():  # a notebook opened alone (on Colab): fetch its sibling from the book's repository
        nb = fetch_notebook(producer, cfg.out_dir() / "producers", hint=hint)
    import papermill as pm

    from ..workflow.results import captured_output  # keeps the kernel's start-up warnings out of the page

    params = dict(profile=cfg.profile, data_source=cfg.data_source, seed=cfg.seed, device=cfg.device,
                  results_dir=str(Path(cfg.results_dir).resolve()))
    with captured_output():
        pm.execute_notebook(str(nb), str(cfg.out_dir() / f"{producer}.executed.ipynb"), parameters=params,
                            cwd=str(nb.parent.resolve()), kernel_name="python3", progress_bar=False)
    if not path.is_file():
        raise FileNotFoundError(hint + f" ({nb} ran but did not write it)")
    return path


def notebook_url(producer: str) -> str:
    """Where a chapter's notebook lives in the book's repository ($TDPM_NOTEBOOKS_URL overrides the folder)."""
    base = os.environ.get("TDPM_NOTEBOOKS_URL") or raw_url("notebooks")
    return f"{base.rstrip('/')}/{producer}.ipynb"


def fetch_notebook(producer: str, dest: Path, *, hint: str, timeout: float = 20.0) -> Path:
    """Download a producing notebook next to this run's results; one FileNotFoundError saying what to do if it
    cannot be had (offline, or no such notebook). A partial download is never left behind."""
    import urllib.request

    from ..workflow.results import atomic_path

    url = notebook_url(producer)
    out = Path(dest) / f"{producer}.ipynb"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
        json.loads(body)  # a notebook, not an error page
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{hint}; it is not beside this notebook and could not be fetched from {url} "
                                f"({type(e).__name__})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(body)
    return out


def optional_results(cfg, producer: str, name: str) -> tuple[pd.DataFrame | None, str]:
    """(table, note): an optional input read if present, never produced here; the note says plainly what is
    missing (empty when the file was read)."""
    path = Path(cfg.results_dir) / cfg.profile / producer / name
    if not path.is_file():
        return None, (f"{producer}/{name} is not in this run's results ({cfg.profile} profile): run "
                      f"notebooks/{producer}.ipynb to add it")
    return pd.read_csv(path), ""


# ------------------------------------------------------------------------------------------------------
# The synthesis (chapter 07): does combining DDPM and DIP beat each alone?
# ------------------------------------------------------------------------------------------------------

def time_ratio(timings: pd.DataFrame | None, sigma, a: str, b: str) -> float:
    """Seconds per image of study method ``a`` over ``b`` at sigma, both from the timing benchmark (NaN without)."""
    return seconds(timings, sigma, a) / seconds(timings, sigma, b)


def _timed(v) -> bool:
    return v is not None and math.isfinite(float(v))


def answer(study_paired: pd.DataFrame, *, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Chapter 03's study_paired.csv (the best hybrid ``a`` against the best DDPM alone and the best DIP alone ``b``,
    per sigma) with each comparison's ``outcome`` and ``time_ratio``, the seconds per image of a over b in the
    timing benchmark (NaN without ``timings``)."""
    out = study_paired.copy()
    out["outcome"] = [comparison.outcome(r) for r in out.to_dict("records")]
    out["time_ratio"] = [time_ratio(timings, s, a, b) for s, a, b in zip(out["sigma"], out["a"], out["b"])]
    return out


def _sigmas_text(sigmas) -> str:
    return "σ = " + comparison.join_and(comparison.fmt_sigma(s) for s in sigmas)


def _at(*phrases) -> list[str]:
    """"<phrase> at σ = ..." for each (phrase, sigmas) whose sigmas are not empty, in order."""
    return [f"{phrase} at {_sigmas_text(sigmas)}" for phrase, sigmas in phrases if sigmas]


def _family(label: str, families: dict | None) -> str:
    if families and label in families:
        return families[label]
    return "DIP" if "DIP" in label else "DDPM"


def answer_details(ans: pd.DataFrame, *, families: dict | None = None) -> str:
    """Per sigma: the best hybrid against each method alone (outcome, paired difference, time ratio when timed).
    ``families`` maps a compared method's label to "DDPM" or "DIP" (default: read from the label)."""
    per = []
    for sigma, g in ans.groupby("sigma", sort=True):
        parts = [f"{r['outcome']} the best {_family(r['against'], families)} alone, {r['against']} "
                 f"({comparison.fmt_diff(r)}, wins {int(r['wins'])} of {int(r['n'])}"
                 + (f", {comparison.fmt_ratio(r['time_ratio'])} its time per image" if _timed(r["time_ratio"]) else "")
                 + ")" for r in g.to_dict("records")]
        per.append(f"At σ = {comparison.fmt_sigma(sigma)} the best hybrid on the validation images, {g['hybrid'].iloc[0]}, is "
                   + " and ".join(parts) + ".")
    return " ".join(per)


def answer_overall(ans: pd.DataFrame) -> str:
    """The answer to the assignment's question from ``answer``'s rows: in quality (where the paired intervals
    lie) and in speed (the time ratios of chapter 08's benchmark), per noise level."""
    quality, speed = {}, {}
    for sigma, g in ans.groupby("sigma", sort=True):
        quality[sigma] = int((g["outcome"] == BETTER).sum()), int((g["outcome"] == WORSE).sum()), len(g)
        timed = g["time_ratio"].map(_timed)
        if timed.all():
            speed[sigma] = int((g["time_ratio"] < 1).sum()), len(g)
    both = [s for s, (b, _, n) in quality.items() if b == n]
    some = [s for s, (b, _, n) in quality.items() if 0 < b < n]
    rest = [s for s in quality if s not in both and s not in some]
    worse = [s for s in rest if quality[s][1] > 0]
    q = _at(("beats both methods alone", both), ("beats one of them but not the other", some), ("beats neither", rest))
    if worse:  # a subset of rest, the last phrase
        q[-1] += f" (and is worse than at least one of them at {_sigmas_text(worse)})"
    fast = [s for s, (f, n) in speed.items() if f == n]
    slow = [s for s, (f, n) in speed.items() if f == 0]
    mid = [s for s in speed if s not in fast and s not in slow]
    sp = _at(("faster than both", fast), ("slower than both", slow), ("faster than one and slower than the other", mid))
    text = "In quality (PSNR on the test images) the best combination of DDPM and DIP " + comparison.join_and(q) + "."
    if sp:
        text += " In speed (seconds per image in chapter 08's benchmark) it is " + comparison.join_and(sp) + "."
    return text


def hybrid_comparisons(study_rows: pd.DataFrame, *, seed: int = 0, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every hybrid of chapter 03's study against the best DDPM alone and the best DIP alone (chosen on the
    validation images, ``best_by_family``), paired on the test images, with the ratio of their seconds per image
    in the timing benchmark (``time_ratio``; NaN without ``timings``)."""
    best = best_by_family(study_rows).set_index(["sigma", "family"])["method_key"]
    test = study_rows[study_rows["split"] == "test"]
    out = []
    for sigma in sorted(study_rows["sigma"].unique()):
        t = test[test["sigma"] == sigma]
        for h in [k for k in dict.fromkeys(t.loc[t["family"] == "hybrid", "method_key"])]:
            for fam in ("DDPM", "DIP"):
                if (sigma, fam) not in best.index:
                    continue
                o = best[(sigma, fam)]
                ra, rb = t[t["method_key"] == h], t[t["method_key"] == o]
                s = comparison.paired(ra, rb, seed=seed)
                out.append(dict(sigma=sigma, hybrid_key=h, hybrid=ra["method"].iloc[0], family=fam, against_key=o,
                                against=rb["method"].iloc[0], **s, a_psnr=float(ra["psnr"].mean()),
                                b_psnr=float(rb["psnr"].mean()),
                                time_ratio=time_ratio(timings, sigma, h, o),
                                outcome=comparison.outcome(s)))
    return pd.DataFrame(out)


def hybrid_text(comp: pd.DataFrame, key: str, name: str) -> str:
    """One sentence per sigma on one hybrid against the best of each family."""
    g = comp[comp["hybrid_key"] == key]
    if g.empty:
        return f"{name} is not in this run's study."
    out = []
    for sigma, gs in g.groupby("sigma", sort=True):
        out.append(f"at σ = {comparison.fmt_sigma(sigma)} it is " + " and ".join(
            f"{r['outcome']} the best {r['family']} alone ({comparison.fmt_diff(r)})" for r in gs.to_dict("records")))
    text = "; ".join(out)
    return f"{name}: {text[0].lower() + text[1:]}."


def example2_paired(per_image: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Chapter 05's stopping rules, paired: every DDPM-guided rule (``rule_key`` or name with "guided") against every
    other rule that needs no clean image (not an oracle or upper bound), per noise level, on the test images when
    the table has a split.
    Raises ValueError naming the columns it needs when the table is not in that form."""
    need = {"rule", "image", "psnr"}
    sig_col = next((c for c in ("sigma", "sigma_nominal", "t_obs") if c in per_image.columns), None)
    if need - set(per_image.columns) or sig_col is None:
        raise ValueError(f"chapter 05's per-image table needs the columns {sorted(need)} and one of sigma, "
                         f"sigma_nominal, t_obs; it has {list(per_image.columns)}")
    df = per_image[per_image["split"] == "test"] if "split" in per_image.columns else per_image
    names = df["rule_key"].astype(str) + " " + df["rule"] if "rule_key" in df.columns else df["rule"]
    kind = {r: ("guided" if "guided" in n.lower() else
                "bound" if "oracle" in n.lower() or "upper bound" in n.lower() else "rule")
            for r, n in zip(df["rule"], names)}
    out = []
    for sigma, g in df.groupby(sig_col, sort=True):
        rules = list(dict.fromkeys(g["rule"]))
        guided = [r for r in rules if kind[r] == "guided"]
        others = [r for r in rules if kind[r] == "rule"]
        for a in guided:
            for b in others:
                s = comparison.paired(g[g["rule"] == a], g[g["rule"] == b], seed=seed)
                level = f"t = {comparison.fmt_sigma(sigma)}" if sig_col == "t_obs" else f"σ = {comparison.fmt_sigma(sigma)}"
                out.append(dict(sigma=sigma, level=level, rule=a, against=b, **s, a_psnr=float(g.loc[g["rule"] == a, "psnr"].mean()),
                                b_psnr=float(g.loc[g["rule"] == b, "psnr"].mean()), outcome=comparison.outcome(s)))
    return pd.DataFrame(out)


def example2_text(comp: pd.DataFrame) -> str:
    """Per sigma: which rules the guided rule is better than, not clearly different from, worse than."""
    if comp.empty:
        return "Chapter 05's table has no guided rule to compare."
    out = []
    for (_, rule), g in comp.groupby(["sigma", "rule"], sort=True):
        parts = [f"{w} {comparison.join_and(g.loc[g['outcome'] == w, 'against'].tolist())}"
                 for w in WORDS.values() if (g["outcome"] == w).any()]
        name = "the DDPM-guided stop" if "guided" in rule.lower() else f"the rule “{rule}”"
        out.append(f"At {g['level'].iloc[0]} {name} is {comparison.join_and(parts)}.")
    return " ".join(out)


# ------------------------------------------------------------------------------------------------------
# The executive summary (the intro and the end of chapter 07): a few sentences with the measured numbers
# ------------------------------------------------------------------------------------------------------

def _span(values, fmt, *, key=None) -> str:
    """"a" when all values format alike, else "a to b" (smallest to largest by ``key``)."""
    values = sorted(values, key=key)
    lo, hi = fmt(values[0]), fmt(values[-1])
    return lo if lo == hi else f"{lo} to {hi}"


def _db(v) -> str:
    return f"{abs(v):.2f}"


def _ratio(v) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def _versus(g: pd.DataFrame, family: str) -> str:
    """The best hybrid against the best method of ``family`` over the sigmas of ``g`` (one row per sigma):
    outcome(s), the size of the difference, the wins and the time ratio."""
    by = {o: gg for o, gg in g.groupby("outcome", sort=False)}
    parts = []
    for o, gg in by.items():
        where = f"at {_sigmas_text(gg['sigma'])}"
        size = "" if o == comparison.UNCLEAR else f" by {_span(gg['mean_diff'], _db, key=abs)} dB"
        names = list(dict.fromkeys(gg["against"]))
        which = f" ({names[0]})" if len(names) == 1 else ""
        parts.append(f"{o} the best {family} alone{which} {where}{size}")
    wins = _span(g["wins"], lambda v: f"{int(v)}")
    took = (f", and takes {_span(g['time_ratio'], _ratio)} times as long per image"
            if g["time_ratio"].map(_timed).all() else "")
    return comparison.join_and(parts) + f" (it wins on {wins} of {int(g['n'].max())} test images{took})"


def _verdict(ans: pd.DataFrame) -> str:
    """One sentence: the answer to the assignment's question, from where the intervals lie and the time ratios."""
    quality = {fam: set(g["outcome"]) for fam, g in ans.groupby("family", sort=False)}
    beats = [f for f, o in quality.items() if o == {BETTER}]
    if len(beats) == len(quality):
        head = "yes in quality: the best combination beats each method alone at every noise level tested"
    elif beats:
        head = (f"no: in quality the best combination beats the {comparison.join_and(beats)} alone but not the "
                f"{comparison.join_and([f for f in quality if f not in beats])} alone")
    else:
        head = "no: in quality the best combination beats neither method alone at every noise level tested"
    speed = []
    for fam, g in ans.groupby("family", sort=False):
        if not g["time_ratio"].map(_timed).all():
            continue
        fast = g["time_ratio"] < 1
        speed.append(f"faster than the {fam} alone" if fast.all() else f"slower than the {fam} alone" if not fast.any()
                     else f"about as fast as the {fam} alone")
    tail = f", and in speed it is {comparison.join_and(speed)}" if speed else ""
    return f"Does combining a DDPM with a DIP beat each alone? In this run the answer is {head}{tail}."


def executive_summary(comp: pd.DataFrame, *, best: dict, example2: pd.DataFrame | None = None, claims: str = "",
                      context: str = "") -> str:
    """The book's findings in a few sentences, every number read from the results: the verdict, the best hybrid
    ``best`` ({sigma: its method_key}, chosen on the validation images by chapter 03) against the best DDPM alone and the best
    DIP alone, the other hybrids, Example 2's stopping rule, the report audit (``claims``, a sentence) and the run's
    scope (``context``, a sentence). ``comp``: ``hybrid_comparisons``; ``example2``: ``example2_paired``."""
    b = comp[[best.get(sg) == k for sg, k in zip(comp["sigma"], comp["hybrid_key"])]]
    if b.empty:
        raise ValueError(f"executive_summary: the best hybrids {best} are not among {sorted(set(comp['hybrid_key']))}")
    out = [_verdict(b)]
    d, p = b[b["family"] == "DDPM"], b[b["family"] == "DIP"]
    names = comparison.join_and(dict.fromkeys(b["hybrid"]))
    out.append(f"The best combination on the validation images, {names}, is {_versus(d, 'DDPM')}.")
    if len(p):
        out.append(f"It is {_versus(p, 'DIP')}.")
    others = []
    for key in [k for k in dict.fromkeys(comp["hybrid_key"]) if k not in set(best.values())]:
        g = comp[comp["hybrid_key"] == key]
        parts = [f"{_span(gg['mean_diff'], lambda v: f'{v:+.2f}')} dB against the best {fam} alone"
                 for fam, gg in g.groupby("family", sort=False)]
        others.append(f"{g['hybrid'].iloc[0]}, {comparison.join_and(parts)}")
    if others:
        out.append("The other combinations score " + "; ".join(others) + ".")
    if example2 is not None and len(example2):
        per_rule = {rule: sorted(set(gg["outcome"])) for rule, gg in example2.groupby("against", sort=False)}
        parts = [f"{o} {comparison.join_and([r for r, v in per_rule.items() if v == [o]])}"
                 for o in WORDS.values() if any(v == [o] for v in per_rule.values())]
        parts += [f"{' or '.join(v)} {r}, depending on σ" for r, v in per_rule.items() if len(v) > 1]
        out.append(f"Example 2's DDPM-guided stop is {comparison.join_and(parts)}.")
    out += [c for c in (claims, context) if c]
    return " ".join(out)
