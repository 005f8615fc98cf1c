"""Deep Image Prior (Algorithm 2): fit a freshly initialised network G_psi(z) to a target by Adam on MSE.

The protocols (``PROTOCOLS``: the report's plain DIP, the official one, the ES-WMV authors') are described in
``dip_protocols``; ``fit_dip(..., protocol=...)`` picks one by name.

Backtracking (official): the notebook's counter i counts the steps that did not backtrack; at every step
with i % 100 != 0 (``if i % show_every:``, show_every = 100) the PSNR of the raw output against the noisy
target (``metrics.psnr``: on [0, 1], data range 1, as the notebook's ``compare_psnr`` on its [0, 1] images) is
compared with the one stored at the last check that passed. If it fell by more than 5 dB the
parameters are restored from the copy taken at that check; otherwise the copy and the PSNR are renewed.
Only parameters are restored: Adam's moments and step count are not, and the Adam step right after the
restore still uses the gradient computed at the collapsed parameters (the closure has already called
``backward``; ``optimize`` then calls ``optimizer.step()``). Here every image has its own counter, copy and
PSNR; in a batched fit only the slices of the stacked parameters of the images whose PSNR dropped are
restored, and the one Adam step over the stack follows, exactly as B separate official runs would do.

Fitting a batch of B images fits B independent networks, one per image; network i's initial weights depend
on (seed, i) only (``indices`` names i when fitting a subset). They are stepped together: their parameters
are stacked (``torch.func.stack_module_state``) and the forward pass is ``vmap(functional_call)`` over the
stack. The loss is the *sum* over images of each image's MSE, so the gradient with respect to network i is
its own loss's gradient, and since Adam acts element-wise, one Adam over the stack equals B separate Adams.
``batched=False`` runs the same maths as a Python loop over ordinary modules (the reference). In float32 the
two agree to rounding only approximately for the skip network: Adam divides each gradient element by its own
running RMS, so the rounding noise of gradients that BatchNorm makes ~0 (a conv bias right before it) turns
into steps of about lr in directions that barely move the output; outputs still agree to ~1e-4 over a few
steps (in float64, where that noise is far below Adam's eps, to ~1e-7; tests/test_dip.py compares there).

Iteration k's output is the one computed with the parameters after k Adam updates; k = 0 is the untrained
network. Every random draw comes from the given generators (z from torch's global RNG only when neither
z nor a generator is given).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from diffusers.models.attention_processor import AttnProcessor
from torch.func import functional_call, stack_module_state, vmap

from ..evaluation import metrics
from . import ddpm, memory, models, skipnet
from .dip_protocols import (  # noqa: F401 - dip.PROTOCOLS, dip.check_lr, ... are the DIP's interface
    PROTOCOLS, DIPProtocol, check_lr, check_positive_int, check_protocol, draw_input)

# vmap has no batching rule for CPU flash attention and falls back to a loop over the batch for that op
# (correct, and measured in benchmarks/); the warning would otherwise print in every notebook.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean(dim=(1, 2, 3))


class DIPFitter:
    """B independent DIP networks with fixed inputs z (B x C x H x W), stepped together by Adam.

    ``preset`` and ``lr`` default to the protocol's. ``indices`` (default 0..B-1) are the networks' indices i:
    network i is initialised from (seed, i). ``jitter_generator`` draws the per-step input jitter of the
    official protocol (default: a generator on ``device`` seeded with ``seed``); each step draws one
    B x C x H x W tensor from it, image j taking slice j, in both the batched and the loop paths.
    """

    def __init__(self, z: torch.Tensor, *, protocol: str = "plain", preset: str | None = None,
                 lr: float | None = None, seed: int = 0, device="cpu", batched: bool = True,
                 fast: bool | None = None, indices=None, jitter_generator: torch.Generator | None = None):
        self.protocol = p = check_protocol(protocol)
        lr = check_lr(p.lr if lr is None else lr)
        preset = p.preset if preset is None else preset
        if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != p.input_channels:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"z has shape {shape}; protocol {protocol!r} takes B x {p.input_channels} x H x W")
        self.device = torch.device(device)
        self.fast = fast
        self.z = z.to(self.device)
        b, _, h, w = z.shape
        indices = list(range(b)) if indices is None else list(indices)
        if len(indices) != b or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            raise ValueError(f"indices={indices!r} is not allowed; use {b} integers >= 0, one per image")
        nets = []
        # On CUDA the networks are built on the device (initialising 61.5 M paper-size parameters on the CPU takes
        # about 0.2 s a network, ~4,500 networks in the paper profile), from CUDA's generator under the same seed:
        # deterministic there, but not the CPU's initial weights. On the CPU nothing changes.
        on_device = self.device.type == "cuda"
        rng_devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if on_device else []
        for i in indices:  # network i's initial weights depend on (seed, i) only, not on B
            with torch.random.fork_rng(devices=rng_devices), (self.device if on_device else contextlib.nullcontext()):
                torch.manual_seed(seed * 100_003 + i)
                if p.network == "unet":
                    net = models.make_unet(preset, resolution=h)
                else:
                    net = skipnet.make_skipnet(preset, resolution=h, in_channels=p.input_channels)
                    skipnet.check_resolution(w, net.scales)
                nets.append(ddpm.prepare(net, self.device, fast))
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
            # fused on CUDA: one kernel over all B stacked networks instead of a pass per parameter tensor
            self.opts = [torch.optim.Adam(list(self.params.values()), lr=lr, fused=self.device.type == "cuda")]
            self.opt = self.opts[0]
        else:
            self.nets = nets
            self.opts = [torch.optim.Adam(n.parameters(), lr=lr) for n in nets]
        if p.jitter_std and jitter_generator is None:
            jitter_generator = torch.Generator(self.device).manual_seed(seed)
        self.jitter_generator = jitter_generator
        self.raw: torch.Tensor | None = None     # the last raw (not averaged) output
        self.avg: torch.Tensor | None = None     # the running average (official protocol)
        self.backtracked = torch.zeros(b, dtype=torch.bool)  # per image: did the last step backtrack?
        self.backtracks = torch.zeros(b, dtype=torch.long)   # per image: how many times so far
        if p.backtrack_db is not None:
            self.count = torch.zeros(b, dtype=torch.long)    # the official counter i, per image
            self.last_psnr = torch.zeros(b)                  # psrn_noisy_last
            self.snapshot = ({k: v.detach().clone() for k, v in self.params.items()} if batched else
                             [[q.detach().clone() for q in n.parameters()] for n in nets])  # last_net
        self.iteration = 0

    def _apply(self, net, z):
        return net(z, 0).sample if self.protocol.network == "unet" else 2 * net(z) - 1

    def _call(self, params, buffers, z):
        return self._apply(lambda *a: functional_call(self.base, (params, buffers), a), z.unsqueeze(0)).squeeze(0)

    def forward(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """The networks' raw outputs on [-1, 1] for input ``z`` (default: the fixed z, no jitter)."""
        z = self.z if z is None else z
        with ddpm.autocast(self.device, self.fast, training=torch.is_grad_enabled()):
            if self.batched:
                out = vmap(self._call)(self.params, self.buffers, z)
            else:
                out = torch.cat([self._apply(n, z[i : i + 1]) for i, n in enumerate(self.nets)])
        return out.to(self.z.dtype)  # back from bf16 under the fast path; float64 nets stay float64

    def _input(self) -> torch.Tensor:
        p, g = self.protocol, self.jitter_generator
        if not p.jitter_std:
            return self.z
        noise = torch.randn(self.z.shape, generator=g, device=g.device).to(self.device)
        return self.z + noise * p.jitter_std

    def _average(self, raw: torch.Tensor) -> torch.Tensor:
        self.raw = raw
        e = self.protocol.ema
        if not e:
            return raw
        self.avg = raw.clone() if self.avg is None else self.avg * e + raw * (1 - e)
        return self.avg

    @torch.no_grad()
    def _copy(self, mask: torch.Tensor, *, restore: bool) -> None:
        """Copy the snapshot into the parameters (``restore``) or back, for the images in ``mask``."""
        if not mask.any():
            return
        if self.batched:
            idx = torch.nonzero(mask).flatten().to(self.device)
            for name, q in self.params.items():
                s = self.snapshot[name]
                if restore:
                    q[idx] = s[idx]
                else:
                    s[idx] = q[idx].detach()
        else:
            for i in torch.nonzero(mask).flatten().tolist():
                for q, s in zip(self.nets[i].parameters(), self.snapshot[i]):
                    (q if restore else s).copy_(s if restore else q.detach())

    def _backtrack(self, raw: torch.Tensor, target: torch.Tensor) -> None:
        p = self.protocol
        psnr = metrics.psnr(raw, target).cpu()
        check = self.count % p.backtrack_every != 0
        back = check & (psnr - self.last_psnr < -p.backtrack_db)
        passed = check & ~back
        self._copy(back, restore=True)
        self._copy(passed, restore=False)
        self.last_psnr = torch.where(passed, psnr, self.last_psnr)
        self.count += (~back).long()
        self.backtracked = back
        self.backtracks += back.long()

    def step(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam update towards ``target``. Returns (this iteration's output before the update -- the
        average under the official protocol -- and its per-image MSE against ``target``)."""
        target = target.to(self.device)
        raw = self.forward(self._input())
        per_image = _mse(raw, target)
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss = per_image.sum()
        if self.protocol.loss_scale != 1:
            loss = loss * self.protocol.loss_scale
        loss.backward()
        raw = raw.detach()
        out = self._average(raw)
        if self.protocol.backtrack_db is not None:
            self._backtrack(raw, target)  # after backward, before the Adam step, as in the official closure
        for o in self.opts:
            o.step()
        self.iteration += 1
        return out, (per_image.detach() if out is raw else _mse(out, target))

    @torch.no_grad()
    def output(self) -> torch.Tensor:
        """This iteration's output without an update. Under the official protocol it draws the iteration's
        jitter and folds the output into the average, as the next ``step`` would: call it once, at the end."""
        return self._average(self.forward(self._input()))


class BestIteration:
    """The oracle over a fit (evaluation only): per image, the highest PSNR against the reference so far
    (``psnr``), the iteration that reached it (``iteration``) and, with ``keep_output``, its output (``output``;
    None before the first ``update``). All three live on ``device`` (default the CPU): a fit on a GPU tracks
    its best iteration there and reads it back once, at the end, instead of waiting for the host every step."""

    def __init__(self, n: int, *, keep_output: bool = True, device="cpu"):
        self.device = torch.device(device)
        self.psnr = torch.full((n,), -float("inf"), device=self.device)
        self.iteration = torch.zeros(n, dtype=torch.long, device=self.device)
        self.output = None
        self.keep_output = keep_output

    def update(self, k: int, out: torch.Tensor, p_ref: torch.Tensor) -> None:
        """Take iteration ``k`` for the images where its PSNR ``p_ref`` (per image) beats the best so far."""
        p_ref = p_ref.to(self.device)
        better = p_ref > self.psnr
        self.psnr = torch.where(better, p_ref, self.psnr)
        self.iteration = torch.where(better, torch.full_like(self.iteration, k), self.iteration)
        if self.keep_output:
            out = out.detach().to(self.device)
            self.output = out if self.output is None else torch.where(better[:, None, None, None], out, self.output)


@dataclass
class DIPResult:
    output: torch.Tensor                                 # after the last iteration, CPU, B x 3 x H x W
    history: pd.DataFrame                                # one row per (image, recorded iteration)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # kept iterations -> CPU outputs
    best_output: torch.Tensor | None = None              # oracle: the iteration closest to the reference
    best_iteration: torch.Tensor | None = None
    seconds: float = 0.0
    iterations: int = 0
    protocol: str = "plain"
    # Official protocol only (the plain output is the raw one): the raw, not averaged, outputs, and the
    # number of backtracks per image.
    raw_output: torch.Tensor | None = None
    raw_outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    backtracks: torch.Tensor | None = None


def fit_dip(target: torch.Tensor, *, iterations: int = 100, z: torch.Tensor | None = None,
            generator: torch.Generator | None = None, preset: str | None = None, lr: float | None = None,
            seed: int = 0, device="cpu", reference: torch.Tensor | None = None, record_every: int = 1, keep=(),
            monitors=(), batched: bool = True, fast: bool | None = None, protocol: str = "plain",
            indices=None, jitter_generator: torch.Generator | None = None, max_batch: int | None = None) -> DIPResult:
    """Fit one DIP network per image of ``target`` (B x 3 x H x W, [-1, 1] scale) for ``iterations`` steps.

    ``protocol`` is "plain" or "official" (module docstring); ``preset`` and ``lr`` default to its own.
    ``z`` is the fixed network input (``draw_input`` from ``generator`` when not given). Every
    ``record_every`` iterations the history records the loss and the PSNR against the target, and, when a
    clean ``reference`` is given, PSNR/SSIM against it; the oracle best output is tracked against it too.
    Records and the oracle stay on the fit's device and reach the host once, at the end (no per-iteration
    host sync; the official protocol's backtracking still reads its PSNR every step).
    ``keep`` lists iterations whose outputs are returned; ``monitors`` get ``update(k, output, loss)``.
    Under the official protocol all of these see the averaged output; the history adds the raw output's
    ``loss_raw``, ``psnr_target_raw`` (and ``psnr_ref_raw``) and whether the step ``backtracked``. Its jitter
    comes from ``jitter_generator``, by default a generator on ``device`` seeded by one draw from
    ``generator`` after z (or with ``seed`` when there is no generator). ``indices``: see ``DIPFitter``.

    ``max_batch``: at most this many networks are fitted at once (default: all on the CPU; on CUDA what the
    memory model fits, ``memory.dip_batch_limit``). Larger batches are fitted in consecutive chunks with the same
    z, the same per-image initial weights and one jitter generator, and merged; a fit with ``monitors`` is never
    split (a monitor holds per-batch state), so its caller chunks.
    """
    p = check_protocol(protocol)
    check_positive_int("iterations", iterations, allow_zero=True)
    check_positive_int("record_every", record_every)
    if target.ndim != 4 or target.shape[1] != 3:
        raise ValueError(f"target has shape {tuple(target.shape)}; use B x 3 x H x W")
    if z is None:
        b, _, h, w = target.shape
        z = draw_input(protocol, (b, h, w), generator)
    if p.jitter_std and jitter_generator is None:
        s = seed if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        jitter_generator = torch.Generator(torch.device(device)).manual_seed(s)
    B = len(target)
    if max_batch is None:
        max_batch = memory.dip_batch_limit(preset or p.preset, resolution=target.shape[-1], device=device, cap=B)
    if max_batch < B and not monitors:
        idx = list(range(B)) if indices is None else list(indices)
        parts = [fit_dip(target[a:a + max_batch], iterations=iterations, z=z[a:a + max_batch], preset=preset, lr=lr,
                         seed=seed, device=device, record_every=record_every, keep=keep, batched=batched, fast=fast,
                         reference=None if reference is None else reference[a:a + max_batch], protocol=protocol,
                         indices=idx[a:a + max_batch], jitter_generator=jitter_generator, max_batch=max_batch)
                 for a in range(0, B, max_batch)]
        return _merge(parts)
    fitter = DIPFitter(z, protocol=protocol, preset=preset, lr=lr, seed=seed, device=device, batched=batched,
                       fast=fast, indices=indices, jitter_generator=jitter_generator)
    extra = p.ema > 0 or p.backtrack_db is not None  # record the raw output beside the reported one
    target_d = target.to(fitter.device)
    ref_d = reference.to(fitter.device) if reference is not None else None
    records, kept, kept_raw = [], {}, {}
    best = BestIteration(len(target), device=fitter.device)
    keep = set(keep)
    with metrics.CudaTimer(fitter.device) as timer:
        for k in range(iterations + 1):
            if k < iterations:
                out, loss = fitter.step(target_d)
                back = fitter.backtracked
            else:
                out = fitter.output()
                loss = _mse(out, target_d)
                back = torch.zeros(len(target), dtype=torch.bool)
            if k in keep:
                kept[k] = out.cpu()
                if extra:
                    kept_raw[k] = fitter.raw.cpu()
            for m in monitors:
                m.update(k, out, loss)
            if ref_d is not None:
                p_ref = metrics.psnr(out, ref_d)
                best.update(k, out, p_ref)
            if k % record_every == 0 or k == iterations:  # device tensors: read back in one go after the loop
                rec = dict(iteration=k, loss=loss.detach(), psnr_target=metrics.psnr(out, target_d))
                if ref_d is not None:
                    small = min(out.shape[-2:]) < 11  # SSIM's Gaussian window needs 11 px
                    rec.update(psnr_ref=p_ref, ssim_ref=torch.full_like(p_ref, float("nan")) if small
                               else metrics.ssim(out, ref_d))
                if extra:
                    rec.update(loss_raw=_mse(fitter.raw, target_d), psnr_target_raw=metrics.psnr(fitter.raw, target_d),
                               backtracked=back)
                    if ref_d is not None:
                        rec.update(psnr_ref_raw=metrics.psnr(fitter.raw, ref_d))
                records.append(rec)
    return DIPResult(output=out.cpu(), history=_history(records, len(target)), outputs=kept,
                     best_output=None if best.output is None else best.output.cpu(),
                     best_iteration=best.iteration.cpu() if ref_d is not None else None, seconds=timer.seconds,
                     iterations=iterations, protocol=protocol, raw_output=fitter.raw.cpu() if extra else None,
                     raw_outputs=kept_raw, backtracks=fitter.backtracks.clone() if extra else None)


def _history(records: list[dict], n: int) -> pd.DataFrame:
    """The history table (one row per recorded iteration and image) from per-iteration records of per-image
    device tensors, copied to the host in one transfer per column."""
    if not records:
        return pd.DataFrame()
    cols = {"iteration": [r["iteration"] for r in records for _ in range(n)]}
    for key in records[0]:
        if key != "iteration":
            v = records[0][key]
            cols[key] = torch.stack([r[key].to(v.device) for r in records]).cpu().reshape(-1).tolist()
    cols["image"] = list(range(n)) * len(records)
    return pd.DataFrame(cols)


def _merge(parts: list[DIPResult]) -> DIPResult:
    """One DIPResult from the fits of consecutive chunks of a batch (images renumbered from 0)."""
    def cat(xs):
        return None if xs[0] is None else torch.cat(xs)

    offsets = [0]
    for r in parts[:-1]:
        offsets.append(offsets[-1] + len(r.output))
    history = pd.concat([r.history.assign(image=r.history["image"] + o) for r, o in zip(parts, offsets)],
                        ignore_index=True).sort_values(["iteration", "image"], kind="stable", ignore_index=True)
    first = parts[0]
    return DIPResult(output=cat([r.output for r in parts]), history=history,
                     outputs={k: cat([r.outputs[k] for r in parts]) for k in first.outputs},
                     best_output=cat([r.best_output for r in parts]), best_iteration=cat([r.best_iteration for r in parts]),
                     seconds=sum(r.seconds for r in parts), iterations=first.iterations, protocol=first.protocol,
                     raw_output=cat([r.raw_output for r in parts]),
                     raw_outputs={k: cat([r.raw_outputs[k] for r in parts]) for k in first.raw_outputs},
                     backtracks=cat([r.backtracks for r in parts]))
