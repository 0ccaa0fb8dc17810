"""`retinaseg predict` and the input checks shared with the pyfunc model and the web demo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.cli import main as cli_main
from retinaseg.data.io import ImageReadError
from retinaseg.inference.files import predict_paths
from retinaseg.inference.inputs import (
    MAX_PIXELS,
    decode_image_bytes,
    read_upload,
    validate_image_bytes,
    validate_input_file,
)
from tests.serving.helpers import png_bytes, png_header_only, toy_fundus

GOOD_SIZES = {"eye_a": (37, 53), "eye_b": (64, 45), "eye_c": (101, 80)}  # stem -> (H, W), odd sizes


def folder_digest(folder: Path) -> dict[str, str]:
    """name -> sha256 of every entry in a folder (to prove it was not touched)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Three good images of odd sizes plus a corrupt PNG, an empty file and a text file named .png."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, (stem, (h, w)) in enumerate(GOOD_SIZES.items()):
        image, _ = toy_fundus(i, h, w)
        (folder / f"{stem}.png").write_bytes(png_bytes(image))
    whole = png_bytes(toy_fundus(9, 60, 60)[0])
    (folder / "corrupt.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("these are my notes, not an image\n")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return folder


# ---------------------------------------------------------------------------------------------
# checks before decoding
# ---------------------------------------------------------------------------------------------


def test_oversized_png_header_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError) as info:
        validate_input_file(path)
    # the reason is the pixel count, not "truncated": no decoding was attempted
    assert info.value.path == path
    assert "pixels" in info.value.reason and "truncated" not in info.value.reason
    assert str(path) in str(info.value)
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    with pytest.raises(ImageReadError, match="pixels"):
        validate_image_bytes(path.read_bytes(), name="bomb.png")


