"""Deep Image Prior (Algorithm 2): fit a freshly initialised network G_psi(z) to a target by Adam on MSE.

Fitting a batch of B images fits B independent networks, one per image (Ulyanov et al. 2018). They are
stepped together: their parameters are stacked (``torch.func.stack_module_state``) and the forward pass
is ``vmap(functional_call)`` over the stack. The loss is the *sum* over images of each image's mean
squared error, so the gradient with respect to network i is exactly its own loss's gradient, and since
Adam acts element-wise, one Adam over the stack equals B separate Adams. ``batched=False`` runs the
same maths as a Python loop over ordinary modules (the reference the benchmark compares against).

Iteration k's output is G_{psi_k}(z) after k Adam updates; k = 0 is the untrained network.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from diffusers.models.attention_processor import AttnProcessor
from torch.func import functional_call, stack_module_state, vmap

from . import ddpm, metrics, models

# vmap has no batching rule for CPU flash attention and falls back to a loop over the batch for that op
# (correct, and measured in benchmarks/); the warning would otherwise print in every notebook.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")


def check_positive_int(name: str, v, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r} is not allowed; use an integer >= {low}")
    return v


def check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr={lr!r} is not allowed; use a number in (0, 1)")
    return float(lr)


class DIPFitter:
    """B independent DIP networks with fixed inputs z (B x 3 x H x W), stepped together by Adam."""

    def __init__(self, z: torch.Tensor, *, preset: str = "dip-cpu", lr: float = 1e-3, seed: int = 0,
                 device="cpu", batched: bool = True, fast: bool | None = None):
        check_lr(lr)
        self.device = torch.device(device)
        self.fast = fast
        self.z = z.to(self.device)
        b, _, h, _ = z.shape
        nets = []
        for i in range(b):  # network i's initial weights depend on (seed, i) only, not on B
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 100_003 + i)
                nets.append(ddpm.prepare(models.make_unet(preset, resolution=h), self.device, fast))
        self.batched = batched
        if batched:
            if self.device.type == "cpu":
                # vmap has no batching rule for the CPU flash-attention kernel behind SDPA and falls back to a
                # per-network loop; the classic processor (baddbmm + softmax) is batched natively.
                for net in nets:
                    for m in net.modules():
                        if hasattr(m, "set_processor"):
                            m.set_processor(AttnProcessor())
            self.params, self.buffers = stack_module_state(nets)
            self.base = copy.deepcopy(nets[0]).to("meta")
            self.opt = torch.optim.Adam(list(self.params.values()), lr=lr)
        else:
            self.nets = nets
            self.opts = [torch.optim.Adam(n.parameters(), lr=lr) for n in nets]
        self.iteration = 0

    def _call(self, params, buffers, z):
        return functional_call(self.base, (params, buffers), (z.unsqueeze(0), 0)).sample.squeeze(0)

    def forward(self) -> torch.Tensor:
        with ddpm.autocast(self.device, self.fast):
            if self.batched:
                out = vmap(self._call)(self.params, self.buffers, self.z)
            else:
                out = torch.cat([n(self.z[i : i + 1], 0).sample for i, n in enumerate(self.nets)])
        return out.float()

    def step(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam update towards ``target``. Returns (output before the update, per-image MSE)."""
        out = self.forward()
        per_image = ((out - target.to(self.device)) ** 2).mean(dim=(1, 2, 3))
        if self.batched:
            self.opt.zero_grad(set_to_none=True)
            per_image.sum().backward()
            self.opt.step()
        else:
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            per_image.sum().backward()
            for o in self.opts:
                o.step()
        self.iteration += 1
        return out.detach(), per_image.detach()

    @torch.no_grad()
    def output(self) -> torch.Tensor:
        return self.forward()


@dataclass
class DIPResult:
    output: torch.Tensor                                 # after the last iteration, CPU, B x 3 x H x W
    history: pd.DataFrame                                # one row per (image, recorded iteration)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # kept iterations -> CPU outputs
    best_output: torch.Tensor | None = None              # oracle: the iteration closest to the reference
    best_iteration: torch.Tensor | None = None
    seconds: float = 0.0
    iterations: int = 0


def fit_dip(target: torch.Tensor, *, iterations: int = 100, z: torch.Tensor | None = None,
            generator: torch.Generator | None = None, preset: str = "dip-cpu", lr: float = 1e-3, seed: int = 0,
            device="cpu", reference: torch.Tensor | None = None, record_every: int = 1, keep=(),
            monitors=(), batched: bool = True, fast: bool | None = None) -> DIPResult:
    """Fit one DIP network per image of ``target`` (B x 3 x H x W, [-1, 1] scale) for ``iterations`` steps.

    ``z`` is the fixed network input (standard normal from ``generator`` when not given). Every
    ``record_every`` iterations the history records the loss and the PSNR against the target, and, when a
    clean ``reference`` is given, PSNR/SSIM against it; the oracle best output is tracked against it too.
    ``keep`` lists iterations whose outputs are returned; ``monitors`` get ``update(k, output, loss)``.
    """
    check_positive_int("iterations", iterations, allow_zero=True)
    check_positive_int("record_every", record_every)
    if target.ndim != 4 or target.shape[1] != 3:
        raise ValueError(f"target has shape {tuple(target.shape)}; use B x 3 x H x W")
    if z is None:
        z = torch.randn(target.shape, generator=generator)
    fitter = DIPFitter(z, preset=preset, lr=lr, seed=seed, device=device, batched=batched, fast=fast)
    target_d = target.to(fitter.device)
    ref_d = reference.to(fitter.device) if reference is not None else None
    rows, kept = [], {}
    best_psnr = torch.full((len(target),), -float("inf"))
    best_out, best_it = None, torch.zeros(len(target), dtype=torch.long)
    keep = set(keep)
    with metrics.CudaTimer(fitter.device) as timer:
        for k in range(iterations + 1):
            if k < iterations:
                out, loss = fitter.step(target_d)
            else:
                out = fitter.output()
                loss = ((out - target_d) ** 2).mean(dim=(1, 2, 3))
            if k in keep:
                kept[k] = out.cpu()
            for m in monitors:
                m.update(k, out, loss)
            if ref_d is not None:
                p_ref = metrics.psnr(out, ref_d).cpu()
                better = p_ref > best_psnr
                best_psnr = torch.where(better, p_ref, best_psnr)
                best_it = torch.where(better, torch.full_like(best_it, k), best_it)
                best_out = out.cpu() if best_out is None else torch.where(better[:, None, None, None], out.cpu(), best_out)
            if k % record_every == 0 or k == iterations:
                p_tgt = metrics.psnr(out, target_d).cpu()
                rec = dict(iteration=k, loss=loss.cpu(), psnr_target=p_tgt)
                if ref_d is not None:
                    small = min(out.shape[-2:]) < 11  # SSIM's Gaussian window needs 11 px
                    rec.update(psnr_ref=p_ref, ssim_ref=torch.full_like(p_ref, float("nan")) if small
                               else metrics.ssim(out, ref_d).cpu())
                for i in range(len(target)):
                    rows.append({key: (v[i].item() if torch.is_tensor(v) else v) for key, v in rec.items()} | {"image": i})
    return DIPResult(output=out.cpu(), history=pd.DataFrame(rows), outputs=kept, best_output=best_out,
                     best_iteration=best_it if ref_d is not None else None, seconds=timer.seconds,
                     iterations=iterations)
