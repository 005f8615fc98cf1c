"""How many DIP networks, or how many images of a sampling batch, fit in a GPU's memory.

A per-device memory model, so that the paper profile's batched DIP (61.5 M parameters per network at 64 px)
and its 500-image sampling batches fit a 16 GB T4, a 40 GB A100 and a 141 GB H200 alike:

* **Training a network** (one DIP fit) holds its fp32 weights, their gradients and Adam's two moments
  (4 x 4 bytes per parameter), plus the activations its forward pass keeps for the backward pass. Those are
  counted, not guessed: a forward pass on the meta device (no memory, no arithmetic) with a hook on every leaf
  module adds up the elements of each output, at 4 bytes (fp32) or 2 (the bf16/fp16 fast path).
* **Sampling** holds the network's weights once and, per image, at most the same sum of activations (an upper
  bound: a no-grad forward frees most of them as it goes).

A plan uses ``FRACTION`` of the device's memory and leaves the rest to the allocator's fragmentation, cuDNN
workspaces and the run's other tensors. On the CPU nothing is capped: the configured batch sizes stand, so
CPU runs are unchanged by this module.
"""

from __future__ import annotations

import torch

from . import models, skipnet

# Memory of the GPU classes the book's profiles are sized for (decimal GB, as vendors state them).
GPU_MEMORY_GB = {"T4": 16, "L4": 24, "A100 40 GB": 40, "A100 80 GB": 80, "H100": 80, "H200": 141}
FRACTION = 0.8
ADAM_BYTES_PER_PARAM = 16  # fp32 weight, gradient and the two Adam moments (Kingma and Ba, 2015)


def _network(preset: str, resolution: int, in_channels: int = 3):
    """The network of ``preset`` on the meta device: a models.PRESETS UNet, or a skip network ("skip-*")."""
    with torch.device("meta"):
        if preset in skipnet.PRESETS:
            return skipnet.make_skipnet(preset, resolution=resolution, in_channels=in_channels)
        return models.make_unet(preset, resolution=resolution)


def activation_elements(net, example: torch.Tensor, *, timestep: bool) -> int:
    """Elements of every leaf module's output in one forward pass of ``net`` on ``example`` (meta tensors)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        out = getattr(output, "sample", output)
        if isinstance(out, torch.Tensor):
            total += out.numel()

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            net(example, torch.zeros(len(example), dtype=torch.long, device="meta")) if timestep else net(example)
    finally:
        for h in hooks:
            h.remove()
    return total


def dip_network_bytes(preset: str, *, resolution: int, in_channels: int | None = None, act_bytes: int = 4) -> int:
    """Bytes that fitting one DIP network of ``preset`` at ``resolution`` px holds: parameters with their
    gradients and Adam state, plus the activations kept for the backward pass. ``in_channels``: the network
    input's channels (default: 32 for a skip network, the official protocol's input, else 3)."""
    in_channels = in_channels or (32 if preset in skipnet.PRESETS else 3)
    net = _network(preset, resolution, in_channels)
    example = torch.empty(1, in_channels, resolution, resolution, device="meta")
    acts = activation_elements(net, example, timestep=preset not in skipnet.PRESETS)
    return models.count_parameters(net) * ADAM_BYTES_PER_PARAM + acts * act_bytes


def sampling_bytes(preset: str, *, resolution: int, act_bytes: int = 4) -> tuple[int, int]:
    """(fixed, per image) bytes of sampling with the DDPM of ``preset``: its fp32 weights once, and per image at
    most one forward pass's activations."""
    net = _network(preset, resolution)
    example = torch.empty(1, 3, resolution, resolution, device="meta")
    return models.count_parameters(net) * 4, activation_elements(net, example, timestep=True) * act_bytes


