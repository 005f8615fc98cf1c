"""Example 1, the training reading: does a DIP prior make DDPM training converge faster?

The assignment's Example 1 asks whether a DIP can "provide a quick initial prior for the DDPM training
process ... reducing the number of diffusion steps required for the DDPM model to converge". The seed
reports read that in three ways, each a ``Variant`` here, all trained with the same network, data order,
step budget and evaluation:

* **truncated training** (the reproduced report's Algorithm 1): levels are drawn from {1, ..., T_trunc}
  only, because its sampler starts at T_trunc from a DIP output (``ddpm_training.train_ddpm(max_level=...)``);
* **training on DIP-processed images** (the MNIST report): every training image is first replaced by an
  early-stopped DIP fit of it, optionally with fresh noise added (``x0_noise_std``);
* **a DIP curriculum** (the sound form of the CIFAR-10 report's "start training from DIP outputs"): the
  first part of training sees the DIP-processed images, the rest the raw ones (``early_images``).

While a variant trains, ``Recorder`` scores the EMA network at fixed steps on the denoising study's test
images (which no variant trains on) at sigma = 25 and 50 (0..255): the one-step posterior mean and the
ancestral reverse chain from the observation at t(sigma) (same observation, same chain noise for every
variant and step, so comparisons are paired per image); and, for generation, TDPM-DIP from DIP fits of
``n_gen`` training images handed over at level 50 (SWD against the held-out images, with the real-vs-real
floor). At the last step it adds TDPM-DIP at level 200 (where the variant was trained that high), DDIM-100
from pure noise (which a truncated DDPM was never trained for) and memorisation.

``python -m tdpmlib.studies.dip_init_training --profile cpu --variants full,trunc200`` trains (or resumes, or skips) the
listed variants one after another; ``make train-reading`` runs all of them on two workers. Records land in
``results/<profile>/models/reading-<variant>/``; the DIP-processed training sets (derived images, kept out
of git) in ``reading-data-dip<lr>/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from ..evaluation import metrics, sample_metrics
from ..methods import ddpm, ddpm_training, dip, models, schedules, tdpm
from ..workflow import config, data, pipeline, results
from . import denoising

LR, LR_ALT = 1e-3, 3e-4       # the cpu profile's DDPM rate, and the lower one of the MNIST report's ablation
DIP_LR, DIP_LR_ALT = 1e-3, 1e-2  # ten times the author's DIP rate (1e-4; the reading predates the fix), and the official rate
NOISE_STD = 0.1               # std ([-1, 1] scale) of the noise the noisy-DIP-data variant adds to its images
CURRICULUM = 0.5              # share of the budget the curriculum trains on DIP-processed images
GEN_LEVEL, GEN_LEVEL_HIGH = 50, 200  # TDPM-DIP hand-over levels: every evaluation / the last one only
SIGMAS = (25, 50)

# Per profile: network, budget and evaluation sizes. The cpu budget is sized to train all variants in about
# 75 min on two cores (batch 16 at ~0.23 s per step on one thread; the DIP processing of 737 images for 100
# iterations ~30 min per learning rate).
READING = {
    "smoke": dict(preset="tiny", steps=6, batch_size=8, warmup_steps=2, eval_steps=(3, 6), n_gen=4,
                  dip_iterations=3, checkpoint_every=3),
    "cpu": dict(preset="ddpm-cpu-1m", steps=2000, batch_size=16, warmup_steps=200,
                eval_steps=(250, 500, 1000, 1500, 2000), n_gen=64, dip_iterations=100, checkpoint_every=250),
    "colab": dict(preset="ddpm-cpu", steps=4000, batch_size=32, warmup_steps=200,
                  eval_steps=(500, 1000, 2000, 3000, 4000), n_gen=64, dip_iterations=100, checkpoint_every=500),
}
READING["paper"] = READING["colab"]


@dataclass(frozen=True)
class Variant:
    label: str
    max_level: int | None = None  # T_trunc of truncated training (None: all T levels)
    data: str = "raw"             # "raw", "dip" (DIP-processed images) or "curriculum" (DIP first, then raw)
    dip_lr: float = DIP_LR
    lr: float = LR
    x0_noise_std: float = 0.0

    @property
    def uses_dip(self) -> bool:
        return self.data != "raw"


VARIANTS = {
    "full": Variant("All levels, raw images"),
    "trunc200": Variant("T_trunc = 200", max_level=200),
    # 60, not the 50: the smallest T_trunc that still reaches sigma = 25 (t = 57 on the linear schedule)
    "trunc60": Variant("T_trunc = 60", max_level=60),
    "dip": Variant("DIP-processed images", data="dip"),
    "dip_noise": Variant(f"DIP images + noise (std {NOISE_STD:g})", data="dip", x0_noise_std=NOISE_STD),
    "dip_lr": Variant(f"DIP images, DIP lr {DIP_LR_ALT:g}", data="dip", dip_lr=DIP_LR_ALT),
    "dip_ddpm_lr": Variant(f"DIP images, DDPM lr {LR_ALT:g}", data="dip", lr=LR_ALT),
    "curriculum": Variant(f"Curriculum: DIP images for {CURRICULUM:.0%} of steps", data="curriculum"),
}
WORKERS = (("dip", "dip_noise", "dip_ddpm_lr", "curriculum"), ("full", "trunc200", "trunc60", "dip_lr"))


def settings(profile: str) -> dict:
    config.check_choice("profile", profile, list(READING))
    return READING[profile]


def check_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()] if isinstance(text, str) else None
    if not names or any(n not in VARIANTS for n in names):
        raise ValueError(f"variants={text!r} is not allowed; use a comma-separated list of {list(VARIANTS)}")
    return names


def variant_dir(cfg, name: str):
    return cfg.model_dir().parent / f"reading-{name}"


# --- the DIP-processed images ------------------------------------------------------------------------------

def dip_images(cfg, images: torch.Tensor, *, lr: float, tag: str = "data", offset: int = 0) -> tuple[torch.Tensor, float]:
    """(outputs, seconds): the report's plain DIP fitted to each image for the profile's iterations at ``lr``
    (one network per image, batched), cached beside the models; seconds is the wall clock of the fits."""
    s = settings(cfg.profile)
    d = cfg.model_dir().parent / f"reading-{tag}-dip{lr:g}"
    meta = dict(n=len(images), iterations=s["dip_iterations"], lr=lr, preset=cfg.dip_preset, seed=cfg.seed,
                resolution=images.shape[-1], data=data.fingerprint(cfg.data_source or None), offset=offset)
    if (d / "dip.json").exists() and (d / "images.pt").exists() and results.read_json(d / "dip.json")["meta"] == meta:
        return results.load_checkpoint(d / "images.pt")["images"].float() / 127.5 - 1, results.read_json(d / "dip.json")["seconds"]
    outs, seconds, chunk = [], 0.0, 64
    for a in range(0, len(images), chunk):
        r = dip.fit_dip(images[a:a + chunk], iterations=s["dip_iterations"], lr=lr, preset=cfg.dip_preset,
                        generator=cfg.generator(6000 + offset + a), seed=cfg.seed * 1000 + a, device=cfg.torch_device,
                        record_every=s["dip_iterations"])
        outs.append(r.output.clamp(-1, 1))
        seconds += r.seconds
    out = torch.cat(outs)
    results.save_checkpoint(d / "images.pt", dict(images=((out + 1) * 127.5).round().to(torch.uint8)))
    results.write_json(d / "dip.json", dict(meta=meta, seconds=seconds))
    return ((out + 1) * 127.5).round() / 127.5 - 1, seconds


def generation_inputs(cfg, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, dip_outputs) of the n_gen training images TDPM-DIP generation starts from (fixed subset)."""
    n = min(settings(cfg.profile)["n_gen"], len(train))
    idx = torch.randperm(len(train), generator=cfg.generator(6100))[:n]
    out, _ = dip_images(cfg, train[idx], lr=DIP_LR, tag="gen", offset=100_000)
    return train[idx], out


