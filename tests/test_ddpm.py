import sys

import pytest
import torch
import torch.nn.functional as F

from tdpmlib.methods import ddpm, ddpm_training, models, schedules


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return models.make_unet("tiny", resolution=8)


def fixed_loss(unet, images, scheduler):
    """Epsilon-MSE on a fixed set of (noise, timestep) draws: a deterministic yardstick."""
    g = torch.Generator().manual_seed(123)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, 1000, (len(images),), generator=g)
    with torch.no_grad():
        return F.mse_loss(unet(scheduler.add_noise(images, noise, t), t).sample, noise).item()


def test_twenty_steps_lower_the_loss(tiny_images, tmp_path):
    s = schedules.make_scheduler("linear")
    unet = tiny_unet()
    before = fixed_loss(unet, tiny_images, s)
    out = ddpm_training.train_ddpm(unet, tiny_images, s, out_dir=tmp_path, steps=20, batch_size=8, lr=3e-3,
                          warmup_steps=0, progress=False)
    assert fixed_loss(unet, tiny_images, s) < 0.9 * before
    assert len(out["log"]) == 20 and (tmp_path / "unet_ema" / "config.json").exists()
    assert list(out["log"].columns) == ["step", "epoch", "loss", "lr", "seconds"]



def test_training_reads_the_loss_back_only_at_checkpoints(tiny_images, tmp_path, monkeypatch):
    # a per-step loss.item() stalls a GPU every step; the loop reads the losses back in one go per checkpoint
    s = schedules.make_scheduler("linear")
    reads = []
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist

    def ours():  # a read-back written in tdpmlib (torch's CPU Adam reads its step counters, a CPU tensor)
        return "tdpmlib" in sys._getframe(2).f_code.co_filename

    monkeypatch.setattr(torch.Tensor, "item", lambda t: (ours() and reads.append("item"), real_item(t))[1])
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: (ours() and reads.append(t.numel()), real_tolist(t))[1])
    out = ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path, steps=8, batch_size=4, lr=1e-3,
                          warmup_steps=0, progress=False, checkpoint_every=4)
    monkeypatch.undo()
    assert "item" not in reads and reads.count(4) == 2, reads
    assert out["log"]["step"].tolist() == list(range(1, 9)) and out["log"]["loss"].map(type).eq(float).all()

@pytest.mark.parametrize("variant", ["default", "truncated", "noisy_targets", "curriculum"])
def test_resume_gives_bitwise_identical_weights(tiny_images, tmp_path, variant):
    s = schedules.make_scheduler("linear")
    kw = dict(steps=12, batch_size=6, lr=2e-3, warmup_steps=3, seed=5, progress=False, checkpoint_every=4)
    # the training reading's options (chapter 04b) resume as exactly as the default; the curriculum switches
    # from its early images at step 10, after the resume point
    kw |= dict(default={}, truncated=dict(max_level=50), noisy_targets=dict(x0_noise_std=0.1),
               curriculum=dict(early_images=-tiny_images.flip(-1), early_steps=10))[variant]
    full = tiny_unet()
    ref = ddpm_training.train_ddpm(full, tiny_images, s, out_dir=tmp_path / "full", **kw)

    # interrupted run: stop after the checkpoint at step 8 by raising from the callback
    class Stop(Exception):
        pass

    def boom(step, _):
        if step == 9:
            raise Stop

    part = tiny_unet()
    with pytest.raises(Stop):
        ddpm_training.train_ddpm(part, tiny_images, s, out_dir=tmp_path / "resumed", callback=boom, callback_every=1, **kw)
    resumed = ddpm_training.train_ddpm(tiny_unet(seed=99), tiny_images, s, out_dir=tmp_path / "resumed", **kw)
    for (k, a), b in zip(ref["ema_unet"].state_dict().items(), resumed["ema_unet"].state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.state_dict().values(), torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"].values()):
        assert torch.equal(a, b)
    assert ref["log"]["loss"].tolist() == resumed["log"]["loss"].tolist()


def test_resume_refuses_other_config(tiny_images, tmp_path):
    s = schedules.make_scheduler("linear")
    ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path, steps=2, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="different configuration.*batch_size"):
        ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path, steps=2, batch_size=4, progress=False)


def test_epochs_limit(tiny_images, tmp_path):
    out = ddpm_training.train_ddpm(tiny_unet(), tiny_images, schedules.make_scheduler("cosine"), out_dir=tmp_path,
                          epochs=2, batch_size=6, progress=False)
    assert out["steps"] == 2 * 3 and out["log"]["epoch"].tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("kw, match", [(dict(steps=0), "steps=0"), (dict(steps=-1), "steps=-1"),
                                        (dict(steps=3, epochs=1), "exactly one"), (dict(), "exactly one"),
                                        (dict(steps=2, batch_size=0), "batch_size=0")])
