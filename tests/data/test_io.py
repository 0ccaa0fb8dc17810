"""retinaseg.data.io: every format and quirk the datasets ship, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.data.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    binarise_mask,
    probe_image,
    read_image,
    read_mask,
)


def _rgb(h: int = 12, w: int = 10) -> np.ndarray:
    """A small RGB image with distinct values per pixel and channel."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _four_colour(h: int = 12, w: int = 10) -> np.ndarray:
    """An RGB image with four colours (exact through a GIF palette)."""
    colours = np.array([[0, 0, 0], [200, 80, 30], [250, 220, 150], [90, 20, 10]], np.uint8)
    idx = (np.arange(h * w).reshape(h, w) // 7) % 4
    return colours[idx]


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".png", "PNG"), (".tif", "TIFF"), (".bmp", "BMP"), (".ppm", "PPM")]
)
def test_lossless_rgb_formats_round_trip(tmp_path, suffix, fmt):
    rgb = _rgb()
    path = tmp_path / f"x{suffix}"
    Image.fromarray(rgb).save(path, format=fmt)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out, rgb)
    info = probe_image(path)
    assert info == {"width": 10, "height": 12, "channels": 3, "dtype": "uint8", "mode": "RGB", "format": fmt}


def test_jpeg_is_read_close_to_the_original(tmp_path):
    rgb = np.full((16, 16, 3), (180, 90, 40), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 3


def test_palette_gif_image_expands_through_the_palette(tmp_path):
    rgb = _four_colour()
    Image.fromarray(rgb).quantize(colors=4).save(tmp_path / "x.gif")
    assert Image.open(tmp_path / "x.gif").mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "x.gif"), rgb)
    assert probe_image(tmp_path / "x.gif")["channels"] == 1


def test_rgba_drops_alpha(tmp_path):
    rgb = _rgb()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), rgb)
    assert probe_image(tmp_path / "x.png")["channels"] == 4
    assert probe_image(tmp_path / "x.png")["mode"] == "RGBA"


def test_greyscale_becomes_three_equal_channels(tmp_path):
    grey = np.arange(120, dtype=np.uint8).reshape(12, 10) * 2
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)


def test_greyscale_jpeg(tmp_path):
    grey = np.full((16, 16), 128, np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    assert Image.open(tmp_path / "g.jpg").mode == "L"
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (16, 16, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert abs(int(out[0, 0, 0]) - 128) <= 2
    assert probe_image(tmp_path / "g.jpg")["channels"] == 1


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values8 = np.array([[0, 1, 127], [128, 254, 255]], np.uint16)
    Image.fromarray(values8 * 257).save(tmp_path / "w.png")  # 257 * v is v scaled to 16 bits exactly
    assert probe_image(tmp_path / "w.png")["dtype"] == "uint16"
    np.testing.assert_array_equal(read_mask(tmp_path / "w.png"), values8.astype(np.uint8))
    np.testing.assert_array_equal(read_image(tmp_path / "w.png")[..., 1], values8.astype(np.uint8))
    # values in between round to the nearest 8-bit level: 300/257 = 1.17 -> 1, 65000/257 = 252.9 -> 253
    Image.fromarray(np.array([[300, 65000]], np.uint16)).save(tmp_path / "r.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "r.png"), [[1, 253]])


def test_palette_gif_mask_goes_through_its_palette(tmp_path):
    # the DRIVE quirk: palette indices 0/1 whose colours are grey 0 and 251
    idx = np.zeros((8, 8), np.uint8)
    idx[2:5, 3] = 1
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 251, 251, 251] + [0, 0, 0] * 254)
    im.save(tmp_path / "m.gif")
    assert Image.open(tmp_path / "m.gif").mode == "P"
    mask = read_mask(tmp_path / "m.gif")
    assert mask.shape == (8, 8)
    assert set(np.unique(mask)) == {0, 251}
    np.testing.assert_array_equal(binarise_mask(mask), idx)


def test_rgb_mask_becomes_luminance(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[0, 1] = (255, 0, 0)  # ITU-R 601: 0.299 * 255 = 76.2
    Image.fromarray(rgb).save(tmp_path / "m.ppm")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.ppm"), [[255, 76], [0, 0]])


def test_binarise_mask_threshold_is_127():
    mask = np.array([[0, 1, 127, 128], [200, 251, 253, 255]], np.uint8)
    np.testing.assert_array_equal(binarise_mask(mask), [[0, 0, 0, 1], [1, 1, 1, 1]])
    assert binarise_mask(mask).dtype == np.uint8


def test_binarise_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match="H×W"):
        binarise_mask(np.zeros((2, 2, 2, 2), np.uint8))


@pytest.mark.drive
def test_real_drive_gifs_both_modes(drive_root):
    l_mode = drive_root / "training" / "1st_manual" / "21_manual1.gif"
    p_mode = drive_root / "test" / "2nd_manual" / "01_manual2.gif"
    assert Image.open(l_mode).mode == "L" and Image.open(p_mode).mode == "P"
    m1 = read_mask(l_mode)
    assert m1.shape == (584, 565) and set(np.unique(m1)) == {0, 255}
    m2 = read_mask(p_mode)
    # palette indices 0/1 are stored; their palette colours are what we read
    assert set(np.unique(m2)) == {3, 253}
    assert set(np.unique(binarise_mask(m2))) == {0, 1}
    fov = read_mask(drive_root / "test" / "mask" / "01_test_mask.gif")
    assert set(np.unique(binarise_mask(fov))) == {0, 1}
    image = read_image(drive_root / "test" / "images" / "01_test.tif")
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    assert probe_image(drive_root / "test" / "images" / "01_test.tif") == {
        "width": 565,
        "height": 584,
        "channels": 3,
        "dtype": "uint8",
        "mode": "RGB",
        "format": "TIFF",
    }


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_file_is_reported(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    _truncate(path)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError) as info:
            reader(path)
        assert info.value.reason.startswith("truncated or corrupt image data")
        assert info.value.path == path
        assert str(info.value).startswith(f"{path}: truncated")


def test_probe_reads_the_header_of_a_truncated_png(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.zeros((30, 20, 3), np.uint8) + 9).save(path)
    _truncate(path, 0.6)
    assert probe_image(path)["width"] == 20  # header only: truncation is read_image's job


@pytest.mark.parametrize("reader", [read_image, read_mask, probe_image])
def test_empty_file(tmp_path, reader):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file$"):
        reader(path)


@pytest.mark.parametrize("reader", [read_image, read_mask, probe_image])
def test_text_file_is_not_an_image(tmp_path, reader):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as info:
        reader(path)
    assert info.value.reason == "not an image (unrecognised format)"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_image_read_error_is_a_value_error_naming_the_file():
    err = ImageReadError("a/b.png", "empty file")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.png: empty file"
    assert err.path == Path("a/b.png") and err.reason == "empty file"


def test_suffixes():
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".bmp"}
