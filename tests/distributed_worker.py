"""The processes of tests/test_distributed.py: ``accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py OUT``.

One launch runs every multi-process scenario (process start-up is the slow part on 2 cores) and writes what
the tests check to OUT: an uninterrupted run with the ranks' parameters gathered after every step, a run
stopped as if killed and then resumed, and 2-process sampling.
"""

import json
import sys
from pathlib import Path

import torch

from tdpmlib.methods import ddpm_parallel, models, schedules

torch.set_num_threads(1)
# batch 5 of 16 images: shares of 3 and 2, and every epoch's last batch (1 image) leaves rank 1 without one
KW = dict(steps=24, batch_size=5, lr=3e-3, warmup_steps=3, seed=5, checkpoint_every=8, progress=False)
STOP_AFTER = 13  # a kill after step 13: the last checkpoint is step 8, so the resumed run redoes 9..13
SAMPLE = dict(n=5, resolution=8, seed=3, batch_size=2)  # 5 images: shares of 3 and 2, the second padded to 3
SAMPLE_T = 100  # ancestral sampling over a 100-level schedule: every step draws noise


def tiny_images():
    """conftest.tiny_images: 16 smooth 3x8x8 images in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 3, 2, 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=8, mode="bilinear", align_corners=False)


def tiny_unet(seed):
    torch.manual_seed(seed)
    return models.make_unet("tiny", resolution=8)


def main(out: Path) -> None:
    acc = ddpm_parallel.make_accelerator("cpu")
    images, sched = tiny_images(), schedules.make_scheduler("linear")
    main_proc = acc.is_main_process
    spread = []  # per step: the largest difference between any rank's parameters and rank 0's

    def gather_params(step, unet):
        flat = torch.cat([p.detach().flatten() for p in unet.parameters()])
        every = acc.gather(flat[None])  # (num_processes, n_parameters)
        spread.append(float((every - every[0]).abs().max()))

    # each rank starts from other weights: DDP must broadcast rank 0's before the first step
    full = ddpm_parallel.train_ddpm_parallel(tiny_unet(acc.process_index), images, sched, out_dir=out / "full",
                                             accelerator=acc, on_step=gather_params, **KW)
    stopped = ddpm_parallel.train_ddpm_parallel(tiny_unet(0), images, sched, out_dir=out / "resumed",
                                                accelerator=acc, stop_after=STOP_AFTER, **KW)
    resumed = ddpm_parallel.train_ddpm_parallel(tiny_unet(99), images, sched, out_dir=out / "resumed",
                                                accelerator=acc, **KW)
    samples = ddpm_parallel.sample(tiny_unet(0), schedules.make_scheduler("linear", num_train_timesteps=SAMPLE_T),
                                   state=acc, **SAMPLE)
    if main_proc:
        torch.save(dict(samples=samples, full_ema=full["ema_unet"].state_dict(),
                        resumed_ema=resumed["ema_unet"].state_dict()), out / "tensors.pt")
        (out / "report.json").write_text(json.dumps(dict(
            num_processes=acc.num_processes, spread=spread, full_log=full["log"].to_dict("list"),
            stopped=dict(stopped=stopped["stopped"], last_step=int(stopped["log"]["step"].iloc[-1]),
                         ema_unet=stopped["ema_unet"] is not None),
            resumed=dict(start_step=resumed["start_step"], log=resumed["log"].to_dict("list")))))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
