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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def write_csv(path, df) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig, path, *, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def run_dir(results_dir, profile: str, name: str) -> Path:
    """``<results_dir>/<profile>/<name>/``, created."""
    d = Path(results_dir) / profile / name
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- checkpoints -----------------------------------------------------------------------------------------

def save_checkpoint(path, state: dict) -> Path:
    """``torch.save`` a dict of tensors / plain Python values atomically (loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path, *, expected_config: dict | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True`` (nothing arbitrary is unpickled).

    A corrupt or truncated file raises ``ValueError`` naming the file. If ``expected_config`` is given,
    a checkpoint made with a different configuration is refused, listing the differing keys.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError for damaged files
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start afresh") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a dict of named entries")
    if expected_config is not None:
        diff = config_diff(state.get("config", {}), expected_config)
        if diff:
            raise ValueError(f"checkpoint {str(path)!r} was made with a different configuration; "
                             f"differing keys: {', '.join(diff)}")
    return state


def config_diff(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two flat config dicts (missing counts as different)."""
    return [f"{k} ({a.get(k, '<missing>')!r} != {b.get(k, '<missing>')!r})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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
