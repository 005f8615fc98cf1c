"""DDPM training with data parallelism and sampling split across processes, under HuggingFace ``accelerate``.

Run it on N processes with ``accelerate launch --multi_gpu --num_processes N -m tdpmlib.workflow.train --profile paper``
(``tdpmlib.workflow.train`` hands a multi-process launch to ``train_ddpm_parallel``; README: Scaling out). On one
process, ``ddpm_training.train_ddpm`` stays the trainer: its results are unchanged.

The global batch is the single-process batch. Every process draws the whole batch of ``ddpm_training.train_ddpm``
from the same seeded generator (the (seed, epoch) image order of ``ddpm_training.batches``, the flips, the noise and
the timesteps: a few CPU draws) and keeps its own disjoint shard (``batch_shard``). Each process's loss is
its shard's share of the batch's mean, scaled by N, so that DDP's gradient all-reduce (a mean over the
processes) gives exactly the gradient of the batch's mean loss, even for unequal shards (a process left
without an image, in a last batch smaller than N, computes one with weight 0). A run on N
processes therefore follows the single-process run up to the order of floating-point sums. DDP keeps the
ranks' weights identical; the main process alone holds the EMA, writes the checkpoints and saves the EMA
network with ``save_pretrained``. bf16 autocast comes from accelerate's ``mixed_precision`` on CUDA GPUs
with bf16 tensor cores; elsewhere training runs in fp32.

Resuming: the checkpoint records the process count. A run resumed with the same N continues exactly (same
step, data position, generator state and LR); a different N is refused with one error naming
``num_processes``: the draws would be the same, but not the floating-point sums, so bitwise continuation is
promised only for the N that wrote the checkpoint.

Sampling (``sample``): image i's starting noise and every later step's noise come from its own generator,
seeded by ``seed * 1_000_003 + i``, so the images for a seed do not depend on the number of processes or on
the batch size (up to floating-point rounding).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from . import checkpoints, ddpm, ddpm_training, memory


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(device=None, *, mixed_precision: str = "auto"):
    """An ``accelerate.Accelerator`` on ``device`` ("cpu" or "cuda"; default: CUDA when present). With
    ``mixed_precision="auto"``: bf16 on CUDA GPUs with bf16 tensor cores (compute capability >= 8.0), else
    fp32 ("no"), as ``ddpm_training.train_ddpm`` trains; "no" and "bf16" are taken as given."""
    from accelerate import Accelerator

    if mixed_precision not in ("auto", "no", "bf16"):
        raise ValueError(f"mixed_precision={mixed_precision!r} is not allowed; use 'auto', 'no' or 'bf16'")
    cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    if mixed_precision == "auto":
        cuda_bf16 = not cpu and torch.cuda.get_device_capability()[0] >= 8
        mixed_precision = "bf16" if cuda_bf16 and ddpm.FAST_DEFAULT else "no"
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def batch_shard(n: int, rank: int, num_processes: int) -> slice:
    """The positions ``rank`` takes of a global batch of ``n``: contiguous, disjoint, sizes differing by at most 1."""
    base, extra = divmod(n, num_processes)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def train_ddpm_parallel(
    unet,
    images: torch.Tensor,
    scheduler,
    *,
    out_dir,
    accelerator=None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.95, 0.999),
    weight_decay: float = 1e-6,
    warmup_steps: int = 500,
    grad_clip: float = 1.0,
    ema_decay: float = 0.999,
    checkpoint_every: int = 500,
    hflip: bool = True,
    seed: int = 0,
    callback=None,
    callback_every: int = 0,
    on_step=None,
    stop_after: int | None = None,
    progress: bool = True,
    config: dict | None = None,
) -> dict:
    """Train ``unet`` in place on every process of ``accelerator``; resume from ``out_dir/checkpoint.pt``.

    The hyperparameters mean what they mean in ``ddpm_training.train_ddpm`` and ``batch_size`` is the global batch.
    ``callback(step, ema_unet)`` runs on the main process every ``callback_every`` steps with the EMA weights
    swapped in; ``on_step(step, unet)`` runs on every process after every step with the training network.
    ``stop_after`` ends the call after that step as a kill would: nothing more is written, and a later call
    resumes from the last checkpoint. Returns dict(ema_unet (main process; None elsewhere), log, seconds,
    steps, start_step, stopped); the log's losses are the global batch's mean loss.
    """
    per_epoch, total = ddpm_training.training_length(len(images), steps=steps, epochs=epochs, batch_size=batch_size)
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after={stop_after!r} is not allowed; use None or a positive integer")
    acc = accelerator if accelerator is not None else make_accelerator()
    n, nproc, rank = len(images), acc.num_processes, acc.process_index
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = scheduler.config.num_train_timesteps
    config = dict(config or {}, total_steps=total, batch_size=batch_size, lr=lr, betas=list(betas),
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip,
                  ema_decay=ema_decay, hflip=hflip, seed=seed, n_images=n, num_processes=nproc)

    device = acc.device
    unet = ddpm.prepare(unet, device).train()
    opt, lr_sched = ddpm_training.make_optimizer(unet, total=total, lr=lr, betas=betas, weight_decay=weight_decay,
                                        warmup_steps=warmup_steps)
    ema = None
    if acc.is_main_process:  # ema_decay 0: no EMA (the author's recipe; ddpm_training.NoEMA)
        ema = EMAModel(unet.parameters(), decay=ema_decay, foreach=device.type == "cuda") if ema_decay else ddpm_training.NoEMA()
    gen = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    step = 0

    ckpt_path = out_dir / "checkpoint.pt"
    acc.wait_for_everyone()  # a checkpoint written by the main process is complete before any process reads it
    if ckpt_path.exists():
        state = checkpoints.load_checkpoint(ckpt_path)
        saved_n = state.get("config", {}).get("num_processes", 1)
        if saved_n != nproc:
            raise ValueError(f"num_processes={nproc} is not allowed for resuming {str(ckpt_path)!r}: it was written "
                             f"by num_processes={saved_n}; relaunch with --num_processes {saved_n}, or train "
                             "into a fresh out_dir")
        diff = checkpoints.config_diff(state.get("config", {}), config)
        if diff:
            raise ValueError(f"checkpoint {str(ckpt_path)!r} was made with a different configuration; "
                             f"differing keys: {', '.join(diff)}")
        unet.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
            ema.to(device)
        gen.set_state(state["rng"]["train"])
        log = [dict(zip(state["log_columns"], row)) for row in state["log"]]
        step = state["step"]
    start_step = step
    # the LR schedule is stepped by hand, once per global step (accelerate's wrapper would step it N times)
    model, opt = acc.prepare(unet, opt)
    plain = acc.unwrap_model(model)

    pending: list[dict] = []

    def flush():
        if pending:  # one all-reduce for the losses since the last flush: the global batch's mean loss
            losses = acc.reduce(torch.stack([r["loss"] for r in pending]), reduction="mean").tolist()
            log.extend(dict(r, loss=v) for r, v in zip(pending, losses))
            pending.clear()

    def checkpoint():
        flush()
        if acc.is_main_process:
            cols = ["step", "epoch", "loss", "lr", "seconds"]
            checkpoints.save_checkpoint(ckpt_path, dict(
                model=plain.state_dict(), optimizer=opt.state_dict(), lr_scheduler=lr_sched.state_dict(),
                ema=ema.state_dict(), step=step, config=config, rng=dict(train=gen.get_state()),
                log_columns=cols, log=[[row[c] for c in cols] for row in log]))
            checkpoints.write_csv(out_dir / "loss.csv", pd.DataFrame(log, columns=cols))

    t_start = time.perf_counter()
    elapsed0 = log[-1]["seconds"] if log else 0.0
    stopped = False
    bar = tqdm(total=total, initial=step, disable=not (progress and acc.is_main_process), mininterval=10, desc="train")
    while step < total:
        epoch, i = divmod(step, per_epoch)
        idx = ddpm_training.batches(n, batch_size, seed=seed, epoch=epoch)[i]
        x0, noise, t = ddpm_training.draw_batch(images, idx, gen, hflip=hflip, levels=T)  # the whole batch, every process
        share = batch_shard(len(idx), rank, nproc)
        scale = nproc / noise.numel()  # the shard's sum of squares, as its share of the batch mean, times N
        if share.start == share.stop:  # fewer images than processes: take part in the all-reduce with weight 0
            share, scale = slice(0, 1), 0.0
        x0, noise, t = x0[share].to(device), noise[share].to(device), t[share].to(device)
        pred = model(scheduler.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise, reduction="sum") * scale
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        lr_sched.step()
        if ema is not None:
            ema.step(plain.parameters())
        step += 1
        pending.append(dict(step=step, epoch=epoch, loss=loss.detach(), lr=lr_sched.get_last_lr()[0],
                            seconds=elapsed0 + time.perf_counter() - t_start))
        bar.update(1)
        if on_step is not None:
            on_step(step, plain)
        if callback is not None and callback_every and (step % callback_every == 0 or step == total):
            flush()
            if acc.is_main_process:
                with ddpm_training.ema_weights(ema, plain):
                    callback(step, plain)
        if step % checkpoint_every == 0 or step == total:
            checkpoint()
        if stop_after is not None and step >= stop_after and step < total:
            stopped = True
            break
    bar.close()
    flush()
    ema_unet = ddpm_training.save_ema(plain, ema, out_dir / "unet_ema") if acc.is_main_process and not stopped else None
    acc.wait_for_everyone()
    return dict(ema_unet=ema_unet, log=pd.DataFrame(log), seconds=time.perf_counter() - t_start, steps=total,
                start_step=start_step, stopped=stopped)


def image_generators(seed: int, indices) -> list[torch.Generator]:
    """One CPU generator per image index, seeded by ``seed * 1_000_003 + index``."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in indices]


