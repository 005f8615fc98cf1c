import math
import traceback

import pytest
import torch

from tdpmlib.evaluation import metrics
from tdpmlib.methods import dip, skipnet


def targets(n=2, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 2 - 1, size=size, mode="bilinear")


@pytest.fixture
def float64():
    """Adam divides each gradient element by its own running RMS, so in float32 the rounding noise (~1e-9) of
    the gradients in the directions BatchNorm makes flat (a conv bias right before a BatchNorm) becomes steps
    of about lr that differ between two correct implementations. In float64 that noise is far below Adam's
    eps = 1e-8, so two implementations of the same maths agree to ~1e-7 and can be compared tightly."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def official_fitter(z, **kw):
    g = torch.Generator().manual_seed(5)
    return dip.DIPFitter(z, protocol="official", preset="skip-tiny", jitter_generator=g, **kw)


def test_dip_loss_falls_over_50_iterations():
    tgt = targets()
    res = dip.fit_dip(tgt, iterations=50, preset="tiny", lr=1e-2, generator=torch.Generator().manual_seed(0),
                      reference=tgt, keep=range(51))
    h = res.history
    first, last = h[h.iteration == 0].loss.mean(), h[h.iteration == 50].loss.mean()
    assert last < 0.5 * first
    assert set(h.columns) >= {"image", "iteration", "loss", "psnr_target", "psnr_ref", "ssim_ref"}
    assert len(h) == 2 * 51 and res.iterations == 50
    torch.testing.assert_close(res.outputs[50], res.output)
    # the oracle is the recorded iteration with the highest PSNR against the reference, and its output
    psnr = h.pivot(index="iteration", columns="image", values="psnr_ref")
    assert res.best_iteration.tolist() == psnr.idxmax().tolist()
    for i, k in enumerate(res.best_iteration.tolist()):
        torch.testing.assert_close(res.best_output[i], res.outputs[k][i])
    torch.testing.assert_close(metrics.psnr(res.best_output, tgt), torch.tensor(psnr.max().values, dtype=torch.float32))


def test_batched_fit_equals_independent_fits():
    """Fitting B images together is B independent fits: image i's result does not depend on the others,
    nor on B (network i is initialised from (seed, i))."""
    tgt = targets(3)
    z = torch.randn(tgt.shape, generator=torch.Generator().manual_seed(1))
    together = dip.fit_dip(tgt, iterations=5, z=z, preset="tiny", seed=3)
    for i in range(3):
        alone = dip.fit_dip(tgt[i : i + 1], iterations=5, z=z[i : i + 1], preset="tiny", seed=3, indices=[i])
        torch.testing.assert_close(alone.output, together.output[i : i + 1], rtol=1e-4, atol=1e-5)
    loop = dip.fit_dip(tgt, iterations=5, z=z, preset="tiny", seed=3, batched=False)
    torch.testing.assert_close(together.output, loop.output, rtol=1e-4, atol=1e-5)
    # the networks do differ (otherwise the comparison above would prove nothing)
    assert not torch.allclose(together.output[0], dip.fit_dip(tgt[:1], iterations=5, z=z[:1], preset="tiny",
                                                               seed=3, indices=[1]).output[0])


def test_dip_history_record_every_and_no_reference():
    res = dip.fit_dip(targets(1), iterations=10, record_every=5, preset="tiny", generator=torch.Generator().manual_seed(0))
    assert res.history.iteration.tolist() == [0, 5, 10]
    assert "psnr_ref" not in res.history and res.best_output is None


def test_dip_fit_reads_the_device_back_a_fixed_number_of_times(monkeypatch):
    # each .cpu() / .item() / .tolist() of a device tensor in tdpmlib is a host sync on a GPU: the count must not
    # grow with the iterations, even when every iteration is recorded against a reference (Adam's step counter,
    # a CPU scalar on every device, is not counted)
    tgt = targets()
    counts = []

    def fit(iterations):
        calls = [0]

        def counted(real):
            def f(x, *a, **k):
                calls[0] += "tdpmlib" in traceback.extract_stack(limit=2)[0].filename
                return real(x, *a, **k)
            return f

        for name in ("cpu", "item", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        dip.fit_dip(tgt, iterations=iterations, preset="tiny", generator=torch.Generator().manual_seed(0),
                    reference=tgt, record_every=1)
        monkeypatch.undo()
        counts.append(calls[0])

    fit(3)
    fit(12)
    assert counts[0] == counts[1] and counts[0] < 20


def test_dip_history_and_oracle_are_what_each_iteration_scored():
    # the history and the best iteration, recomputed from the kept outputs of every iteration on the host
    tgt, ref = targets(), targets(2, 8).flip(-1)
    res = dip.fit_dip(tgt, iterations=6, preset="tiny", lr=1e-2, generator=torch.Generator().manual_seed(0),
                      reference=ref, record_every=2, keep=range(7))
    h = res.history
    assert h.iteration.tolist() == [0, 0, 2, 2, 4, 4, 6, 6] and h.image.tolist() == [0, 1] * 4
    assert h.dtypes["iteration"] == "int64" and h.dtypes["psnr_ref"] == "float64"
    for k in (0, 2, 4, 6):
        rows = h[h.iteration == k]
        assert rows.psnr_target.tolist() == metrics.psnr(res.outputs[k], tgt).tolist()
        assert rows.psnr_ref.tolist() == metrics.psnr(res.outputs[k], ref).tolist()
    scores = torch.stack([metrics.psnr(res.outputs[k], ref) for k in range(7)])  # iterations x images
    best_k = scores.argmax(0)
    assert res.best_iteration.device.type == "cpu" and res.best_iteration.tolist() == best_k.tolist()
    assert torch.equal(res.best_output, torch.stack([res.outputs[int(k)][i] for i, k in enumerate(best_k)]))
    tracker = dip.BestIteration(2, device="meta")  # the oracle stays where the fit runs
    tracker.update(0, torch.zeros(2, 3, 4, 4, device="meta"), torch.zeros(2, device="meta"))
    assert tracker.psnr.is_meta and tracker.output.is_meta and tracker.iteration.is_meta


class CountingMonitor:
    def __init__(self):
        self.ks = []

    def update(self, k, out, loss):
        self.ks.append(k)


def test_monitors_see_every_iteration():
    m = CountingMonitor()
    dip.fit_dip(targets(1), iterations=7, preset="tiny", generator=torch.Generator().manual_seed(0), monitors=[m])
    assert m.ks == list(range(8))


@pytest.mark.parametrize("kw, match", [(dict(iterations=-1), "iterations=-1"), (dict(iterations=2.5), "iterations=2.5"),
                                        (dict(lr=0), "lr=0"), (dict(lr="fast"), "lr='fast'"),
                                        (dict(preset="huge"), "preset='huge'"),
                                        (dict(protocol="nope"), "protocol='nope'"),
                                        (dict(protocol="official", preset="dip-cpu"), "preset='dip-cpu'"),
                                        (dict(protocol="official", preset="skip-tiny", size=10), "resolution=10"),
                                        (dict(protocol="official", preset="skip-tiny", size=4), "resolution=4"),
                                        (dict(protocol="official", preset="skip-tiny", z=torch.zeros(1, 3, 8, 8)),
                                         "z has shape"),
                                        (dict(indices=[0, 1]), "indices=")])
def test_bad_dip_arguments(kw, match):
    size = kw.pop("size", 8)
    with pytest.raises(ValueError, match=match):
        dip.fit_dip(targets(1, size), generator=torch.Generator().manual_seed(0), **dict(dict(iterations=1), **kw))


# --- the official protocol (Ulyanov et al. 2018) -------------------------------------------------------------


def test_skipnet_is_the_official_network():
    # 2,217,831 parameters: what the official denoising notebook's skip network (5 scales, 128/128/4, input 32)
    # has, counted on a build of models/skip.py of github.com/DmitryUlyanov/deep-image-prior.
    net = skipnet.make_skipnet("skip-paper", resolution=64)
    assert sum(q.numel() for q in net.parameters()) == 2_217_831
    assert list(net.buffers()) == []  # batch statistics only: nothing for vmap to update in place
    out = net(torch.rand(1, 32, 64, 64) * 0.1)
    assert out.shape == (1, 3, 64, 64) and 0 < out.min() and out.max() < 1
    with pytest.raises(ValueError, match="resolution=32 is not allowed with scales=5"):
        skipnet.make_skipnet("skip-paper", resolution=32)
    with pytest.raises(ValueError, match="preset='skip-huge'"):
        skipnet.make_skipnet("skip-huge", resolution=64)


def test_official_input_is_scaled_uniform_from_the_generator():
    z = dip.draw_input("official", (2, 8, 8), torch.Generator().manual_seed(0))
    assert z.shape == (2, 32, 8, 8) and 0 <= z.min() and z.max() <= 0.1 and abs(z.mean() - 0.05) < 0.005
    # the fit draws nothing from the global RNG: two runs under different global seeds agree
    runs = []
    for s in (1, 2):
        torch.manual_seed(s)
        runs.append(dip.fit_dip(targets(), iterations=3, protocol="official", preset="skip-tiny",
                                generator=torch.Generator().manual_seed(7)).output)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_official_fit_matches_hand_computation(float64):
    """Batched official fit == by hand on ordinary modules: z_k = z + N(0, (1/30)^2) jitter, output 2 sigmoid - 1,
    loss = [0, 1]-scale MSE, one Adam (lr 0.01) per network, out_avg = 0.99 out_avg + 0.01 out."""
    tgt, iters = targets(2), 3
    z = dip.draw_input("official", (2, 8, 8), torch.Generator().manual_seed(1))
    fitter = official_fitter(z)
    nets = []
    for i in range(2):  # ordinary modules carrying the fitter's initial weights
        net = skipnet.make_skipnet("skip-tiny", resolution=8)
        net.load_state_dict({k: v[i].detach().clone() for k, v in fitter.params.items()})
        nets.append(net)
    opts = [torch.optim.Adam(n.parameters(), lr=0.01) for n in nets]
    g = torch.Generator().manual_seed(5)
    avg = None
    for k in range(iters + 1):
        zk = z + torch.randn(z.shape, generator=g) * (1 / 30)
        raw = torch.cat([2 * n(zk[i : i + 1]) - 1 for i, n in enumerate(nets)])
        if k < iters:
            for o in opts:
                o.zero_grad()
            sum((((raw[i] + 1) / 2 - (tgt[i] + 1) / 2) ** 2).mean() for i in range(2)).backward()
            for o in opts:
                o.step()
        raw = raw.detach()
        avg = raw if avg is None else 0.99 * avg + 0.01 * raw
        out, loss = fitter.step(tgt) if k < iters else (fitter.output(), None)
        torch.testing.assert_close(out, avg, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fitter.raw, raw, rtol=1e-5, atol=1e-5)
        if loss is not None:
            torch.testing.assert_close(loss, ((avg - tgt) ** 2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    for i in range(2):
        for name, q in nets[i].named_parameters():
            torch.testing.assert_close(fitter.params[name][i], q, rtol=1e-5, atol=1e-5)
    assert fitter.backtracks.tolist() == [0, 0]
    # fit_dip records the averaged outputs (kept) and the raw ones beside them
    res = dip.fit_dip(tgt, iterations=iters, z=z, protocol="official", preset="skip-tiny", keep=(iters,),
                      jitter_generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(res.outputs[iters], avg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.raw_outputs[iters], raw, rtol=1e-5, atol=1e-5)
    assert {"loss_raw", "psnr_target_raw", "backtracked"} <= set(res.history.columns)


def collapse(fitter, i):
    """Drive image i's output to -1 everywhere (head weights 0, bias -30 before the sigmoid)."""
    with torch.no_grad():
        fitter.params["head.weight"][i] = 0
        fitter.params["head.bias"][i] = -30


