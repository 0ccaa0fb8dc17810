"""The one preprocessing used by training, evaluation and inference.

An image is optionally cropped to its field of view's bounding box (``params.scale == "fov"``: the
eye, whatever the camera's framing, then fills the canvas, so a vessel has about the same width in
pixels for every camera), resized so its longest side is ``params.size`` (aspect ratio kept;
``INTER_AREA`` when shrinking, bilinear when enlarging), optionally standardised inside the FOV
(``params.normalise == "fov_standardise"``: each channel to mean 128, std 40, so exposure and colour
cast differ less between cameras), optionally contrast-enhanced (CLAHE on the green channel, the
channel where vessels have the most contrast), then zero-padded to ``size × size``. The padding is
split evenly (centred: ``pad_top = (size - new_h) // 2``), so the circular field of view stays at the
centre of the square. :class:`Geometry` records what was done so a prediction can be mapped back to
the original pixel grid by :func:`restore_geometry`.

``run_preprocess`` applies this to every row of the split CSVs and writes ``<out_dir>/<split>/``
(``images/``, ``masks/``, ``fov/``, ``index.csv``), building the whole tree with
:func:`retinaseg.core.fileio.atomic_dir`, so a failure never leaves half a folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from retinaseg.core.config import PreprocessParams
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import atomic_dir, write_png
from retinaseg.data.io import binarise_mask, read_image, read_mask
from retinaseg.data.split import SPLITS, read_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INDEX_COLUMNS = (
    "id",
    "orig_h",
    "orig_w",
    "scale",
    "pad_top",
    "pad_left",
    "size",
    "crop_top",
    "crop_left",
    "crop_h",
    "crop_w",
    "image_path",
    "mask_path",
    "fov_path",
    "fov_derived",
)
# data.train_labels: which observers' masks a training/val image is given; test is always scored
# against the first observer's (the reference every published figure uses)
TRAIN_LABELS = ("first", "union")
# a second observer's vessel mask (Pair.second_mask), "" when none: a column of the manifest and the
# split CSVs where some row has one, and of index.csv where preprocess merged it into the row's mask
# (data.train_labels: union); written only then, so single-observer data stay as they were
SECOND_MASK_COLUMN = "second_mask_path"


class PreprocessError(RetinasegError, ValueError):
    """Split CSVs or dataset files that cannot be preprocessed (the message names the file)."""


@dataclass(frozen=True)
class Geometry:
    """How an ``orig_h × orig_w`` image was mapped onto the ``size × size`` canvas.

    The ``crop_h × crop_w`` box at ``(crop_top, crop_left)`` of the image (the whole image unless
    ``preprocess.scale`` is ``fov``; ``crop_h``/``crop_w`` of 0 mean the whole height/width) is
    resized to ``resized_h × resized_w`` (see :meth:`resized_shape`) and placed at
    ``(pad_top, pad_left)``; everything else is zero padding.
    """

    orig_h: int
    orig_w: int
    scale: float
    pad_top: int
    pad_left: int
    size: int
    crop_top: int = 0
    crop_left: int = 0
    crop_h: int = 0
    crop_w: int = 0

    def crop_box(self) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the part of the image that was resized."""
        return self.crop_top, self.crop_left, self.crop_h or self.orig_h, self.crop_w or self.orig_w

    def resized_shape(self) -> tuple[int, int]:
        """(h, w) of the resized content inside the canvas."""
        _, _, crop_h, crop_w = self.crop_box()
        h = min(self.size, max(1, round(crop_h * self.scale)))
        w = min(self.size, max(1, round(crop_w * self.scale)))
        return h, w

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/CSV friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; extra keys (e.g. a CSV row's paths) are ignored; the crop
        keys are optional (no crop), as geometries written before they existed lack them."""
        return cls(
            orig_h=int(data["orig_h"]),
            orig_w=int(data["orig_w"]),
            scale=float(data["scale"]),
            pad_top=int(data["pad_top"]),
            pad_left=int(data["pad_left"]),
            size=int(data["size"]),
            **{k: int(data.get(k, 0)) for k in ("crop_top", "crop_left", "crop_h", "crop_w")},
        )


def compute_geometry(
    orig_h: int, orig_w: int, size: int, crop: tuple[int, int, int, int] | None = None
) -> Geometry:
    """Longest side of the image (or of ``crop``, a ``(top, left, height, width)`` box inside it)
    → ``size``, content centred in the ``size × size`` canvas."""
    if orig_h < 1 or orig_w < 1:
        raise ValueError(f"image has no pixels ({orig_h}×{orig_w})")
    if size < 1:
        raise ValueError(f"preprocess.size must be positive, got {size}")
    top, left, crop_h, crop_w = crop if crop is not None else (0, 0, orig_h, orig_w)
    inside = top >= 0 and left >= 0 and crop_h >= 1 and crop_w >= 1
    if not (inside and top + crop_h <= orig_h and left + crop_w <= orig_w):
        raise ValueError(f"crop box {crop} does not lie inside the {orig_h}×{orig_w} image")
    if (crop_h, crop_w) == (orig_h, orig_w):
        top, left, crop_h, crop_w = 0, 0, 0, 0  # the whole image: no crop recorded
    scale = size / max(crop_h or orig_h, crop_w or orig_w)
    geometry = Geometry(orig_h, orig_w, scale, 0, 0, size, top, left, crop_h, crop_w)
    h, w = geometry.resized_shape()
    return Geometry(orig_h, orig_w, scale, (size - h) // 2, (size - w) // 2, size, top, left, crop_h, crop_w)


def fov_box(fov01: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, left, height, width)``: the bounding box of the FOV mask's non-zero pixels; None when
    the mask is empty (a black image: no FOV to scale by)."""
    rows = np.flatnonzero(np.asarray(fov01).any(axis=1))
    cols = np.flatnonzero(np.asarray(fov01).any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _crop(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    top, left, h, w = geometry.crop_box()
    return array[top : top + h, left : left + w]


def _resize(array: np.ndarray, h: int, w: int, interpolation: int | None = None) -> np.ndarray:
    if interpolation is None:
        shrinking = h * w < array.shape[0] * array.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if array.shape[:2] == (h, w):
        return array.copy()
    return cv2.resize(array, (w, h), interpolation=interpolation)


def _pad(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    canvas = np.zeros((geometry.size, geometry.size, *array.shape[2:]), dtype=array.dtype)
    h, w = array.shape[:2]
    canvas[geometry.pad_top : geometry.pad_top + h, geometry.pad_left : geometry.pad_left + w] = array
    return canvas


def green_to_all_channels(image_rgb: np.ndarray) -> np.ndarray:
    """The green channel copied into all three (``preprocess.channels: green``): the input keeps its
    three channels, so every model and encoder takes it unchanged, but carries no colour."""
    return np.repeat(np.ascontiguousarray(image_rgb[..., 1:2]), 3, axis=2)


def apply_clahe(image_rgb: np.ndarray, clip: float, tile: int) -> np.ndarray:
    """CLAHE (``cv2.createCLAHE``) on the green channel; red and blue are left as they are."""
    out = image_rgb.copy()
    clahe = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tile), int(tile)))
    out[..., 1] = clahe.apply(np.ascontiguousarray(image_rgb[..., 1]))
    return out


# fov_standardise: each channel inside the FOV to this mean and standard deviation (uint8 levels):
# 40 keeps ±3 standard deviations inside [8, 248], so little clips
STANDARD_MEAN, STANDARD_STD = 128.0, 40.0


def standardise_inside_fov(image_rgb: np.ndarray, fov01: np.ndarray) -> np.ndarray:
    """Each channel to mean :data:`STANDARD_MEAN` and std :data:`STANDARD_STD` over the FOV's
    pixels (rounded, clipped to uint8); outside the FOV 0. Exposure and a colour cast are a gain
    and an offset per channel, which this removes; an image without FOV pixels is returned black."""
    inside = np.asarray(fov01).astype(bool)
    out = np.zeros_like(image_rgb)
    if not inside.any():
        return out
    pixels = image_rgb[inside].astype(np.float32)  # n × 3
    mean = pixels.mean(axis=0)
    std = np.maximum(pixels.std(axis=0), 1.0)  # a flat channel stays flat (no division by ~0)
    standard = (pixels - mean) / std * STANDARD_STD + STANDARD_MEAN
    out[inside] = np.clip(np.rint(standard), 0, 255).astype(np.uint8)
    return out


def preprocess_image(
    image_rgb_uint8: np.ndarray, params: PreprocessParams, fov01: np.ndarray | None = None
) -> tuple[np.ndarray, Geometry]:
    """Crop to the FOV (``scale: fov``), resize (longest side → ``params.size``), standardise inside
    the FOV (``normalise: fov_standardise``), optional green CLAHE, optionally the green channel
    alone (``channels: green``), centre zero-padding.

    ``fov01`` is the image's FOV mask (``H×W`` {0,1}) where the dataset gives one; when a step needs
    the FOV and none is given it is derived from the image (:func:`derive_fov`), as it is for any
    user's photograph. Returns the ``size × size × 3`` uint8 image and the :class:`Geometry` to undo it.
    """
    image = np.asarray(image_rgb_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"preprocess_image expects H×W×3 uint8 RGB, got {image.dtype} {image.shape}")
    needs_fov = params.scale == "fov" or params.normalise == "fov_standardise"
    if needs_fov and fov01 is None:
        fov01 = derive_fov(image)
    if fov01 is not None and np.asarray(fov01).shape != image.shape[:2]:
        raise ValueError(
            f"FOV mask shape {np.asarray(fov01).shape} does not match the image {image.shape[:2]}"
        )
    crop = fov_box(fov01) if params.scale == "fov" else None
    geometry = compute_geometry(image.shape[0], image.shape[1], params.size, crop)
    resized = _resize(_crop(image, geometry), *geometry.resized_shape())
    if params.normalise == "fov_standardise":
        fov_small = preprocess_mask(np.asarray(fov01), geometry, pad=False)
        resized = standardise_inside_fov(resized, fov_small)
    if params.clahe:
        resized = apply_clahe(resized, params.clahe_clip, params.clahe_tile)
    if params.channels == "green":
        resized = green_to_all_channels(resized)
    return _pad(resized, geometry), geometry


def preprocess_mask(mask01: np.ndarray, geometry: Geometry, pad: bool = True) -> np.ndarray:
    """Map an ``orig_h × orig_w`` {0,1} mask onto the canvas (crop, nearest neighbour, zero padding;
    ``pad=False``: the resized content only, before padding)."""
    mask = np.asarray(mask01)
    if mask.shape != (geometry.orig_h, geometry.orig_w):
        raise ValueError(
            f"mask shape {mask.shape} does not match the image ({geometry.orig_h}, {geometry.orig_w})"
        )
    cropped = _crop(mask.astype(np.uint8), geometry)
    resized = _resize(cropped, *geometry.resized_shape(), interpolation=cv2.INTER_NEAREST)
    return _pad(resized, geometry) if pad else resized


def restore_geometry(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Crop the padding off a ``size × size`` map, resize it (bilinear) to the crop box's size and
    place it in an ``orig_h × orig_w`` map (0 outside the crop box; the whole image when uncropped)."""
    array = np.asarray(array)
    if array.shape[:2] != (geometry.size, geometry.size):
        raise ValueError(f"expected a {geometry.size}×{geometry.size} array, got {array.shape}")
    h, w = geometry.resized_shape()
    content = array[geometry.pad_top : geometry.pad_top + h, geometry.pad_left : geometry.pad_left + w]
    content = np.ascontiguousarray(content, dtype=np.float32)
    top, left, crop_h, crop_w = geometry.crop_box()
    restored = cv2.resize(content, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR)
    if (crop_h, crop_w) == (geometry.orig_h, geometry.orig_w):
        return restored
    out = np.zeros((geometry.orig_h, geometry.orig_w, *restored.shape[2:]), dtype=np.float32)
    out[top : top + crop_h, left : left + crop_w] = restored
    return out


def derive_fov(image_rgb_uint8: np.ndarray) -> np.ndarray:
    """Field-of-view mask (``H×W`` uint8 {0,1}) for a fundus photograph without one.

    The red channel is bright everywhere inside the FOV and near zero outside: smooth it, threshold
    with Otsu (floored so near-black noise never counts as FOV), close small gaps, open away specks,
    keep the largest connected region and fill its holes (its external contour, filled).
    """
    image = np.asarray(image_rgb_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"derive_fov expects H×W×3 RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    k = max(3, (min(h, w) // 100) | 1)  # odd kernel ≈ 1 % of the image
    red = cv2.GaussianBlur(image[..., 0], (k, k), 0)
    otsu, _ = cv2.threshold(red, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = min(max(float(otsu) * 0.5, 10.0), 40.0)
    binary = (red > threshold).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    # a margin that repeats the edge pixels first: OpenCV's erosion treats the outside of the image
    # as foreground, so a closing would otherwise grow a disc that comes near the frame's edge out to
    # that edge; a zero margin instead would round off the corners of a photograph that fills its frame
    pad = 2 * k + 1
    binary = cv2.copyMakeBorder(binary, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)[pad:-pad, pad:-pad]
    binary = np.ascontiguousarray(binary)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    fov = np.zeros((h, w), dtype=np.uint8)
    if contours:
        largest = max(contours, key=cv2.contourArea)
        cv2.drawContours(fov, [largest], -1, color=1, thickness=cv2.FILLED)
    return fov


def image_to_tensor(image_uint8: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``3×H×W`` float32, scaled to [0, 1] and ImageNet-normalised."""
    image = np.ascontiguousarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_to_tensor expects H×W×3, got shape {image.shape}")
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean) / std


def _read_vessel_mask(path: Path, image: np.ndarray) -> np.ndarray:
    mask = binarise_mask(read_mask(path))
    if mask.shape != image.shape[:2]:
        raise PreprocessError(
            f"{path}: mask is {mask.shape[1]}×{mask.shape[0]}, image is {image.shape[1]}×{image.shape[0]}"
        )
    return mask


def _preprocess_row(
    row: pd.Series, data_root: Path, split_dir: Path, params: PreprocessParams, union: bool = False
) -> dict:
    """One image of a split; ``union``: its mask is the union of both observers' where it has a
    second one (``second_mask_path``), so the model learns every vessel either observer marked."""
    sample_id = str(row["id"])
    image = read_image(data_root / row["image_path"])
    mask = _read_vessel_mask(data_root / row["mask_path"], image)
    second_rel = row.get(SECOND_MASK_COLUMN) if union else None
    second_rel = second_rel if isinstance(second_rel, str) and second_rel != "" else ""
    if second_rel:
        mask = np.maximum(mask, _read_vessel_mask(data_root / second_rel, image))
    fov_rel = row.get("fov_path")
    has_fov = isinstance(fov_rel, str) and fov_rel != ""
    if has_fov:
        fov = binarise_mask(read_mask(data_root / fov_rel))
        if fov.shape != image.shape[:2]:
            raise PreprocessError(f"{data_root / fov_rel}: FOV mask size {fov.shape} differs from the image")
    else:
        fov = derive_fov(image)
    canvas, geometry = preprocess_image(image, params, fov)
    write_png(split_dir / "images" / f"{sample_id}.png", canvas)
    write_png(split_dir / "masks" / f"{sample_id}.png", preprocess_mask(mask, geometry) * 255)
    write_png(split_dir / "fov" / f"{sample_id}.png", preprocess_mask(fov, geometry) * 255)
    return {
        "id": sample_id,
        **{k: v for k, v in geometry.to_dict().items() if k != "size"},
        "size": geometry.size,
        "image_path": row["image_path"],
        "mask_path": row["mask_path"],
        "fov_path": fov_rel if has_fov else "",
        "fov_derived": not has_fov,
        SECOND_MASK_COLUMN: second_rel,
    }


def run_preprocess(
    splits_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    params: PreprocessParams,
    train_labels: str = "first",
) -> dict:
    """Preprocess every split listed in ``splits_dir/{train,val,test}.csv``.

    Writes ``out_dir/<split>/{images,masks,fov}/<id>.png`` and ``out_dir/<split>/index.csv``
    (columns :data:`INDEX_COLUMNS`; paths are the source files relative to ``data_root``).
    ``train_labels`` (``data.train_labels``): ``first`` gives every image its first observer's mask;
    ``union`` gives the train and val images the union of both observers' masks where the split CSV
    names a second one (``second_mask_path``; their index.csv then lists it), and is an error when
    none does. The test images keep the first observer's mask either way.
    Returns ``{"size": ..., "clahe": ..., "splits": {split: n}, "fov_derived": n, "train_labels": ...,
    "second_observer": {split: n}}`` (``second_observer``: images given the union, per split).
    """
    if train_labels not in TRAIN_LABELS:
        raise PreprocessError(f"data.train_labels: {train_labels!r} is not one of {', '.join(TRAIN_LABELS)}")
    splits_dir, data_root, out_dir = Path(splits_dir), Path(data_root), Path(out_dir)
    frames = {split: read_split(splits_dir, split) for split in SPLITS}
    union_splits = ("train", "val") if train_labels == "union" else ()
    if union_splits:
        _check_second_masks(frames, union_splits, splits_dir)
    summary: dict[str, Any] = {
        "size": params.size,
        "scale": params.scale,
        "normalise": params.normalise,
        "clahe": params.clahe,
        "channels": params.channels,
        "train_labels": train_labels,
        "splits": {},
        "second_observer": {},
        "fov_derived": 0,
    }
    with atomic_dir(out_dir) as tmp:
        for split, frame in frames.items():
            split_dir = tmp / split
            for sub in ("images", "masks", "fov"):
                (split_dir / sub).mkdir(parents=True, exist_ok=True)
            union = split in union_splits
            rows = [_preprocess_row(row, data_root, split_dir, params, union) for _, row in frame.iterrows()]
            columns = [*INDEX_COLUMNS, SECOND_MASK_COLUMN] if union else list(INDEX_COLUMNS)
            index = pd.DataFrame(rows, columns=columns).sort_values("id")
            index.to_csv(split_dir / "index.csv", index=False)
            summary["splits"][split] = len(rows)
            second = int((index[SECOND_MASK_COLUMN] != "").sum()) if union else 0
            summary["second_observer"][split] = second
            summary["fov_derived"] += int(index["fov_derived"].sum())
    return summary


def _check_second_masks(frames: dict[str, pd.DataFrame], splits: tuple[str, ...], splits_dir: Path) -> None:
    """``data.train_labels: union`` with no second observer's mask among ``splits`` is an error, never
    a quiet run on the first observer alone."""
    for split in splits:
        column = frames[split].get(SECOND_MASK_COLUMN)
        if column is not None and (column.fillna("").astype(str) != "").any():
            return
    raise PreprocessError(
        f"{splits_dir}: data.train_labels is 'union' but no {' or '.join(splits)} image has a second "
        "observer's mask (CHASE_DB1 ships _2ndHO, STARE .vk; DRIVE's 2nd_manual covers only its test "
        "images); set data.train_labels: first, or rerun the validate stage after adding them"
    )
