"""UNet2DModel factories: the report's DDPM and DIP networks, smaller presets for CPU runs, a tiny one for tests.

The DIP networks are ordinary diffusers UNets called with timestep 0 (the timestep embedding is then a
constant bias), as in the reproduced report.
"""

from __future__ import annotations

from diffusers import UNet2DModel


def _unet(channels, attn_levels, *, layers_per_block=2, norm_num_groups=32):
    down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(channels)))
    up = tuple(reversed(["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in range(len(channels))]))
    return dict(block_out_channels=tuple(channels), down_block_types=down, up_block_types=up,
                layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)


PRESETS = {
    # The report's DDPM: 6 levels, attention at the fifth (level index 4); the layout of diffusers'
    # unconditional-training example. About 113.7 M parameters.
    "ddpm-paper": _unet((128, 128, 256, 256, 512, 512), {4}),
    # The report's DIP: 4 levels, attention at the third (index 2).
    "dip-paper": _unet((128, 128, 256, 512), {2}),
    # CPU presets: the same topology (4 levels, attention at the third), far fewer channels, so the whole
    # book runs on 2 CPU cores at 32 x 32. ddpm-cpu (4.3 M) was chosen by a pilot of quality per CPU-hour
    # (scripts/pilot_ddpm_sizes.py, results/cpu/pilot/): one step at batch 32 takes about 0.64 s on 2 threads.
    "ddpm-cpu": _unet((32, 64, 128, 128), {2}, layers_per_block=1, norm_num_groups=8),
    # The first cpu preset (1.09 M): it plateaus well short of a usable estimator (pilot in 01).
    "ddpm-cpu-1m": _unet((16, 32, 64, 64), {2}, layers_per_block=1, norm_num_groups=8),
    "dip-cpu": _unet((8, 16, 32, 64), {2}, layers_per_block=1, norm_num_groups=4),
    "dip-cpu-small": _unet((4, 8, 16, 32), {2}, layers_per_block=1, norm_num_groups=4),
    # Tiny preset for tests (the size diffusers' own tests use).
    "tiny": _unet((4, 8), {1}, layers_per_block=1, norm_num_groups=4),
}


def preset_levels(preset: str) -> int:
    check_preset(preset)
    return len(PRESETS[preset]["block_out_channels"])


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; use one of {sorted(PRESETS)}")
    return preset


def check_resolution(preset: str, resolution) -> int:
    """A UNet with L levels halves the image L - 1 times, so the side must be a multiple of 2**(L-1)."""
    factor = 2 ** (preset_levels(preset) - 1)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < factor or resolution % factor:
        raise ValueError(
            f"resolution={resolution!r} is not allowed for preset {preset!r}; "
            f"use a positive multiple of {factor} (the UNet's downsampling factor)"
        )
    return resolution


def make_unet(preset: str, *, resolution: int = 64, channels: int = 3) -> UNet2DModel:
    """A freshly initialised UNet2DModel for a named preset (initialisation follows torch's global RNG;
    seed it, or use ``torch.random.fork_rng``, for reproducible weights)."""
    check_resolution(preset, resolution)
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels, **PRESETS[preset])


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_table(resolution: int = 64):
    """Rows (preset, levels, block_out_channels, parameters) for every preset."""
    rows = []
    for name, kw in PRESETS.items():
        n = count_parameters(make_unet(name, resolution=max(resolution, 2 ** (len(kw["block_out_channels"]) - 1))))
        rows.append(dict(preset=name, levels=len(kw["block_out_channels"]),
                         block_out_channels=str(kw["block_out_channels"]), parameters=n))
    return rows
