"""The one preprocessing used by training, evaluation and inference.

An image is resized so its longest side is ``params.size`` (aspect ratio kept; ``INTER_AREA`` when
shrinking, bilinear when enlarging), optionally contrast-enhanced (CLAHE on the green channel, the
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
    "image_path",
    "mask_path",
    "fov_path",
    "fov_derived",
)


class PreprocessError(RetinasegError, ValueError):
    """Split CSVs or dataset files that cannot be preprocessed (the message names the file)."""


@dataclass(frozen=True)
class Geometry:
    """How an ``orig_h × orig_w`` image was mapped onto the ``size × size`` canvas.

    The resized content is ``resized_h × resized_w`` (see :meth:`resized_shape`), placed at
    ``(pad_top, pad_left)``; everything else is zero padding.
    """

    orig_h: int
    orig_w: int
    scale: float
    pad_top: int
    pad_left: int
    size: int

    def resized_shape(self) -> tuple[int, int]:
        """(h, w) of the resized content inside the canvas."""
        h = min(self.size, max(1, round(self.orig_h * self.scale)))
        w = min(self.size, max(1, round(self.orig_w * self.scale)))
        return h, w

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/CSV friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; extra keys (e.g. a CSV row's paths) are ignored."""
        return cls(
            orig_h=int(data["orig_h"]),
            orig_w=int(data["orig_w"]),
            scale=float(data["scale"]),
            pad_top=int(data["pad_top"]),
            pad_left=int(data["pad_left"]),
            size=int(data["size"]),
        )


def compute_geometry(orig_h: int, orig_w: int, size: int) -> Geometry:
    """Longest side → ``size``, content centred in the ``size × size`` canvas."""
    if orig_h < 1 or orig_w < 1:
        raise ValueError(f"image has no pixels ({orig_h}×{orig_w})")
    if size < 1:
        raise ValueError(f"preprocess.size must be positive, got {size}")
    scale = size / max(orig_h, orig_w)
    geometry = Geometry(orig_h, orig_w, scale, 0, 0, size)
    h, w = geometry.resized_shape()
    return Geometry(orig_h, orig_w, scale, (size - h) // 2, (size - w) // 2, size)


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


def apply_clahe(image_rgb: np.ndarray, clip: float, tile: int) -> np.ndarray:
    """CLAHE (``cv2.createCLAHE``) on the green channel; red and blue are left as they are."""
    out = image_rgb.copy()
    clahe = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tile), int(tile)))
    out[..., 1] = clahe.apply(np.ascontiguousarray(image_rgb[..., 1]))
    return out


def preprocess_image(image_rgb_uint8: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, Geometry]:
    """Resize (longest side → ``params.size``), optional green CLAHE, centre zero-padding.

    Returns the ``size × size × 3`` uint8 image and the :class:`Geometry` to undo it.
    """
    image = np.asarray(image_rgb_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"preprocess_image expects H×W×3 uint8 RGB, got {image.dtype} {image.shape}")
    geometry = compute_geometry(image.shape[0], image.shape[1], params.size)
    resized = _resize(image, *geometry.resized_shape())
    if params.clahe:
        resized = apply_clahe(resized, params.clahe_clip, params.clahe_tile)
    return _pad(resized, geometry), geometry


def preprocess_mask(mask01: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map an ``orig_h × orig_w`` {0,1} mask onto the canvas (nearest neighbour, zero padding)."""
    mask = np.asarray(mask01)
    if mask.shape != (geometry.orig_h, geometry.orig_w):
        raise ValueError(
            f"mask shape {mask.shape} does not match the image ({geometry.orig_h}, {geometry.orig_w})"
        )
    resized = _resize(mask.astype(np.uint8), *geometry.resized_shape(), interpolation=cv2.INTER_NEAREST)
    return _pad(resized, geometry)


def restore_geometry(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Crop the padding off a ``size × size`` map and resize it (bilinear) to ``orig_h × orig_w``."""
    array = np.asarray(array)
    if array.shape[:2] != (geometry.size, geometry.size):
        raise ValueError(f"expected a {geometry.size}×{geometry.size} array, got {array.shape}")
    h, w = geometry.resized_shape()
    crop = array[geometry.pad_top : geometry.pad_top + h, geometry.pad_left : geometry.pad_left + w]
    crop = np.ascontiguousarray(crop, dtype=np.float32)
    return cv2.resize(crop, (geometry.orig_w, geometry.orig_h), interpolation=cv2.INTER_LINEAR)


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
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
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


def _preprocess_row(row: pd.Series, data_root: Path, split_dir: Path, params: PreprocessParams) -> dict:
    sample_id = str(row["id"])
    image = read_image(data_root / row["image_path"])
    mask = binarise_mask(read_mask(data_root / row["mask_path"]))
    if mask.shape != image.shape[:2]:
        raise PreprocessError(
            f"{data_root / row['mask_path']}: mask is {mask.shape[1]}×{mask.shape[0]}, "
            f"image is {image.shape[1]}×{image.shape[0]}"
        )
    fov_rel = row.get("fov_path")
    has_fov = isinstance(fov_rel, str) and fov_rel != ""
    if has_fov:
        fov = binarise_mask(read_mask(data_root / fov_rel))
        if fov.shape != image.shape[:2]:
            raise PreprocessError(f"{data_root / fov_rel}: FOV mask size {fov.shape} differs from the image")
    else:
        fov = derive_fov(image)
    canvas, geometry = preprocess_image(image, params)
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
    }


def run_preprocess(
    splits_dir: str | Path, data_root: str | Path, out_dir: str | Path, params: PreprocessParams
) -> dict:
    """Preprocess every split listed in ``splits_dir/{train,val,test}.csv``.

    Writes ``out_dir/<split>/{images,masks,fov}/<id>.png`` and ``out_dir/<split>/index.csv``
    (columns :data:`INDEX_COLUMNS`; paths are the source files relative to ``data_root``).
    Returns ``{"size": ..., "clahe": ..., "splits": {split: n}, "fov_derived": n}``.
    """
    splits_dir, data_root, out_dir = Path(splits_dir), Path(data_root), Path(out_dir)
    frames = {split: read_split(splits_dir, split) for split in SPLITS}
    summary: dict[str, Any] = {"size": params.size, "clahe": params.clahe, "splits": {}, "fov_derived": 0}
    with atomic_dir(out_dir) as tmp:
        for split, frame in frames.items():
            split_dir = tmp / split
            for sub in ("images", "masks", "fov"):
                (split_dir / sub).mkdir(parents=True, exist_ok=True)
            rows = [_preprocess_row(row, data_root, split_dir, params) for _, row in frame.iterrows()]
            index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).sort_values("id")
            index.to_csv(split_dir / "index.csv", index=False)
            summary["splits"][split] = len(rows)
            summary["fov_derived"] += int(index["fov_derived"].sum())
    return summary