def test_pixel_limit_counts_width_times_height(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(png_header_only(70, 50))  # header only: 3,500 pixels
    with pytest.raises(ImageReadError, match=r"70x50 = 3,500 pixels; the limit is 3,499"):
        validate_input_file(path, max_pixels=3_499)
    info = validate_input_file(path, max_pixels=3_500)
    assert (info.width, info.height, info.format) == (70, 50, "PNG")


def test_type_is_read_from_content_not_suffix(tmp_path):
    text = tmp_path / "fake.png"
    text.write_text("hello")
    with pytest.raises(ImageReadError, match="not an image"):
        validate_input_file(text)
    disguised = tmp_path / "really_a_png.jpg"
    disguised.write_bytes(png_bytes(toy_fundus(0, 20, 30)[0]))
    info = validate_input_file(disguised)
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        validate_input_file(empty)


def test_byte_limit(tmp_path):
    data = png_bytes(toy_fundus(0, 20, 20)[0])
    with pytest.raises(ImageReadError, match="limit is"):
        validate_image_bytes(data, name="x.png", max_bytes=len(data) - 1)


def test_upload_accepts_png_jpeg_tiff_only():
    image = toy_fundus(3, 24, 32)[0]
    for fmt in ("PNG", "JPEG", "TIFF"):
        buf = __import__("io").BytesIO()
        Image.fromarray(image).save(buf, format=fmt)
        decoded = read_upload(buf.getvalue(), f"eye.{fmt.lower()}")
        assert decoded.shape == (24, 32, 3) and decoded.dtype == np.uint8
    buf = __import__("io").BytesIO()
    Image.fromarray(image).save(buf, format="BMP")
    with pytest.raises(ImageReadError, match="BMP images are not accepted"):
        read_upload(buf.getvalue(), "eye.bmp")
    # ... while the CLI/pyfunc decoder reads every format we support
    assert decode_image_bytes(buf.getvalue(), "eye.bmp").shape == (24, 32, 3)


def test_truncated_bytes_name_the_upload():
    data = png_bytes(toy_fundus(1, 40, 40)[0])
    with pytest.raises(ImageReadError) as info:
        decode_image_bytes(data[: len(data) // 2], name="half.png")
    assert str(info.value).startswith("half.png: ") and "truncated" in info.value.reason


# ---------------------------------------------------------------------------------------------
# retinaseg predict
# ---------------------------------------------------------------------------------------------


def test_predict_folder_with_bad_files(mixed_folder, tiny_model_dir, tmp_path, capsys):
    before = folder_digest(mixed_folder)
    out = tmp_path / "out"
    code = cli_main(
        ["predict", str(mixed_folder), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert folder_digest(mixed_folder) == before  # inputs untouched, nothing written beside them
    for stem, (h, w) in GOOD_SIZES.items():
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        prob = np.asarray(Image.open(out / f"{stem}_prob.png"))
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert mask.shape == (h, w) and prob.shape == (h, w) and overlay.shape == (h, w, 3)
        assert set(np.unique(mask)) <= {0, 255}
        # mask = prob >= threshold (0.5 from the model card), up to the 1/255 quantisation of prob
        assert np.all(mask[prob >= 129] == 255) and np.all(mask[prob <= 126] == 0)
    for bad, reason in (
        ("corrupt.png", "truncated"),
        ("empty.png", "empty file"),
        ("notes.png", "not an image"),
    ):
        line = next((ln for ln in err.splitlines() if bad in ln), "")
        assert reason in line, f"no error line for {bad}: {err}"
        assert not list(out.glob(f"{Path(bad).stem}_*"))
    assert "readme" not in err  # not an image suffix: not an input
    report = json.loads((out / "predict_report.json").read_text())
    assert (report["n_ok"], report["n_failed"], report["threshold"]) == (3, 3, 0.5)
    assert sorted(Path(e["input"]).name for e in report["errors"]) == [
        "corrupt.png",
        "empty.png",
        "notes.png",
    ]
    assert not list(out.glob(".*.tmp*"))  # no temporary files left behind


def test_predict_all_good_exits_zero_and_honours_threshold(tiny_model_dir, tmp_path):
    image, _ = toy_fundus(5, 48, 52)
    path = tmp_path / "in" / "one.png"
    path.parent.mkdir()
    path.write_bytes(png_bytes(image))
    out = tmp_path / "out"
    assert (
        cli_main(["predict", str(path), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu"])
        == 0
    )
    low = predict_paths([path], tiny_model_dir, tmp_path / "low", threshold=0.0, device="cpu")
    assert low["threshold"] == 0.0 and low["outputs"][0]["vessel_fraction"] == 1.0
    high = predict_paths([path], tiny_model_dir, tmp_path / "high", threshold=1.0, device="cpu")
    assert high["outputs"][0]["vessel_fraction"] < 1.0


def test_predict_refuses_output_in_input_folder(mixed_folder, tiny_model_dir, capsys):
    before = folder_digest(mixed_folder)
    code = cli_main(
        ["predict", str(mixed_folder), "--model", str(tiny_model_dir), "--out", str(mixed_folder)]
    )
    assert code == 2
    assert "is the input folder" in capsys.readouterr().err
    assert folder_digest(mixed_folder) == before


def test_predict_bad_model_is_a_clear_error(mixed_folder, tmp_path, capsys):
    code = cli_main(
        ["predict", str(mixed_folder), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "not a model directory or MLflow URI" in capsys.readouterr().err


def test_tta_output_shape_and_batching(tiny_model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"a": (33, 47), "b": (50, 41), "c": (33, 47)}
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        (folder / f"{stem}.png").write_bytes(png_bytes(toy_fundus(i, h, w)[0]))
    plain = predict_paths([folder], tiny_model_dir, tmp_path / "plain", device="cpu", batch_size=1)
    assert plain["tta"] is False and plain["n_ok"] == 3
    tta = predict_paths([folder], tiny_model_dir, tmp_path / "tta", tta=True, device="cpu", batch_size=2)
    assert tta["tta"] is True and tta["n_ok"] == 3
    for stem, (h, w) in sizes.items():
        p_plain = np.asarray(Image.open(tmp_path / "plain" / f"{stem}_prob.png"))
        p_tta = np.asarray(Image.open(tmp_path / "tta" / f"{stem}_prob.png"))
        assert p_plain.shape == p_tta.shape == (h, w)
        assert not np.array_equal(p_plain, p_tta)  # flips change a trained, non-symmetric net's output
    # batch size does not change the result
    batched = predict_paths([folder], tiny_model_dir, tmp_path / "batched", device="cpu", batch_size=3)
    assert batched["n_ok"] == 3
    for stem in sizes:
        a = np.asarray(Image.open(tmp_path / "plain" / f"{stem}_prob.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "batched" / f"{stem}_prob.png")).astype(int)
        assert np.abs(a - b).max() <= 1


def test_predict_tiles_like_the_evaluate_stage(tiny_model_dir, tmp_path, capsys):
    image_path = tmp_path / "in" / "big.png"
    image_path.parent.mkdir()
    image_path.write_bytes(png_bytes(toy_fundus(8, 60, 70)[0]))
    # the tiny model is preprocessed to 64 px: a 32 px tile from params.yaml's evaluate group tiles it
    params = tmp_path / "params.yaml"
    params.write_text(
        (Path(__file__).resolve().parents[2] / "params.yaml")
        .read_text()
        .replace("tile_size: 1024", "tile_size: 32")
        .replace("tile_overlap: 0.25", "tile_overlap: 0.5")
    )
    out = tmp_path / "tiled"
    args = ["predict", str(image_path), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu"]
    assert cli_main([*args, "--params", str(params)]) == 0
    report = json.loads((out / "predict_report.json").read_text())
    assert (report["tile_size"], report["tile_overlap"]) == (32, 0.5)
    whole = predict_paths([image_path], tiny_model_dir, tmp_path / "whole", device="cpu")
    assert whole["tile_size"] == 1024  # the default: params.yaml's value
    tiled = np.asarray(Image.open(out / "big_prob.png"))
    untiled = np.asarray(Image.open(tmp_path / "whole" / "big_prob.png"))
    assert tiled.shape == untiled.shape == (60, 70) and not np.array_equal(tiled, untiled)
    capsys.readouterr()


@pytest.mark.drive
def test_predict_real_drive_tiffs(drive_root, tiny_model_dir, tmp_path):
    images = sorted((drive_root / "test" / "images").glob("*.tif"))[:2]
    assert len(images) == 2, f"no DRIVE test TIFFs under {drive_root}"
    report = predict_paths(images, tiny_model_dir, tmp_path / "out", device="cpu")
    assert report["n_ok"] == 2 and not report["errors"]
    for row in report["outputs"]:
        assert (row["height"], row["width"]) == (584, 565)
        assert np.asarray(Image.open(row["mask"])).shape == (584, 565)
        assert np.asarray(Image.open(row["overlay"])).shape == (584, 565, 3)
