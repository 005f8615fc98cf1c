"""Image data: loading, preprocessing, the train / held-out split and the per-epoch batch order.

Where the images come from (``data_source``)
--------------------------------------------
``resolve_source`` picks the source: the argument if one is given, else the environment variable
``TDPM_DATA``, else ``DEFAULT_SOURCE`` (``"huggan/pokemon"``, the hub dataset the reproduced report
used). ``load_images`` accepts four kinds of source:

* ``path/to/file.parquet``: a parquet file with an ``image`` column in the HuggingFace ``datasets.Image``
  layout (a struct of PNG/JPEG ``bytes`` and ``path``) and optionally a ``name`` column, such as the
  shared ``train-128px.parquet`` (819 Pokémon artworks) or what ``write_synthetic_parquet`` writes;
* an existing directory: an image folder, read with ``datasets.load_dataset("imagefolder", ...)``;
* ``path/to/file.npz``: a numpy archive holding a uint8 array ``images`` of shape N×H×W×3, N×H×W×4
  (RGBA) or N×H×W (grey);
* anything else: a HuggingFace hub dataset id, read with ``datasets.load_dataset(source, split="train")``.

A source that looks like a path (it ends in ``.parquet`` / ``.npz``, starts with ``.``, ``/`` or ``~``,
or has more than one ``/``, which no hub id has) but does not exist raises ``ValueError``. A hub id
that cannot be loaded raises ``DataSourceError`` (a ``ValueError``) with one message that says how to
point at local data instead.

Offline, ``datasets`` retries an unreachable hub for about 25 s before giving up. To fail within
seconds, ``load_images`` first opens one TCP connection to the hub endpoint (``HUB_PROBE_TIMEOUT_S``)
and reports the hub as unreachable if that fails. The probe is skipped when the hub's offline mode is
on (``HF_HUB_OFFLINE=1``, in which case ``datasets`` reads its local cache and fails at once when the
dataset is not there) and when an HTTP(S) proxy is configured (the probe would bypass it). A hub
dataset already in the local cache is therefore read offline by setting ``HF_HUB_OFFLINE=1``.

Preprocessing (every image, every source)
-----------------------------------------
1. Convert to RGB. Images with transparency (RGBA, LA, palette images with a transparent colour)
   are composited onto white, because the artworks sit on white backgrounds.
2. Centre-crop to a square (the shorter side), rather than pad. The Pokémon artworks are already
   square, so nothing is cut from them.
3. Resize to ``resolution``×``resolution`` with Pillow's antialiased Lanczos filter
   (``reducing_gap=None``, i.e. an exact resample with no JPEG-draft shortcut).
4. Scale to float32 in [-1, 1]: ``x / 127.5 - 1``.

An image that cannot be decoded makes ``load_images`` fail with a ``ValueError`` naming it (the file
name for an image folder; the row index, and the ``name`` value where there is one, for parquet and
hub data). It is not skipped: silently dropping images would change the dataset, its size and so
the train / held-out split, without anyone noticing.

Split and order
---------------
``split`` draws a deterministic train / held-out split from a seed. ``batches`` gives the index
batches of one training epoch as a pure function of ``(seed, epoch)``, so a resumed run sees exactly
the data order an uninterrupted one would. ``random_hflip`` is the only augmentation.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

DEFAULT_SOURCE = "huggan/pokemon"
"""The hub dataset the reproduced report trained on (7,357 images; offline here)."""

ENV_VAR = "TDPM_DATA"
"""Environment variable naming the data source when none is passed."""

HUB_PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for a TCP connection to the hub before calling it unreachable."""

_LOCAL_HINT = (
    'Point at local data: pass data_source="path/to/images.parquet" (a parquet with an image column, '
    "an image folder, or an .npz with a uint8 `images` array), or set TDPM_DATA=path/to/images.parquet."
)


class DataSourceError(ValueError):
    """A hub dataset could not be loaded (offline, unknown id, ...); the message says what to do instead."""


