"""Steps per second of DDPM training on 1 and 2 processes at the same global batch (``tdpmlib.methods.ddpm_parallel``).

    python -m benchmarks.bench_parallel [--preset ddpm-cpu-1m] [--steps 30] [--warmup 5] [--device cpu] [--out FILE]

Three runs of the cpu profile's training step (its batch of 32 at 32 px) on one network preset, each in
its own processes: ``ddpm_training.train_ddpm`` on 1 process with torch's default threads, the same with
``OMP_NUM_THREADS=1``, and ``ddpm_parallel.train_ddpm_parallel`` on 2 processes of one thread each
(``accelerate launch --multi_gpu``, gloo on the CPU, NCCL on GPUs), each process taking half of every
batch. Throughput is timed from the loss log's clock over the steps after ``--warmup``, so start-up,
checkpoints and the EMA save are excluded. It prints the table and the ratios to the 1-process runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def worker(a) -> None:
    """One measurement (in the launched processes): train, then the main process writes steps/s to ``a.worker``."""
    import torch

    from tdpmlib.methods import ddpm_parallel, ddpm_training, models, schedules
    from tdpmlib.workflow import config

    threads = torch.get_num_threads()
    images = torch.rand((256, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = models.make_unet(a.preset, resolution=32)
    kw = dict(steps=a.warmup + a.steps, batch_size=config.PROFILES["cpu"]["batch_size"], lr=1e-3, warmup_steps=5,
              checkpoint_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as d:
        if ddpm_parallel.launched():
            acc = ddpm_parallel.make_accelerator(a.device)
            out = ddpm_parallel.train_ddpm_parallel(unet, images, schedules.make_scheduler("linear"), out_dir=d,
                                                    accelerator=acc, **kw)
            main, nproc = acc.is_main_process, acc.num_processes
        else:
            out = ddpm_training.train_ddpm(unet, images, schedules.make_scheduler("linear"), out_dir=d, device=a.device, **kw)
            main, nproc = True, 1
    if main:
        sec = out["log"]["seconds"].tolist()
        steps_per_s = a.steps / (sec[-1] - sec[a.warmup - 1])
        Path(a.worker).write_text(json.dumps(dict(processes=nproc, threads=threads, steps_per_s=steps_per_s,
                                                  parameters=models.count_parameters(unet))))


def measure(a, name: str, *, processes: int, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as d:
        res = Path(d) / "result.json"
        args = ["-m", "benchmarks.bench_parallel", "--worker", str(res), "--preset", a.preset,
                "--steps", str(a.steps), "--warmup", str(a.warmup), "--device", a.device]
        cmd = (LAUNCH if processes > 1 else [sys.executable]) + args
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=a.timeout)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
        return dict(run=name, **json.loads(res.read_text()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_parallel", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ddpm-cpu-1m")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed to each run")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 1:
        p.error(f"--steps {a.steps} and --warmup {a.warmup} are not allowed; use positive integers")
    if a.worker:
        worker(a)
        return 0
    rows = [measure(a, "1 process, default threads", processes=1, threads=None),
            measure(a, "1 process, 1 thread", processes=1, threads=1),
            measure(a, "2 processes, 1 thread each", processes=2, threads=1)]
    base, one, two = (r["steps_per_s"] for r in rows)
    print(f"{a.preset} ({rows[0]['parameters']:,} parameters), global batch 32 at 32 px, {a.device}, "
          f"{os.cpu_count()} cores, {a.steps} timed steps")
    for r in rows:
        print(f"  {r['run']:<28} processes={r['processes']} threads/process={r['threads']}  "
              f"{r['steps_per_s']:.3f} steps/s")
    print(f"  ratio 2 processes / 1 process (default threads): {two / base:.3f}")
    print(f"  ratio 2 processes / 1 process (1 thread):        {two / one:.3f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(dict(rows=rows, ratio_default=two / base, ratio_one_thread=two / one), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
