"""Chapter 07's synthesis: does combining DDPM and DIP beat each alone, and what do the other chapters add?

``hybrid_comparisons`` pairs every hybrid of chapter 03's study with the best DDPM alone and the best DIP alone
(chosen on validation images); ``example2_paired`` pairs chapter 05's stopping rules. Every comparison is paired over
the test images and read in the book's one vocabulary (``tdpmlib.book.comparison``). Time ratios come from chapter
08's timing benchmark (``timings``, ``tdpmlib.studies.timing.read``), never from the rows; the headline and its table
are in ``tdpmlib.studies.headline``, the summary tables in ``tdpmlib.studies.summary``. Numbers and short phrases
only: the sentences are the chapters' markdown.

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
from ..workflow.remote import raw_url
from .summary import best_by_family, seconds, speed_table, summary_table  # noqa: F401  (read as conclusions.*)


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


