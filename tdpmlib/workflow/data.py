"""Image data: loading, preprocessing, the train / held-out split and the per-epoch batch order.

Where the images come from (``data_source``)
--------------------------------------------
``resolve_source`` picks the source: the argument if one is given, else the environment variable
``TDPM_DATA``, else ``DEFAULT_SOURCE`` (``"huggan/pokemon"``, the hub dataset the reproduced report
used). ``load_images`` accepts four kinds of source (read by ``tdpmlib.workflow.sources``):

* ``path/to/file.parquet``: a parquet file with an image column in the HuggingFace ``datasets.Image``
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

Which column, which classes (``image_column``, ``class_filter``)
-----------------------------------------------------------------
Any image dataset works, not only the Pokémon one. ``image_column`` names the image column (``""``:
``image``, else ``img`` as in CIFAR-10, else the only ``datasets.Image`` column); ``class_filter``
(``"label=3"``, ``"label=0,1"``; ``""``: every image) keeps the rows of some classes, before
``max_images`` and before decoding. Where a call passes ``""``, the environment variables
``TDPM_IMAGE_COLUMN`` and ``TDPM_CLASS_FILTER`` give the value, as ``TDPM_DATA`` does for the source.
``tdpmlib.workflow.sources`` describes both options.

Offline, ``datasets`` retries an unreachable hub for about 25 s before giving up. To fail within
seconds, ``load_images`` first opens one TCP connection to the hub endpoint (``HUB_PROBE_TIMEOUT_S``)
and reports the hub as unreachable if that fails. The probe is skipped when the hub's offline mode is
on (``HF_HUB_OFFLINE=1``, in which case ``datasets`` reads its local cache and fails at once when the
dataset is not there) and when an HTTP(S) proxy is configured (the probe would bypass it). A hub
dataset already in the local cache is therefore read offline by setting ``HF_HUB_OFFLINE=1``.

Preprocessing (every image, every source)
-----------------------------------------
1. Convert to RGB. Images with transparency (RGBA, LA, palette images with a transparent colour)
   are composited onto white, because the artworks sit on white backgrounds. Grey images (MNIST's
   ``L``, ``1``) get their one channel copied into all three; 16-bit grey (``I;16``, and ``I``) is
   first scaled to 8 bits (``x / 257``), and floating-point grey (``F``) is taken to lie in [0, 1]
   (``x * 255``), both rounded and clipped to 0..255.
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import sources
from .sources import HUB_PROBE_TIMEOUT_S, DataSourceError, _datasets  # noqa: F401  (part of this module's API)

DEFAULT_SOURCE = "huggan/pokemon"
"""The hub dataset the reproduced report trained on (7,357 images; offline here)."""

ENV_VAR = "TDPM_DATA"
"""Environment variable naming the data source when none is passed."""

IMAGE_COLUMN_ENV = "TDPM_IMAGE_COLUMN"
"""Environment variable naming the image column when ``image_column`` is ``""``."""

CLASS_FILTER_ENV = "TDPM_CLASS_FILTER"
"""Environment variable giving the class filter when ``class_filter`` is ``""``."""


# --------------------------------------------------------------------------------------------------
# Which source, which column, which classes
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


def resolve_image_column(image_column: str = "") -> str:
    """``image_column`` if non-empty, else ``$TDPM_IMAGE_COLUMN``, else ``""`` (auto-detect)."""
    if not isinstance(image_column, str):
        raise ValueError(f"image_column={image_column!r} is not allowed; use a column name ('' = auto-detect)")
    return image_column or os.environ.get(IMAGE_COLUMN_ENV, "")


def resolve_class_filter(class_filter: str = "") -> str:
    """``class_filter`` if non-empty, else ``$TDPM_CLASS_FILTER``, else ``""`` (every image), in its
    canonical spelling (``sources.canonical_class_filter``); a bad filter raises ``ValueError``."""
    if not isinstance(class_filter, str):
        raise ValueError(f"class_filter={class_filter!r} is not allowed; {sources.CLASS_FILTER_HELP}")
    text = class_filter or os.environ.get(CLASS_FILTER_ENV, "")
    try:
        return sources.canonical_class_filter(text)
    except ValueError:
        if class_filter:
            raise
        raise ValueError(f"class_filter={text!r} (from {CLASS_FILTER_ENV}) is not allowed; "
                         f"{sources.CLASS_FILTER_HELP}") from None


def fingerprint(source: str | os.PathLike | None = None, *, image_column: str = "", class_filter: str = "",
                preprocess: str = "book") -> str:
    """An identity of the data that does not depend on where it lies: a local file is named by its file
    name and the first 12 hex digits of its SHA-256, a folder by its name, a hub dataset by its id. Trained
    models record it, so a clone in another folder still recognises the committed networks.

    A non-empty ``image_column`` or ``class_filter`` (after ``resolve_image_column`` /
    ``resolve_class_filter``) is appended, e.g. ``"ylecun/mnist [class_filter=label=3]"``, and so is a
    ``preprocess`` other than "book"; with none of them, the string is what it has always been."""
    import hashlib

    src = resolve_source(source)
    options = [f"image_column={c}" for c in [resolve_image_column(image_column)] if c]
    options += [f"class_filter={f}" for f in [resolve_class_filter(class_filter)] if f]
    options += [f"preprocess={check_preprocess(preprocess)}"] if preprocess != "book" else []
    suffix = f" [{', '.join(options)}]" if options else ""
    path = Path(src).expanduser()
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"{path.name}:sha256:{h.hexdigest()[:12]}{suffix}"
    if path.is_dir():
        return f"{path.name}/{suffix}"
    return f"{src}{suffix}"


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
    image_column: str = "",
    class_filter: str = "",
    preprocess: str = "book",
) -> torch.Tensor:
    """Load a data source as a float32 tensor N×3×resolution×resolution with values in [-1, 1].

    ``source`` is resolved with ``resolve_source`` (argument, else ``$TDPM_DATA``, else the hub
    dataset ``DEFAULT_SOURCE``); see the module docstring for the source kinds and preprocessing.
    ``image_column`` names the image column (``""``: ``$TDPM_IMAGE_COLUMN``, else auto-detected) and
    ``class_filter`` (``"label=3"``, ``"label=0,1"``; ``""``: ``$TDPM_CLASS_FILTER``, else every image)
    keeps the rows of some classes; see ``tdpmlib.workflow.sources``. ``max_images`` then keeps the first
    ``max_images`` images (file / row order, deterministic). Both select rows before decoding, so
    that a small run stays fast. ``preprocess`` picks how an image becomes a square tensor (``PREPROCESS``).

    Raises ``ValueError`` for a missing path, a source without an image column (or without the one
    named), a bad or empty class filter, a source with no images, or an image that cannot be decoded
    (named in the message; images are never skipped). Raises ``DataSourceError`` (a ``ValueError``)
    when a hub dataset can't be loaded.

    Results are memoised within the process on (source, file size and modification time for local
    sources, resolution, max_images, image_column, class_filter); each call returns a fresh copy.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive int")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ValueError(f"max_images={max_images!r} must be None (all images) or an int >= 0")
    column, selection = resolve_image_column(image_column), resolve_class_filter(class_filter)
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
    return _load_cached(key, resolution, max_images, column, selection, check_preprocess(preprocess)).clone()