# --- the record ------------------------------------------------------------------------------------------

class Recorder:
    """The ``callback(step, ema_unet)`` of ``ddpm_training.train_ddpm`` that scores the network at ``eval_steps``."""

    def __init__(self, cfg, variant: Variant, *, test: torch.Tensor, held: torch.Tensor, train: torch.Tensor,
                 gen_dip: torch.Tensor, out_dir):
        self.cfg, self.v, self.test, self.held, self.train, self.gen_dip = cfg, variant, test, held, train, gen_dip
        self.dir = out_dir
        self.scheduler = schedules.make_scheduler("linear")
        self.obs = {s: denoising.observe(test, s, self.scheduler, seed=cfg.seed) for s in SIGMAS}  # (y, t) per sigma
        self.steps = settings(cfg.profile)["eval_steps"]
        self.floor = sample_metrics.swd(held, train[torch.randperm(len(train), generator=cfg.generator(6200))[:len(gen_dip)]])["swd_mean"]

    def trained_for(self, level: int) -> bool:
        return self.v.max_level is None or level <= self.v.max_level

    def __call__(self, step: int, unet) -> None:
        if step not in self.steps:
            return
        e0 = time.perf_counter()
        dev, last = self.cfg.torch_device, step == self.steps[-1]
        row, per_image, final = dict(step=step), [], {}
        for s, (y, t) in self.obs.items():
            for method in ("posterior_mean", "reverse"):
                key = f"psnr_{method}_s{s}"
                if not self.trained_for(t):  # the network never saw this level: not applicable
                    row[key] = float("nan")
                    continue
                if method == "posterior_mean":
                    x0 = tdpm.tweedie(unet, self.scheduler, y.to(dev), t).cpu()
                else:
                    x0 = ddpm.reverse_chain(unet, self.scheduler, y.to(dev), t,
                                            generator=self.cfg.generator(6300 + s)).clamp(-1, 1).cpu()
                p = metrics.psnr(x0, self.test)
                row[key] = float(p.mean())
                per_image += [dict(step=step, sigma=s, method=method, image=i, psnr=float(v)) for i, v in enumerate(p)]
        levels = (GEN_LEVEL, GEN_LEVEL_HIGH) if last else (GEN_LEVEL,)
        for level in levels:
            if not self.trained_for(level):
                row[f"swd_gen{level}"] = float("nan")
                continue
            g = self.cfg.generator(6400 + level)
            state = schedules.q_sample(self.gen_dip, level, torch.randn(self.gen_dip.shape, generator=g), self.scheduler)
            fake = tdpm.reverse_from_state(unet, self.scheduler, state.float(), level, generator=g)
            row[f"swd_gen{level}"] = sample_metrics.swd(self.held, fake)["swd_mean"]
            final[f"gen{level}"] = fake
        if last:
            fake = ddpm.sample(unet, self.scheduler, n=len(self.gen_dip), resolution=self.test.shape[-1],
                               generator=self.cfg.generator(6500), device=dev, method="ddim", num_steps=100)
            row["swd_ddim100"] = sample_metrics.swd(self.held, fake)["swd_mean"]
            final["ddim100"] = fake
            mem = sample_metrics.memorisation(final[f"gen{GEN_LEVEL}"], self.train, self.held)
            row.update(copies_gen50=mem["frac_copies"], ratio_gen50=mem["ratio_median"])
            results.save_checkpoint(self.dir / "final.pt", {k: ((v + 1) * 127.5).round().to(torch.uint8)
                                                            for k, v in final.items()})
        row["swd_floor"] = self.floor
        row["eval_seconds"] = time.perf_counter() - e0
        _upsert(self.dir / "quality.csv", pd.DataFrame([row]))
        _upsert(self.dir / "per_image.csv", pd.DataFrame(per_image))


