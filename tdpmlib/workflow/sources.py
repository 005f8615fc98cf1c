"""Source readers for ``tdpmlib.workflow.data``: which rows of a source are images, and how to open them.

Each reader returns a list of ``(label, opener)`` pairs: ``label`` names the image in error messages
(``row 3 (name='x')``, ``file 'a.png'``, ``images[3]``) and ``opener()`` returns a PIL image. Nothing is
decoded until an opener is called, so ``data.load_images`` can take the first ``max_images`` cheaply.

Two options select what is read; both are applied here, before any image is decoded:

* ``image_column``: the column that holds the images. ``""`` means auto: ``image`` if there is one,
  else ``img`` (CIFAR-10's name), else the only column of type ``datasets.Image``. An image folder's
  column is ``image``; for an ``.npz`` archive it names the array (default ``images``).
* ``class_filter``: ``""`` keeps every row; ``"COLUMN=V1,V2"`` (``"label=3"``, ``"label=0,1"``) keeps
  the rows whose value in ``COLUMN``, written with ``str()``, is one of the values, in their original
  order. For a ``datasets.ClassLabel`` column a value may also be a class name (``"label=cat"``).

A bad option raises one ``ValueError`` that names it, what was given and what the source allows.
This module imports nothing from the rest of ``tdpmlib``.
"""

from __future__ import annotations

import functools
import io
import urllib.parse

import numpy as np
from PIL import Image

HUB_PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for a TCP connection to the hub before calling it unreachable."""

AUTO_IMAGE_COLUMNS = ("image", "img")
"""Column names that ``image_column=""`` picks, in this order, before looking at column types."""

CLASS_FILTER_HELP = "use '' (every image) or 'COLUMN=V1,V2', e.g. 'label=3' or 'label=0,1'"

_LOCAL_HINT = (
    'Point at local data: pass data_source="path/to/images.parquet" (a parquet with an image column, '
    "an image folder, or an .npz with a uint8 `images` array), or set TDPM_DATA=path/to/images.parquet."
)


class DataSourceError(ValueError):
    """A hub dataset could not be loaded (offline, unknown id, ...); the message says what to do instead."""


# --------------------------------------------------------------------------------------------------
# The class filter
# --------------------------------------------------------------------------------------------------


def parse_class_filter(class_filter: str) -> tuple[str, tuple[str, ...]] | None:
    """``None`` for ``""``, else ``(column, values)`` of ``"COLUMN=V1,V2"`` (spaces around parts ignored).

    Raises ``ValueError`` naming ``class_filter`` for anything else (no ``=``, an empty column or value)."""
    if not isinstance(class_filter, str):
        raise ValueError(f"class_filter={class_filter!r} is not allowed; {CLASS_FILTER_HELP}")
    if not class_filter.strip():
        return None
    column, sep, rest = class_filter.partition("=")
    values = tuple(v.strip() for v in rest.split(","))
    if not sep or not column.strip() or not all(values):
        raise ValueError(f"class_filter={class_filter!r} is not allowed; {CLASS_FILTER_HELP}")
    return column.strip(), values


def canonical_class_filter(class_filter: str) -> str:
    """The filter in one spelling (``"label=3, 1,3"`` -> ``"label=1,3"``): the same rows, the same string."""
    parsed = parse_class_filter(class_filter)
    if parsed is None:
        return ""
    column, values = parsed
    return f"{column}={','.join(sorted(set(values)))}"


def _kept_rows(values: list, class_filter: str, where: str, *, names: list[str] | None = None) -> list[int]:
    """Indices of ``values`` (one column) that ``class_filter`` keeps; ``names``: a ClassLabel's class names."""
    column, wanted = parse_class_filter(class_filter)
    allowed = set(wanted)
    if names:
        allowed |= {str(names.index(v)) for v in wanted if v in names}
    kept = [i for i, v in enumerate(values) if str(v) in allowed]
    if not kept:
        seen = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
        shown = ", ".join(seen[:20]) + (", ..." if len(seen) > 20 else "")
        classes = f" (class names: {', '.join(names)})" if names else ""
        raise ValueError(
            f"class_filter={class_filter!r} keeps no image of {where}; column {column!r} holds the values "
            f"{shown or '(none)'}{classes}."
        )
    return kept


def _check_filter_column(class_filter: str, columns: list[str], where: str) -> str | None:
    """The filter's column, after checking that the source has it (``None`` when there is no filter)."""
    parsed = parse_class_filter(class_filter)
    if parsed is None:
        return None
    if parsed[0] not in columns:
        raise ValueError(
            f"class_filter={class_filter!r} is not allowed for {where}: it has no column {parsed[0]!r}; "
            f"the columns it can filter on are {columns}."
        )
    return parsed[0]


# --------------------------------------------------------------------------------------------------
# datasets.Dataset sources: parquet, image folder, hub
# --------------------------------------------------------------------------------------------------


