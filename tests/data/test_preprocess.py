"""Preprocessing: geometry round trip, binary masks, FOV derivation on DRIVE, CLAHE, run_preprocess."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinaseg.core.config import PreprocessParams
from retinaseg.data.io import binarise_mask, read_image, read_mask
from retinaseg.data.preprocess import (
    Geometry,
    compute_geometry,
    derive_fov,
    image_to_tensor,
    preprocess_image,
    preprocess_mask,
    restore_geometry,
    run_preprocess,
)
from retinaseg.data.synthetic import generate_sample


def test_geometry_hand_computed():
    g = compute_geometry(50, 100, 64)  # landscape: width → 64, height 32, centred vertically
    assert g == Geometry(orig_h=50, orig_w=100, scale=0.64, pad_top=16, pad_left=0, size=64)
    assert g.resized_shape() == (32, 64)
    assert Geometry.from_dict({**g.to_dict(), "id": "x"}) == g


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (64, 64), (101, 33), (20, 21)])
def test_restore_inverts_preprocess(shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = (127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    image = np.dstack([smooth] * 3)
    out, geometry = preprocess_image(image, PreprocessParams(size=64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    h, w = geometry.resized_shape()
    # zero padding outside the content
    assert out[: geometry.pad_top].sum() == 0 and out[geometry.pad_top + h :].sum() == 0
    assert out[:, : geometry.pad_left].sum() == 0 and out[:, geometry.pad_left + w :].sum() == 0
    restored = restore_geometry(out[..., 0].astype(np.float32), geometry)
    assert restored.shape == shape
    assert np.abs(restored - smooth).mean() < 6  # equal up to interpolation


def test_masks_stay_binary():
    _, mask, _ = generate_sample(3, 90)
    _, geometry = preprocess_image(np.zeros((90, 70, 3), np.uint8), PreprocessParams(size=64))
    with pytest.raises(ValueError, match="does not match"):
        preprocess_mask(mask, geometry)
    _, geometry = preprocess_image(np.zeros((90, 90, 3), np.uint8), PreprocessParams(size=41))
    out = preprocess_mask(mask, geometry)
    assert out.shape == (41, 41) and set(np.unique(out)) <= {0, 1}


def test_clahe_changes_only_green_contrast():
    image, _, _ = generate_sample(5, 64)
    plain, _ = preprocess_image(image, PreprocessParams(size=64))
    enhanced, _ = preprocess_image(image, PreprocessParams(size=64, clahe=True, clahe_clip=3.0, clahe_tile=4))
    assert np.array_equal(plain[..., [0, 2]], enhanced[..., [0, 2]])
    assert not np.array_equal(plain[..., 1], enhanced[..., 1])
    inside = plain[..., 0] > 20
    assert enhanced[..., 1][inside].std() > plain[..., 1][inside].std()  # more contrast


def test_image_to_tensor_normalises():
    tensor = image_to_tensor(np.full((4, 5, 3), 255, np.uint8))
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    assert torch.allclose(
        tensor[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


@pytest.mark.drive
def test_derived_fov_matches_drive_fov(drive_root):
    for name in (
        "training/images/21_training.tif",
        "training/images/34_training.tif",
        "test/images/07_test.tif",
    ):
        image = read_image(drive_root / name)
        folder, file = name.split("/images/")
        truth = binarise_mask(read_mask(drive_root / folder / "mask" / file.replace(".tif", "_mask.gif")))
        fov = derive_fov(image)
        iou = (fov & truth).sum() / (fov | truth).sum()
        assert iou > 0.95, f"{name}: IoU {iou:.3f}"


def _splits(tmp_path, root):
    rows = []
    for k in range(3):
        image, mask, fov = generate_sample(k, 40 + 10 * k)
        Image.fromarray(image[:, 5:]).save(root / f"im{k}.png")  # non-square
        Image.fromarray(mask[:, 5:] * 255).save(root / f"m{k}.png")
        fov_path = ""
        if k != 1:
            Image.fromarray(fov[:, 5:] * 255).save(root / f"f{k}.png")
            fov_path = f"f{k}.png"
        rows.append(
            {"id": f"s{k}", "image_path": f"im{k}.png", "mask_path": f"m{k}.png", "fov_path": fov_path}
        )
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame(rows[:1]).to_csv(splits / "train.csv", index=False)
    pd.DataFrame(rows[1:2]).to_csv(splits / "val.csv", index=False)
    pd.DataFrame(rows[2:]).to_csv(splits / "test.csv", index=False)
    return splits


def test_run_preprocess_writes_the_tree(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    splits = _splits(tmp_path, root)
    out = tmp_path / "processed"
    summary = run_preprocess(splits, root, out, PreprocessParams(size=32))
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1} and summary["fov_derived"] == 1
    index = pd.read_csv(out / "val" / "index.csv", keep_default_na=False)
    assert list(index.columns) == [
        "id",
        "orig_h",
        "orig_w",
        "scale",
        "pad_top",
        "pad_left",
        "size",
        "image_path",
        "mask_path",
        "fov_path",
        "fov_derived",
    ]
    row = index.iloc[0]
    assert (row["id"], row["orig_h"], row["orig_w"], row["size"], row["fov_derived"]) == (
        "s1",
        50,
        45,
        32,
        True,
    )
    for sub in ("images", "masks", "fov"):
        arr = np.asarray(Image.open(out / "val" / sub / "s1.png"))
        assert arr.shape[:2] == (32, 32)
        if sub != "images":
            assert set(np.unique(arr)) <= {0, 255}
    assert np.asarray(Image.open(out / "val" / "images" / "s1.png")).shape == (32, 32, 3)


def test_run_preprocess_failure_keeps_previous_output(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    splits = _splits(tmp_path, root)
    out = tmp_path / "processed"
    run_preprocess(splits, root, out, PreprocessParams(size=32))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    (root / "m2.png").write_bytes(b"")  # the test split's mask becomes an empty file
    with pytest.raises(ValueError, match="m2.png: empty file"):
        run_preprocess(splits, root, out, PreprocessParams(size=48))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert np.asarray(Image.open(out / "train" / "images" / "s0.png")).shape == (32, 32, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left