def test_bad_training_arguments(tiny_images, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        ddpm_training.train_ddpm(tiny_unet(), tiny_images, schedules.make_scheduler("linear"), out_dir=tmp_path,
                        progress=False, **kw)


def test_saved_network_loads_and_corrupt_one_is_named(tiny_images, tmp_path):
    out = ddpm_training.train_ddpm(tiny_unet(), tiny_images, schedules.make_scheduler("linear"), out_dir=tmp_path,
                          steps=2, batch_size=8, progress=False)
    loaded = ddpm.load_unet(tmp_path / "unet_ema")
    for a, b in zip(out["ema_unet"].state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    weights = next((tmp_path / "unet_ema").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="unet_ema.*corrupt"):
        ddpm.load_unet(tmp_path / "unet_ema")
    with pytest.raises(ValueError, match="no saved network"):
        ddpm.load_unet(tmp_path / "missing")


def test_reverse_chain_ddpm_matches_manual_loop():
    s = schedules.make_scheduler("linear")
    unet = tiny_unet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ddpm.reverse_chain(unet, s, x, 5, generator=torch.Generator().manual_seed(1))
    # manual: the pipeline_ddpm loop over diffusers timesteps 4..0
    s2 = schedules.make_scheduler("linear")
    s2.set_timesteps(1000)
    g, y = torch.Generator().manual_seed(1), x
    with torch.no_grad():
        for ts in range(4, -1, -1):
            y = s2.step(unet(y, torch.full((2,), ts)).sample, ts, y, generator=g).prev_sample
    torch.testing.assert_close(out, y)
    assert torch.equal(ddpm.reverse_chain(unet, s, x, 0), x)  # level 0: nothing to do
    assert ddpm.network_evaluations(5) == 5 and ddpm.network_evaluations(1000, method="ddim", num_steps=50) == 50


def test_sample_is_seeded_and_batched():
    s = schedules.make_scheduler("linear")
    unet = tiny_unet().eval()
    kw = dict(n=5, resolution=8, method="ddim", num_steps=10)
    a = ddpm.sample(unet, s, generator=torch.Generator().manual_seed(0), batch_size=2, **kw)
    b = ddpm.sample(unet, s, generator=torch.Generator().manual_seed(0), batch_size=2, **kw)
    c = ddpm.sample(unet, s, generator=torch.Generator().manual_seed(1), batch_size=2, **kw)
    assert a.shape == (5, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_ddim_from_any_level_uses_requested_steps():
    s = schedules.make_scheduler("linear")
    unet = tiny_unet().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    orig = unet.forward
    unet.forward = lambda *a, **k: (calls.append(int(a[1][0])), orig(*a, **k))[1]
    ddpm.reverse_chain(unet, s, x, 37, method="ddim", num_steps=4)
    assert len(calls) == 4 and calls[0] == 36 and calls == sorted(calls, reverse=True)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_grid_from_T_is_diffusers_grid(name, spacing):
    # the DDIM chain from pure noise visits exactly DDIMScheduler's timesteps (+ 1) for each spacing, then 0
    s = schedules.make_scheduler(name)
    ref = schedules.make_ddim_scheduler(s)
    ref.register_to_config(timestep_spacing=spacing)
    ref.set_timesteps(50)
    assert ddpm.ddim_levels(s, 1000, 50, spacing=spacing) == [int(v) + 1 for v in ref.timesteps] + [0]
    unet = tiny_unet().eval()
    calls = []
    orig = unet.forward
    unet.forward = lambda *a, **k: (calls.append(int(a[1][0])), orig(*a, **k))[1]
    ddpm.reverse_chain(unet, s, torch.zeros(1, 3, 8, 8), 1000, method="ddim", num_steps=50, spacing=spacing)
    assert calls == ref.timesteps.tolist()


def test_ddim_default_grid_is_diffusers_default_from_T_and_starts_at_t_below_T():
    s = schedules.make_scheduler("cosine")
    assert ddpm.DDIM_SPACING == "leading" == type(schedules.make_ddim_scheduler(s))().config.timestep_spacing
    levels = ddpm.ddim_levels(s, 1000, 50)
    assert levels[:2] == [981, 961] and levels[-2:] == [1, 0] and len(levels) == 51
    assert float(schedules.alpha_bar(s, levels[0])) > 1e-4 > 1e-8 > float(schedules.alpha_bar(s, 1000))
    # the trailing grid is the book's grid before: every 20th level from 1000
    assert ddpm.ddim_levels(s, 1000, 50, spacing="trailing") == list(range(1000, -1, -20))
    for t, n in ((600, 50), (115, 50), (37, 4), (5, 10)):  # a chain from an image at level t < T starts at t
        lv = ddpm.ddim_levels(s, t, n)
        assert lv[0] == t and lv[-1] == 0 and len(lv) - 1 == min(n, t) == ddpm.network_evaluations(t, method="ddim", num_steps=n)
    a = ddpm.sample(tiny_unet().eval(), s, n=2, resolution=8, generator=torch.Generator().manual_seed(0),
                    method="ddim", num_steps=5)
    b = ddpm.sample(tiny_unet().eval(), s, n=2, resolution=8, generator=torch.Generator().manual_seed(0),
                    method="ddim", num_steps=5, spacing="trailing")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="spacing='even'"):
        ddpm.ddim_levels(s, 1000, 50, spacing="even")


class FakeDeviceGenerator(torch.Generator):
    """A CPU generator that says it lives on the meta device: the stand-in for a CUDA generator."""

    @property
    def device(self):
        return torch.device("meta")


def test_sampling_draws_its_noise_from_a_generator_on_the_sampling_device(monkeypatch):
    made = []
    monkeypatch.setattr(ddpm, "_device_generator", lambda device: made.append(torch.device(device)) or FakeDeviceGenerator())
    # the helper: on an accelerator a device generator seeded from one draw of the caller's generator
    a, b, c = (ddpm.noise_generator(torch.Generator().manual_seed(k), "meta") for k in (5, 5, 6))
    assert made == [torch.device("meta")] * 3 and all(isinstance(x, FakeDeviceGenerator) for x in (a, b, c))
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))  # a fixed seed reproduces
    assert not torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=c))
    g = torch.Generator()
    assert ddpm.noise_generator(g, "cpu") is g and ddpm.noise_generator(g, "meta", noise="cpu") is g
    with pytest.raises(ValueError, match="noise='gpu'"):
        ddpm.noise_generator(g, "meta", noise="gpu")

    # sampling on the (fake) accelerator: one device generator per call, used for x_T and every ancestral step
    s = schedules.make_scheduler("linear", num_train_timesteps=50)
    unet = tiny_unet().eval().to("meta")
    real_cpu = torch.Tensor.cpu  # meta tensors hold no data to copy back
    monkeypatch.setattr(torch.Tensor, "cpu", lambda x, *a, **k: torch.zeros(x.shape) if x.is_meta else real_cpu(x, *a, **k))
    steps = []
    orig = s.step
    s.step = lambda *a, **k: (steps.append(k["generator"]), orig(*a, **k))[1]
    made.clear()
    out = ddpm.sample(unet, s, n=2, resolution=8, generator=torch.Generator().manual_seed(0), device="meta",
                      method="ddpm")
    assert out.shape == (2, 3, 8, 8) and len(made) == 1 and len(steps) == 50
    assert all(isinstance(x, FakeDeviceGenerator) for x in steps)
    steps.clear()
    cpu_gen = torch.Generator().manual_seed(0)
    ddpm.sample(unet, s, n=2, resolution=8, generator=cpu_gen, device="meta", method="ddpm", noise="cpu")
    assert all(x is cpu_gen for x in steps)  # the option: the same CPU draws on every device


