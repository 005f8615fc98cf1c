"""Tests for tdpmlib.workflow.data: sources, preprocessing, errors, split, augmentation and batch order.

The loader is tested on the shared Pokémon parquet when it is present (``$TDPM_DATA`` if that names a
parquet file, else ``<repo>/../shared/data/pokemon/train-128px.parquet``), and otherwise on a synthetic
parquet with the same schema that the tests write themselves.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tdpmlib.methods import ddpm_training
from tdpmlib.workflow import data, sources

SHARED_PARQUET = Path(__file__).resolve().parents[2] / "shared" / "data" / "pokemon" / "train-128px.parquet"
SHARED_ROWS = 819


def _shared_candidate() -> Path | None:
    env = os.environ.get("TDPM_DATA", "")
    path = Path(env) if env else SHARED_PARQUET
    return path if path.is_file() and path.suffix == ".parquet" else None


@pytest.fixture(scope="module")
def parquet_source(tmp_path_factory):
    """(path, expected row count or None): the shared Pokémon parquet, else a synthetic one."""
    shared = _shared_candidate()
    if shared is not None:
        yield shared, (SHARED_ROWS if shared.name == SHARED_PARQUET.name else None)
    else:
        path = data.write_synthetic_parquet(tmp_path_factory.mktemp("synthetic") / "synthetic.parquet", n=24, size=48)
        yield path, 24


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_parquet(path: Path, cells: list[bytes], names: list[str]) -> Path:
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    rows = {"image": [{"bytes": b, "path": None} for b in cells], "name": names}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


RED = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
GREEN = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)


# --------------------------------------------------------------------------------------------------
# Loading the real (or synthetic) parquet
# --------------------------------------------------------------------------------------------------


def test_loads_parquet_shape_range_and_white_background(parquet_source):
    path, expected_n = parquet_source
    x = data.load_images(path, resolution=64)
    assert x.dtype == torch.float32
    assert x.shape[1:] == (3, 64, 64)
    if expected_n is not None:
        assert x.shape[0] == expected_n
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.std() > 0.2  # real content, not a blank canvas
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]], dim=1)
    assert corners.mean() > 0.98
    assert (corners.amin(dim=(1, 2)) > 0.9).float().mean() > 0.95


def test_first_image_matches_a_direct_pil_pipeline(parquet_source):
    path, _ = parquet_source
    x = data.load_images(path, resolution=64, max_images=1)
    assert x.shape == (1, 3, 64, 64)
    cell = pq.read_table(path, columns=["image"]).column("image")[0].as_py()
    img = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
    side = min(img.size)
    img = img.crop(((img.width - side) // 2, (img.height - side) // 2, (img.width + side) // 2, (img.height + side) // 2))
    img = img.resize((64, 64), Image.Resampling.LANCZOS, reducing_gap=None)
    expected = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(x[0], expected, atol=1e-6, rtol=0)


def test_max_images_takes_the_first_rows(parquet_source):
    path, _ = parquet_source
    full = data.load_images(path, resolution=32)
    head = data.load_images(path, resolution=32, max_images=5)
    assert head.shape == (5, 3, 32, 32)
    torch.testing.assert_close(head, full[:5], atol=0, rtol=0)
    more = data.load_images(path, resolution=32, max_images=10**6)
    assert more.shape[0] == full.shape[0]


def test_results_are_copies_and_rewritten_files_are_reread(tmp_path):
    path = data.write_synthetic_parquet(tmp_path / "s.parquet", n=4, size=32, seed=0)
    first = data.load_images(path, resolution=16)
    first.zero_()
    again = data.load_images(path, resolution=16)
    assert again.abs().sum() > 0  # mutating a result does not touch the memoised tensor
    time.sleep(0.01)
    data.write_synthetic_parquet(path, n=6, size=32, seed=1)
    other = data.load_images(path, resolution=16)
    assert other.shape[0] == 6


def test_write_synthetic_parquet_has_the_shared_schema(tmp_path):
    path = data.write_synthetic_parquet(tmp_path / "syn.parquet", n=3, size=16, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.parquet"]  # no temporary file left
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.features == datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    assert len(ds) == 3 and ds[0]["image"].size == (16, 16)
    if SHARED_PARQUET.is_file():
        assert pq.read_schema(path).remove_metadata() == pq.read_schema(SHARED_PARQUET).remove_metadata()
    # Same seed, same bytes; another seed, other images.
    again = data.write_synthetic_parquet(tmp_path / "again.parquet", n=3, size=16, seed=5)
    other = data.write_synthetic_parquet(tmp_path / "other.parquet", n=3, size=16, seed=6)
    img = lambda p: pq.read_table(p).column("image").to_pylist()  # noqa: E731
    assert img(path) == img(again) and img(path) != img(other)


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def test_centre_crop_not_pad_or_squash(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :, 2] = 255  # blue
    wide[:, 20:40] = (255, 0, 0)  # red middle third
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    Image.fromarray(wide).save(folder / "a_wide.png")
    Image.fromarray(tall).save(folder / "b_tall.png")
    x = data.load_images(str(folder), resolution=8)
    assert x.shape == (2, 3, 8, 8)
    # A centre crop keeps only the red middle; padding would add white/black, squashing blue.
    torch.testing.assert_close(x, RED.expand(2, 3, 8, 8), atol=1e-6, rtol=0)


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = np.zeros((1, 16, 16, 4), np.uint8)  # transparent black everywhere ...
    rgba[0, 4:12, 4:12] = (0, 255, 0, 255)  # ... except an opaque green square
    np.savez(tmp_path / "rgba.npz", images=rgba)
    x = data.load_images(str(tmp_path / "rgba.npz"), resolution=16)[0]
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(x[:, 4:12, 4:12], GREEN.expand(3, 8, 8))
    assert (x[:, :4, :] == 1).all()

    # A palette PNG whose index 0 is transparent (black in the palette) also ends up white.
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (2, 2, 6, 6))
    folder = tmp_path / "pal"
    folder.mkdir()
    pal.save(folder / "p.png", transparency=0)
    y = data.load_images(str(folder), resolution=8)[0]
    torch.testing.assert_close(y[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(y[:, 2:6, 2:6], RED.expand(3, 4, 4))


# --------------------------------------------------------------------------------------------------
# Other sources
# --------------------------------------------------------------------------------------------------


def test_npz_source_rgb_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    x = data.load_images(str(tmp_path / "rgb.npz"), resolution=16)
    expected = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1  # same size: no resample
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)

    grey = rng.integers(0, 256, size=(2, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=grey)
    g = data.load_images(str(tmp_path / "grey.npz"), resolution=16)
    assert g.shape == (2, 3, 16, 16)
    torch.testing.assert_close(g[:, 0], torch.from_numpy(grey).float() / 127.5 - 1, atol=1e-6, rtol=0)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])


def test_npz_with_wrong_array_is_rejected(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        data.load_images(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "k.npz", pictures=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="pictures"):
        data.load_images(str(tmp_path / "k.npz"))


def test_image_folder_source(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colours):
        Image.new("RGB", (12, 12), c).save(folder / f"{i}.png")
    x = data.load_images(str(folder), resolution=4)
    assert x.shape == (3, 3, 4, 4)
    expected = torch.tensor(colours, dtype=torch.float32) / 127.5 - 1
    torch.testing.assert_close(x.mean(dim=(2, 3)), expected, atol=1e-5, rtol=0)


def test_tdpm_data_env_is_used_when_no_source(tmp_path, monkeypatch):
    path = data.write_synthetic_parquet(tmp_path / "env.parquet", n=5, size=16, seed=3)
    monkeypatch.setenv("TDPM_DATA", str(path))
    assert data.resolve_source() == str(path)
    assert data.resolve_source("other.parquet") == "other.parquet"
    assert data.resolve_source("") == str(path)
    x = data.load_images(resolution=16)
    assert x.shape == (5, 3, 16, 16)
    torch.testing.assert_close(x, data.load_images(str(path), resolution=16), atol=0, rtol=0)
    monkeypatch.setenv("TDPM_DATA", "")
    assert data.resolve_source() == data.DEFAULT_SOURCE == "huggan/pokemon"
    monkeypatch.delenv("TDPM_DATA")
    assert data.resolve_source() == "huggan/pokemon"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.parquet", "missing.npz", "missing_dir/sub/"])
def test_missing_path_is_a_value_error_naming_it(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(ValueError, match="data_source") as info:
        data.load_images(path)
    assert path.rstrip("/") in str(info.value) and "does not exist" in str(info.value)
    assert not isinstance(info.value, data.DataSourceError)


def test_parquet_without_image_column_names_its_columns(tmp_path):
    path = tmp_path / "noimg.parquet"
    pq.write_table(pa.table({"pixels": [1, 2], "label": ["a", "b"]}), path)
    with pytest.raises(ValueError, match="image") as info:
        data.load_images(str(path))
    assert "pixels" in str(info.value) and "label" in str(info.value) and "noimg.parquet" in str(info.value)


def test_empty_sources_are_rejected(tmp_path):
    empty = data.write_synthetic_parquet(tmp_path / "empty.parquet", n=0)
    with pytest.raises(ValueError, match="no images"):
        data.load_images(str(empty))
    some = data.write_synthetic_parquet(tmp_path / "some.parquet", n=2, size=16)
    with pytest.raises(ValueError, match="no images"):
        data.load_images(str(some), max_images=0)
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.load_images(str(folder))


def test_corrupt_parquet_row_is_named(tmp_path):
    good = _png(Image.new("RGB", (8, 8), "red"))
    path = _write_parquet(tmp_path / "bad.parquet", [good, good, b"not a png at all", good], ["a", "b", "broken-one", "d"])
    with pytest.raises(ValueError, match="row 2") as info:
        data.load_images(str(path))
    assert "broken-one" in str(info.value)
    # The rows before it load fine: the failure is the bad row, not the file.
    assert data.load_images(str(path), max_images=2, resolution=8).shape == (2, 3, 8, 8)


def test_truncated_image_is_not_skipped(tmp_path):
    png = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    path = _write_parquet(tmp_path / "trunc.parquet", [png, png[: len(png) // 2]], ["ok", "cut"])
    with pytest.raises(ValueError, match=r"row 1 \(name='cut'\)"):
        data.load_images(str(path))


def test_corrupt_file_in_image_folder_is_named(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), "blue").save(folder / "fine.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ValueError, match="broken.png"):
        data.load_images(str(folder))


@pytest.mark.timeout(60)
def test_unreachable_hub_dataset_fails_fast_with_a_hint():
    # A hub id that exists nowhere: offline the probe fails; online the hub answers 404. Either
    # way the error is one DataSourceError, without a chained traceback, well within a minute.
    start = time.monotonic()
    with pytest.raises(data.DataSourceError, match="TDPM_DATA") as info:
        data.load_images("tdpmlib-tests/no-such-dataset-0")
    assert time.monotonic() - start < 60
    assert isinstance(info.value, ValueError)
    assert "tdpmlib-tests/no-such-dataset-0" in str(info.value) and "data_source=" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hub_errors_from_load_dataset_are_wrapped(monkeypatch):
    def boom(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)\nsecond line")

    monkeypatch.setattr(sources, "_hub_unreachable_reason", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(data.DataSourceError) as info:
        data.load_images("x/y")
    message = str(info.value)
    assert message.startswith("could not load dataset 'x/y' from the HuggingFace hub (ConnectionError: Couldn't reach")
    assert "second line" not in message and "TDPM_DATA" in message


def test_unreachable_probe_short_circuits_load_dataset(monkeypatch):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(sources, "_hub_unreachable_reason", lambda *a, **k: "probe says no")
    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    with pytest.raises(data.DataSourceError, match=r"\(probe says no\)"):
        data.load_images("huggan/pokemon")


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        data.load_images("x.parquet", resolution=0)
    with pytest.raises(ValueError, match="max_images"):
        data.load_images("x.parquet", max_images=-1)


# --------------------------------------------------------------------------------------------------
# Other datasets: CIFAR-10, MNIST and CelebA-HQ schemas, the image column and the class filter
# --------------------------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird"]
CIFAR_COLOURS = [(10 * i, 255 - 20 * i, 7 * i + 3) for i in range(9)]
CIFAR_LABELS = [i % 3 for i in range(9)]


def _unit(colour) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32) / 127.5 - 1


@pytest.fixture
def cifar_parquet(tmp_path):
    """CIFAR-10's hub schema: ``img`` (32x32 RGB PNG, here solid colours) and a ClassLabel ``label``."""
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR_NAMES)})
    cells = [{"bytes": _png(Image.new("RGB", (32, 32), c)), "path": None} for c in CIFAR_COLOURS]
    path = tmp_path / "cifar.parquet"
    datasets.Dataset.from_dict({"img": cells, "label": CIFAR_LABELS}, features=features).to_parquet(str(path))
    return path