def fits(per_item: int, budget: int, *, cap: int, fixed: int = 0) -> int:
    """How many items of ``per_item`` bytes fit in ``budget`` bytes after ``fixed`` ones: between 1 and ``cap``
    (1 even when a single item exceeds the budget: the run then fails loudly on the device, not here)."""
    if per_item <= 0 or budget <= 0:
        raise ValueError(f"per_item and budget must be positive bytes; got {per_item} and {budget}")
    return max(1, min(cap, (budget - fixed) // per_item))


def device_budget(device, *, fraction: float = FRACTION) -> int | None:
    """The bytes a plan may use on ``device``: ``fraction`` of the CUDA device's free memory (what the run has
    not already taken, e.g. a loaded DDPM); None on the CPU (no cap)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(fraction * free)


def dip_batch_limit(preset: str, *, resolution: int, device, cap: int, fraction: float = FRACTION) -> int:
    """How many DIP networks of ``preset`` to fit at once: ``cap`` on the CPU; on CUDA at most what fits in
    ``fraction`` of the free memory by ``dip_network_bytes``."""
    budget = device_budget(device, fraction=fraction)
    if budget is None:
        return cap
    return fits(dip_network_bytes(preset, resolution=resolution), budget, cap=cap)


def training_bytes(preset: str, *, resolution: int, batch: int, act_bytes: int = 4) -> int:
    """Bytes of one DDPM training step at ``batch``: parameters with gradients and AdamW state, the EMA copy,
    and a batch's activations kept for the backward pass."""
    fixed, per_image = sampling_bytes(preset, resolution=resolution, act_bytes=act_bytes)
    n = fixed // 4  # parameters
    return n * ADAM_BYTES_PER_PARAM + n * 4 + batch * per_image


def check_fits(preset: str, *, resolution: int, batch: int, budget: int | None, note: str = "") -> None:
    """Raise one clear error when the profile's DDPM training step cannot fit ``budget`` (None: no check)."""
    if budget is None:
        return
    need = training_bytes(preset, resolution=resolution, batch=batch)
    if need > budget:
        raise ValueError(f"device memory is too small for this profile: training {preset} at batch {batch} and "
                         f"{resolution} px needs about {need / 2**30:.1f} GiB and this GPU offers "
                         f"{budget / 2**30:.1f} GiB" + (f" (the profile's cost: {note})" if note else "")
                         + "; use a GPU with more memory or profile='cpu'")


def plan(*, dip_preset: str, ddpm_preset: str, resolution: int, budget: int | None, dip_cap: int,
         sample_cap: int, act_bytes: int = 4) -> dict:
    """Batch sizes for one run: DIP networks fitted at once and images sampled at once, with the peak each is
    expected to reach (bytes). ``budget`` None (the CPU) keeps the caps."""
    dip_each = dip_network_bytes(dip_preset, resolution=resolution, act_bytes=act_bytes)
    fixed, img_each = sampling_bytes(ddpm_preset, resolution=resolution, act_bytes=act_bytes)
    dip_b = dip_cap if budget is None else fits(dip_each, budget, cap=dip_cap)
    sample_b = sample_cap if budget is None else fits(img_each, budget, cap=sample_cap, fixed=fixed)
    return dict(dip_preset=dip_preset, dip_batch=int(dip_b), dip_peak=int(dip_b * dip_each), ddpm_preset=ddpm_preset,
                sample_batch=int(sample_b), sample_peak=int(fixed + sample_b * img_each), budget=budget)


def describe(p: dict) -> str:
    """The plan as one short table cell for a notebook's run details (not a sentence), e.g.
    "DIP 16 × dip-cpu (0.1 GiB), sampling 64 × ddpm-cpu (0.2 GiB); CPU, no cap"."""
    gib = 2 ** 30
    where = "CPU, no cap" if p["budget"] is None else f"budget {p['budget'] / gib:.1f} GiB"
    return (f"DIP {p['dip_batch']} × {p['dip_preset']} ({p['dip_peak'] / gib:.1f} GiB), "
            f"sampling {p['sample_batch']} × {p['ddpm_preset']} ({p['sample_peak'] / gib:.1f} GiB); {where}")


def sample_batch_limit(unet, *, resolution: int, device, cap: int, fraction: float = FRACTION) -> int:
    """How many images to sample at once with ``unet`` (already on ``device``): ``cap`` on the CPU; on CUDA at
    most what fits in ``fraction`` of the free memory at one forward pass's activations per image (the network
    is rebuilt from its config on the meta device to count them)."""
    budget = device_budget(device, fraction=fraction)
    if budget is None:
        return cap
    with torch.device("meta"):
        net = type(unet).from_config(unet.config)
    example = torch.empty(1, unet.config.in_channels, resolution, resolution, device="meta")
    return fits(activation_elements(net, example, timestep=True) * 4, budget, cap=cap)
