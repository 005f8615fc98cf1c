"""Pilot: quality per CPU-hour of a few DDPM sizes, to choose the cpu profile's network before a long run.

Trains one UNet (linear schedule, the cpu profile's data split) for a wall-clock budget and, every
``--eval-every`` steps, scores its EMA weights on the held-out images:
  * PSNR of the one-step posterior mean at level 600 (the report's operating point), against the
    training-mean image's PSNR on the same images;
  * multi-scale SWD of ``--n-samples`` DDIM-50 samples against the held-out images, divided by the
    real-vs-real floor (training images against the same held-out images).
Evaluation time is excluded from the training seconds. Writes one CSV row per evaluation.

    python scripts/pilot_ddpm_sizes.py --channels 32 64 128 128 --minutes 20 --out /tmp/pilot/a.csv
    python scripts/pilot_ddpm_sizes.py --measure --channels 32 64 128 128    # seconds per step, 1 thread
    python scripts/pilot_ddpm_sizes.py --summarise results/cpu/pilot --runs /tmp/pilot/a.csv /tmp/pilot/b.csv \
        --seconds-per-step 1.16 2.18

Pilots share the machine, so their wall clock is not a cost: ``--summarise`` converts steps to CPU-hours
with the seconds per step that ``--measure`` reports on an idle machine (one per run, in order).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from diffusers import UNet2DModel

from tdpmlib.evaluation import metrics, sample_metrics
from tdpmlib.methods import ddpm, ddpm_training, models, schedules, tdpm
from tdpmlib.workflow import data, results


class _Budget(Exception):
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--channels", type=int, nargs="+")
    p.add_argument("--measure", action="store_true", help="time training steps at batch 32 on one thread")
    p.add_argument("--summarise", metavar="OUT_DIR", help="merge pilot CSVs into OUT_DIR/pilot.csv + config.json")
    p.add_argument("--runs", nargs="+", default=[])
    p.add_argument("--seconds-per-step", type=float, nargs="+", default=[])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--data", default="")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.summarise:
        return summarise(a)
    if a.measure:
        return measure(a)

    images = data.load_images(a.data or None, resolution=32)
    train, held = data.split(images, held_out=0.1, seed=0)
    sched = schedules.make_scheduler("linear")
    kw = models._unet(tuple(a.channels), {2}, layers_per_block=a.layers, norm_num_groups=8)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **kw)
    n_params = models.count_parameters(unet)
    y = tdpm.observe(held, 600, sched, generator=torch.Generator().manual_seed(1))
    mean_img = train.mean(0, keepdim=True).expand_as(held)
    psnr_mean = float(metrics.psnr(mean_img, held).mean())
    floor = sample_metrics.swd(held, train[torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:a.n_samples]])["swd_mean"]
    rows, eval_s = [], [0.0]
    t0 = time.perf_counter()

    def evaluate(step, net):
        e0 = time.perf_counter()
        train_s = e0 - t0 - eval_s[0]
        with torch.no_grad():
            pm = float(metrics.psnr(tdpm.tweedie(net, sched, y, 600), held).mean())
            fake = ddpm.sample(net, sched, n=a.n_samples, resolution=32, generator=torch.Generator().manual_seed(3),
                               method="ddim", num_steps=50, batch_size=a.n_samples)
            s = sample_metrics.swd(held, fake)["swd_mean"]
        rows.append(dict(channels=str(tuple(a.channels)), layers=a.layers, parameters=n_params, lr=a.lr, step=step,
                         train_seconds=train_s, psnr_posterior_mean_600=pm, psnr_training_mean=psnr_mean,
                         swd_ddim50=s, swd_floor=floor, swd_ratio=s / floor))
        results.write_csv(Path(a.out), pd.DataFrame(rows))
        print(rows[-1], flush=True)
        eval_s[0] += time.perf_counter() - e0
        if train_s > a.minutes * 60:
            raise _Budget

    work = Path(a.out).with_suffix("")
    try:
        ddpm_training.train_ddpm(unet, train, sched, out_dir=work, steps=100_000, batch_size=32, lr=a.lr, warmup_steps=100,
                        checkpoint_every=10**9, callback=evaluate, callback_every=a.eval_every, progress=False)
    except _Budget:
        pass
    return 0


def measure(a) -> int:
    torch.set_num_threads(1)
    kw = models._unet(tuple(a.channels), {2}, layers_per_block=a.layers, norm_num_groups=8)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **kw)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr)
    x, t = torch.randn(32, 3, 32, 32), torch.randint(0, 1000, (32,))
    for i in range(4):
        if i == 1:
            t0 = time.perf_counter()
        loss = (unet(x, t).sample - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{tuple(a.channels)}: {models.count_parameters(unet) / 1e6:.2f} M parameters, "
          f"{(time.perf_counter() - t0) / 3:.3f} s per step (batch 32, 1 thread)")
    return 0


def summarise(a) -> int:
    if len(a.runs) != len(a.seconds_per_step) or not a.runs:
        raise SystemExit("error: give one --seconds-per-step value per --runs file")
    frames = []
    for path, sps in zip(a.runs, a.seconds_per_step):
        df = pd.read_csv(path)
        df["network"] = [f"{c} ({p / 1e6:.1f} M)" for c, p in zip(df["channels"], df["parameters"])]
        df["seconds_per_step"] = sps
        df["cpu_hours"] = df["step"] * sps / 3600
        frames.append(df.rename(columns={"psnr_posterior_mean_600": "psnr_posterior_mean_t600",
                                         "swd_ratio": "swd_ratio_ddim50"}))
    out = Path(a.summarise)
    results.write_json(out / "config.json", dict(
        runs=[str(r) for r in a.runs], seconds_per_step=a.seconds_per_step, script="scripts/pilot_ddpm_sizes.py",
        note="linear schedule, lr and batch as in the pilot CSVs, held-out split of seed 0; DDIM-50 SWD from "
             "the n-samples given to each run; CPU-hours = steps x seconds per step measured with --measure "
             "on an idle machine"))
    results.write_csv(out / "pilot.csv", pd.concat(frames, ignore_index=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
