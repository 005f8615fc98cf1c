"""Tests for tdpmlib.methods.stopping: the discrepancy and ES-WMV monitors, and ES-WMV run as its authors do."""

import numpy as np
import pytest
import torch

from tdpmlib.methods import dip, schedules, stopping, tdpm
from tdpmlib.studies import dip_init


def smooth(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 2, 2, generator=g) * 1.6 - 0.8, size=size,
                                           mode="bilinear", align_corners=False)


def brute_force_wmv(seq, window, patience):
    """Reference ES-WMV on a list of K x (B x D) arrays: windowed variance, frozen argmin after patience."""
    K, B = len(seq), seq[0].shape[0]
    var = np.full((K, B), np.nan)
    for k in range(window - 1, K):
        win = np.stack(seq[k - window + 1:k + 1])          # W x B x D
        var[k] = win.var(axis=0).mean(axis=1)
    det, stop = np.full(B, -1), np.full(B, -1)
    for i in range(B):
        best, best_k = np.inf, -1
        for k in range(window - 1, K):
            if var[k, i] < best:
                best, best_k = var[k, i], k
            if k - best_k >= patience:
                stop[i] = k
                break
        det[i] = best_k
    return var, det, stop


def test_eswmv_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    K, B, W = 80, 3, 6
    base = torch.randn(B, 3, 4, 4, generator=g)
    centres = torch.tensor([20.0, 45.0, 70.0])
    seq = []
    for k in range(K):  # fluctuation amplitude smallest around each image's centre
        amp = (0.05 + (k - centres).abs() / 40).view(B, 1, 1, 1)
        seq.append(base + amp * torch.randn(B, 3, 4, 4, generator=g))
    for patience in (1000, 8):
        m = stopping.ESWMV(window=W, patience=patience)
        for k, x in enumerate(seq):
            m.update(k, x, None)
        var, det, stop = brute_force_wmv([x.reshape(B, -1).double().numpy() for x in seq], W, patience)
        assert m.detected.tolist() == det.tolist()
        assert m.stop_k.tolist() == stop.tolist()
        vf = m.variance_frame()
        np.testing.assert_allclose(vf[vf.image == 1].wmv.values, var[W - 1:, 1], rtol=1e-4)
        for i in range(B):
            torch.testing.assert_close(m.output[i], seq[det[i]][i])
    # with patience 1000 the detections follow the centres (the window ends a little after them)
    m = stopping.ESWMV(window=W)
    for k, x in enumerate(seq):
        m.update(k, x, None)
    assert (m.detected.float() - centres).abs().max() <= W + 3
    assert not m.stopped.any()


def test_eswmv_without_a_full_window_and_as_a_fit_monitor():
    m = stopping.ESWMV(window=50, patience=10)
    seq = [torch.full((2, 3, 4, 4), float(k)) for k in range(5)]
    for k, x in enumerate(seq):
        m.update(k, x, None)
    assert not m.valid.any() and m.detected.tolist() == [4, 4]
    torch.testing.assert_close(m.output, seq[-1])
    m = stopping.ESWMV(window=4, patience=1000)
    res = dip.fit_dip(smooth(2), iterations=12, preset="tiny", generator=torch.Generator().manual_seed(0), monitors=[m],
                      keep=range(13))
    assert m.valid.all() and ((m.detected >= 3) & (m.detected <= 12)).all()
    for i in range(2):
        torch.testing.assert_close(m.output[i], res.outputs[int(m.detected[i])][i])
    with pytest.raises(ValueError, match="window=0"):
        stopping.ESWMV(window=0)


def vee(k, m):
    """Amplitude 1 + |k - m| before the minimum m and 1 + 2 (k - m) after it."""
    return 1.0 + (m - k if k <= m else 2.0 * (k - m))