def test_cpu_sampling_is_bitwise_the_same_with_either_noise_option():
    s = schedules.make_scheduler("linear", num_train_timesteps=50)
    unet = tiny_unet().eval()
    kw = dict(n=2, resolution=8, method="ddpm", batch_size=2)
    dev = ddpm.sample(unet, s, generator=torch.Generator().manual_seed(0), **kw)
    cpu = ddpm.sample(unet, s, generator=torch.Generator().manual_seed(0), noise="cpu", **kw)
    # the loop the book ran before: x_T and every step's noise from one CPU generator
    ref_s = schedules.make_scheduler("linear", num_train_timesteps=50)
    ref_s.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3, 8, 8), generator=g)
    with torch.no_grad():
        for ts in range(49, -1, -1):
            x = ref_s.step(unet(x, torch.full((2,), ts)).sample, ts, x, generator=g).prev_sample
    assert torch.equal(dev, cpu) and torch.equal(dev, x.clamp(-1, 1))


@pytest.mark.parametrize("kw, match", [(dict(method="euler"), "method="), (dict(method="ddim"), "num_steps="),
                                        (dict(t=1001), "t=1001"), (dict(t=-1), "t=-1")])
def test_bad_sampling_arguments(kw, match):
    s = schedules.make_scheduler("linear")
    kw = dict(dict(t=10), **kw)
    with pytest.raises(ValueError, match=match):
        ddpm.reverse_chain(tiny_unet(), s, torch.zeros(1, 3, 8, 8), kw.pop("t"), **kw)


