"""Files of the book's repository, read from a local folder or a URL: producer notebooks and trained DDPMs.

A notebook opened alone (on Colab, from GitHub) has neither the other chapters' notebooks nor the trained
networks beside it. ``read`` takes a folder or an ``http(s)://`` base alike, so the same code loads a trained
DDPM from a checkout, a shared drive or the repository's raw files, and nothing half-downloaded is ever left
behind (every file goes through ``results.atomic_path``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .results import atomic_path

REPOSITORY = "https://github.com/tdpm-dip/tdpm-dip"  # _config.yml's repository.url (tests/test_notebooks.py keeps them equal)
BRANCH = "main"

# what a finished model folder holds (pipeline.train_or_load writes train_config.json last, as its end marker)
MODEL_FILES = ("unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors", "loss.csv",
               "train_summary.json", "train_config.json")


# The report author's trained DDPMs on the hub (models/DDPM_url.txt of github.com/felixchao/Generative-Models-for-
# Visual-Signals; DDPM.ipynb pushes to "-v2", which the repository does not name as a result). ddpm_source="author".
AUTHOR_DDPMS = {"linear": "FelixChao/ddpm-pokemon-64-full-steps", "cosine": "FelixChao/ddpm-pokemon-64-cosine"}
HUB_PREFIX = "hub:"


def hub_model(source: str, schedule: str) -> str:
    """The diffusers model that ``source`` names for ``schedule``: "author" is ``AUTHOR_DDPMS[schedule]``,
    "hub:ID" is ID (a hub model id, or a local folder in the hub's layout: config.json and the weights at its
    top), with "{schedule}" in ID replaced by the schedule's name; "" for any other source (a folder or URL in
    the book's layout, ``fetch_model``)."""
    if source == "author":
        return AUTHOR_DDPMS[schedule]
    return source[len(HUB_PREFIX):].replace("{schedule}", schedule) if source.startswith(HUB_PREFIX) else ""


def raw_url(path: str) -> str:
    """The raw-file URL of ``path`` (relative to the repository root) on the book's branch."""
    return REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + f"/{BRANCH}/{path}"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def read(base: str, name: str, *, timeout: float = 30.0) -> bytes:
    """The bytes of ``base/name``; ``base`` is a folder or a URL. Raises OSError when it cannot be had."""
    if is_url(base):
        import urllib.request

        with urllib.request.urlopen(f"{base.rstrip('/')}/{name}", timeout=timeout) as r:
            return r.read()
    return (Path(base).expanduser() / name).read_bytes()


def fetch_model(source: str, dest: Path, *, expect: dict, timeout: float = 30.0) -> str:
    """Copy the trained model folder ``source`` into ``dest`` when its ``train_config.json`` equals ``expect``.

    Returns "" on success, else one sentence saying why nothing was copied (unreachable, missing, or a model
    trained with another configuration, which would not be the one this run asks for). Files land in a staging
    folder first and move into ``dest`` only when all of them arrived, ``train_config.json`` last.
    """
    where = source.rstrip("/")
    try:
        found = json.loads(read(where, "train_config.json", timeout=timeout))
    except (OSError, ValueError) as e:
        return f"no trained model at {where} ({type(e).__name__})"
    if found != expect:
        diff = sorted(k for k in set(found) | set(expect) if found.get(k) != expect.get(k))
        return f"the model at {where} was trained with another configuration (differs in {', '.join(diff)})"
    dest = Path(dest)
    staging = dest.parent / f".{dest.name}.fetch"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name in MODEL_FILES:
            body = read(where, name, timeout=timeout)
            with atomic_path(staging / name) as tmp:
                Path(tmp).write_bytes(body)
        for name in MODEL_FILES:  # in order: train_config.json, the end marker, moves last
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, dest / name)
    except OSError as e:
        return f"the model at {where} could not be copied ({type(e).__name__}: {e})"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ""
