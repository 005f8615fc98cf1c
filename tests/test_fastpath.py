"""The fast path (bf16 autocast + channels_last, batched DIP) against the fp32 reference path.

On the CPU the fast path is off (``ddpm.FAST_DEVICES`` is CUDA only), so these tests switch it on for the CPU
(``FAST_DEVICES = ("cuda", "cpu")``) to run the library's own bf16-autocast branch there; the CUDA test runs it
where it is on by default and is skipped without CUDA.

Stated tolerances, for eps predictions of the tiny network (random weights, outputs of std ~0.3):
bf16 keeps 8 significant bits (unit roundoff 2**-8 ~ 0.4 %), and through ~20 layers the worst of ~3000
outputs is off by ~6-11 % of the output's std while the typical (RMS) error stays ~1-2 %. So
max |eps_fast - eps_fp32| / std(eps_fp32) < 0.15 and RMS(eps_fast - eps_fp32) / std(eps_fp32) < 0.04.
Batched DIP must equal the per-image loop to 1e-4 (fp32 both; only the kernels differ).
"""

import copy
import sys
from pathlib import Path

import pytest
import torch

from tdpmlib.methods import ddpm, ddpm_training, dip, models, schedules

MAX_REL = 0.15
RMS_REL = 0.04
DIP_ATOL = 1e-4


def tiny_unet(seed=0, resolution=16):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.make_unet("tiny", resolution=resolution).eval()


def rel_errors(out, ref):
    err = out.float() - ref.float()
    return (err.abs().max() / ref.std()).item(), (err.pow(2).mean().sqrt() / ref.std()).item()


def dtypes_seen(module):
    """Record the output dtypes of ``module.conv_in`` (its input conv) while it runs."""
    seen = []
    handle = module.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen, handle