# --------------------------------------------------------------------------------------------------
# Which source
# --------------------------------------------------------------------------------------------------


def resolve_source(source: str | os.PathLike | None = None) -> str:
    """The data source to use: ``source`` if given and non-empty, else ``$TDPM_DATA`` if set and
    non-empty, else ``DEFAULT_SOURCE``."""
    if source is not None and str(source) != "":
        return str(source)
    env = os.environ.get(ENV_VAR, "")
    if env:
        return env
    return DEFAULT_SOURCE


def fingerprint(source: str | os.PathLike | None = None) -> str:
    """An identity of the data that does not depend on where it lies: a local file is named by its file
    name and the first 12 hex digits of its SHA-256, a folder by its name, a hub dataset by its id. Trained
    models record it, so a clone in another folder still recognises the committed networks."""
    import hashlib

    src = resolve_source(source)
    path = Path(src).expanduser()
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"{path.name}:sha256:{h.hexdigest()[:12]}"
    if path.is_dir():
        return f"{path.name}/"
    return src


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a hub id (``name`` or ``owner/name``)."""
    return (
        source.lower().endswith((".parquet", ".npz"))
        or source.startswith((".", "/", "~"))
        or (os.sep != "/" and os.sep in source)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in source)
        or source.count("/") > 1
    )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_images(
    source: str | os.PathLike | None = None,
    *,
    resolution: int = 64,
    max_images: int | None = None,
) -> torch.Tensor:
    """Load a data source as a float32 tensor N×3×resolution×resolution with values in [-1, 1].

    ``source`` is resolved with ``resolve_source`` (argument, else ``$TDPM_DATA``, else the hub
    dataset ``DEFAULT_SOURCE``); see the module docstring for the source kinds and preprocessing.
    ``max_images`` keeps the first ``max_images`` images (file / row order, deterministic), selected
    before decoding so that a small run stays fast.

    Raises ``ValueError`` for a missing path, a parquet / dataset without an ``image`` column, a
    source with no images, or an image that cannot be decoded (named in the message; images are
    never skipped). Raises ``DataSourceError`` (a ``ValueError``) when a hub dataset can't be loaded.

    Results are memoised within the process on (source, file size and modification time for local
    sources, resolution, max_images); each call returns a fresh copy.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive int")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ValueError(f"max_images={max_images!r} must be None (all images) or an int >= 0")
    resolved = resolve_source(source)
    local = os.path.expanduser(resolved)
    if os.path.exists(local):
        # The file's size and mtime are part of the key so that a rewritten file is read again.
        stat = os.stat(local)
        key = (os.path.abspath(local), stat.st_size, stat.st_mtime_ns)
    elif _looks_like_path(resolved):
        raise ValueError(
            f"data_source={resolved!r} does not exist; pass an existing .parquet file, image folder "
            f"or .npz file, or a HuggingFace hub dataset id (set it with data_source=... or {ENV_VAR}=...)."
        )
    else:
        key = (resolved, None, None)
    return _load_cached(key, resolution, max_images).clone()


@functools.lru_cache(maxsize=4)
def _load_cached(key: tuple, resolution: int, max_images: int | None) -> torch.Tensor:
    source, _size, mtime = key
    if mtime is None:
        items = _hub_items(source)
    elif os.path.isdir(source):
        items = _folder_items(source)
    elif source.lower().endswith(".parquet"):
        items = _parquet_items(source)
    elif source.lower().endswith(".npz"):
        items = _npz_items(source)
    else:
        raise ValueError(
            f"data_source={source!r} is a file of an unsupported kind; use a .parquet file, "
            f"an image folder or an .npz file."
        )
    n_total = len(items)
    n = n_total if max_images is None else min(max_images, n_total)
    if n == 0:
        detail = f" (max_images={max_images})" if n_total else ""
        raise ValueError(f"data_source={source!r} holds no images{detail}.")
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for i in range(n):
        label, opener = items[i]
        try:
            img = opener()
            img.load()  # Image.open is lazy: decoding errors surface here.
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
            raise ValueError(
                f"data_source={source!r}: cannot decode the image at {label} ({type(err).__name__}: {err}). "
                f"Fix or remove it; images are never skipped silently."
            ) from None
        out[i] = np.asarray(preprocess(img, resolution=resolution))
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images.to(torch.float32) / 127.5 - 1.0