def test_cifar_schema_img_column_is_detected(cifar_parquet):
    x = data.load_images(cifar_parquet, resolution=16)
    assert x.shape == (9, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # a solid colour stays exactly that colour through crop, resize and scaling
    expected = torch.stack([_unit(c) for c in CIFAR_COLOURS]).view(9, 3, 1, 1).expand(9, 3, 16, 16)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(data.load_images(cifar_parquet, resolution=16, image_column="img"), x, atol=0, rtol=0)


def test_class_filter_keeps_exactly_those_rows_in_order(cifar_parquet):
    full = data.load_images(cifar_parquet, resolution=8)
    one = data.load_images(cifar_parquet, resolution=8, class_filter="label=1")
    torch.testing.assert_close(one, full[[1, 4, 7]], atol=0, rtol=0)
    # ClassLabel names and indices are interchangeable; order and spaces in the filter do not matter
    two = data.load_images(cifar_parquet, resolution=8, class_filter="label= bird, automobile")
    torch.testing.assert_close(two, full[[1, 2, 4, 5, 7, 8]], atol=0, rtol=0)
    torch.testing.assert_close(data.load_images(cifar_parquet, resolution=8, class_filter="label=1,2"), two, atol=0, rtol=0)
    # the filter comes before max_images, and the memo does not confuse filtered and unfiltered loads
    head = data.load_images(cifar_parquet, resolution=8, class_filter="label=1", max_images=2)
    torch.testing.assert_close(head, full[[1, 4]], atol=0, rtol=0)
    assert data.load_images(cifar_parquet, resolution=8).shape[0] == 9


def test_class_filter_selects_before_decoding(tmp_path):
    good = _png(Image.new("RGB", (8, 8), (0, 0, 255)))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"image": [{"bytes": b, "path": None} for b in (good, b"not an image", good)], "label": [0, 1, 0]}
    path = tmp_path / "one-bad.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    with pytest.raises(ValueError, match="row 1"):
        data.load_images(str(path), resolution=4)
    x = data.load_images(str(path), resolution=4, class_filter="label=0")  # the broken row is never opened
    torch.testing.assert_close(x, _unit((0, 0, 255)).view(1, 3, 1, 1).expand(2, 3, 4, 4), atol=1e-6, rtol=0)


