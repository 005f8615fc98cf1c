"""Profiles and the validated run configuration built from a notebook's flat papermill parameters.

A notebook's ``parameters`` cell holds flat literals; ``Config.from_params(**params)`` checks every one
of them before any work starts and fills the profile's defaults. A bad value raises one ``ValueError``
that names the parameter, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..methods import models, schedules, skipnet
from . import data

# What each profile runs. "paper" is the report's configuration (64x64, the 113.7 M DDPM, the 4-level DIP);
# "cpu" is a reduced one that runs the whole book on 2 CPU cores; "smoke" only checks that cells run.
# train_lr: the report's 1e-4 under "paper"; the cpu profile trains a 4.3 M-parameter network for 8,000 steps
# at 1e-3, the rate its pilot ran at (small networks on a short budget tolerate and need the larger step; stated
# in 01_ddpm_training).
PROFILES = {
    "smoke": dict(resolution=16, ddpm_preset="tiny", dip_preset="tiny", dip_preset_small="tiny", max_images=48,
                  train_steps=20, train_epochs=0, batch_size=8, warmup_steps=5, train_lr=1e-3, checkpoint_every=10,
                  eval_every=10, grid_every=10, n_final_samples=8,
                  n_generate=8, n_denoise=3, dip_iterations=20, dip_iterations_long=40, n_chains=2, sample_batch=64),
    # cpu: n_generate, dip_iterations_long and n_chains were cut (64 -> 48, 500 -> 300, 4 -> 3) after measuring
    # 03_tdpm_dip at about 28 min on one thread; the protocol is unchanged, only sizes and budgets shrink.
    # cpu training: 8,000 steps of the 4.3 M ddpm-cpu preset at lr 1e-3 (the pilot in 01 measured the sizes),
    # about 3 h for both schedules side by side on 2 quiet cores; `make train PROFILE=cpu` retrains them.
    "cpu": dict(resolution=32, ddpm_preset="ddpm-cpu", dip_preset="dip-cpu", dip_preset_small="dip-cpu-small",
                max_images=None, train_steps=8000, train_epochs=0, batch_size=32, warmup_steps=500, train_lr=1e-3,
                checkpoint_every=500, eval_every=1000, grid_every=2000, n_final_samples=256, n_generate=48, n_denoise=8, dip_iterations=100, dip_iterations_long=300,
                n_chains=3, sample_batch=64),
    # colab: the report's networks at 64 px sized by their FLOP count (tdpmlib.workflow.budget) for under an hour on a free
    # Colab T4 at the rates it really runs at: DDPM training and DIP fits in fp32 (a T4 has no bf16, and fp16 would
    # need loss scaling), 5 TFLOP/s sustained of its 8.1 peak; sampling in fp16, 20 TFLOP/s. About 58 min there,
    # under 2 min on an H100/H200 (bf16, 350/400 TFLOP/s). A step budget, so hub data and the local parquet cost the
    # same. Its lr is Ho et al.'s CIFAR-10 rate (2e-4), twice the report's, for the short budget. Not yet timed on a GPU.
    "colab": dict(resolution=64, ddpm_preset="ddpm-paper", dip_preset="dip-paper", dip_preset_small="dip-cpu",
                  max_images=None, train_steps=800, train_epochs=0, batch_size=32, warmup_steps=100, train_lr=2e-4,
                  checkpoint_every=200, eval_every=200, grid_every=400, n_final_samples=128, n_generate=80,
                  n_denoise=8, dip_iterations=100, dip_iterations_long=500, n_chains=4, sample_batch=256),
    # paper trains as the author's DDPM.ipynb does: no flips, no EMA, torchvision's Resize of convert("RGB"), fp32,
    # AdamW lr 1e-4 with betas (0.95, 0.999), weight decay 1e-6, 500 warm-up steps, clip 1.0 (ddpm.train_ddpm's
    # defaults). Unlike the author it keeps a held-out tenth for evaluation (the author trained on every image).
    "paper": dict(resolution=64, ddpm_preset="ddpm-paper", dip_preset="dip-paper", dip_preset_small="dip-cpu",
                  ema_decay=0.0, hflip=False, preprocess="author", train_autocast=False,
                  max_images=None, train_steps=0, train_epochs=100, batch_size=32, warmup_steps=500, train_lr=1e-4,
                  checkpoint_every=1000, eval_every=0, grid_every=0, n_final_samples=1000, n_generate=1000, n_denoise=50, dip_iterations=100,
                  dip_iterations_long=1000, n_chains=8, sample_batch=500),
}

# The denoising study (tdpmlib.studies.denoising): validation and test images drawn from the held-out set, the DIP
# budgets searched on validation (the cpu ones bracket the best iterations measured at sigma = 25 on 32 px:
# about 850 for the plain DIP at the author's lr 1e-4 (6 held-out images; at lr 1e-3 it was about 150), and about
# 400 for the official protocol on 8 images) and the skip-network preset of the official and ES-WMV protocols.
STUDY = {
    "smoke": dict(n_val=2, n_test=3, dip_preset_official="skip-tiny", dip_budgets_plain="2,4",
                  dip_budgets_official="2,4"),
    "cpu": dict(n_val=8, n_test=20, dip_preset_official="skip-cpu", dip_budgets_plain="100,200,300,500,750,1000",
                dip_budgets_official="100,200,300,400,500,600,800,1000"),
    # colab: 30 test images (the T4's fp32 DIP fits price more out); budgets cut to the 64-px peaks' range (the
    # official protocol's best iterations at 32 px lie near 400)
    "colab": dict(n_val=5, n_test=30, dip_preset_official="skip-paper", dip_budgets_plain="100,200,300",
                  dip_budgets_official="250,500,750,1000"),
    # paper: the official network at 64 px; the official notebook runs 3000 iterations at 512 px
    "paper": dict(n_val=20, n_test=50, dip_preset_official="skip-paper",
                  dip_budgets_plain="100,200,300,500,750,1000,1500,2000",
                  dip_budgets_official="250,500,750,1000,1500,2000,3000"),
}
for _name, _study in STUDY.items():
    PROFILES[_name].update(_study)

DEVICES = ("auto", "cpu", "cuda")


def _fail(name, value, allowed):
    raise ValueError(f"{name}={value!r} is not allowed; {allowed}")


def check_int(name, value, *, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, f"use an integer{'' if low is None else f' >= {low}'}")
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, value, f"use an integer in {low}..{high}" if high is not None else f"use an integer >= {low}")
    return value


def check_float(name, value, *, low=None, high=None, open_low=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, value, "use a finite number")
    if low is not None and (value <= low if open_low else value < low):
        _fail(name, value, f"use a number {'>' if open_low else '>='} {low}")
    if high is not None and value >= high:
        _fail(name, value, f"use a number < {high}")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        _fail(name, value, f"use one of {list(choices)}")
    return value


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' on a machine without CUDA is refused."""
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        _fail("device", device, "CUDA is not available on this machine; use 'auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# Profiles that only make sense on a GPU, with what they cost there. The paper profile's figure is the FLOP-based
# estimate for the current code (a 12.8-minute arithmetic floor on an H200); it has never been timed on a GPU.
GPU_ONLY = {"paper": "the report's full configuration: about 70-80 min on an H200 and many hours on a T4, "
                     "estimated from its FLOP count; days on a CPU",
            # tests/test_budget.py keeps these figures equal to tdpmlib.workflow.budget's count
            "colab": "the report's networks at 64 px: about 58 min of arithmetic on a T4 and 1 min on an H200 by its "
                     "FLOP count; many hours on a CPU"}


def check_profile_device(profile: str, device: str = "auto") -> None:
    """Refuse a GPU-only profile on a run whose device is not CUDA, in one line that says what to use."""
    if profile in GPU_ONLY and resolve_device(device).type != "cuda":
        _fail("profile", profile, f"it needs a CUDA GPU ({GPU_ONLY[profile]}) and this run's device is the CPU; "
                                  "use profile='cpu' (about 90 min on 2 cores) or 'smoke', or allow the CPU explicitly")


@dataclass
class Config:
    """The validated configuration of one notebook run. ``extra`` holds notebook-specific parameters."""

    profile: str = "cpu"
    data_source: str = ""
    image_column: str = ""  # the image column ("" = $TDPM_IMAGE_COLUMN, else auto: image, img, the Image column)
    class_filter: str = ""  # "COLUMN=V1,V2" keeps those classes ("" = $TDPM_CLASS_FILTER, else every image)
    seed: int = 0
    device: str = "auto"
    results_dir: str = "../results"
    # trained DDPMs to load when this run has none: a folder or URL holding ddpm-<schedule>/ ("" = $TDPM_DDPM_SOURCE,
    # else, on Colab, the repository's results/<profile>/models); a model trained with another configuration is not used.
    # "hub:OWNER/NAME" or "author" (remote.AUTHOR_DDPMS) load a diffusers UNet as it is, without training
    ddpm_source: str = ""
    run_name: str = ""
    schedule: str = "linear"
    resolution: int = 32
    ddpm_preset: str = "ddpm-cpu"
    dip_preset: str = "dip-cpu"
    dip_preset_small: str = "dip-cpu-small"
    max_images: int | None = None
    train_steps: int = 0
    train_epochs: int = 0
    batch_size: int = 32
    warmup_steps: int = 100
    train_lr: float = 1e-3
    # The book's improvements over the author's training recipe (the paper profile turns all four off):
    ema_decay: float = 0.999     # EMA of the weights, sampled from (0: none, as the author)
    hflip: bool = True           # random horizontal flips (the author: none)
    preprocess: str = "book"     # "book": alpha on white, centre crop, Lanczos; "author": Resize of convert("RGB")
    train_autocast: bool = True  # bf16 autocast in training on CUDA (the author: fp32)
    checkpoint_every: int = 200
    eval_every: int = 0    # training steps between quality rows; 0: an eighth of the training
    grid_every: int = 0    # training steps between sample grids; 0: a quarter of the training
    n_final_samples: int = 64  # samples per sampler drawn from each trained DDPM (01's SWD and memorisation)
    n_val: int = 8         # validation images (tuned choices) of the denoising study
    n_test: int = 20       # test images (reported numbers) of the denoising study
    dip_preset_official: str = "skip-cpu"  # skip-network preset of the official and ES-WMV DIP protocols
    dip_budgets_plain: str = "100,200,300,500,750,1000"              # candidate DIP budgets, plain protocol
    dip_budgets_official: str = "100,200,300,400,500,600,800,1000"   # candidate budgets, official protocol
    n_generate: int = 64
    n_denoise: int = 8
    dip_iterations: int = 100
    dip_iterations_long: int = 500
    n_chains: int = 4
    sample_batch: int = 64
    dip_lr: float = 1e-4   # the plain (report's) DIP: the author's Adam rate (tdpmlib.methods.dip.PROTOCOLS)
    held_out: float = 0.1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, *, profile: str, notebook: str, extra_checks: dict | None = None, **params) -> "Config":
        """Validate flat parameters. Profile defaults apply where a parameter is None or absent.

        ``extra_checks`` maps a notebook-specific parameter to a function ``f(name, value) -> value``.
        """
        check_choice("profile", profile, list(PROFILES))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "profile"}
        extra_checks = extra_checks or {}
        unknown = set(params) - known - set(extra_checks)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; allowed: {sorted(known | set(extra_checks))}")
        values = dict(PROFILES[profile])
        values.update({k: v for k, v in params.items() if k in known and v is not None})
        cfg = cls(profile=profile, **values)
        cfg.extra = {k: extra_checks[k](k, v) for k, v in params.items() if k in extra_checks}
        cfg.run_name = cfg.run_name or notebook
        cfg._validate()
        return cfg

    def _validate(self):
        if not isinstance(self.data_source, str):
            _fail("data_source", self.data_source, "use a string: a path or a hub dataset id ('' = TDPM_DATA or the hub)")
        if self.data_source and ("/" in self.data_source or self.data_source.endswith((".parquet", ".npz"))):
            p = Path(self.data_source)
            looks_local = p.suffix in (".parquet", ".npz") or self.data_source.startswith((".", "/"))
            if looks_local and not p.exists():
                _fail("data_source", self.data_source, "the path does not exist; give an existing parquet, folder or .npz")
        if not isinstance(self.image_column, str):
            _fail("image_column", self.image_column, "use a column name ('' = TDPM_IMAGE_COLUMN or auto-detect)")
        data.resolve_class_filter(self.class_filter)  # syntax (of the parameter, else of TDPM_CLASS_FILTER)
        check_int("seed", self.seed, low=0)
        resolve_device(self.device)
        schedules.check_schedule(self.schedule)
        for name in ("ddpm_preset", "dip_preset", "dip_preset_small"):
            check_choice(name, getattr(self, name), list(models.PRESETS))
            models.check_resolution(getattr(self, name), self.resolution)
        if self.max_images is not None:
            check_int("max_images", self.max_images, low=2)
        check_int("train_steps", self.train_steps, low=0)
        check_int("train_epochs", self.train_epochs, low=0)
        if (self.train_steps > 0) == (self.train_epochs > 0):
            _fail("train_steps", self.train_steps, f"set exactly one of train_steps and train_epochs (got epochs={self.train_epochs!r})")
        for name in ("batch_size", "n_final_samples", "n_generate", "n_denoise", "dip_iterations", "dip_iterations_long", "n_chains", "sample_batch"):
            check_int(name, getattr(self, name), low=1)
        check_int("warmup_steps", self.warmup_steps, low=0)
        check_float("train_lr", self.train_lr, low=0, high=1)
        if isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float)) or not 0 <= self.ema_decay < 1:
            _fail("ema_decay", self.ema_decay, "use a number in [0, 1) (0: no EMA)")
        for name in ("hflip", "train_autocast"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "use True or False")
        check_choice("preprocess", self.preprocess, list(data.PREPROCESS))
        check_int("checkpoint_every", self.checkpoint_every, low=1)
        check_int("eval_every", self.eval_every, low=0)
        check_int("grid_every", self.grid_every, low=0)
        check_float("dip_lr", self.dip_lr, low=0, high=1)
        check_float("held_out", self.held_out, low=0, high=1)
        check_int("n_val", self.n_val, low=1)
        check_int("n_test", self.n_test, low=1)
        check_choice("dip_preset_official", self.dip_preset_official, list(skipnet.PRESETS))
        for name in ("dip_budgets_plain", "dip_budgets_official"):
            self.budgets(name)
        if not isinstance(self.results_dir, str) or not self.results_dir:
            _fail("results_dir", self.results_dir, "use a non-empty path string")
        sources_help = ("use a folder or an http(s) URL holding ddpm-<schedule>/, 'hub:OWNER/NAME' (a diffusers UNet), "
                        "or 'author' (the report author's two DDPMs); '' = TDPM_DDPM_SOURCE")
        if not isinstance(self.ddpm_source, str):
            _fail("ddpm_source", self.ddpm_source, sources_help)
        hub = self.ddpm_source == "author" or self.ddpm_source.startswith("hub:")
        if self.ddpm_source.startswith("hub:") and len(self.ddpm_source) == 4:
            _fail("ddpm_source", self.ddpm_source, sources_help)
        if self.ddpm_source and not hub and not self.ddpm_source.startswith(("http://", "https://")) and not Path(self.ddpm_source).expanduser().is_dir():
            _fail("ddpm_source", self.ddpm_source, "the folder does not exist; " + sources_help)
        if not isinstance(self.run_name, str) or any(c in self.run_name for c in "/\\"):
            _fail("run_name", self.run_name, "use a plain folder name")

    def budgets(self, name: str) -> tuple[int, ...]:
        """A comma-separated budget list ("100,200,400") as sorted distinct positive integers."""
        value = getattr(self, name)
        allowed = 'use a comma-separated string of positive integers, e.g. "100,200,400"'
        try:
            out = tuple(sorted({int(p) for p in value.split(",")}))
        except (AttributeError, ValueError):
            _fail(name, value, allowed)
        if not out or out[0] < 1:
            _fail(name, value, allowed)
        return out

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed (CPU generators give identical draws on every device)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def out_dir(self) -> Path:
        d = Path(self.results_dir) / self.profile / self.run_name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def model_dir(self, schedule: str | None = None) -> Path:
        """Where the trained DDPM of a schedule lives, shared by all notebooks of the profile."""
        return Path(self.results_dir) / self.profile / "models" / f"ddpm-{schedule or self.schedule}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d


# Chapter 01's final samplers (``train.final_samples``). DDIM on diffusers' default grid (leading, from level 981) and on the grid from level 1000 (trailing, the book's
# grid before); each grid's samplers start from the same noise as the other's (the seeds), so they pair.
FINAL_SAMPLERS = {"DDPM-1000": dict(method="ddpm"), "DDIM-50": dict(method="ddim", num_steps=50, spacing="leading"),
                  "DDIM-50, trailing": dict(method="ddim", num_steps=50, spacing="trailing"),
                  "DDIM-100, trailing": dict(method="ddim", num_steps=100, spacing="trailing"),
                  "DDIM-50, raw ε, trailing": dict(method="ddim", num_steps=50, clipped_eps=False, spacing="trailing"),
                  "DDIM-100, raw ε, trailing": dict(method="ddim", num_steps=100, clipped_eps=False, spacing="trailing")}
FINAL_SEEDS = {"DDPM-1000": 102, "DDIM-50": 103, "DDIM-50, trailing": 103, "DDIM-100, trailing": 105,
               "DDIM-50, raw ε, trailing": 103, "DDIM-100, raw ε, trailing": 105}