def _upsert(path, new: pd.DataFrame) -> None:
    """Replace the rows of ``new``'s steps in a CSV record (a resumed run rewrites the same rows)."""
    if new.empty:
        return
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=new.columns)
    old = old[~old["step"].isin(new["step"].unique())]
    results.write_csv(path, pd.concat([old, new], ignore_index=True).sort_values("step", kind="stable"))


# --- training --------------------------------------------------------------------------------------------

def train_config(cfg, name: str, n_train: int) -> dict:
    """What identifies a trained variant: a record made with anything else is not reused."""
    s = settings(cfg.profile)
    return dict(variant=name, **asdict(VARIANTS[name]), preset=s["preset"], steps=s["steps"], batch_size=s["batch_size"],
                warmup_steps=s["warmup_steps"], seed=cfg.seed, n_train=n_train, resolution=cfg.resolution,
                dip_iterations=s["dip_iterations"], dataset=data.fingerprint(cfg.data_source or None))


def is_trained(cfg, name: str, train: torch.Tensor) -> bool:
    """Whether the variant's finished record matches this run's configuration."""
    d = variant_dir(cfg, name)
    done = d / "train_config.json"
    return done.exists() and json.loads(done.read_text()) == train_config(cfg, name, len(train)) and (d / "final.pt").exists()