def test_backtracking_restores_only_the_collapsed_image(float64):
    z = dip.draw_input("official", (3, 8, 8), torch.Generator().manual_seed(2))
    ref, f, loop = official_fitter(z), official_fitter(z), official_fitter(z, batched=False)
    with torch.no_grad():  # a target the networks already fit well (PSNR > 20 dB), so that a collapse to -1 everywhere
        tgt = ref.forward()  # drops the PSNR far more than the 5 dB threshold
    before = []
    for k in range(3):
        before.append({n: v.detach().clone() for n, v in f.params.items()})
        ref.step(tgt), f.step(tgt), loop.step(tgt)
    collapse(f, 1)
    with torch.no_grad():
        loop.nets[1].head.weight.zero_(), loop.nets[1].head.bias.fill_(-30)
    assert f.last_psnr[1] - metrics.psnr(f.forward()[1:2], tgt[1:2]).item() > 10  # the construction collapses it
    state = {n: {s: v.clone() for s, v in f.opt.state[q].items()} for n, q in f.params.items()}
    ref.step(tgt), f.step(tgt), loop.step(tgt)
    assert f.backtracked.tolist() == [False, True, False] and loop.backtracked.tolist() == [False, True, False]
    assert ref.backtracked.tolist() == [False, False, False]
    for n, q in f.params.items():
        # images 0 and 2 are untouched: as in the run without the collapse
        torch.testing.assert_close(q[[0, 2]], ref.params[n][[0, 2]], rtol=1e-5, atol=1e-6)
        # image 1: its parameters were restored to the copy taken at the last passed check (before step 2) and
        # then took one Adam step (lr 0.01, the 4th) with the gradient computed at the collapsed parameters,
        # on Adam moments that were not reset
        g = q.grad[1]
        m = 0.9 * state[n]["exp_avg"][1] + 0.1 * g
        v = 0.999 * state[n]["exp_avg_sq"][1] + 0.001 * g * g
        expected = before[2][n][1] - 0.01 / (1 - 0.9**4) * m / (v.sqrt() / math.sqrt(1 - 0.999**4) + 1e-8)
        torch.testing.assert_close(q[1], expected, rtol=1e-5, atol=1e-6)
        # the loop reference did the same
        torch.testing.assert_close(torch.stack([dict(net.named_parameters())[n] for net in loop.nets]), q,
                                   rtol=1e-5, atol=1e-6)
    assert f.params["head.bias"][1].abs().max() < 1  # far from the collapsed -30


def test_backtracking_skips_checks_at_multiples_of_100():
    """The official ``if i % show_every:`` with show_every = 100: no check (and no copy) when the counter is
    100, so a collapse there is only caught one step later, and restored to the copy of step 99."""
    f = official_fitter(dip.draw_input("official", (1, 8, 8), torch.Generator().manual_seed(3)))
    with torch.no_grad():
        tgt = f.forward()  # as above: the collapse drops the PSNR by far more than 5 dB
    for _ in range(99):
        f.step(tgt)
    copy99 = {n: v.detach().clone() for n, v in f.params.items()}
    f.step(tgt)  # step 99 (counter 99): checked, copy taken
    collapse(f, 0)
    f.step(tgt)  # step 100 (counter 100): not checked
    assert f.backtracked.tolist() == [False]
    f.step(tgt)  # step 101: checked against the PSNR of step 99 -> restore the copy of step 99
    assert f.backtracked.tolist() == [True] and f.backtracks.tolist() == [1]
    assert (f.params["head.bias"] - copy99["head.bias"]).abs().max() < 0.05
