"""DDPM sampling: ancestral, DDIM, and the truncated reverse chain from any level; the fast path (bf16 autocast
on CUDA) that training shares; loading a trained network. Training (Algorithm 1) is in ``ddpm_training``.

Levels follow ``tdpmlib.methods.schedules``: level t in 0..T, and level t is diffusers timestep t - 1.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel
from tqdm import tqdm

from . import memory, schedules

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