@functools.lru_cache(maxsize=4)
def _load_cached(key: tuple, resolution: int, max_images: int | None, image_column: str,
                 class_filter: str, preprocess_name: str = "book") -> torch.Tensor:
    source, _size, mtime = key
    options = dict(image_column=image_column, class_filter=class_filter)
    if mtime is None:
        items = sources._hub_items(source, **options)
    elif os.path.isdir(source):
        items = sources._folder_items(source, **options)
    elif source.lower().endswith(".parquet"):
        items = sources._parquet_items(source, **options)
    elif source.lower().endswith(".npz"):
        items = sources._npz_items(source, **options)
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
        out[i] = np.asarray(PREPROCESS[preprocess_name](img, resolution=resolution))
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images.to(torch.float32) / 127.5 - 1.0


def preprocess(img: Image.Image, *, resolution: int = 64) -> Image.Image:
    """RGB (transparency composited onto white, grey copied into all three channels), centre-cropped to a
    square, Lanczos-resized."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    elif img.mode == "I" or img.mode.startswith("I;16") or img.mode == "F":
        # Pillow's own conversion clips these to 0..255 instead of scaling (65535 -> 255, but 1000 -> 255 too)
        scale = 255.0 if img.mode == "F" else 1.0 / 257.0
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) * scale), 0, 255).astype(np.uint8)
        img = Image.fromarray(grey)  # a 2-D uint8 array is mode "L"
    img = img.convert("RGB")  # L and 1: the grey value in all three channels
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=None)
    return img


def preprocess_author(img: Image.Image, *, resolution: int = 64) -> Image.Image:
    """The author's ``DDPM.ipynb``: ``transforms.Resize((r, r))`` of ``img.convert("RGB")`` (no compositing of
    transparency, no crop: a non-square image is squashed; torchvision's bilinear resize with antialias)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    return TF.resize(img.convert("RGB"), [resolution, resolution], interpolation=InterpolationMode.BILINEAR,
                     antialias=True)


# How an image becomes a square RGB image of the resolution: the book's (default) or the author's.
PREPROCESS = {"book": preprocess, "author": preprocess_author}


def check_preprocess(name) -> str:
    if not isinstance(name, str) or name not in PREPROCESS:
        raise ValueError(f"preprocess={name!r} is not allowed; use one of {sorted(PREPROCESS)}")
    return name


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
