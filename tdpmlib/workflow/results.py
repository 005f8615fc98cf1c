"""Results I/O: atomic writes, run folders with their config, checkpoints, and provenance.

Every file is written to a temporary name in the same folder and renamed into place with
``os.replace`` (atomic on POSIX), so a crash never leaves a truncated file that a later run would load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..methods.checkpoints import (  # noqa: F401 - the book's one way to write
    atomic_path, config_diff, load_checkpoint, save_checkpoint, write_csv)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, torch.device)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=True) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def save_figure(fig, path, *, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def run_dir(results_dir, profile: str, name: str) -> Path:
    """``<results_dir>/<profile>/<name>/``, created."""
    d = Path(results_dir) / profile / name
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- provenance ------------------------------------------------------------------------------------------

def git_commit(cwd=None) -> str:
    """Short HEAD hash, with "-dirty" when the code or a notebook's source differs from that commit.

    A run's own outputs do not count: every reference run rewrites results/ and the executed
    notebooks (outputs, metadata, the injected-parameters cell), so only their sources are compared.
    """
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd or Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        root = git("rev-parse", "--show-toplevel")
        if head.returncode != 0 or root.returncode != 0:
            return "unknown"
        changed = git("diff", "--name-only", "HEAD").stdout.split("\n")
        dirty = False
        for name in filter(None, changed):
            if name.startswith("results/"):
                continue
            if name.endswith(".ipynb"):
                old = git("show", f"HEAD:{name}")
                path = Path(root.stdout.strip()) / name
                if old.returncode == 0 and path.exists() and _nb_source(old.stdout) == _nb_source(path.read_text()):
                    continue
            dirty = True
            break
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _nb_source(text: str):
    """A notebook's cells as (type, source), without papermill's injected-parameters cell."""
    try:
        cells = json.loads(text)["cells"]
    except (ValueError, KeyError, TypeError):
        return None
    src = lambda c: "".join(c["source"]) if isinstance(c.get("source"), list) else c.get("source")  # noqa: E731
    return [(c.get("cell_type"), src(c)) for c in cells
            if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def hardware(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''}"


def provenance(profile: str, device) -> dict:
    import diffusers
    import torchmetrics

    return dict(profile=profile, hardware=hardware(device), device=str(device), git_commit=git_commit(),
                python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                torchmetrics=torchmetrics.__version__)


@contextlib.contextmanager
def captured_output():
    """Capture Python-level stdout/stderr and file descriptors 1 and 2 (a papermill kernel writes its start-up
    warnings there); yields a function returning the captured text."""
    buf = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stdout.flush(), sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1), os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield lambda: buf.getvalue() + (tmp.seek(0) or tmp.read().decode(errors="replace"))
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
