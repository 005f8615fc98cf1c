"""Notebook glue: validate parameters, show provenance, load the data split, train or load the DDPM, save results.

Every notebook calls ``setup`` first and can run standalone: ``train_or_load`` reuses the DDPM that
``01_ddpm_training`` saved for the same profile and schedule, and trains it (resuming any checkpoint) if
it is missing.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import shutil
import warnings

import pandas as pd
import torch

from ..methods import ddpm, ddpm_training, memory, models, schedules
from . import budget as budget_mod, data, remote, results
from .config import Config


def setup(notebook: str, *, show: bool = True, **params) -> Config:
    """Validate the parameters into a Config, seed torch, and show the folded "Run details" (the parameters
    as given and the provenance of this run)."""
    chosen = ""
    colab = on_colab()
    if params.get("profile") == "cpu" and colab and torch.cuda.is_available():
        params = {**params, "profile": "colab"}  # the book's default, cpu, would leave Colab's GPU idle
        chosen = "colab: the default on Colab with a GPU (set profile to another one to override)"
    if colab and params.get("results_dir") == DEFAULT_RESULTS:
        # a notebook opened from GitHub runs in /content, where "../results" would be /results, outside the session's
        # files; on Colab the default folder is /content/results
        params = {**params, "results_dir": COLAB_RESULTS}
    cfg = Config.from_params(notebook=notebook, **params)
    fallback = gpu_fallback_reason() if cfg.device == "auto" and cfg.torch_device.type == "cpu" else ""
    if fallback:
        warnings.warn(fallback, stacklevel=2)
    torch.manual_seed(cfg.seed)
    estimate = budget_mod.describe(cfg.profile, notebook)
    budget = memory.device_budget(cfg.torch_device)
    # refuse up front, with the estimate, on a GPU too small for the profile's DDPM training step
    memory.check_fits(cfg.ddpm_preset, resolution=cfg.resolution, batch=cfg.batch_size, budget=budget, note=estimate)
    if show:
        prov = results.provenance(cfg.profile, cfg.torch_device)
        prov["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        prov["data"] = data.fingerprint(cfg.data_source or None)  # by name and hash, never a machine path
        prov["estimate"] = estimate
        if chosen:
            prov["profile chosen"] = chosen
        if fallback:
            prov["device warning"] = fallback
        for name, preset in (("memory plan, official DIP", cfg.dip_preset_official), ("memory plan, report's DIP", cfg.dip_preset)):
            prov[name] = memory.describe(memory.plan(dip_preset=preset, ddpm_preset=cfg.ddpm_preset, budget=budget,
                                                     resolution=cfg.resolution, dip_cap=cfg.sample_batch,
                                                     sample_cap=cfg.sample_batch))
        shown = {k: v for k, v in params.items() if k != "extra_checks"}  # validators, not parameters
        _show_html(run_details(shown, prov))
    return cfg


DEFAULT_RESULTS = "../results"      # the notebooks' default results_dir (beside notebooks/)
COLAB_RESULTS = "/content/results"  # what it becomes on Colab


def gpu_fallback_reason() -> str:
    """Why ``device="auto"`` runs on the CPU although this machine has an NVIDIA GPU ("" when it has none, or
    when torch can use it): typically a driver older than the CUDA runtime of the installed torch wheel."""
    if torch.cuda.is_available() or not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
        return ""
    built = torch.version.cuda or "none (a CPU-only build)"
    return (f"this machine has an NVIDIA GPU but torch {torch.__version__} cannot use it (its CUDA runtime: {built}; "
            "usually the NVIDIA driver is older than that runtime needs), so device='auto' runs on the CPU, many times "
            "slower; update the driver or install a torch wheel built for an older CUDA")


def on_colab() -> bool:
    """Whether this kernel runs on Google Colab."""
    import importlib.util

    return importlib.util.find_spec("google") is not None and importlib.util.find_spec("google.colab") is not None


def recompute(cfg: Config, notebook: str) -> str:
    """The one command that recomputes a notebook's results for this run's profile and seed (the data source
    comes from TDPM_DATA or the notebook's default, never a machine path)."""
    seed = f" --param seed={cfg.seed}" if cfg.seed else ""
    return f"python scripts/run_notebooks.py --profile {cfg.profile} --only {notebook}{seed}"


def run_details(params: dict, prov: dict) -> str:
    """One collapsed HTML block with the run's parameters and provenance (the book folds it)."""
    def rows(d):
        return "".join(f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(_short(v))}</code></td></tr>"
                       for k, v in d.items())

    return ("<details class='tdpm-run-details'><summary>Run details</summary>"
            f"<table class='tdpm-table'><tr><th colspan='2'>Parameters</th></tr>{rows(params)}"
            f"<tr><th colspan='2'>Provenance</th></tr>{rows(prov)}</table></details>")