@torch.no_grad()
def sample(unet, scheduler, *, n: int, resolution: int, seed: int = 0, state=None, device=None,
           method: str = "ddpm", num_steps: int | None = None, batch_size: int = 64, fast: bool | None = None,
           clipped_eps: bool = True, progress: bool = False) -> torch.Tensor:
    """Generate ``n`` images from level T, split across the processes of ``state`` (an ``Accelerator`` or
    ``accelerate.PartialState``; None: this process alone, on ``device``), and return all of them, in index
    order, on every process (a CPU tensor in [-1, 1]). Image i's noise comes from its own generator
    (``image_generators``), so the result for a seed does not depend on the process count or batch size.
    Samplers as in ``ddpm.reverse_chain``; ``batch_size`` is per process."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is not allowed; use a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed; use an integer >= 0")
    nproc = 1 if state is None else state.num_processes
    device = torch.device(device if device is not None else state.device if state is not None else "cpu")
    T = scheduler.config.num_train_timesteps
    unet = unet.to(device).eval()
    batch_size = memory.sample_batch_limit(unet, resolution=resolution, device=device, cap=batch_size)  # CUDA only
    indices = list(range(n))
    if nproc > 1:  # equal shares (the last process repeats the last index), so that gather sees equal shapes
        with state.split_between_processes(indices, apply_padding=True) as mine:
            indices = list(mine)
    out = []
    for start in tqdm(range(0, len(indices), batch_size), disable=not progress, desc=f"sample {method}"):
        gens = image_generators(seed, indices[start:start + batch_size])
        x_T = torch.cat([torch.randn((1, 3, resolution, resolution), generator=g) for g in gens]).to(device)
        out.append(ddpm.reverse_chain(unet, scheduler, x_T, T, method=method, num_steps=num_steps, generator=gens,
                                      fast=fast, clipped_eps=clipped_eps).clamp(-1, 1))
    images = torch.cat(out)
    if nproc > 1:
        from accelerate.utils import gather

        images = gather(images.contiguous())[:n]
    return images.cpu()