# --- the training reading's options (tdpmlib.studies.dip_init_training) ---------------------------------------------------

def _seen_timesteps(unet):
    seen = []
    unet.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()) if m.training else None)
    return seen


def test_max_level_draws_only_levels_up_to_it(tiny_images, tmp_path):
    s = schedules.make_scheduler("linear")
    unet = tiny_unet()
    seen = _seen_timesteps(unet)
    ddpm_training.train_ddpm(unet, tiny_images, s, out_dir=tmp_path, steps=30, batch_size=16, warmup_steps=0,
                    progress=False, max_level=5)
    ts = torch.cat(seen)
    assert ts.min() == 0 and ts.max() == 4 and len(ts.unique()) == 5  # diffusers timesteps 0..4 = levels 1..5


def test_default_levels_are_unchanged_and_max_level_is_in_the_checkpoint(tiny_images, tmp_path):
    s = schedules.make_scheduler("linear")
    kw = dict(steps=2, batch_size=8, warmup_steps=0, progress=False, checkpoint_every=1)
    a, b = tiny_unet(), tiny_unet()
    ra = ddpm_training.train_ddpm(a, tiny_images, s, out_dir=tmp_path / "a", **kw)
    rb = ddpm_training.train_ddpm(b, tiny_images, s, out_dir=tmp_path / "b", max_level=1000, **kw)
    for p, q in zip(ra["ema_unet"].parameters(), rb["ema_unet"].parameters()):  # max_level = T draws the same levels
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="config"):  # a checkpoint of another max_level is not resumed
        ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path / "b", **dict(kw, steps=3), max_level=10)
    with pytest.raises(ValueError, match="max_level"):
        ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path / "c", **kw, max_level=1001)


def test_x0_noise_std_adds_noise_of_that_std(tmp_path):
    s = schedules.make_scheduler("linear")
    unet = tiny_unet()
    inputs = []
    unet.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()) if m.training else None)
    zeros = torch.zeros(4, 3, 8, 8)
    ddpm_training.train_ddpm(unet, zeros, s, out_dir=tmp_path, steps=20, batch_size=4, warmup_steps=0, progress=False,
                    max_level=1, x0_noise_std=0.5, hflip=False)
    x = torch.cat(inputs)  # level 1: x_1 = sqrt(abar_1) * (0 + 0.5 n) + sqrt(1 - abar_1) eps, std ~ 0.5
    assert 0.47 < float(x.std()) < 0.53 and abs(float(x.mean())) < 0.03


def test_early_images_for_all_steps_equal_training_on_them(tiny_images, tmp_path):
    s = schedules.make_scheduler("linear")
    kw = dict(steps=6, batch_size=8, warmup_steps=0, progress=False)
    other = -tiny_images.flip(-1)
    direct = ddpm_training.train_ddpm(tiny_unet(), other, s, out_dir=tmp_path / "d", **kw)["ema_unet"]
    early = ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path / "e", early_images=other, early_steps=6, **kw)["ema_unet"]
    half = ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path / "h", early_images=other, early_steps=3, **kw)["ema_unet"]
    for p, q, r in zip(direct.parameters(), early.parameters(), half.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, r) for p, r in zip(direct.parameters(), half.parameters()))
    with pytest.raises(ValueError, match="early_steps"):
        ddpm_training.train_ddpm(tiny_unet(), tiny_images, s, out_dir=tmp_path / "x", early_steps=2, **kw)


def test_no_ema_saves_exactly_the_trained_network(tmp_path, tiny_images):
    """ema_decay=0 is the author's recipe: the saved network is the trained one, bit for bit (an EMA is not)."""
    out = {}
    for decay in (0.0, 0.999):
        torch.manual_seed(0)
        unet = models.make_unet("tiny", resolution=tiny_images.shape[-1])
        res = ddpm_training.train_ddpm(unet, tiny_images, schedules.make_scheduler("linear"), out_dir=tmp_path / str(decay),
                              steps=3, batch_size=4, warmup_steps=1, ema_decay=decay, progress=False)
        same = all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), res["ema_unet"].state_dict().values()))
        out[decay] = same
        saved = ddpm.load_unet(tmp_path / str(decay) / "unet_ema")
        assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), res["ema_unet"].state_dict().values()))
    assert out == {0.0: True, 0.999: False}
    with pytest.raises(ValueError, match="ema_decay=1"):
        ddpm_training.train_ddpm(unet, tiny_images, schedules.make_scheduler("linear"), out_dir=tmp_path / "x", steps=1,
                        ema_decay=1, progress=False)