def train_variant(cfg, name: str, *, train: torch.Tensor, held: torch.Tensor, progress: bool = False) -> dict:
    """Train (or resume, or skip when finished) one variant with its recorder; returns its train config."""
    v, s = VARIANTS[name], settings(cfg.profile)
    out, tcfg = variant_dir(cfg, name), train_config(cfg, name, len(train))
    if is_trained(cfg, name, train):
        return tcfg
    _, test = denoising.split_eval(held, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    _, gen_dip = generation_inputs(cfg, train)
    early, dip_seconds = None, 0.0
    if v.uses_dip:
        early, dip_seconds = dip_images(cfg, train, lr=v.dip_lr)
    images = early if v.data == "dip" else train
    early_steps = round(CURRICULUM * s["steps"]) if v.data == "curriculum" else 0
    if not (out / "checkpoint.pt").exists():
        for stale in ("quality.csv", "per_image.csv", "final.pt"):
            (out / stale).unlink(missing_ok=True)
    rec = Recorder(cfg, v, test=test, held=held, train=train, gen_dip=gen_dip, out_dir=out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        unet = models.make_unet(s["preset"], resolution=cfg.resolution)
    res = ddpm_training.train_ddpm(unet, images, schedules.make_scheduler("linear"), out_dir=out, steps=s["steps"],
                          batch_size=s["batch_size"], lr=v.lr, warmup_steps=s["warmup_steps"], seed=cfg.seed,
                          checkpoint_every=s["checkpoint_every"], device=cfg.torch_device, callback=rec,
                          callback_every=math.gcd(*s["eval_steps"]), progress=progress, config=tcfg,
                          max_level=v.max_level, x0_noise_std=v.x0_noise_std,
                          early_images=early if early_steps else None, early_steps=early_steps)
    # the loss log's clock runs through the evaluations, which happen after their step's row: take them out
    q = pd.read_csv(out / "quality.csv")
    seconds = res["log"].set_index("step")["seconds"]
    q["train_seconds"] = [seconds[st] - q.loc[q.step < st, "eval_seconds"].sum() for st in q.step]
    results.write_csv(out / "quality.csv", q)
    results.write_json(out / "train_summary.json", dict(
        train_seconds=float(seconds.iloc[-1] - q.loc[q.step < q.step.max(), "eval_seconds"].sum()),
        eval_seconds=float(q.eval_seconds.sum()), dip_seconds=dip_seconds, steps=res["steps"],
        parameters=models.count_parameters(res["ema_unet"]), hardware=results.hardware(cfg.torch_device)))
    (out / "checkpoint.pt").unlink(missing_ok=True)  # finished: only the EMA network and the record stay
    results.write_json(out / "train_config.json", tcfg)  # written last: it marks a finished variant
    return tcfg


def load_records(cfg) -> dict:
    """{variant: dict(quality, per_image, summary, final, dip)} for every finished variant of the profile."""
    out = {}
    for name in VARIANTS:
        d = variant_dir(cfg, name)
        if not (d / "train_config.json").exists():
            continue
        out[name] = dict(quality=pd.read_csv(d / "quality.csv"), per_image=pd.read_csv(d / "per_image.csv"),
                         summary=results.read_json(d / "train_summary.json"),
                         final={k: v.float() / 127.5 - 1 for k, v in results.load_checkpoint(d / "final.pt").items()})
    return out


# --- what the chapter reports -----------------------------------------------------------------------------

# The quality levels of "steps to quality", fixed before any variant was trained: what the reference variant
# (all levels, raw images) reaches at the end of the budget, for each metric. A variant that gets there in fewer
# steps converges faster in that metric; the wall clock adds its DIP processing.
REFERENCE = "full"
METRICS = {"psnr_reverse_s25": ("reverse chain, σ = 25 (dB)", True), "psnr_reverse_s50": ("reverse chain, σ = 50 (dB)", True),
           "swd_gen50": ("TDPM-DIP from level 50, SWD", False)}


def steps_to_quality(records: dict) -> pd.DataFrame:
    """Per variant and metric: the first evaluated step at which the mean reaches the reference's final value
    (NaN: not reached in the budget; "n/a" cases, a level above T_trunc, are NaN too with ``applicable`` False),
    and the minutes to get there: training up to that step plus the variant's DIP processing."""
    ref = records[REFERENCE]["quality"].iloc[-1]
    rows = []
    for name, r in records.items():
        q, dip_min = r["quality"], r["summary"]["dip_seconds"] / 60
        for m, (label, higher) in METRICS.items():
            ok = q[m] >= ref[m] if higher else q[m] <= ref[m]
            hit = q[ok & q[m].notna()]
            step = float(hit.step.iloc[0]) if len(hit) else float("nan")
            minutes = float(hit.train_seconds.iloc[0]) / 60 + dip_min if len(hit) else float("nan")
            rows.append(dict(variant=name, metric=m, label=label, target=float(ref[m]), step=step, minutes=minutes,
                             applicable=bool(q[m].notna().any())))
    return pd.DataFrame(rows)


def final_paired(records: dict, *, seed: int = 0) -> pd.DataFrame:
    """Each variant against the reference at the last step: paired per-image PSNR differences of the reverse
    chain (``stats.paired``), per sigma, where the variant was trained for that level."""
    from ..evaluation import stats

    def last(name):
        per = records[name]["per_image"]
        return per[(per.step == per.step.max()) & (per.method == "reverse")]

    ref, rows = last(REFERENCE), []
    for name in records:
        if name == REFERENCE:
            continue
        mine = last(name)
        for s in SIGMAS:
            a = mine[mine.sigma == s].sort_values("image")
            if a.empty:
                continue
            b = ref[ref.sigma == s].sort_values("image")
            rows.append(dict(variant=name, sigma=s, **stats.paired(a.psnr.values, b.psnr.values, seed=seed)))
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    """Train the training-reading variants of Example 1 (resuming or skipping each)."""
    p = argparse.ArgumentParser(prog="python -m tdpmlib.studies.dip_init_training", description=main.__doc__)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--worker", type=int, default=None, help=f"train worker i's share of the variants ({len(WORKERS)} workers)")
    p.add_argument("--data-source", default="")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    try:
        names = list(WORKERS[a.worker]) if a.worker is not None else check_variants(a.variants)
        cfg = pipeline.setup("train", show=False, profile=a.profile, data_source=a.data_source,
                             results_dir=a.results_dir, device=a.device)
        settings(cfg.profile)
        train, held = pipeline.load_split(cfg)
    except (ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        train_variant(cfg, name, train=train, held=held, progress=a.progress)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s ({variant_dir(cfg, name)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