def test_eswmv_fires_exactly_patience_iterations_after_the_variance_minimum():
    """Window 2 over x_k = (-1)^k a_k: VAR_k = ((a_{k-1} + a_k) / 2)^2, strictly decreasing up to k = m and
    increasing after, so the detection is m and the rule stops at m + P -- not one iteration earlier."""
    W, P, minima = 2, 25, [30, 47]
    m = stopping.ESWMV(window=W, patience=P)
    e = torch.ones(1, 3, 2, 2)
    seq, first_stop = [], [None, None]
    for k in range(120):
        x = torch.cat([(-1) ** k * vee(k, mi) * e for mi in minima])
        seq.append(x)
        m.update(k, x, None)
        for i in range(2):
            if m.stopped[i] and first_stop[i] is None:
                first_stop[i] = k
    assert first_stop == [mi + P for mi in minima]
    assert m.stop_k.tolist() == [mi + P for mi in minima] and m.detected.tolist() == minima
    for i, mi in enumerate(minima):
        torch.testing.assert_close(m.output[i], seq[mi][i])
        ks, v = zip(*[(k, float(var[i])) for k, var in m.variances])
        assert ks[0] == W - 1 and v[ks.index(mi)] == ((vee(mi - 1, mi) + vee(mi, mi)) / 2) ** 2
    # a detection is frozen once the rule has stopped: a later, lower variance does not move it
    m2 = stopping.ESWMV(window=W, patience=P)
    for k in range(80):
        m2.update(k, (-1) ** k * vee(k, 30) * e, None)
    for k in range(80, 90):
        m2.update(k, 0 * e, None)  # variance 0 from k = 81 on
    assert m2.detected.tolist() == [30] and m2.stop_k.tolist() == [55]


def test_eswmv_fit_runs_until_every_image_has_stopped_or_the_cap():
    sched = schedules.make_scheduler("linear")
    clean = smooth(3)
    y = tdpm.observe(clean, 60, sched, generator=torch.Generator().manual_seed(0))
    target = dip_init.observation_x0(y, 60, sched)
    z = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    kw = dict(z=z, protocol="plain", preset="tiny", seed=0, device="cpu", window=3, patience=5)
    run = stopping.eswmv_fit(target, max_iterations=300, reference=clean, **kw)
    mon = run.monitor
    assert mon.stopped.all() and run.fired_fraction == 1.0 and run.lr == stopping.ESWMV_LR == 0.01
    assert torch.equal(mon.stop_k, mon.detected + 5) and run.iterations == int(mon.stop_k.max())
    assert sorted(run.history.iteration.unique()) == list(range(run.iterations + 1))
    # the fit is dip.fit_dip's trajectory: the same outputs at the same iterations
    ref = dip.fit_dip(target, iterations=run.iterations, lr=0.01, keep=range(run.iterations + 1), reference=clean,
                      **{k: v for k, v in kw.items() if k in ("z", "protocol", "preset", "seed", "device")})
    for i in range(3):
        torch.testing.assert_close(mon.output[i], ref.outputs[int(mon.detected[i])][i])
    assert torch.equal(run.best_iteration, ref.best_iteration) and torch.equal(run.best_output, ref.best_output)
    # too short a budget: nothing fires, the fit stops at the cap
    short = stopping.eswmv_fit(target, max_iterations=6, **kw)
    assert short.iterations == 6 and not short.monitor.stopped.any() and short.fired_fraction == 0.0
    assert "psnr_ref" not in short.history


def test_eswmv_fit_under_its_protocol_is_fit_dips_trajectory():
    """Under the "eswmv" protocol (skip network, jittered input) the jitter seed is drawn from the generator after
    z, as dip.fit_dip draws it, and ``indices`` picks the networks' initial weights: the same fit, step for step."""
    target = smooth(2)
    kw = dict(protocol="eswmv", preset="skip-tiny", seed=3, device="cpu")
    run = stopping.eswmv_fit(target, generator=torch.Generator().manual_seed(7), window=3, patience=1000,
                             max_iterations=15, indices=[4, 9], **kw)
    m = stopping.ESWMV(window=3, patience=1000)
    ref = dip.fit_dip(target, iterations=15, generator=torch.Generator().manual_seed(7), lr=0.01, indices=[4, 9],
                      monitors=[m], **kw)
    assert torch.equal(run.monitor.detected, m.detected)
    torch.testing.assert_close(run.monitor.output, m.output)
    a = run.history.sort_values(["iteration", "image"]).loss.values
    b = ref.history.sort_values(["iteration", "image"]).loss.values
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # other networks (the default indices 0 and 1), or another jitter, give another fit
    for other in (stopping.eswmv_fit(target, generator=torch.Generator().manual_seed(7), window=3, patience=1000,
                                     max_iterations=15, **kw),
                  stopping.eswmv_fit(target, generator=torch.Generator().manual_seed(7), window=3, patience=1000,
                                     max_iterations=15, indices=[4, 9],
                                     jitter_generator=torch.Generator().manual_seed(8), **kw)):
        assert not np.allclose(other.history.sort_values(["iteration", "image"]).loss.values, a)