def _short(v) -> str:
    """A parameter as shown: a path by its name under the repository (results/...), else its file name."""
    text = str(v)
    if os.sep in text and os.path.isabs(text):
        parts = text.split(os.sep)
        text = os.sep.join(parts[parts.index("results"):]) if "results" in parts else parts[-1]
    return text


def _show_html(text: str):
    try:
        from IPython.display import HTML, display

        display(HTML(text))
    except ImportError:  # plain Python
        print(text)


def load_split(cfg: Config):
    """(train, held_out) images at the profile's resolution, split deterministically by the seed. The image
    column and class filter are the config's, else ``$TDPM_IMAGE_COLUMN`` / ``$TDPM_CLASS_FILTER``."""
    images = data.load_images(cfg.data_source or None, resolution=cfg.resolution, max_images=cfg.max_images,
                              image_column=cfg.image_column, class_filter=cfg.class_filter, preprocess=cfg.preprocess)
    held = cfg.held_out if cfg.held_out < 1 else int(cfg.held_out)
    return data.split(images, held_out=held, seed=cfg.seed)


def train_config(cfg: Config, schedule: str, n_train: int) -> dict:
    """The configuration that identifies a trained DDPM; a saved model with another one is not reused. An image
    column or class filter shows in ``data`` (``data.fingerprint``) only when set, and the training recipe
    (``recipe``) only where it departs from the book's, so the dict of a default run is what it always was."""
    out = dict(schedule=schedule, preset=cfg.ddpm_preset, channels=list(models.PRESETS[cfg.ddpm_preset]["block_out_channels"]),
               resolution=cfg.resolution, steps=cfg.train_steps,
               epochs=cfg.train_epochs, batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, lr=cfg.train_lr,
               seed=cfg.seed, n_train=n_train, data=data.fingerprint(cfg.data_source or None, image_column=cfg.image_column,
                                                                     class_filter=cfg.class_filter, preprocess=cfg.preprocess))
    book = Config()  # the dataclass defaults are the book's recipe
    out.update({k: v for k, v in dict(recipe(cfg), train_autocast=cfg.train_autocast).items() if getattr(book, k) != v})
    return out


def recipe(cfg: Config) -> dict:
    """The training options of ``ddpm_training.train_ddpm`` that the profile sets: the book's EMA and flips, or the
    author's recipe without them (the paper profile)."""
    return dict(ema_decay=cfg.ema_decay, hflip=cfg.hflip)


