"""Training a profile's DDPM from the command line, with the progress record chapter 01 shows.

``python -m tdpmlib.workflow.train --profile cpu --schedule linear`` trains (or resumes, or loads) one DDPM through
``pipeline.train_or_load``, exactly as the notebooks do. While it trains, a ``Monitor`` writes two things
beside the model (``results/<profile>/models/ddpm-<schedule>/``):

* ``quality.csv``: every ``eval_every`` steps, the EMA network scored on the held-out images, which it
  never trains on: PSNR of the one-step posterior mean at the levels of sigma = 25 and 50 (0..255 scale)
  and at level 600, the training-mean image's PSNR at the same images (the trivial floor), and the
  multi-scale SWD of DDIM-50 samples (diffusers' default step, raw eps) against the held-out images with its
  real-vs-real floor;
* ``grids/``: every ``grid_every`` steps, ancestral DDPM samples from one fixed starting noise.

Evaluation seconds are recorded separately, so throughput excludes them. Rows and grids are written
atomically and keyed by step, so a run resumed from its checkpoint rewrites the same rows (training is
exact on resume) and a model trained with another configuration starts a fresh record.

``accelerate launch --multi_gpu --num_processes N -m tdpmlib.workflow.train --profile paper`` trains the same model with
data parallelism on N processes (``tdpmlib.methods.ddpm_parallel``; README: Scaling out) into the same folder, where the
notebooks load it; the main process records quality and grids and draws the final samples.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..book import plotting
from ..evaluation import metrics, sample_metrics
from ..methods import ddpm, ddpm_parallel, models, schedules, tdpm
from . import config, pipeline, results
from .config import FINAL_SAMPLERS, FINAL_SEEDS

GRID_N, GRID_SEED, EVAL_SEED = 8, 101, 104  # grid size; generator offsets of the grids and of the evaluation
EVAL_SIGMAS = (25, 50)  # the book's main denoising levels (0..255 scale), mapped to t(sigma)
REPORT_LEVEL = 600      # the reproduced report's operating point


def quality(unet, scheduler, *, train: torch.Tensor, held: torch.Tensor, generator: torch.Generator, device,
            n_samples: int = 128, batch_size: int = 128) -> dict:
    """Held-out quality of a DDPM: posterior-mean PSNR at t(25), t(50) and 600, and DDIM-50 SWD / floor."""
    row = {}
    mean_img = train.mean(0, keepdim=True).expand_as(held)
    row["psnr_training_mean"] = float(metrics.psnr(mean_img, held).mean())
    levels = {f"sigma{s}": schedules.t_for_sigma(scheduler, s) for s in EVAL_SIGMAS} | {"t600": REPORT_LEVEL}
    for name, t in levels.items():
        noise = torch.randn(held.shape, generator=generator)
        y = schedules.q_sample(held, t, noise, scheduler).float().to(device)
        x0 = tdpm.tweedie(unet, scheduler, y, t).cpu()
        row[f"psnr_posterior_mean_{name}"] = float(metrics.psnr(x0, held).mean())
    # diffusers' default DDIM step (raw eps after clipping) on the grid from level 1000 (trailing): the record of
    # the cpu training run was made with them, and a resumed run must add rows of the same kind
    fake = ddpm.sample(unet, scheduler, n=n_samples, resolution=held.shape[-1], generator=generator, device=device,
                       method="ddim", num_steps=50, batch_size=batch_size, clipped_eps=False, spacing="trailing")
    real = train[torch.randperm(len(train), generator=generator)[:n_samples]]
    row["swd_ddim50"] = sample_metrics.swd(held, fake)["swd_mean"]
    row["swd_floor"] = sample_metrics.swd(held, real)["swd_mean"]  # real training images against the same held-out set
    row["swd_ratio_ddim50"] = row["swd_ddim50"] / row["swd_floor"]
    return row


class Monitor:
    """The ``callback(step, ema_unet)`` of ``ddpm_training.train_ddpm`` that records quality and grids (see module doc)."""

    def __init__(self, cfg, schedule: str, *, train: torch.Tensor, held: torch.Tensor, eval_every: int,
                 grid_every: int, total_steps: int, grid_sampler: dict | None = None, n_eval_samples: int = 128):
        self.cfg, self.schedule, self.train, self.held = cfg, schedule, train, held
        self.scheduler = schedules.make_scheduler(schedule)
        self.eval_every, self.grid_every, self.n_eval = eval_every, grid_every, n_eval_samples
        self.total_steps = total_steps  # the last step always gets a grid and a quality row
        self.grid_sampler = grid_sampler or dict(method="ddpm")
        self.dir = cfg.model_dir(schedule)
        self.tcfg = pipeline.train_config(cfg, schedule, len(train))
        self.eval_seconds = 0.0

    @property
    def every(self) -> int:
        """The callback period to give ``train_ddpm`` (it calls at multiples of this and at the last step)."""
        return math.gcd(self.eval_every, self.grid_every)

    def __call__(self, step: int, unet) -> None:
        e0 = time.perf_counter()
        last = step == self.total_steps
        if step % self.grid_every == 0 or last:
            self._grid(step, unet)
        if step % self.eval_every == 0 or last:
            row = dict(step=step, **quality(unet, self.scheduler, train=self.train, held=self.held,
                                            generator=self.cfg.generator(EVAL_SEED), device=self.cfg.torch_device,
                                            n_samples=self.n_eval, batch_size=self.cfg.sample_batch))
            row["eval_seconds"] = time.perf_counter() - e0
            path = self.dir / "quality.csv"
            old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step"])
            new = pd.concat([old[old["step"] != step], pd.DataFrame([row])]).sort_values("step")
            results.write_csv(path, new)
        self.eval_seconds += time.perf_counter() - e0

    def _grid(self, step, unet):
        d = self.dir / "grids"
        man = d / "grids.json"
        m = results.read_json(man) if man.exists() else {}
        if m.get("train_config") != self.tcfg:  # grids of another training run are dropped from the list
            m = dict(train_config=self.tcfg, grids={})
        with metrics.CudaTimer(self.cfg.torch_device) as t:
            images = ddpm.sample(unet, self.scheduler, n=GRID_N, resolution=self.cfg.resolution,
                                 generator=self.cfg.generator(GRID_SEED), device=self.cfg.torch_device,
                                 batch_size=self.cfg.sample_batch, **self.grid_sampler)
        stem = f"step_{step:07d}"
        results.save_checkpoint(d / f"{stem}.pt", dict(images=images, step=step))
        fig = plotting.image_grid(images, nrow=GRID_N, title=f"{self.schedule} schedule, step {step}")
        results.save_figure(fig, d / f"{stem}.png")
        plt.close(fig)
        m["grids"][str(step)] = dict(seconds=t.seconds, file=f"{stem}.pt")
        results.write_json(man, m)


# what the samples stored before the grid had a name were drawn with (all DDIM on the trailing grid)
_STORED_BEFORE = {"DDPM-1000": (dict(method="ddpm"), 102),
                  "DDIM-50": (dict(method="ddim", num_steps=50, spacing="trailing"), 103),
                  "DDIM-100": (dict(method="ddim", num_steps=100, spacing="trailing"), 105),
                  "DDIM-50, raw ε": (dict(method="ddim", num_steps=50, clipped_eps=False, spacing="trailing"), 103),
                  "DDIM-100, raw ε": (dict(method="ddim", num_steps=100, clipped_eps=False, spacing="trailing"), 105)}


def _drawn_with(name: str, entry: dict):
    """(sampler settings, seed offset) a stored sample set was drawn with (None when unknown)."""
    if "sampler" in entry:
        return entry["sampler"], entry["seed"]
    return _STORED_BEFORE.get(name)


def final_samples(cfg, schedule: str, unet, *, n: int, tcfg: dict) -> dict:
    """{sampler: dict(images, seconds, nfe)} of the trained model's final samples (``FINAL_SAMPLERS``), drawn
    once and stored beside the model (``samples.pt``, 8-bit like any image) for its training config; a
    later call with the same config and n loads them instead of sampling again, and draws only the
    samplers an interrupted call had not finished. A stored set is reused under any name when it was drawn
    with the same sampler settings and seed. Seconds are the wall clock of the sampler over all n images,
    CUDA-synchronised."""
    path = cfg.model_dir(schedule) / "samples.pt"
    saved = {}
    if path.exists():
        saved = results.load_checkpoint(path)
        # complete, or the samplers a killed run had finished
        saved = saved["samples"] if saved.get("train_config") == tcfg and saved.get("n") == n else {}
    by_draw = {repr(_drawn_with(k, v)): v for k, v in saved.items() if _drawn_with(k, v) is not None}
    stored = {}  # every reusable set first, under its current name, so that no save below drops one
    for name, kw in FINAL_SAMPLERS.items():
        if repr((kw, FINAL_SEEDS[name])) in by_draw:
            stored[name] = dict(by_draw[repr((kw, FINAL_SEEDS[name]))], sampler=kw, seed=FINAL_SEEDS[name])
    if stored.keys() != saved.keys() or any("sampler" not in v for v in saved.values()):
        results.save_checkpoint(path, dict(train_config=tcfg, n=n, samples=stored))
    scheduler, T = schedules.make_scheduler(schedule), 1000
    for name, kw in FINAL_SAMPLERS.items():
        if name in stored:
            continue
        with metrics.CudaTimer(cfg.torch_device) as t:
            images = ddpm.sample(unet, scheduler, n=n, resolution=cfg.resolution, device=cfg.torch_device,
                                 generator=cfg.generator(FINAL_SEEDS[name]), batch_size=cfg.sample_batch, **kw)
        stored[name] = dict(images=((images + 1) * 127.5).round().to(torch.uint8), seconds=t.seconds,
                            nfe=ddpm.network_evaluations(T, **kw), sampler=kw, seed=FINAL_SEEDS[name])
        # saved after every sampler, so an interrupted run keeps what it has drawn
        results.save_checkpoint(path, dict(train_config=tcfg, n=n, samples=stored))
    return {k: dict(v, images=v["images"].float() / 127.5 - 1) for k, v in stored.items()}


def swd_difference(held: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, floor: float, resamples: int = 10,
                   seed: int = 0) -> dict:
    """SWD / floor of sample sets ``a`` and ``b`` against ``held``, and how far their difference is from the draw
    of samples alone.

    Each of ``resamples`` rounds redraws both sets with replacement (the same indices for both when they are
    equally large, and the same SWD seed, so a set compared with itself differs by exactly 0) and scores them
    against the fixed held-out set. Returns the full-set ratios ``a`` and ``b``, their difference ``diff`` = a - b,
    the bootstrap standard deviation of the difference ``sd`` and the normal 95% interval ``ci_low``, ``ci_high``
    = diff -/+ 1.96 sd (a handful of resamples is enough for a standard deviation, not for percentiles), named as
    in :func:`stats.paired` so that :func:`stats.verdict` reads it."""
    if resamples < 2:
        raise ValueError(f"resamples={resamples!r} is not allowed; use at least 2")
    cache: dict = {}  # the held-out side of every SWD below is the same: sorted once (sample_metrics.swd)
    ratio = lambda x: sample_metrics.swd(held, x, seed=seed, real_cache=cache)["swd_mean"] / floor  # noqa: E731
    ra, rb = ratio(a), ratio(b)
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(resamples):
        ia = torch.randint(0, len(a), (len(a),), generator=g)
        ib = ia if len(b) == len(a) else torch.randint(0, len(b), (len(b),), generator=g)
        diffs.append(ratio(a[ia]) - ratio(b[ib]))
    sd = float(torch.tensor(diffs).std())
    return dict(a=ra, b=rb, diff=ra - rb, sd=sd, ci_low=ra - rb - 1.96 * sd, ci_high=ra - rb + 1.96 * sd)


def dark_fraction(images: torch.Tensor, *, level: float = 0.1) -> float:
    """Fraction of pixels whose channel mean, on the [0, 1] scale, is below ``level`` (images on [-1, 1])."""
    return float(((images + 1) / 2).mean(1).lt(level).float().mean())


def load_grids(cfg, schedule: str, tcfg: dict) -> dict:
    """{step: (images, seconds)} of the grids saved while the model with this training config was trained."""
    d = cfg.model_dir(schedule) / "grids"
    m = results.read_json(d / "grids.json") if (d / "grids.json").exists() else {}
    if m.get("train_config") != tcfg:
        return {}
    return {int(k): (results.load_checkpoint(d / v["file"])["images"], v["seconds"])
            for k, v in sorted(m["grids"].items(), key=lambda kv: int(kv[0])) if (d / v["file"]).exists()}


def load_quality(cfg, schedule: str) -> pd.DataFrame:
    """The quality-against-steps record of a schedule's model (empty when none was recorded)."""
    path = cfg.model_dir(schedule) / "quality.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def main(argv=None) -> int:
    """Train (or resume, or load) one DDPM of a profile; rerunning the same command resumes it."""
    p = argparse.ArgumentParser(prog="python -m tdpmlib.workflow.train", description=main.__doc__)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--data-source", default="")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="steps between quality rows (default: the profile's)")
    p.add_argument("--grid-every", type=int, default=None, help="steps between sample grids (default: the profile's)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--allow-cpu", action="store_true", help="train a GPU-only profile (paper) on the CPU anyway")
    a = p.parse_args(argv)
    try:
        if not a.allow_cpu:
            config.check_profile_device(a.profile, a.device)
        cfg = pipeline.setup("train", show=False, profile=a.profile, schedule=a.schedule, data_source=a.data_source,
                             results_dir=a.results_dir, seed=a.seed, device=a.device, train_steps=a.train_steps,
                             checkpoint_every=a.checkpoint_every)
        train, held = pipeline.load_split(cfg)
        monitor = make_monitor(cfg, a.schedule, train=train, held=held, eval_every=a.eval_every,
                               grid_every=a.grid_every)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ddpm_parallel.launched():  # one of several processes of `accelerate launch`
        try:
            unet, info = train_parallel(cfg, train, callback=monitor, callback_every=monitor.every,
                                        progress=a.progress)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if unet is None:  # not the main process: its part is done
            return 0
    else:
        unet, _, info = pipeline.train_or_load(cfg, train, callback=monitor, callback_every=monitor.every,
                                               progress=a.progress)
    print(f"{'loaded' if info['loaded'] else 'trained'} {cfg.model_dir()} ({info['steps']} steps)", flush=True)
    final_samples(cfg, a.schedule, unet, n=cfg.n_final_samples, tcfg=monitor.tcfg)
    print(f"final samples in {cfg.model_dir() / 'samples.pt'}")
    return 0


def make_monitor(cfg, schedule: str, *, train, held, eval_every: int | None = None,
                 grid_every: int | None = None) -> Monitor:
    """The profile's monitor: periods default to the profile's ``eval_every`` / ``grid_every`` (in steps)."""
    total = cfg.train_steps or cfg.train_epochs * -(-len(train) // cfg.batch_size)
    eval_every = config.check_int("eval_every", eval_every if eval_every is not None else cfg.eval_every or max(1, total // 8), low=1)
    grid_every = config.check_int("grid_every", grid_every if grid_every is not None else cfg.grid_every or max(1, total // 4), low=1)
    # smoke only checks that the code runs: DDIM-50 grids and few evaluation samples keep it fast
    sampler = dict(method="ddim", num_steps=50) if cfg.profile == "smoke" else dict(method="ddpm")
    return Monitor(cfg, schedule, train=train, held=held, eval_every=eval_every, grid_every=grid_every,
                   total_steps=total, grid_sampler=sampler, n_eval_samples=8 if cfg.profile == "smoke" else 128)


def train_parallel(cfg, train_images: torch.Tensor, *, callback=None, callback_every: int = 0, progress: bool = True):
    """``pipeline.train_or_load`` for one process of a multi-process launch: train the profile's DDPM with
    ``ddpm_parallel`` (resuming its checkpoint) unless a finished model of this configuration exists, writing
    the summary and the ``train_config.json`` marker the notebooks load it by. Returns (ema_unet, info) on the
    main process and (None, {}) on the others."""
    acc = ddpm_parallel.make_accelerator(cfg.torch_device, mixed_precision="auto" if cfg.train_autocast else "no")
    mdir = cfg.model_dir()
    tcfg = pipeline.train_config(cfg, cfg.schedule, len(train_images))
    done = mdir / "train_config.json"
    trained = not (done.exists() and results.read_json(done) == tcfg and (mdir / "unet_ema" / "config.json").exists())
    if trained:
        if acc.is_main_process:
            if not (mdir / "checkpoint.pt").exists():  # a fresh run: drop the record of any earlier one
                for stale in (mdir / "quality.csv", mdir / "loss.csv"):
                    stale.unlink(missing_ok=True)
            print(f"training the {cfg.schedule} DDPM on {acc.num_processes} processes in {mdir}", flush=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            unet = models.make_unet(cfg.ddpm_preset, resolution=cfg.resolution)
        out = ddpm_parallel.train_ddpm_parallel(
            unet, train_images, schedules.make_scheduler(cfg.schedule), out_dir=mdir, accelerator=acc,
            steps=cfg.train_steps or None, epochs=cfg.train_epochs or None, batch_size=cfg.batch_size,
            warmup_steps=cfg.warmup_steps, lr=cfg.train_lr, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
            callback=callback, callback_every=callback_every, progress=progress, config=tcfg, **pipeline.recipe(cfg))
        if acc.is_main_process:
            summary = dict(train_seconds=float(out["log"]["seconds"].iloc[-1]), steps=out["steps"],
                           parameters=models.count_parameters(out["ema_unet"]), device=str(acc.device),
                           hardware=results.hardware(acc.device), num_processes=acc.num_processes)
            results.write_json(mdir / "train_summary.json", summary)
            results.write_json(done, tcfg)  # written last: its presence marks a finished model
            (mdir / "checkpoint.pt").unlink(missing_ok=True)  # only needed to resume
    if not acc.is_main_process:
        return None, {}
    unet = ddpm.load_unet(mdir / "unet_ema", cfg.torch_device)
    return unet, dict(log=pd.read_csv(mdir / "loss.csv"), loaded=not trained, **results.read_json(mdir / "train_summary.json"))


if __name__ == "__main__":
    raise SystemExit(main())