def test_errors_name_the_option_and_what_is_allowed(cifar_parquet):
    with pytest.raises(ValueError, match=r"image_column='image' is not allowed") as info:
        data.load_images(cifar_parquet, resolution=8, image_column="image")
    assert "['img', 'label']" in str(info.value) and "cifar.parquet" in str(info.value)
    with pytest.raises(ValueError, match=r"class_filter='label=7' keeps no image") as info:
        data.load_images(cifar_parquet, resolution=8, class_filter="label=7")
    assert "0, 1, 2" in str(info.value) and "airplane, automobile, bird" in str(info.value)
    with pytest.raises(ValueError, match=r"class_filter='colour=1' is not allowed") as info:
        data.load_images(cifar_parquet, resolution=8, class_filter="colour=1")
    assert "no column 'colour'" in str(info.value) and "['label']" in str(info.value)
    for bad in ("label", "=3", "label=", "label=1,,2"):
        with pytest.raises(ValueError, match=rf"class_filter={bad!r} is not allowed; use '' \(every image\) or 'COLUMN=V1,V2'"):
            data.load_images(cifar_parquet, resolution=8, class_filter=bad)
    with pytest.raises(ValueError, match=r"image_column=3 is not allowed"):
        data.load_images(cifar_parquet, resolution=8, image_column=3)


