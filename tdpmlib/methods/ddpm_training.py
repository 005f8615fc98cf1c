"""DDPM training (Algorithm 1): epsilon-prediction MSE (Ho et al. 2020, Eq. 14) with AdamW, a cosine LR schedule
with warm-up, gradient clipping and an EMA of the weights (diffusers' ``EMAModel``).

It checkpoints atomically and resumes exactly: the data order is a pure function of (seed, epoch)
(``batches``) and every other random draw comes from one ``torch.Generator`` whose state is in the
checkpoint, so on the CPU an interrupted and resumed run ends with bitwise the same weights as an
uninterrupted one. ``random_hflip`` is the only augmentation.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from . import checkpoints
from .ddpm import autocast, prepare

# --- training ---------------------------------------------------------------------------------------------

def training_length(n_images: int, *, steps: int | None, epochs: int | None, batch_size: int) -> tuple[int, int]:
    """(batches per epoch, total steps) of a run limited by exactly one of ``steps`` and ``epochs``; bad
    values raise one ``ValueError`` naming the parameter."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps={steps!r} and epochs={epochs!r}")
    for name, v in dict(steps=steps, epochs=epochs).items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}={v!r} is not allowed; use a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use a positive integer")
    if n_images == 0:
        raise ValueError("images is empty; training needs at least one image")
    per_epoch = math.ceil(n_images / batch_size)
    return per_epoch, steps if steps is not None else epochs * per_epoch


def make_optimizer(unet, *, total: int, lr: float, betas, weight_decay: float, warmup_steps: int):
    """(AdamW, cosine LR schedule with linear warm-up over ``min(warmup_steps, total)`` steps) of a run."""
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    return opt, get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(warmup_steps, total), num_training_steps=total)


def draw_batch(images: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, *, hflip: bool, levels: int,
               x0_noise_std: float = 0.0):
    """One batch of Algorithm 1 on the CPU: (x0, noise, diffusers timestep) for the images ``idx``, with the
    flips, the optional x0 noise, the target noise and the timesteps drawn from ``gen`` in this order."""
    x0 = images[idx]
    if hflip:
        x0 = random_hflip(x0, gen)
    if x0_noise_std:
        x0 = x0 + x0_noise_std * torch.randn(x0.shape, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, levels, (len(x0),), generator=gen)  # diffusers timestep level - 1
    return x0, noise, t


