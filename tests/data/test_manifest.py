"""The manifest and the perceptual hash (flip/rotation/resize invariant on real DRIVE eyes)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from retinaseg.data.io import read_image
from retinaseg.data.manifest import build_manifest, grey_fraction, perceptual_hash, phash_distance
from retinaseg.data.sources import scan_source
from tests.data.builders import make_folder_dataset


def test_phash_distance_is_hamming():
    assert phash_distance("0000000000000000", "0000000000000000") == 0
    assert phash_distance("0000000000000000", "000000000000000f") == 4
    assert phash_distance("ffffffffffffffff", "0000000000000000") == 64
    with pytest.raises(ValueError):
        phash_distance("00", "000")


def test_grey_fraction_hand_computed():
    assert grey_fraction(np.array([[0, 255], [255, 0]], np.uint8)) == 0.0
    assert grey_fraction(np.array([[0, 251], [251, 0]], np.uint8)) == 0.0  # DRIVE-style 0/251
    assert grey_fraction(np.array([[0, 255, 128, 0]], np.uint8)) == 0.25


def test_manifest_of_folder_dataset(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", n=3, size=48)
    frame, problems = build_manifest(scan_source("folder", root))
    assert problems == []
    assert list(frame["id"]) == ["case_00", "case_01", "case_02"]
    row = frame.iloc[0]
    assert row["image_path"] == "images/case_00.png" and row["mask_path"] == "masks/case_00_mask.png"
    assert row["fov_path"] == "fov/case_00_fov.png" and not row["fov_derived"]
    assert (row["width"], row["height"], row["channels"], row["dtype"]) == (48, 48, 3, "uint8")
    assert row["mask_grey_fraction"] == 0.0 and 0 < row["vessel_fraction"] < 0.5
    assert len(row["sha256"]) == 64 and len(row["phash"]) == 16


def _rotate(image, angle):
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR)


def _copies(image):
    """Flips, rotations by arbitrary angles, Kaggle-style 512² resizes, a small shift."""
    square = cv2.resize(image, (512, 512), interpolation=cv2.INTER_LINEAR)
    return {
        "hflip": image[:, ::-1],
        "vflip": image[::-1],
        "rot37": _rotate(image, 37),
        "rot-110": _rotate(image, -110),
        "k512": square,
        "k512_rot200": _rotate(square, 200),
        "k512_hflip_rot23": cv2.resize(_rotate(image[:, ::-1], 23), (512, 512)),
        "small256": cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA),
        "shift3": np.roll(image, 3, axis=1),
    }


def test_an_id_collision_is_an_error_on_every_file_naming_all_of_them(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", n=2, size=48)
    Image.open(root / "images" / "case_00.png").save(root / "images" / "case_00.tif")
    frame, problems = build_manifest(scan_source("folder", root))
    assert list(frame["id"]) == ["case_00", "case_01"]  # the first file's pair, so the id can be excluded
    dupes = [p for p in problems if p.check == "duplicate_id"]
    assert [p.file for p in dupes] == ["images/case_00.png", "images/case_00.tif"]
    for problem in dupes:
        assert problem.severity == "error"
        assert "images/case_00.png" in problem.message and "images/case_00.tif" in problem.message
        assert problem.message.startswith("id 'case_00' is claimed by 2 image files")


@pytest.mark.drive
@pytest.mark.slow
def test_phash_separates_copies_from_other_eyes_on_drive(drive_root):
    """Chooses split.phash_max_distance (10): copies of one eye must stay well below it, different
    eyes well above. Prints both distributions."""
    paths = sorted(drive_root.glob("*/images/*.tif"))[::2]  # 20 of the 40 eyes keeps this ~5 s
    images = [read_image(p) for p in paths]
    hashes = [perceptual_hash(im) for im in images]
    same = [
        phash_distance(h, perceptual_hash(c))
        for im, h in zip(images, hashes, strict=True)
        for c in _copies(im).values()
    ]
    different = [phash_distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    print(
        f"\nsame eye:       max {max(same)}, mean {np.mean(same):.1f}, histogram {np.bincount(same).tolist()}"
    )
    print(
        f"different eyes: min {min(different)}, 1st pct {np.percentile(different, 1):.0f}, "
        f"mean {np.mean(different):.1f}"
    )
    assert max(same) <= 6
    assert min(different) >= 14