def test_env_variables_give_the_defaults(cifar_parquet, monkeypatch):
    monkeypatch.setenv("TDPM_CLASS_FILTER", "label=2")
    x = data.load_images(cifar_parquet, resolution=4)
    torch.testing.assert_close(x.mean(dim=(2, 3)), torch.stack([_unit(CIFAR_COLOURS[i]) for i in (2, 5, 8)]),
                               atol=1e-6, rtol=0)
    assert data.load_images(cifar_parquet, resolution=4, class_filter="label=0").shape[0] == 3  # the argument wins
    monkeypatch.setenv("TDPM_IMAGE_COLUMN", "label")
    with pytest.raises(ValueError, match=r"image_column='label'"):
        data.load_images(cifar_parquet, resolution=4)
    monkeypatch.setenv("TDPM_CLASS_FILTER", "label")
    with pytest.raises(ValueError, match=r"class_filter='label' \(from TDPM_CLASS_FILTER\) is not allowed"):
        data.load_images(cifar_parquet, resolution=4, image_column="img")


def test_mnist_schema_grey_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    greys = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(6)]
    labels = [3, 1, 3, 0, 2, 3]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    cells = [{"bytes": _png(Image.fromarray(g)), "path": None} for g in greys]
    assert Image.open(io.BytesIO(cells[0]["bytes"])).mode == "L"
    path = tmp_path / "mnist.parquet"
    datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features).to_parquet(str(path))
    x = data.load_images(str(path), resolution=28)  # the native size: no resampling
    assert x.shape == (6, 3, 28, 28)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(np.stack(greys)).float() / 127.5 - 1, atol=1e-6, rtol=0)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    threes = data.load_images(str(path), resolution=28, class_filter="label=3")
    torch.testing.assert_close(threes, x[[0, 2, 5]], atol=0, rtol=0)
    up = data.load_images(str(path), resolution=32, class_filter="label=3")  # MNIST upscaled to the cpu profile
    assert up.shape == (3, 3, 32, 32) and up.min() >= -1 and up.max() <= 1
    assert torch.equal(up[:, 0], up[:, 2]) and up.std() > 0.3


