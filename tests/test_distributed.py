"""Data-parallel DDPM training and split sampling (tdpmlib.methods.ddpm_parallel) on 2 CPU processes (gloo).

Each launch costs seconds of process start-up on 2 cores, so one launch of tests/distributed_worker.py runs
every multi-process scenario and the tests below check what it wrote; a second one runs the documented
``accelerate launch ... -m tdpmlib.workflow.train`` command end to end.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from tdpmlib.methods import ddpm, ddpm_parallel, ddpm_training, models, schedules
from tdpmlib.workflow import data, pipeline

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def launch(args, *, timeout=240):
    """Run a 2-process launch on the CPU (one thread each); fail with its output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(ACCELERATE + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    launch([str(REPO / "tests" / "distributed_worker.py"), str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["num_processes"] == 2
    return out, report, torch.load(out / "tensors.pt", weights_only=True)


def test_the_loss_falls_over_the_steps(run):
    _, report, _ = run
    loss = report["full_log"]["loss"]
    assert report["full_log"]["step"] == list(range(1, worker.KW["steps"] + 1))
    third = len(loss) // 3
    first, last = sum(loss[:third]) / third, sum(loss[-third:]) / third
    assert last < 0.95 * first, (first, last)


def test_the_ranks_weights_are_identical_after_every_step(run):
    # the ranks start from different weights (seeded by rank) and train on disjoint shards: only DDP's broadcast
    # and gradient all-reduce keep them equal
    _, report, _ = run
    assert len(report["spread"]) == worker.KW["steps"]
    assert all(s == 0.0 for s in report["spread"]), report["spread"]


def test_two_processes_follow_the_single_process_run(run, tmp_path):
    # the global batch is train_ddpm's batch (same images, flips, noise and timesteps), so the losses agree to
    # fp32 rounding and the EMA networks compute the same function. (Raw weights are not compared: Adam turns the
    # rounding noise of parameters whose gradient is exactly zero, such as conv biases before a GroupNorm, into
    # steps of about lr.)
    out, report, tensors = run
    ref = ddpm_training.train_ddpm(worker.tiny_unet(0), worker.tiny_images(), schedules.make_scheduler("linear"),
                          out_dir=tmp_path, **worker.KW)
    torch.testing.assert_close(torch.tensor(report["full_log"]["loss"]), torch.tensor(ref["log"]["loss"].tolist()),
                               rtol=0, atol=1e-5)
    assert report["full_log"]["lr"] == ref["log"]["lr"].tolist()
    ema = worker.tiny_unet(0).eval()
    ema.load_state_dict(tensors["full_ema"])
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ema(x, t).sample, ref["ema_unet"](x, t).sample, rtol=0, atol=1e-4)
        assert not torch.allclose(ema(x, t).sample, worker.tiny_unet(0).eval()(x, t).sample, atol=1e-2)  # it trained


def test_a_killed_run_resumes_where_its_checkpoint_left_it(run):
    out, report, tensors = run
    assert report["stopped"] == dict(stopped=True, last_step=worker.STOP_AFTER, ema_unet=False)
    every = worker.KW["checkpoint_every"]
    assert report["resumed"]["start_step"] == worker.STOP_AFTER // every * every == 8
    # the same steps, learning rates and losses as the uninterrupted run, and the same weights
    assert report["resumed"]["log"]["step"] == report["full_log"]["step"]
    assert report["resumed"]["log"]["lr"] == report["full_log"]["lr"]
    torch.testing.assert_close(torch.tensor(report["resumed"]["log"]["loss"]),
                               torch.tensor(report["full_log"]["loss"]), rtol=0, atol=1e-6)
    full, resumed = (torch.load(out / d / "checkpoint.pt", weights_only=True) for d in ("full", "resumed"))
    assert full["step"] == resumed["step"] == worker.KW["steps"]
    for k, a in full["model"].items():
        torch.testing.assert_close(resumed["model"][k], a, rtol=0, atol=1e-6)
    for k, a in tensors["full_ema"].items():
        torch.testing.assert_close(tensors["resumed_ema"][k], a, rtol=0, atol=1e-6)


def test_two_process_sampling_equals_one_process_sampling(run):
    _, _, tensors = run
    sched = schedules.make_scheduler("linear", num_train_timesteps=worker.SAMPLE_T)
    kw = dict(worker.SAMPLE)
    one = ddpm_parallel.sample(worker.tiny_unet(0), sched, **kw)  # this process alone, other batches (2, 2, 1)
    assert one.shape == tensors["samples"].shape == (kw["n"], 3, 8, 8)
    torch.testing.assert_close(tensors["samples"], one, rtol=0, atol=1e-5)
    # a real sampler: the images differ from one another and from another seed's
    assert (one[0] - one[1]).abs().max() > 0.1
    kw["seed"] = 4
    other = ddpm_parallel.sample(worker.tiny_unet(0), sched, **kw)
    assert (other - one).abs().amax(dim=(1, 2, 3)).min() > 0.1
    # image i depends on its index only: the first 3 of 5 are the 3 of a run with n=3 (seed 3)
    kw.update(seed=3, n=3, batch_size=3)
    torch.testing.assert_close(ddpm_parallel.sample(worker.tiny_unet(0), sched, **kw), one[:3], rtol=0, atol=1e-5)


@pytest.fixture
def accelerator():
    """A one-process Accelerator in this process, its shared state reset afterwards."""
    from accelerate.state import AcceleratorState

    yield ddpm_parallel.make_accelerator("cpu")
    AcceleratorState._reset_state(reset_partial_state=True)


def test_resuming_with_another_process_count_is_refused(run, accelerator, tmp_path):
    out, _, _ = run
    import shutil

    shutil.copytree(out / "resumed", tmp_path / "m")
    with pytest.raises(ValueError, match=r"num_processes=1 is not allowed.*num_processes=2"):
        ddpm_parallel.train_ddpm_parallel(worker.tiny_unet(0), worker.tiny_images(), schedules.make_scheduler("linear"),
                                          out_dir=tmp_path / "m", accelerator=accelerator, **worker.KW)


def test_batch_shards_are_disjoint_and_cover_the_batch():
    for n in (1, 5, 6, 32):
        for nproc in (1, 2, 3):
            if n < nproc:
                continue
            parts = [list(range(n))[ddpm_parallel.batch_shard(n, r, nproc)] for r in range(nproc)]
            assert sum(parts, []) == list(range(n)) and all(parts)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_parallel_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="stop_after=0"):
        ddpm_parallel.train_ddpm_parallel(worker.tiny_unet(0), worker.tiny_images(), schedules.make_scheduler("linear"),
                                          out_dir=tmp_path, steps=2, stop_after=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        ddpm_parallel.train_ddpm_parallel(worker.tiny_unet(0), worker.tiny_images(), schedules.make_scheduler("linear"),
                                          out_dir=tmp_path, steps=2, batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision='fp16'"):
        ddpm_parallel.make_accelerator("cpu", mixed_precision="fp16")


def test_the_documented_launch_trains_the_model_the_notebooks_load(tmp_path):
    parquet = data.write_synthetic_parquet(tmp_path / "imgs.parquet", n=24, size=16)
    args = ["--profile", "smoke", "--data-source", str(parquet), "--results-dir", str(tmp_path / "r"),
            "--device", "cpu", "--train-steps", "4", "--checkpoint-every", "2", "--eval-every", "4", "--grid-every", "4"]
    out = launch(["-m", "tdpmlib.workflow.train", *args])
    assert "training the linear DDPM on 2 processes" in out.stdout and "trained" in out.stdout
    cfg = pipeline.setup("train", show=False, profile="smoke", data_source=str(parquet), results_dir=str(tmp_path / "r"),
                         device="cpu", train_steps=4, checkpoint_every=2)
    mdir = cfg.model_dir()
    assert json.loads((mdir / "train_summary.json").read_text())["num_processes"] == 2
    assert (mdir / "quality.csv").exists() and (mdir / "samples.pt").exists()  # the main process's record
    tr, _ = pipeline.load_split(cfg)
    unet, _, info = pipeline.train_or_load(cfg, tr)  # a notebook loads it instead of training
    assert info["loaded"] and info["log"]["step"].tolist() == [1, 2, 3, 4]
    saved = ddpm.load_unet(mdir / "unet_ema")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), saved.state_dict().values()))
    assert models.count_parameters(unet) == info["parameters"]


def test_parallel_trainer_keeps_the_one_process_defaults():
    """The two trainers repeat their hyperparameter signature; a default changed in one only fails here."""
    one = inspect.signature(ddpm_training.train_ddpm).parameters
    par = inspect.signature(ddpm_parallel.train_ddpm_parallel).parameters
    shared = [k for k in par if k in one and par[k].kind is inspect.Parameter.KEYWORD_ONLY]
    assert {"batch_size", "lr", "betas", "warmup_steps", "ema_decay", "grad_clip", "seed"} <= set(shared)
    assert {k: par[k].default for k in shared} == {k: one[k].default for k in shared}