def preprocess(img: Image.Image, *, resolution: int = 64) -> Image.Image:
    """RGB (transparency composited onto white), centre-cropped to a square, Lanczos-resized."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=None)
    return img


# Each reader returns a list of (label, opener) pairs: `label` names the image in error messages,
# `opener()` returns a PIL image. Nothing is decoded until the opener is called.


def _dataset_items(ds, where: str) -> list:
    """(label, opener) pairs for a ``datasets.Dataset`` with an ``image`` column."""
    datasets = _datasets()

    if "image" not in ds.column_names:
        raise ValueError(f"{where} has no `image` column; its columns are {ds.column_names}.")
    try:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    except Exception as err:
        raise ValueError(
            f"{where}: column `image` (type {ds.features['image']}) is not an image column ({err})."
        ) from None
    cells = list(ds["image"])
    names = list(ds["name"]) if "name" in ds.column_names else [None] * len(cells)
    folder = where.startswith("image folder")
    items = []
    for i, (cell, name) in enumerate(zip(cells, names)):
        path = cell.get("path") if isinstance(cell, dict) else None
        if folder and path:
            label = f"file {path!r}"
        else:
            label = f"row {i}" + (f" (name={name!r})" if name is not None else "")
        items.append((label, functools.partial(_open_cell, cell)))
    return items


def _open_cell(cell) -> Image.Image:
    if not isinstance(cell, dict) or (cell.get("bytes") is None and cell.get("path") is None):
        raise ValueError("the cell holds no image")
    if cell.get("bytes") is not None:
        return Image.open(io.BytesIO(cell["bytes"]))
    return Image.open(cell["path"])


def _datasets():
    """HuggingFace ``datasets``, without its progress bars ("Generating train split ...": stderr in the book)."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


def _parquet_items(path: str) -> list:
    datasets = _datasets()
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as err:
        raise ValueError(f"data_source={path!r} is not a readable parquet file ({err}).") from None
    columns = meta.schema.to_arrow_schema().names
    if "image" not in columns:
        raise ValueError(f"parquet file {path!r} has no `image` column; its columns are {columns}.")
    if meta.num_rows == 0:
        raise ValueError(f"data_source={path!r} holds no images (the parquet file has 0 rows).")
    ds = datasets.load_dataset("parquet", data_files=path, split="train")
    return _dataset_items(ds, f"parquet file {path!r}")


def _folder_items(path: str) -> list:
    datasets = _datasets()

    try:
        ds = datasets.load_dataset("imagefolder", data_dir=path, split="train")
    except Exception as err:  # e.g. EmptyDatasetError for a folder without image files
        raise ValueError(f"data_source={path!r} holds no images readable as an image folder ({err}).") from None
    return _dataset_items(ds, f"image folder {path!r}")


def _npz_items(path: str) -> list:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise ValueError(f".npz file {path!r} has no `images` array; it has {archive.files}.")
            arr = archive["images"]
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"data_source={path!r} is not a readable .npz file ({err}).") from None
    if arr.dtype != np.uint8 or not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4))):
        raise ValueError(
            f".npz file {path!r}: `images` must be uint8 N×H×W×3, N×H×W×4 or N×H×W; "
            f"got {arr.dtype} with shape {arr.shape}."
        )
    return [(f"images[{i}]", functools.partial(Image.fromarray, arr[i])) for i in range(len(arr))]