@pytest.mark.parametrize("mode, values, expected", [
    ("L", np.array([[0, 100, 255]], np.uint8), [0, 100, 255]),
    ("1", np.array([[True, False, True]]), [255, 0, 255]),
    ("I;16", np.array([[0, 257 * 100, 65535]], np.uint16), [0, 100, 255]),
    ("I", np.array([[0, 1000, 65535]], np.int32), [0, 4, 255]),  # 1000 / 257 = 3.9; Pillow alone clips to 255
    ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
])
def test_preprocess_scales_every_grey_mode(mode, values, expected):
    img = Image.fromarray(values)
    assert img.mode == mode
    out = np.asarray(data.preprocess(img.resize((3, 3), Image.Resampling.NEAREST), resolution=3))
    assert out.shape == (3, 3, 3)
    assert out[0, :, 0].tolist() == expected and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sixteen_bit_png_in_a_parquet(tmp_path):
    grey = np.full((8, 8), 257 * 200, np.uint16)
    path = _write_parquet(tmp_path / "g16.parquet", [_png(Image.fromarray(grey))], ["g16"])
    x = data.load_images(str(path), resolution=8)
    torch.testing.assert_close(x, torch.full((1, 3, 8, 8), 200 / 127.5 - 1), atol=1e-6, rtol=0)


def test_celeba_hq_schema_with_extra_columns(tmp_path):
    def face(colour):  # a wide JPEG: the centre square is `colour`, the sides are black
        arr = np.zeros((64, 96, 3), np.uint8)
        arr[:, 16:80] = colour
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        return {"bytes": buf.getvalue(), "path": None}

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["female", "male"]),
                                  "celeb_id": datasets.Value("int64"), "caption": datasets.Value("string")})
    rows = {"image": [face(c) for c in colours], "label": [1, 0, 1, 0], "celeb_id": [7, 3, 11, 3],
            "caption": ["a", "b", "c", "d"]}
    path = tmp_path / "celeba.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    x = data.load_images(str(path), resolution=16)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    centre = x[:, :, 4:12, 4:12].mean(dim=(2, 3))  # JPEG is lossy: close to the colour, not equal
    torch.testing.assert_close(centre, torch.stack([_unit(c) for c in colours]), atol=0.05, rtol=0)
    assert x[:, :, :, 0].mean() > -0.5  # the black sides were cropped away, not squashed in
    males = data.load_images(str(path), resolution=16, class_filter="label=male")
    torch.testing.assert_close(males, x[[0, 2]], atol=0, rtol=0)
    ids = data.load_images(str(path), resolution=16, class_filter="celeb_id=11,3")
    torch.testing.assert_close(ids, x[[1, 2, 3]], atol=0, rtol=0)


