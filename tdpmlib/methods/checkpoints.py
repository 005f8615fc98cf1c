"""Files a killed run never leaves half-written: atomic writes, CSV logs, and checkpoints that load only
tensors and plain values and refuse a different configuration."""

from __future__ import annotations

import contextlib
import os
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


def write_csv(path, df) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


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
