"""DDPM training (Algorithm 1) and sampling: ancestral, DDIM, and the truncated reverse chain from any level.

Training is epsilon-prediction MSE (Ho et al. 2020, Eq. 14) with AdamW, a cosine LR schedule with warm-up,
gradient clipping and an EMA of the weights (diffusers' ``EMAModel``). It checkpoints atomically and
resumes exactly: the data order is a pure function of (seed, epoch) and every other random draw comes
from one ``torch.Generator`` whose state is in the checkpoint, so on the CPU an interrupted and resumed
run ends with bitwise the same weights as an uninterrupted one.

Levels follow ``tdpmlib.schedules``: level t in 0..T, and level t is diffusers timestep t - 1.
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
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from . import data, memory, results, schedules

# --- the fast path ----------------------------------------------------------------------------------------

FAST_DEFAULT = True  # bf16 (fp16 before Ampere) autocast + channels_last on CUDA; set False (or pass fast=False) to check in fp32
FAST_DEVICES = ("cuda",)  # device types the fast path applies to (tests add "cpu" to run the bf16 branch there)


def use_fast(device, fast=None) -> bool:
    return torch.device(device).type in FAST_DEVICES and (FAST_DEFAULT if fast is None else fast)


def fast_dtype(device) -> torch.dtype:
    """The fast path's autocast dtype: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0,
    Ampere and later), fp16 on older ones (T4, V100), where ``torch.cuda.is_bf16_supported()`` is True
    only by emulation and bf16 runs slower than fp32. Other device types (the tests' CPU branch): bf16."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return torch.float16
    return torch.bfloat16


def autocast(device, fast=None, *, training: bool = False):
    """Autocast on CUDA when the fast path is on; a no-op elsewhere. ``training`` marks a context whose
    loss is backpropagated: fp16 gradients would need loss scaling, so where the fast dtype is fp16 those
    contexts stay in fp32 (inference still runs in fp16)."""
    device = torch.device(device)
    if use_fast(device, fast):
        dtype = fast_dtype(device)
        if not (training and dtype == torch.float16):
            return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def prepare(unet, device, fast=None):
    """Move a network to ``device`` (channels_last on the fast path) and return it."""
    unet = unet.to(device)
    if use_fast(device, fast):
        unet = unet.to(memory_format=torch.channels_last)
    return unet


def predict_eps(unet, x: torch.Tensor, level: int, *, fast=None) -> torch.Tensor:
    """The network's noise prediction for a batch at one level (diffusers timestep level - 1)."""
    ts = torch.full((x.shape[0],), level - 1, device=x.device, dtype=torch.long)
    with autocast(x.device, fast):
        return unet(x, ts).sample.float()


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
        x0 = data.random_hflip(x0, gen)
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

    Variants of the training reading of Example 1 (``tdpmlib.convergence``), all recorded in the checkpoint:
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
        state = results.load_checkpoint(ckpt_path, expected_config=config)
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
        results.save_checkpoint(ckpt_path, dict(
            model=unet.state_dict(), optimizer=opt.state_dict(), lr_scheduler=lr_sched.state_dict(),
            ema=ema.state_dict(), step=step, config=config,
            rng=dict(train=gen.get_state(), torch=torch.get_rng_state()),
            log_columns=cols, log=[[row[c] for c in cols] for row in log]))
        results.write_csv(out_dir / "loss.csv", pd.DataFrame(log, columns=cols))

    t_start = time.perf_counter()
    elapsed0 = log[-1]["seconds"] if log else 0.0
    bar = tqdm(total=total, initial=step, disable=not progress, mininterval=10, desc="train")
    while step < total:
        epoch, i = divmod(step, per_epoch)
        idx = data.batches(n, batch_size, seed=seed, epoch=epoch)[i]
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


def load_unet(path, device="cpu") -> UNet2DModel:
    """Load a network saved with ``save_pretrained``; a missing or damaged folder gives one clear error."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"no saved network at {str(path)!r} (config.json missing); train it first")
    try:
        unet = UNet2DModel.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:
        raise ValueError(f"saved network {str(path)!r} is corrupt or incomplete ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return unet.to(device).eval()


# --- sampling ---------------------------------------------------------------------------------------------

NOISE_PLACES = ("device", "cpu")  # where sampling draws its noise (``noise_generator``)
NOISE_DEFAULT = "device"


def _device_generator(device) -> torch.Generator:
    return torch.Generator(device=device)


def noise_generator(generator, device, *, noise: str = NOISE_DEFAULT):
    """The generator that sampling on ``device`` draws its noise from.

    ``noise="device"`` (default): on an accelerator, a generator on that device seeded with one draw from
    ``generator``, so a fixed seed gives the same samples on a given device, and no step waits for a CPU draw
    and its copy (for 500 images of 3 x 64 x 64, about 0.35 s per ancestral step on the CPU). ``noise="cpu"``:
    ``generator`` itself, so the same seed gives the same noise on every device. On the CPU both are
    ``generator`` itself: CPU results are the same either way. Lists (per-image generators) map element-wise.
    """
    if noise not in NOISE_PLACES:
        raise ValueError(f"noise={noise!r} is not allowed; use one of {list(NOISE_PLACES)}")
    device = torch.device(device)
    if noise == "cpu" or generator is None or device.type == "cpu":
        return generator
    if isinstance(generator, (list, tuple)):
        return [noise_generator(g, device, noise=noise) for g in generator]
    if generator.device.type == device.type and device.index in (None, generator.device.index):
        return generator
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    return _device_generator(device).manual_seed(seed)


DDIM_SPACINGS = ("leading", "trailing", "linspace")  # diffusers' ``timestep_spacing`` values (DDIMScheduler)
DDIM_SPACING = DDIMScheduler().config.timestep_spacing  # diffusers' default, "leading": the grid from T starts below T


def ddim_levels(scheduler, t: int, num_steps: int, *, spacing: str | None = None) -> list[int]:
    """The levels a DDIM chain from level t visits, t's grid first and 0 last (``num_steps`` evaluations, at
    most t), laid out by diffusers' own ``DDIMScheduler.set_timesteps`` for a t-level schedule with
    ``timestep_spacing=spacing``; level = diffusers timestep + 1.

    From t = T the levels are exactly ``DDIMScheduler``'s timesteps (+ 1). ``"leading"`` (diffusers' default)
    starts below T, at (num_steps - 1) * (T // num_steps) + 1 (981 for 50 steps of 1000): pure noise is read as
    that level, not as level T, where the cosine schedule's abar (2.4e-9) amplifies eps errors 2e4 times.
    ``"trailing"`` starts at t and is the grid the book used before; ``"linspace"`` starts at t and ends at 1.
    ``spacing=None``: ``DDIM_SPACING`` from T (pure-noise sampling) and ``"trailing"`` from t < T, whose chain
    starts from an image that really is at level t (a leading grid would evaluate the network at a lower level).
    """
    if spacing is None:
        spacing = DDIM_SPACING if t == scheduler.config.num_train_timesteps else "trailing"
    if spacing not in DDIM_SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not allowed; use None or one of {list(DDIM_SPACINGS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} is not allowed for DDIM; use a positive integer")
    if t == 0:
        return [0]
    grid = DDIMScheduler.from_config(scheduler.config, num_train_timesteps=t, timestep_spacing=spacing)
    grid.set_timesteps(min(num_steps, t))
    return sorted(set((grid.timesteps + 1).tolist()) | {0}, reverse=True)


@torch.no_grad()
def reverse_chain(unet, scheduler, x_t: torch.Tensor, t: int, *, method: str = "ddpm", num_steps: int | None = None,
                  generator: torch.Generator | None = None, fast: bool | None = None,
                  clipped_eps: bool = True, spacing: str | None = None, noise: str = NOISE_DEFAULT) -> torch.Tensor:
    """Run the reverse process from level ``t`` to 0 on a batch ``x_t`` and return x_0.

    ``method="ddpm"``: ancestral sampling, t network evaluations, each step ``scheduler.step(...)``
    (posterior mean with 1/sqrt(alpha_t), noise sigma_t z; see ``schedules.posterior_step``).
    ``method="ddim"``: deterministic DDIM over ``num_steps`` levels laid out by diffusers' ``spacing``
    (``ddim_levels``; default: diffusers' "leading" from T, "trailing" from t < T), each step
    ``schedules.ddim_step`` (``clipped_eps`` re-derives eps from the clipped x_0 estimate, see there).
    Noise is drawn from ``generator`` on the batch's device by default (``noise_generator``; ``noise="cpu"``:
    a CPU generator's draws, the same on every device, copied to the device at every step).
    """
    schedules.check_level("t", t, scheduler)
    generator = noise_generator(generator, x_t.device, noise=noise)
    x = x_t
    fast_path = use_fast(x.device, fast)
    if fast_path:  # channels_last network and activations (a no-op when the network is already in that layout)
        unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if method == "ddpm":
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        for level in range(t, 0, -1):
            eps = predict_eps(unet, x, level, fast=fast)
            x = scheduler.step(eps, level - 1, x, generator=generator).prev_sample
    elif method == "ddim":
        levels = ddim_levels(scheduler, t, num_steps, spacing=spacing)
        for a, b in zip(levels[:-1], levels[1:]):
            eps = predict_eps(unet, x, a, fast=fast)
            x = schedules.ddim_step(x, eps, a, b, scheduler, clip=scheduler.config.clip_sample, clipped_eps=clipped_eps)
    else:
        raise ValueError(f"method={method!r} is not allowed; use 'ddpm' or 'ddim'")
    return x.contiguous() if fast_path else x


def network_evaluations(t: int, *, method: str = "ddpm", num_steps: int | None = None, **_sampler_options) -> int:
    """Network evaluations per image of ``reverse_chain`` from level t (any DDIM spacing: min(num_steps, t))."""
    if method == "ddpm":
        return t
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} is not allowed for DDIM; use a positive integer")
    return min(num_steps, t)


@torch.no_grad()
def sample(unet, scheduler, *, n: int, resolution: int, generator: torch.Generator, device="cpu",
           method: str = "ddpm", num_steps: int | None = None, batch_size: int = 64, fast: bool | None = None,
           progress: bool = False, clipped_eps: bool = True, spacing: str | None = None,
           noise: str = NOISE_DEFAULT) -> torch.Tensor:
    """Generate ``n`` images from pure noise at level T, in batches; returns a CPU tensor in [-1, 1].
    ``spacing``: the DDIM grid (``ddim_levels``; default diffusers' "leading"). ``noise``: where the starting
    noise and every step's noise are drawn (``noise_generator``: on ``device`` by default; "cpu": the same
    draws on every device); on the CPU both give the same images."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is not allowed; use a positive integer")
    T = scheduler.config.num_train_timesteps
    batch_size = memory.sample_batch_limit(unet, resolution=resolution, device=device, cap=batch_size)  # CUDA only
    gen = noise_generator(generator, device, noise=noise)
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=f"sample {method}"):
        b = min(batch_size, n - start)
        x_T = torch.randn((b, 3, resolution, resolution), generator=gen, device=gen.device).to(device)
        out.append(reverse_chain(unet, scheduler, x_T, T, method=method, num_steps=num_steps, generator=gen,
                                 fast=fast, clipped_eps=clipped_eps, spacing=spacing, noise=noise).clamp(-1, 1).cpu())
    return torch.cat(out)