def test_image_column_auto_detection_by_type(tmp_path):
    red = {"bytes": _png(Image.new("RGB", (4, 4), (255, 0, 0))), "path": None}
    green = {"bytes": _png(Image.new("RGB", (4, 4), (0, 255, 0))), "path": None}
    one = datasets.Features({"picture": datasets.Image(), "id": datasets.Value("int64")})
    datasets.Dataset.from_dict({"picture": [red], "id": [0]}, features=one).to_parquet(str(tmp_path / "one.parquet"))
    torch.testing.assert_close(data.load_images(str(tmp_path / "one.parquet"), resolution=4)[0], RED.expand(3, 4, 4))
    two = datasets.Features({"face": datasets.Image(), "mask": datasets.Image()})
    datasets.Dataset.from_dict({"face": [red], "mask": [green]}, features=two).to_parquet(str(tmp_path / "two.parquet"))
    with pytest.raises(ValueError, match=r"image_column='' \(auto\) found several columns") as info:
        data.load_images(str(tmp_path / "two.parquet"), resolution=4)
    assert "['face', 'mask']" in str(info.value) and "two.parquet" in str(info.value)
    mask = data.load_images(str(tmp_path / "two.parquet"), resolution=4, image_column="mask")
    torch.testing.assert_close(mask[0], GREEN.expand(3, 4, 4))


def test_class_filter_on_an_image_folder_and_an_npz(tmp_path):
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (6, 6), colour).save(tmp_path / "pets" / cls / f"{i}.png")
    dogs = data.load_images(str(tmp_path / "pets"), resolution=4, class_filter="label=dog")
    torch.testing.assert_close(dogs, GREEN.expand(2, 3, 4, 4), atol=1e-6, rtol=0)
    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 50, 100, 150)])
    np.savez(tmp_path / "a.npz", images=images, label=np.array([5, 6, 5, 6]))
    fives = data.load_images(str(tmp_path / "a.npz"), resolution=4, class_filter="label=5")
    torch.testing.assert_close(fives[:, 0, 0, 0], torch.tensor([0, 100]) / 127.5 - 1, atol=1e-6, rtol=0)


def test_fingerprint_names_the_options_and_is_unchanged_without_them(cifar_parquet, monkeypatch):
    import hashlib

    monkeypatch.delenv("TDPM_IMAGE_COLUMN", raising=False)
    monkeypatch.delenv("TDPM_CLASS_FILTER", raising=False)
    plain = f"cifar.parquet:sha256:{hashlib.sha256(cifar_parquet.read_bytes()).hexdigest()[:12]}"
    assert data.fingerprint(cifar_parquet) == plain
    assert data.fingerprint(cifar_parquet, image_column="", class_filter="") == plain
    assert data.fingerprint(cifar_parquet, image_column="img") == plain + " [image_column=img]"
    assert data.fingerprint(cifar_parquet, class_filter="label=3, 1") == plain + " [class_filter=label=1,3]"
    assert data.fingerprint("ylecun/mnist", image_column="image", class_filter="label=3") == (
        "ylecun/mnist [image_column=image, class_filter=label=3]")
    assert data.fingerprint("ylecun/mnist") == "ylecun/mnist"
    monkeypatch.setenv("TDPM_CLASS_FILTER", "label=3")
    assert data.fingerprint("ylecun/mnist") == "ylecun/mnist [class_filter=label=3]"
    if SHARED_PARQUET.is_file():  # committed results embed this string
        assert data.fingerprint(SHARED_PARQUET, class_filter="") != data.fingerprint(SHARED_PARQUET, class_filter="a=1")
        monkeypatch.delenv("TDPM_CLASS_FILTER")
        assert data.fingerprint(SHARED_PARQUET) == "train-128px.parquet:sha256:e76d645c3225"