def train_or_load(cfg: Config, train_images: torch.Tensor, *, schedule: str | None = None, callback=None,
                  callback_every: int = 0, progress: bool = True):
    """Return (ema_unet, scheduler, info) for a schedule, training (or resuming) when no matching model exists.

    ``info`` holds the loss log, the training wall time and whether the model was loaded. Before training it
    prints what it is about to do and an estimate of how long that takes (``budget.training_estimate``), and
    shows a progress bar unless ``progress`` is False.
    """
    schedule = schedule or cfg.schedule
    scheduler = schedules.make_scheduler(schedule)
    hub = remote.hub_model(ddpm_source(cfg), schedule)
    if hub:  # trained elsewhere: no loss record, training time or step count of its own
        unet, scheduler = load_hub_model(cfg, hub, schedule)
        return unet, scheduler, dict(log=pd.DataFrame(columns=["step", "epoch", "loss", "lr", "seconds"]), loaded=True,
                                     source=hub, hardware=f"{hub}, not trained here", train_seconds=float("nan"),
                                     steps=0, parameters=models.count_parameters(unet))
    mdir = cfg.model_dir(schedule)
    tcfg = train_config(cfg, schedule, len(train_images))
    done = mdir / "train_config.json"
    if not (done.exists() and json.loads(done.read_text()) == tcfg) and not (mdir / "checkpoint.pt").exists():
        fetch_trained(cfg, schedule, tcfg)
    if done.exists() and json.loads(done.read_text()) == tcfg and (mdir / "unet_ema" / "config.json").exists():
        unet = ddpm.load_unet(mdir / "unet_ema", cfg.torch_device)
        summary = results.read_json(mdir / "train_summary.json")
        return unet, scheduler, dict(log=pd.read_csv(mdir / "loss.csv"), loaded=True, **summary)
    if not (mdir / "checkpoint.pt").exists():  # a fresh training run: drop the record of any earlier one
        for stale in (mdir / "quality.csv", mdir / "loss.csv"):
            stale.unlink(missing_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        unet = models.make_unet(cfg.ddpm_preset, resolution=cfg.resolution)
    steps = cfg.train_steps or cfg.train_epochs * -(-len(train_images) // cfg.batch_size)
    print(f"no trained {schedule} DDPM for this configuration in {mdir}: training it "
          f"({'resuming its checkpoint; ' if (mdir / 'checkpoint.pt').exists() else ''}"
          f"{budget_mod.training_estimate(cfg.ddpm_preset, resolution=cfg.resolution, batch_size=cfg.batch_size, steps=steps, device=cfg.torch_device)})",
          flush=True)
    out = ddpm_training.train_ddpm(
        unet, train_images, scheduler, out_dir=mdir, steps=cfg.train_steps or None, epochs=cfg.train_epochs or None,
        batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, lr=cfg.train_lr, seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every, device=cfg.torch_device, fast=None if cfg.train_autocast else False,
        callback=callback, callback_every=callback_every, progress=progress, config=tcfg, **recipe(cfg))
    log = out["log"]
    summary = dict(train_seconds=float(log["seconds"].iloc[-1]), steps=out["steps"],
                   parameters=models.count_parameters(out["ema_unet"]), device=str(cfg.torch_device),
                   hardware=results.hardware(cfg.torch_device))
    results.write_json(mdir / "train_summary.json", summary)
    results.write_json(done, tcfg)  # written last: its presence marks a finished model
    (mdir / "checkpoint.pt").unlink(missing_ok=True)  # only needed to resume; the paper DDPM's is 1.4 GB
    return out["ema_unet"].to(cfg.torch_device).eval(), scheduler, dict(log=log, loaded=False, **summary)


def ddpm_source(cfg: Config) -> str:
    """Where trained DDPMs are looked for when this run has none: the ``ddpm_source`` parameter, else
    ``$TDPM_DDPM_SOURCE``, else, on Colab, the repository's committed models of the profile ("" = nowhere)."""
    src = cfg.ddpm_source or os.environ.get("TDPM_DDPM_SOURCE", "")
    if not src and on_colab():
        src = remote.raw_url(f"results/{cfg.profile}/models")
    return src


def load_hub_model(cfg: Config, source: str, schedule: str):
    """(unet, scheduler) of a diffusers DDPM named by a hub id or a local folder in the hub's layout (``ddpm_source``
    "hub:..." or "author"), as it is: not trained here, so it has no loss record. Its resolution must be the
    profile's and its scheduler config (when it has one) the schedule's; otherwise one ``ValueError``."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(source).to(cfg.torch_device).eval()
    if unet.config.sample_size != cfg.resolution:
        raise ValueError(f"ddpm_source={source!r} is a {unet.config.sample_size} px model; profile {cfg.profile!r} runs "
                         f"{cfg.resolution} px (the report's models need the colab or paper profile)")
    scheduler = schedules.make_scheduler(schedule)
    try:
        theirs = DDPMScheduler.load_config(source)
    except (OSError, ValueError):
        theirs = None
    if theirs is not None and theirs.get("beta_schedule") != scheduler.config.beta_schedule:
        raise ValueError(f"ddpm_source={source!r} was trained with beta_schedule={theirs.get('beta_schedule')!r}; "
                         f"the {schedule} schedule is {scheduler.config.beta_schedule!r}")
    print(f"loaded the {schedule} DDPM {source} as it is (not trained by this book)", flush=True)
    return unet, scheduler


def fetch_trained(cfg: Config, schedule: str, tcfg: dict) -> bool:
    """Copy the trained ``schedule`` DDPM of this configuration from ``ddpm_source(cfg)`` into the run's model
    folder. Prints one line saying what it loaded or why it trains instead; True when it copied a model."""
    src = ddpm_source(cfg)
    if not src:
        return False
    why = remote.fetch_model(f"{src.rstrip('/')}/ddpm-{schedule}", cfg.model_dir(schedule), expect=tcfg)
    print(f"{why}: training instead" if why else f"loaded the trained {schedule} DDPM from {src}", flush=True)
    return not why


def save_results(cfg: Config, table: pd.DataFrame, *, name: str = "results.csv", **extra) -> None:
    """Write a results table with the run's config beside it. ``results.csv`` is written last: it marks
    a finished run (the sweep CLI skips runs that have it)."""
    out = cfg.out_dir()
    resolved = dict(data_resolved=data.resolve_source(cfg.data_source or None), device_resolved=str(cfg.torch_device))
    results.write_json(out / "config.json", dict(cfg.to_dict(), **resolved, **extra))
    results.write_csv(out / name, table)


def threads() -> int:
    """Set torch's CPU threads: $OMP_NUM_THREADS when set, else every core. Returns the count."""
    n = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
