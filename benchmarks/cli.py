"""``python -m benchmarks``: run the cases, print the table, write results/bench/<hardware>/bench.{csv,json}."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from tdpmlib.methods import ddpm
from tdpmlib.workflow import config, pipeline, results

from . import CASES, cases, COLUMNS, report
from .common import Context, cpu_model, device_memory_mb, hardware_name, hardware_slug, peak_flops


def parse_cases(text: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in CASES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"--cases {text!r} is not allowed; use a comma-separated subset of "
                                         f"{','.join(CASES)}")
    return [c for c in CASES if c in chosen]  # run in the canonical order, once each


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; use a positive integer")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test / CI); written to <slug>-quick")
    ap.add_argument("--cases", type=parse_cases, default=list(CASES), metavar="LIST",
                    help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    ap.add_argument("--compile", action="store_true", help="also time sampling with torch.compile")
    ap.add_argument("--device", default="auto", choices=config.DEVICES)
    ap.add_argument("--out", type=Path, default=Path("results/bench"), help="output root (default results/bench)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads (default: $OMP_NUM_THREADS, else every core)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        device = config.resolve_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        pipeline.threads()

    t0 = time.perf_counter()
    load_start = _loadavg()
    meta = results.provenance("bench-quick" if args.quick else "bench", device)
    meta.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        hardware_name=hardware_name(device), slug=hardware_slug(device), cpu=cpu_model(), cpu_cores=os.cpu_count(),
        threads=torch.get_num_threads(), device_memory_mb=device_memory_mb(device), quick=args.quick,
        compile=args.compile, cases=args.cases, command=" ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
        settings=cases.settings(device, args.quick),
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32),
        fast_default=ddpm.FAST_DEFAULT, fast_devices=list(ddpm.FAST_DEVICES),
    )
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    ctx = Context(device=device, quick=args.quick, compile=args.compile, settings=meta["settings"],
                  hardware=meta["hardware_name"], log=log)
    log(f"benchmarks on {meta['hardware_name']} ({device}, {meta['threads']} torch threads), "
        f"{'quick' if args.quick else 'full'} settings, cases: {','.join(args.cases)}")

    rows: list[dict] = []
    failed = []
    need_peak = bool({"sampling", "training"} & set(args.cases))
    peaks = [peak_flops(device, n=meta["settings"]["peak_n"])] if need_peak else []
    for case in args.cases:
        try:
            rows += cases.CASE_FUNCTIONS[case](ctx)
        except Exception as e:  # keep the other cases' results; the exit code reports the failure
            traceback.print_exc()
            failed.append(case)
            rows.append(ctx.row(case=case, row=case, status=f"failed: {type(e).__name__}: {e}"))
    if need_peak:
        # The peak is measured at the start and at the end of the run and the higher one is kept: other load on
        # the machine can only lower a measurement, and an underestimated peak would overstate the MFU.
        peaks.append(peak_flops(device, n=meta["settings"]["peak_n"]))
        ctx.peak = max(peaks, key=lambda p: p["flops_per_s"])
        meta["peak"] = dict(ctx.peak, measurements_tflops=[round(p["flops_per_s"] / 1e12, 4) for p in peaks])
        rows.insert(0, ctx.row(case="peak", row=f"measured peak: {ctx.peak['n']}^3 {ctx.peak['dtype']} matmul",
                               variant="torch.mm", seconds=ctx.peak["seconds"], seconds_per="5 matmuls",
                               throughput=ctx.peak["flops_per_s"] / 1e12, unit="TFLOP/s",
                               note="the denominator of MFU: the better of two measurements (start, end of the "
                                    "run: " + ", ".join(f"{p['flops_per_s'] / 1e12:.3g}" for p in peaks)
                                    + " TFLOP/s)"))
        for row in rows:
            achieved = row["achieved_tflops"]
            if row["status"] == "measured" and achieved == achieved:  # not NaN
                row["mfu"] = achieved * 1e12 / ctx.peak["flops_per_s"]
                if row["mfu"] > 1:
                    row["note"] += ("; " if row["note"] else "") + ("MFU > 100 %: the peak measurement was "
                                                                    "disturbed by other load; rerun on a quiet machine")
    meta.update(seconds=time.perf_counter() - t0, loadavg_start=load_start, loadavg_end=_loadavg(), failed=failed)

    df = pd.DataFrame(rows, columns=COLUMNS)
    print(f"\nBenchmarks on {meta['hardware_name']} ({device}, {meta['threads']} torch threads, torch "
          f"{meta['torch']}, commit {meta['git_commit']}); {'QUICK settings: not a measurement of the targets' if args.quick else 'full settings'}\n")
    print(report.format_table(df), flush=True)
    d = report.write(args.out, meta["slug"], args.quick, rows, meta, args.cases)
    print(f"wrote {d / 'bench.csv'} and {d / 'bench.json'} ({meta['seconds']:.0f} s; load average "
          f"{load_start} -> {meta['loadavg_end']})")
    if failed:
        print(f"FAILED cases: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