def _hub_items(source: str) -> list:
    datasets = _datasets()

    reason = _hub_unreachable_reason()
    if reason is None:
        try:
            ds = datasets.load_dataset(source, split="train")
        except Exception as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
            if len(reason) > 200:
                reason = reason[:197] + "..."
        else:
            return _dataset_items(ds, f"hub dataset {source!r}")
    raise DataSourceError(
        f"could not load dataset {source!r} from the HuggingFace hub ({reason}). {_LOCAL_HINT}"
    ) from None


def _hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub can't be reached, or None if it can (or if we shouldn't probe; see module docs)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    result: list[BaseException] = []

    def probe():  # in a thread, since name resolution itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except BaseException as err:
            result.append(err)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    if result:
        return f"{host} unreachable: {result[0]}"
    return None


# --------------------------------------------------------------------------------------------------
# Split, augmentation, batch order
# --------------------------------------------------------------------------------------------------


def split_indices(n: int, *, held_out: float | int = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors (train, held_out) of a deterministic split of ``range(n)``.

    ``held_out`` is a fraction in (0, 1), giving ``max(1, round(n * held_out))`` held-out images,
    or an int count >= 1. Both sides must get at least one image.
    """
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise ValueError(f"held_out={held_out!r} must be a fraction in (0, 1) or an int count >= 1")
    if isinstance(held_out, int):
        k = held_out
    elif 0.0 < held_out < 1.0:
        k = max(1, int(np.floor(n * held_out + 0.5)))
    else:
        raise ValueError(f"held_out={held_out!r} must be a fraction in (0, 1) or an int count >= 1")
    if k < 1 or n - k < 1:
        raise ValueError(
            f"held_out={held_out!r} leaves {n - k} training and {k} held-out images of {n}; "
            f"allowed: a fraction in (0, 1) or an int count in [1, {n - 1}], with at least one image on each side"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[k:], perm[:k]


def split(images: torch.Tensor, *, held_out: float | int = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, held_out) split of ``images`` along dim 0; see ``split_indices``."""
    train_idx, held_idx = split_indices(len(images), held_out=held_out, seed=seed)
    return images[train_idx], images[held_idx]


def random_hflip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of an N×C×H×W batch horizontally with probability 0.5 (draws from ``generator``)."""
    flip = torch.rand(len(batch), generator=generator, device=generator.device) < 0.5
    flip = flip.to(batch.device).view(-1, *([1] * (batch.dim() - 1)))
    return torch.where(flip, batch.flip(-1), batch)


def batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch over ``range(n)``, the last partial batch kept (drop_last=False).

    The order is ``torch.randperm(n)`` seeded with ``seed * 1_000_003 + epoch``: a pure function of
    (seed, epoch), so training resumed at any epoch sees the same data order.
    """
    for label, value, low in (("n", n, 1), ("batch_size", batch_size, 1), ("seed", seed, 0), ("epoch", epoch, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label}={value!r} must be an int >= {low}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return list(perm.split(batch_size))


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


def write_synthetic_parquet(path: str | os.PathLike, *, n: int = 16, size: int = 32, seed: int = 0) -> Path:
    """Write ``n`` random coloured blobs on white (``size``×``size`` PNGs) as a parquet with the shared
    file's schema (``image``: ``datasets.Image``, ``name``: string). The outer eighth of each image is
    left white. Written atomically (temporary file, then ``os.replace``). Returns the path."""
    datasets = _datasets()

    if n < 0 or size < 8:
        raise ValueError(f"n={n!r} must be >= 0 and size={size!r} >= 8")
    rng = np.random.default_rng(seed)
    margin = size // 8
    cells, names = [], []
    for i in range(n):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.integers(margin, size // 2, size=2)
            x1, y1 = rng.integers(size // 2 + 1, size - margin, size=2)
            colour = tuple(int(c) for c in rng.integers(0, 200, size=3))
            draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=colour)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
        names.append(f"synthetic-{i}")
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": cells, "name": names}, features=features)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.to_parquet(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