def _image_column(ds, where: str, image_column: str) -> str:
    """The image column of ``ds``: ``image_column`` if given (it must exist), else auto-detected."""
    datasets = _datasets()
    columns = list(ds.column_names)
    if image_column:
        if image_column not in columns:
            raise ValueError(
                f"image_column={image_column!r} is not allowed for {where}: it has no such column; "
                f"its columns are {columns}."
            )
        return image_column
    for name in AUTO_IMAGE_COLUMNS:
        if name in columns:
            return name
    typed = [c for c in columns if isinstance(ds.features[c], datasets.Image)]
    if len(typed) == 1:
        return typed[0]
    found = f"several columns of type datasets.Image ({typed})" if typed else (
        "no column named 'image' or 'img' and none of type datasets.Image")
    raise ValueError(
        f"image_column='' (auto) found {found} in {where}; its columns are {columns}. "
        f"Name the image column with image_column=... (or TDPM_IMAGE_COLUMN=...)."
    )


def _dataset_items(ds, where: str, *, image_column: str = "", class_filter: str = "") -> list:
    """(label, opener) pairs for the image column of a ``datasets.Dataset``, after the class filter."""
    datasets = _datasets()
    column = _image_column(ds, where, image_column)
    try:
        ds = ds.cast_column(column, datasets.Image(decode=False))
    except Exception as err:
        raise ValueError(
            f"image_column={column!r} is not allowed for {where}: its column {column!r} (type "
            f"{ds.features[column]}) is not an image column ({err})."
        ) from None
    others = [c for c in ds.column_names if c != column]
    filter_column = _check_filter_column(class_filter, others, where)
    rows = list(range(len(ds)))
    if filter_column is not None:
        feature = ds.features[filter_column]
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        rows = _kept_rows(list(ds[filter_column]), class_filter, where, names=names)
        ds = ds.select(rows)
    cells = list(ds[column])
    names = list(ds["name"]) if "name" in others else [None] * len(cells)
    folder = where.startswith("image folder")
    items = []
    for i, cell, name in zip(rows, cells, names):
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


def _parquet_items(path: str, *, image_column: str = "", class_filter: str = "") -> list:
    datasets = _datasets()
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as err:
        raise ValueError(f"data_source={path!r} is not a readable parquet file ({err}).") from None
    if meta.num_rows == 0:
        raise ValueError(f"data_source={path!r} holds no images (the parquet file has 0 rows).")
    ds = datasets.load_dataset("parquet", data_files=path, split="train")
    return _dataset_items(ds, f"parquet file {path!r}", image_column=image_column, class_filter=class_filter)


def _folder_items(path: str, *, image_column: str = "", class_filter: str = "") -> list:
    datasets = _datasets()

    try:
        ds = datasets.load_dataset("imagefolder", data_dir=path, split="train")
    except Exception as err:  # e.g. EmptyDatasetError for a folder without image files
        raise ValueError(f"data_source={path!r} holds no images readable as an image folder ({err}).") from None
    return _dataset_items(ds, f"image folder {path!r}", image_column=image_column, class_filter=class_filter)


def _hub_items(source: str, *, image_column: str = "", class_filter: str = "") -> list:
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
            return _dataset_items(ds, f"hub dataset {source!r}", image_column=image_column, class_filter=class_filter)
    raise DataSourceError(
        f"could not load dataset {source!r} from the HuggingFace hub ({reason}). {_LOCAL_HINT}"
    ) from None


# --------------------------------------------------------------------------------------------------
# .npz archives
# --------------------------------------------------------------------------------------------------


def _npz_items(path: str, *, image_column: str = "", class_filter: str = "") -> list:
    """An archive's uint8 image array (``images`` unless ``image_column`` names another); ``class_filter``
    filters on another array of the archive with one value per image."""
    key = image_column or "images"
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = list(archive.files)
            if key not in files:
                named = f"image_column={image_column!r} is not allowed for" if image_column else "no `images` array in"
                raise ValueError(f"{named} .npz file {path!r}; it has the arrays {files}.")
            arr = archive[key]
            where = f".npz file {path!r}"
            filter_column = _check_filter_column(class_filter, [f for f in files if f != key], where)
            labels = archive[filter_column] if filter_column is not None else None
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"data_source={path!r} is not a readable .npz file ({err}).") from None
    if arr.dtype != np.uint8 or not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4))):
        raise ValueError(
            f".npz file {path!r}: `{key}` must be uint8 N×H×W×3, N×H×W×4 or N×H×W; "
            f"got {arr.dtype} with shape {arr.shape}."
        )
    rows = list(range(len(arr)))
    if labels is not None:
        if labels.shape != (len(arr),):
            raise ValueError(
                f"class_filter={class_filter!r} is not allowed for {where}: array {filter_column!r} has shape "
                f"{labels.shape}, not one value per image ({len(arr)},)."
            )
        rows = _kept_rows(labels.tolist(), class_filter, where)
    return [(f"{key}[{i}]", functools.partial(Image.fromarray, arr[i])) for i in rows]


# --------------------------------------------------------------------------------------------------
# Reachability probes
# --------------------------------------------------------------------------------------------------


from ..connectivity import proxy_configured, tcp_unreachable_reason  # noqa: E402


def _hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub can't be reached, or None if it can (or if we shouldn't probe; see ``data``'s docs)."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or proxy_configured():
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    return tcp_unreachable_reason(host, port, timeout=timeout)