def train_ddpm(
    unet: UNet2DModel,
    images: torch.Tensor,
    scheduler,
    *,
    out_dir,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.95, 0.999),  # the report's AdamW settings (diffusers' DDPM example)
    weight_decay: float = 1e-6,
    warmup_steps: int = 500,
    grad_clip: float = 1.0,
    ema_decay: float = 0.999,  # 0: no EMA, the saved network is the trained one (the author's recipe)
    checkpoint_every: int = 500,
    hflip: bool = True,
    seed: int = 0,
    device="cpu",
    fast: bool | None = None,
    callback=None,
    callback_every: int = 0,
    progress: bool = True,
    config: dict | None = None,
    max_level: int | None = None,
    x0_noise_std: float = 0.0,
    early_images: torch.Tensor | None = None,
    early_steps: int = 0,
) -> dict:
    """Train ``unet`` in place; resume from ``out_dir/checkpoint.pt`` when it exists.

    Exactly one of ``steps`` and ``epochs`` limits training. ``callback(step, ema_unet)`` runs every
    ``callback_every`` steps with the EMA weights swapped in (for sample grids). Returns a dict with the
    EMA network (``ema_unet``), the loss log (DataFrame), and the wall-clock seconds of this call.
    The EMA network is saved with ``save_pretrained`` to ``out_dir/unet_ema``.

    Variants of the training reading of Example 1 (``tdpmlib.studies.dip_init_training``), all recorded in the checkpoint:
    ``max_level`` (T_trunc) draws levels from {1, ..., max_level} only, as the reproduced report's Algorithm 1
    does (its sampler starts at T_trunc, so higher levels are never used; default: all T levels).
    ``x0_noise_std`` adds fresh N(0, std^2) noise to every clean training image (the std of the noise the MNIST
    report adds to its DIP outputs). ``early_images`` (same shape as ``images``, image i standing for image i)
    replaces the images for the first ``early_steps`` steps: a curriculum that starts on DIP-smoothed images.
    """
    per_epoch, total = training_length(len(images), steps=steps, epochs=epochs, batch_size=batch_size)
    T = scheduler.config.num_train_timesteps
    if max_level is not None and (isinstance(max_level, bool) or not isinstance(max_level, int) or not 1 <= max_level <= T):
        raise ValueError(f"max_level={max_level!r} is not allowed; use None (all levels) or an integer in 1..{T}")
    if isinstance(x0_noise_std, bool) or not isinstance(x0_noise_std, (int, float)) or not 0 <= x0_noise_std < 10:
        raise ValueError(f"x0_noise_std={x0_noise_std!r} is not allowed; use a number in [0, 10)")
    if early_images is not None and early_images.shape != images.shape:
        raise ValueError(f"early_images has shape {tuple(early_images.shape)}; use the shape of images, "
                         f"{tuple(images.shape)} (image i of both is the same picture)")
    if isinstance(early_steps, bool) or not isinstance(early_steps, int) or early_steps < 0 or (early_steps and early_images is None):
        raise ValueError(f"early_steps={early_steps!r} is not allowed; use an integer >= 0, and give early_images with it")
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay={ema_decay!r} is not allowed; use a number in [0, 1) (0: no EMA)")
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    levels = T if max_level is None else max_level
    config = dict(config or {}, total_steps=total, batch_size=batch_size, lr=lr, betas=list(betas),
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip,
                  ema_decay=ema_decay, hflip=hflip, seed=seed, n_images=n)
    # the reading's options join the checkpoint's config only when set, so default runs resume as before
    config.update({k: v for k, v in dict(max_level=max_level, x0_noise_std=float(x0_noise_std) or None,
                                         early_steps=early_steps or None).items() if v is not None})

    unet = prepare(unet, device, fast).train()
    opt, lr_sched = make_optimizer(unet, total=total, lr=lr, betas=betas, weight_decay=weight_decay,
                                   warmup_steps=warmup_steps)
    # foreach: one kernel per update for all tensors on CUDA (the per-tensor loop is launch-bound there);
    # off on the CPU, where it would only change the last bits of the committed networks' averages.
    ema = EMAModel(unet.parameters(), decay=ema_decay, foreach=device.type == "cuda") if ema_decay else NoEMA()
    gen = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    step = 0

    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = checkpoints.load_checkpoint(ckpt_path, expected_config=config)
        unet.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        gen.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        log = [dict(zip(state["log_columns"], row)) for row in state["log"]]
        step = state["step"]

    pending: list[dict] = []  # rows whose loss is still a device tensor: read back in one go, not every step

    def flush():
        if pending:
            losses = torch.stack([r["loss"] for r in pending]).tolist()  # the only host sync of the loop
            log.extend(dict(r, loss=v) for r, v in zip(pending, losses))
            pending.clear()

    def checkpoint():
        flush()
        cols = ["step", "epoch", "loss", "lr", "seconds"]
        checkpoints.save_checkpoint(ckpt_path, dict(
            model=unet.state_dict(), optimizer=opt.state_dict(), lr_scheduler=lr_sched.state_dict(),
            ema=ema.state_dict(), step=step, config=config,
            rng=dict(train=gen.get_state(), torch=torch.get_rng_state()),
            log_columns=cols, log=[[row[c] for c in cols] for row in log]))
        checkpoints.write_csv(out_dir / "loss.csv", pd.DataFrame(log, columns=cols))

    t_start = time.perf_counter()
    elapsed0 = log[-1]["seconds"] if log else 0.0
    bar = tqdm(total=total, initial=step, disable=not progress, mininterval=10, desc="train")
    while step < total:
        epoch, i = divmod(step, per_epoch)
        idx = batches(n, batch_size, seed=seed, epoch=epoch)[i]
        x0, noise, t = draw_batch(early_images if step < early_steps else images, idx, gen, hflip=hflip,
                                  levels=levels, x0_noise_std=x0_noise_std)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        x_t = scheduler.add_noise(x0, noise, t)
        with autocast(device, fast, training=True):
            pred = unet(x_t, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
        opt.step()
        lr_sched.step()
        ema.step(unet.parameters())
        step += 1
        pending.append(dict(step=step, epoch=epoch, loss=loss.detach(), lr=lr_sched.get_last_lr()[0],
                            seconds=elapsed0 + time.perf_counter() - t_start))
        bar.update(1)
        if callback is not None and callback_every and (step % callback_every == 0 or step == total):
            flush()
            with ema_weights(ema, unet):
                callback(step, unet)
        if step % checkpoint_every == 0 or step == total:
            checkpoint()
    bar.close()
    flush()

    ema_unet = save_ema(unet, ema, out_dir / "unet_ema")
    return dict(ema_unet=ema_unet, log=pd.DataFrame(log), seconds=time.perf_counter() - t_start, steps=total)


class NoEMA:
    """``EMAModel``'s interface for a run without an EMA (``ema_decay=0``): the weights are the trained ones."""

    def step(self, parameters):
        pass

    store = restore = copy_to = step

    def to(self, device):
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        if state:
            raise ValueError("the checkpoint holds an EMA but this run has ema_decay=0")


@contextlib.contextmanager
def ema_weights(ema: EMAModel, unet):
    """Temporarily swap the EMA weights into ``unet`` (eval mode), restoring the training weights after."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.eval()
    try:
        yield unet
    finally:
        ema.restore(unet.parameters())
        unet.train()


def save_ema(unet, ema: EMAModel, path) -> UNet2DModel:
    """Write the EMA network with ``save_pretrained`` (safetensors) atomically and return it (eval mode)."""
    path = Path(path)
    ema_unet = UNet2DModel.from_config(unet.config)
    ema_unet.load_state_dict(unet.state_dict())
    ema.copy_to(ema_unet.parameters())
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ema_unet.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return ema_unet.eval()


def random_hflip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of an N×C×H×W batch horizontally with probability 0.5 (draws from ``generator``)."""
    flip = torch.rand(len(batch), generator=generator, device=generator.device) < 0.5
    flip = flip.to(batch.device).view(-1, *([1] * (batch.dim() - 1)))
    return torch.where(flip, batch.flip(-1), batch)


def batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch over ``range(n)``, the last partial batch kept (drop_last=False).

    The order is ``torch.randperm(n)`` seeded with ``seed * 1_000_003 + epoch``: a pure function of
    (seed, epoch), so training resumed at any epoch sees the same data order.
    """
    for label, value, low in (("n", n, 1), ("batch_size", batch_size, 1), ("seed", seed, 0), ("epoch", epoch, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label}={value!r} must be an int >= {low}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return list(perm.split(batch_size))