@pytest.fixture
def fast_on_cpu(monkeypatch):
    monkeypatch.setattr(ddpm, "FAST_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(ddpm, "FAST_DEFAULT", True)


def test_fast_path_switches(monkeypatch):
    monkeypatch.setattr(ddpm, "FAST_DEFAULT", True)
    assert ddpm.use_fast("cuda") and ddpm.use_fast("cuda:0", fast=True)
    assert not ddpm.use_fast("cuda", fast=False)          # per call
    assert not ddpm.use_fast("cpu") and not ddpm.use_fast("cpu", fast=True)  # CPU: always fp32 by default
    monkeypatch.setattr(ddpm, "FAST_DEFAULT", False)      # the global switch back to fp32
    assert not ddpm.use_fast("cuda") and ddpm.use_fast("cuda", fast=True)
    with ddpm.autocast("cpu", fast=True):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_eps_matches_fp32_within_tolerance(fast_on_cpu, seed):
    unet = tiny_unet(seed)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = ddpm.predict_eps(unet, x, 500, fast=False)
        fast_net = ddpm.prepare(copy.deepcopy(unet), "cpu")  # fast by default now
        seen, handle = dtypes_seen(fast_net)
        out = ddpm.predict_eps(fast_net, x, 500)
        handle.remove()
    assert fast_net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen == [torch.bfloat16], "the fast path did not run the network under bf16 autocast"
    assert out.dtype == torch.float32 and out.shape == ref.shape
    max_rel, rms_rel = rel_errors(out, ref)
    assert 0 < max_rel < MAX_REL, max_rel
    assert rms_rel < RMS_REL, rms_rel


def test_fp32_switch_is_exact(fast_on_cpu, monkeypatch):
    """fast=False (or FAST_DEFAULT = False) gives exactly the fp32 result, even where the fast path applies."""
    unet = tiny_unet()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = unet(x, torch.full((2,), 499)).sample
        seen, handle = dtypes_seen(unet)
        a = ddpm.predict_eps(unet, x, 500, fast=False)
        monkeypatch.setattr(ddpm, "FAST_DEFAULT", False)
        b = ddpm.predict_eps(unet, x, 500)
        handle.remove()
    assert seen == [torch.float32, torch.float32]
    torch.testing.assert_close(a, ref, rtol=0, atol=0)
    torch.testing.assert_close(b, ref, rtol=0, atol=0)


def test_fast_reverse_chain_matches_fp32(fast_on_cpu):
    """Sampling uses the fast path (network and activations channels_last, bf16 eps) and returns an ordinary
    contiguous tensor close to the fp32 chain's (10 ancestral steps, as TDPM-DIP runs them)."""
    sched = schedules.make_scheduler("linear")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = ddpm.reverse_chain(tiny_unet(), sched, x, 10, generator=torch.Generator().manual_seed(2), fast=False)
    net = tiny_unet()
    seen, handle = dtypes_seen(net)
    out = ddpm.reverse_chain(net, sched, x, 10, generator=torch.Generator().manual_seed(2))
    handle.remove()
    assert seen == [torch.bfloat16] * 10
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() and out.dtype == torch.float32
    max_rel, rms_rel = rel_errors(out, ref)
    assert 0 < max_rel < MAX_REL and rms_rel < RMS_REL, (max_rel, rms_rel)


def test_training_uses_the_fast_path(fast_on_cpu, tiny_images, tmp_path):
    """train_ddpm runs the network under bf16 autocast on the fast path and in fp32 with fast=False; the
    losses of the first steps agree to bf16 accuracy."""
    sched = schedules.make_scheduler("linear")
    losses = {}
    for fast in (True, False):
        net = tiny_unet(resolution=8)
        seen, handle = dtypes_seen(net)
        out = ddpm_training.train_ddpm(net, tiny_images, sched, out_dir=tmp_path / str(fast), steps=3, batch_size=8,
                              warmup_steps=0, fast=fast, progress=False)
        handle.remove()
        assert set(seen) == {torch.bfloat16 if fast else torch.float32}
        losses[fast] = torch.tensor(out["log"]["loss"].tolist())
    assert torch.allclose(losses[True], losses[False], rtol=5e-2), losses


def test_batched_dip_equals_looped_dip():
    """vmap over stacked parameters is the per-image Python loop: outputs and losses agree to 1e-4 at every
    one of 3 Adam iterations (the tiny preset has an attention block, so the batched attention is covered)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    z = torch.randn(target.shape, generator=g)
    fb = dip.DIPFitter(z, preset="tiny", seed=3, lr=1e-2, batched=True)
    fl = dip.DIPFitter(z, preset="tiny", seed=3, lr=1e-2, batched=False)
    start = fl.output()
    for _ in range(3):
        ob, lb = fb.step(target)
        ol, ll = fl.step(target)
        assert (ob - ol).abs().max().item() < DIP_ATOL
        assert (lb - ll).abs().max().item() < DIP_ATOL
    final_b, final_l = fb.output(), fl.output()
    assert (final_b - final_l).abs().max().item() < DIP_ATOL
    assert (final_l - start).abs().max().item() > 100 * DIP_ATOL  # the networks did move


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fast path's default device)")
def test_cuda_fast_path_is_default_and_close():
    assert ddpm.FAST_DEFAULT and ddpm.use_fast("cuda")
    unet = tiny_unet().cuda()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref = ddpm.predict_eps(unet, x, 500, fast=False)
        net = ddpm.prepare(copy.deepcopy(unet), "cuda")
        seen, handle = dtypes_seen(net)
        out = ddpm.predict_eps(net, x, 500)
        handle.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    max_rel, rms_rel = rel_errors(out, ref)
    assert 0 < max_rel < MAX_REL and rms_rel < RMS_REL, (max_rel, rms_rel)
    sched = schedules.make_scheduler("linear")
    xs = ddpm.sample(net, sched, n=4, resolution=16, generator=torch.Generator().manual_seed(1), device="cuda",
                     method="ddpm", batch_size=4)
    assert xs.is_contiguous() and xs.device.type == "cpu" and torch.isfinite(xs).all()
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    res = {b: dip.fit_dip(target, z=z, iterations=3, preset="tiny", device="cuda", batched=b) for b in (True, False)}
    torch.testing.assert_close(res[True].output, res[False].output, rtol=0, atol=5e-2)


# --- the benchmark suite's bookkeeping (no timing) ---------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repository root


def test_benchmark_lists_gpu_targets_as_not_measured_on_cpu():
    from benchmarks import cases, common

    ctx = common.Context(device=torch.device("cpu"), quick=False, compile=False,
                         settings=cases.settings(torch.device("cpu"), False), hardware="test CPU")
    rows = [r for c in ("dip", "sampling", "training") for r in cases.not_measured_rows(ctx, c)]
    ids = {r["target_id"] for r in rows}
    assert {"dip_gpu", "sampling_gpu_1000x1000", "sampling_gpu_speedup", "mem_training_b32",
            "mem_sampling_b500"} <= ids
    assert all(r["status"] == cases.NOT_CUDA and r["ratio"] != r["ratio"] for r in rows)  # NaN: never estimated
    assert common.target_met(float("nan"), 3.0, ">=") == ""
    assert common.target_met(3.5, 3.0, ">=") is True and common.target_met(95.0, 90.0, "<=") is False


def test_benchmark_cli_refuses_bad_cases():
    from benchmarks import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--cases", "dip,warp"])
    assert cli.build_parser().parse_args(["--cases", "training,dip"]).cases == ["dip", "training"]
    with pytest.raises(SystemExit):  # retired: per-image method costs come from chapter 08's timing benchmark
        cli.build_parser().parse_args(["--cases", "e2e"])


def test_benchmark_partial_run_keeps_other_cases_and_the_peak(tmp_path):
    from benchmarks import CASES, report

    def row(case, seconds):
        return dict(case=case, row=f"{case} row", variant="v", status="measured", seconds=seconds)

    def meta(date, peak=None):
        m = dict(date=date, git_commit="abc", torch="2", threads=2, quick=False)
        return m if peak is None else dict(m, peak=dict(flops_per_s=peak))

    full = [row("peak", 1.0)] + [row(c, 2.0) for c in CASES]
    report.write(tmp_path, "hw", False, full, meta("2026-01-01", peak=5e11), list(CASES))
    report.write(tmp_path, "hw", False, [row("dip", 3.0)], meta("2026-01-02"), ["dip"])  # no peak measured
    (run,) = report.load_runs(tmp_path)
    t = run["table"].set_index("case")
    assert list(t.index) == ["peak", *CASES]  # every earlier case kept, in order
    assert t.at["dip", "seconds"] == 3.0 and t.at["training", "seconds"] == 2.0  # only the rerun case replaced
    assert run["meta"]["peak"]["flops_per_s"] == 5e11  # the measured peak survives a run that did not measure it
    assert run["meta"]["case_runs"]["dip"]["date"] == "2026-01-02"
    assert run["meta"]["case_runs"]["training"]["date"] == "2026-01-01"


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_fast_dtype_is_native_and_fp16_training_stays_fp32(monkeypatch, capability, dtype):
    # a T4 (7.5) "supports" bf16 only by emulation: the fast path must pick fp16 there, and keep training
    # and DIP fitting (whose fp16 gradients would need loss scaling) in fp32
    monkeypatch.setattr(ddpm, "FAST_DEFAULT", True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert ddpm.fast_dtype("cuda") == dtype
    infer = ddpm.autocast("cuda")
    assert isinstance(infer, torch.autocast) and infer.fast_dtype == dtype
    train = ddpm.autocast("cuda", training=True)
    assert isinstance(train, torch.autocast) == (dtype == torch.bfloat16)
