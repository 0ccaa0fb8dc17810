"""The manifest: one row per (image, mask) pair with the facts validation and splitting need.

``build_manifest(scan)`` decodes every file once, measures it, and reports per-file problems (files
that cannot be read, orphans, masks whose size differs from their image, RGBA / 16-bit inputs).
Dataset-level checks over the finished table (empty masks, non-masks, duplicate ids, …) are run as a
Great Expectations suite by :mod:`retinaseg.data.validation`.

The ``phash`` column is a 64-bit perceptual hash made for fundus photographs, where one eye may be
stored several times as flips and rotations of itself, resized and re-interpolated (the Kaggle
"Retina Blood Vessel" set stores each DRIVE training eye four times). Generic image hashes
(imagehash's pHash/dHash) are not rotation invariant, so we build our own:

1. downscale to ≤ 256 px, find the field of view (:func:`retinaseg.data.preprocess.derive_fov`);
2. normalise the FOV: an affine warp built from the FOV's centroid and second moments maps the FOV
   (a circle, or an ellipse after an anisotropic resize) onto a centred circle of a 128 px canvas
   (the whitening matrix is symmetric, so it adds no rotation of its own);
3. resample the (smoothed) green channel on a polar grid around the centre;
4. the magnitude of the FFT along the angle axis is invariant to rotation (a rotation is a cyclic
   shift in angle) and to flips (a mirror reverses the angle axis, which only conjugates the FFT);
5. log-magnitudes are pooled into 8 angular-frequency × 8 radial bands, double-centred (removing the
   radial profile and spectral fall-off that every fundus image shares) and binarised against their
   median → 64 bits → 16 hex characters.

Measured on the 40 DRIVE images (see ``tests/data/test_manifest.py``): an eye vs its flips, rotations
by arbitrary angles, 512×512 resizes and small shifts differs by ≤ 6 bits (99th percentile 4); two
different eyes differ by ≥ 14 bits (1st percentile 18). ``split.phash_max_distance`` (10) sits between.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from retinaseg.core.fileio import read_csv
from retinaseg.data.io import ImageReadError, binarise_mask, probe_image, read_image, read_mask
from retinaseg.data.preprocess import SECOND_MASK_COLUMN, derive_fov
from retinaseg.data.sources import Pair, Scan

MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "split_hint",
    "image_path",
    "mask_path",
    "fov_path",
    "fov_derived",
    "width",
    "height",
    "channels",
    "dtype",
    "mask_grey_fraction",
    "vessel_fraction",
    "sha256",
    "phash",
)
# the part of a multi dataset (data.source: multi) a row came from; "" for a single dataset, whose
# manifest.csv and split files do not have the column (they stay as they were before multi existed)
DATASET_COLUMN = "dataset"
# SECOND_MASK_COLUMN (from preprocess, which reads it): like DATASET_COLUMN, written only when some row
# has one, so the manifests of single-observer datasets stay as they were
# extra measured columns, used by the validation suite but not written to manifest.csv
EXTRA_COLUMNS: tuple[str, ...] = ("image_range",)

# perceptual-hash geometry (see the module docstring); chosen on DRIVE, see test_manifest.py
_HASH_WORK = 128  # normalised canvas size (px)
_HASH_PRE_MAX = 256  # images are first downscaled to this longest side
_HASH_ANGLES = 128  # polar samples along the angle
_HASH_RADII = 64  # polar samples along the radius (0 … R_MAX of the FOV radius)
_HASH_R_MIN, _HASH_R_MAX = 0.25, 0.85  # ring band used (fractions of the FOV radius)
_HASH_BANDS = 8  # radial bands and angular-frequency bands (8 × 8 = 64 bits)
_HASH_K_POOL = 2  # angular frequencies 1..16 pooled in pairs


@dataclass(frozen=True)
class Problem:
    """One finding about one file. ``file`` is relative to the data root (POSIX)."""

    file: str
    check: str
    severity: str  # "error" | "warning"
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly dict (the summary.json shape)."""
        return {"file": self.file, "check": self.check, "severity": self.severity, "message": self.message}

    def line(self) -> str:
        """One human-readable line: ``ERROR  <file>: <check>: <message>``."""
        return f"{self.severity.upper()}  {self.file}: {self.check}: {self.message}"


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (``..`` segments when outside it)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _normalised_fov_green(image_rgb: np.ndarray) -> np.ndarray:
    """Green channel warped so the FOV becomes a centred circle filling the work canvas."""
    h, w = image_rgb.shape[:2]
    s = min(1.0, _HASH_PRE_MAX / max(h, w))
    small = image_rgb
    if s < 1.0:
        small = cv2.resize(
            image_rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
        )
    green = cv2.GaussianBlur(small[..., 1].astype(np.float32), (0, 0), 1.0)
    fov = derive_fov(small)
    m = cv2.moments(fov, binaryImage=True)
    if m["m00"] < 0.1 * fov.size:  # no usable FOV (not a fundus photo): use the whole frame
        return cv2.resize(green, (_HASH_WORK, _HASH_WORK), interpolation=cv2.INTER_AREA)
    centre = np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]])
    cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]) / m["m00"]
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, 1e-6)
    # a uniform disc of radius R has variance R²/4 along every axis: map it to radius WORK/2
    transform = eigvec @ np.diag(1.0 / np.sqrt(eigval)) @ eigvec.T * (_HASH_WORK / 4)
    target = np.array([_HASH_WORK / 2 - 0.5, _HASH_WORK / 2 - 0.5])
    affine = np.hstack([transform, (target - transform @ centre)[:, None]])
    return cv2.warpAffine(green, affine, (_HASH_WORK, _HASH_WORK), flags=cv2.INTER_LINEAR)