# --------------------------------------------------------------------------------------------------
# Split, flip, batches
# --------------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    images = torch.arange(819, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    train, held = data.split(images, held_out=0.1, seed=0)
    train2, held2 = data.split(images, held_out=0.1, seed=0)
    assert torch.equal(train, train2) and torch.equal(held, held2)
    assert (len(train), len(held)) == (737, 82)
    ids_train, ids_held = train[:, 0, 0, 0].long(), held[:, 0, 0, 0].long()
    assert set(ids_train.tolist()).isdisjoint(ids_held.tolist())
    assert sorted(ids_train.tolist() + ids_held.tolist()) == list(range(819))
    _, held_other = data.split(images, held_out=0.1, seed=1)
    assert not torch.equal(held, held_other)
    _, held_count = data.split(images, held_out=5, seed=0)
    assert held_count.shape == (5, 3, 2, 2)
    assert len(data.split(images[:4], held_out=0.1)[1]) == 1  # a fraction holds out at least one


@pytest.mark.parametrize("held_out", [0, 0.0, 1.0, -0.1, 1.5, -1, 10, 11, True, "0.1", None])
def test_split_rejects_bad_held_out(held_out):
    with pytest.raises(ValueError, match="held_out"):
        data.split(torch.zeros(10, 3, 2, 2), held_out=held_out)


def test_split_needs_two_images():
    with pytest.raises(ValueError, match="held_out"):
        data.split(torch.zeros(1, 3, 2, 2), held_out=0.5)


def test_random_hflip_flips_about_half_reproducibly():
    batch = torch.randn(64, 3, 4, 5)
    out = ddpm_training.random_hflip(batch, torch.Generator().manual_seed(0))
    again = ddpm_training.random_hflip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    flipped = torch.tensor([torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)])
    kept = torch.tensor([torch.equal(o, b) for o, b in zip(out, batch)])
    assert (flipped ^ kept).all()  # each image is either flipped or untouched
    assert 16 < flipped.sum() < 48
    expected = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(flipped, expected)


def test_batches_cover_every_index_once_and_depend_only_on_seed_and_epoch():
    state = torch.random.get_rng_state()
    b0 = ddpm_training.batches(10, 4, seed=0, epoch=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert [len(b) for b in b0] == [4, 4, 2]  # last partial batch kept
    assert sorted(torch.cat(b0).tolist()) == list(range(10))
    assert all(b.dtype == torch.int64 for b in b0)
    torch.manual_seed(123)
    assert all(torch.equal(a, b) for a, b in zip(b0, ddpm_training.batches(10, 4, seed=0, epoch=0)))
    b1 = ddpm_training.batches(10, 4, seed=0, epoch=1)
    assert not torch.equal(torch.cat(b0), torch.cat(b1))
    assert not torch.equal(torch.cat(b0), torch.cat(ddpm_training.batches(10, 4, seed=1, epoch=0)))
    big = ddpm_training.batches(819, 64, seed=7, epoch=3)
    assert len(big) == 13 and sorted(torch.cat(big).tolist()) == list(range(819))
    expected = torch.randperm(819, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))
    assert torch.equal(torch.cat(big), expected)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(batch_size=0), dict(seed=-1), dict(epoch=-1), dict(epoch=1.0)])
def test_batches_reject_bad_arguments(kwargs):
    args = dict(n=10, batch_size=4, seed=0, epoch=0) | kwargs
    with pytest.raises(ValueError):
        ddpm_training.batches(args.pop("n"), args.pop("batch_size"), **args)


def test_author_preprocess_is_torchvision_resize_of_convert_rgb():
    """The author's DDPM.ipynb: Resize((r, r)) of convert("RGB"): a non-square image is squashed, not cropped, and
    transparency is dropped, not composited on white (the book's preprocess does both differently)."""
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 60, 4), dtype=np.uint8), "RGBA")
    want = transforms.Resize((16, 16))(rgba.convert("RGB"))
    got = data.PREPROCESS["author"](rgba, resolution=16)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(data.PREPROCESS["book"](rgba, resolution=16)))
    with pytest.raises(ValueError, match="preprocess='x' is not allowed"):
        data.check_preprocess("x")