def perceptual_hash(image_rgb: np.ndarray) -> str:
    """64-bit flip- and rotation-invariant perceptual hash of a fundus image, as 16 hex characters."""
    green = cv2.GaussianBlur(_normalised_fov_green(np.asarray(image_rgb)), (0, 0), 1.0)
    centre = (_HASH_WORK / 2 - 0.5, _HASH_WORK / 2 - 0.5)
    polar = cv2.warpPolar(
        green,
        (_HASH_RADII, _HASH_ANGLES),
        centre,
        _HASH_WORK / 2 * _HASH_R_MAX,
        cv2.WARP_POLAR_LINEAR + cv2.INTER_LINEAR,
    )  # rows = angle, columns = radius
    polar = polar[:, int(_HASH_RADII * _HASH_R_MIN / _HASH_R_MAX) :]
    polar = polar[:, : polar.shape[1] // _HASH_BANDS * _HASH_BANDS]
    magnitude = np.log1p(np.abs(np.fft.rfft(polar, axis=0)))
    n_k = _HASH_BANDS * _HASH_K_POOL
    bands = magnitude[1 : 1 + n_k].reshape(_HASH_BANDS, _HASH_K_POOL, _HASH_BANDS, -1).mean(axis=(1, 3))
    bands = bands - bands.mean(axis=0, keepdims=True) - bands.mean(axis=1, keepdims=True) + bands.mean()
    bits = (bands.ravel() > np.median(bands)).astype(np.uint8)
    return f"{int(''.join(map(str, bits)), 2):016x}"


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex hashes of equal length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {a!r} vs {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def grey_fraction(mask: np.ndarray) -> float:
    """Fraction of mask pixels strictly between its darkest and brightest value.

    A clean mask has two levels (0/255, or DRIVE's 0/251 or 3/253); interpolated masks have grey
    edge pixels; a photograph put where a mask belongs is almost all grey.
    """
    lo, hi = int(mask.min()), int(mask.max())
    if hi - lo < 2:
        return 0.0
    return float(((mask > lo) & (mask < hi)).mean())


def _read_problem(error: ImageReadError, root: Path) -> Problem:
    """Translate an :class:`ImageReadError` reason into a stable check name."""
    reason = error.reason
    if reason.startswith("empty file"):
        check = "empty_file"
    elif reason.startswith("not an image"):
        check = "not_an_image"
    elif reason.startswith("file not found") or reason.startswith("not a regular file"):
        check = "missing_file"
    else:
        check = "unreadable"
    return Problem(relative_posix(error.path, root), check, "error", reason)


def _format_warnings(path: Path, root: Path, what: str) -> list[Problem]:
    info = probe_image(path)
    rel = relative_posix(path, root)
    problems = []
    if info["mode"] in ("RGBA", "LA", "PA"):
        problems.append(Problem(rel, "alpha_channel", "warning", f"{what} has an alpha channel (dropped)"))
    if info["dtype"] == "uint16":
        problems.append(Problem(rel, "16bit", "warning", f"16-bit {what} (scaled to 8 bits)"))
    return problems


def _check_second_mask(path: Path, shape: tuple[int, int], root: Path) -> tuple[str, list[Problem]]:
    """A second observer's mask: its path relative to ``root`` when it decodes at the image's size,
    else ``""`` and a ``second_mask_unusable`` warning (the pair itself stays: its first observer's
    mask is the reference)."""
    rel = relative_posix(path, root)
    try:
        second = read_mask(path)
    except ImageReadError as exc:
        reason = f"second observer's mask: {exc.reason}; left out"
        return "", [Problem(rel, "second_mask_unusable", "warning", reason)]
    if second.shape != shape:
        reason = (
            f"second observer's mask is {second.shape[1]}×{second.shape[0]} but its image is "
            f"{shape[1]}×{shape[0]}; left out"
        )
        return "", [Problem(rel, "second_mask_unusable", "warning", reason)]
    return rel, []


def _measure_pair(pair: Pair, root: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Decode one pair; a manifest row (or None when it cannot be measured) and its problems."""
    problems: list[Problem] = []
    image = mask = fov = None
    try:
        problems += _format_warnings(pair.image, root, "image")
        image = read_image(pair.image)
    except ImageReadError as exc:
        problems.append(_read_problem(exc, root))
    try:
        problems += _format_warnings(pair.mask, root, "mask")
        mask = read_mask(pair.mask)
    except ImageReadError as exc:
        problems.append(_read_problem(exc, root))
    if pair.fov is not None:
        try:
            fov = read_mask(pair.fov)
        except ImageReadError as exc:
            problems.append(_read_problem(exc, root))
    if image is None or mask is None:
        return None, problems
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        problems.append(
            Problem(
                relative_posix(pair.mask, root),
                "mask_size_mismatch",
                "error",
                f"mask is {mask.shape[1]}×{mask.shape[0]} but its image is {w}×{h}",
            )
        )
        return None, problems
    if fov is not None and fov.shape != (h, w):
        problems.append(
            Problem(
                relative_posix(pair.fov, root),
                "fov_size_mismatch",
                "error",
                f"FOV mask is {fov.shape[1]}×{fov.shape[0]} but its image is {w}×{h}",
            )
        )
        return None, problems
    second_mask = ""
    if pair.second_mask is not None:
        second_mask, second_problem = _check_second_mask(pair.second_mask, (h, w), root)
        problems += second_problem
    info = probe_image(pair.image)
    row = {
        "id": pair.id,
        DATASET_COLUMN: pair.dataset or "",
        "split_hint": pair.split or "",
        "image_path": relative_posix(pair.image, root),
        "mask_path": relative_posix(pair.mask, root),
        "fov_path": relative_posix(pair.fov, root) if pair.fov is not None else "",
        "fov_derived": pair.fov is None,
        SECOND_MASK_COLUMN: second_mask,
        "width": w,
        "height": h,
        "channels": int(info["channels"]),
        "dtype": str(info["dtype"]),
        "mask_grey_fraction": grey_fraction(mask),
        "vessel_fraction": float(binarise_mask(mask).mean()),
        "sha256": file_sha256(pair.image),
        "phash": perceptual_hash(image),
        "image_range": int(image.max()) - int(image.min()),
    }
    return row, problems


def build_manifest(scan: Scan) -> tuple[pd.DataFrame, list[Problem]]:
    """Measure every pair of ``scan``; rows for the pairs that could be decoded, plus problems.

    Returns a DataFrame with :data:`MANIFEST_COLUMNS` + :data:`DATASET_COLUMN` + :data:`EXTRA_COLUMNS`
    (sorted by id, then image path) and the per-file problems: orphans, id collisions (``duplicate_id``
    on every file of one, naming all of them), unreadable/empty/non-image files, size mismatches,
    alpha-channel and 16-bit inputs.
    """
    root = Path(scan.root)
    problems: list[Problem] = []
    for path in scan.orphan_images:
        problems.append(
            Problem(relative_posix(path, root), "image_without_mask", "error", "no mask for this image")
        )
    for path in scan.orphan_masks:
        problems.append(
            Problem(relative_posix(path, root), "mask_without_image", "error", "no image for this mask")
        )
    for collision in scan.collisions:
        # every file of the collision is an error that names all of them (the first is the one paired,
        # so its id is excluded under on_error: exclude, or fails the validation)
        message = collision.message(lambda f: relative_posix(f, root))
        problems += [
            Problem(relative_posix(f, root), "duplicate_id", "error", message) for f in collision.files
        ]
    rows = []
    for pair in scan.pairs:
        row, pair_problems = _measure_pair(pair, root)
        problems += pair_problems
        if row is not None:
            rows.append(row)
    columns = [*MANIFEST_COLUMNS, DATASET_COLUMN, SECOND_MASK_COLUMN, *EXTRA_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.sort_values(["id", "image_path"], kind="stable").reset_index(drop=True)
    return frame, problems


def is_multi(frame: pd.DataFrame) -> bool:
    """Whether the rows come from a multi dataset (a non-empty ``dataset`` column)."""
    return _has_values(frame, DATASET_COLUMN)


def written_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of ``manifest.csv``: :data:`MANIFEST_COLUMNS`, with ``dataset`` after ``id`` only
    for a multi dataset and ``second_mask_path`` after ``mask_path`` only when some row has a second
    observer's mask (a single-observer, single dataset's manifest is unchanged by either column)."""
    columns = list(MANIFEST_COLUMNS)
    if has_second_masks(frame):
        columns.insert(columns.index("mask_path") + 1, SECOND_MASK_COLUMN)
    if is_multi(frame):
        columns.insert(1, DATASET_COLUMN)
    return columns


def has_second_masks(frame: pd.DataFrame) -> bool:
    """Whether some row has a second observer's mask (a non-empty ``second_mask_path``)."""
    return _has_values(frame, SECOND_MASK_COLUMN)


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    """Whether ``frame`` has ``column`` and some row a non-empty value in it."""
    return column in frame.columns and bool((frame[column].fillna("").astype(str) != "").any())


_TEXT_COLUMNS = (
    "id", DATASET_COLUMN, "split_hint", "image_path", "mask_path", SECOND_MASK_COLUMN, "fov_path", "dtype",
    "sha256", "phash",
)  # fmt: skip


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read ``manifest.csv`` (or a split CSV) with text columns kept as text ('' for empty); the
    ``dataset`` column is there only for a multi dataset."""
    frame = read_csv(
        path, _TEXT_COLUMNS, required=MANIFEST_COLUMNS, what="manifest", hint="run the validate stage first"
    )
    frame["fov_derived"] = frame["fov_derived"].map(lambda v: str(v).strip().lower() == "true")
    return frame
