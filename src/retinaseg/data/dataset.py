"""PyTorch dataset over one split of the processed data (``data/processed/<split>/``).

Layout read here (written by ``retinaseg.data.preprocess.run_preprocess``)::

    <split_dir>/index.csv                 id, orig_h, orig_w, scale, pad_top, pad_left, size, ...
    <split_dir>/images/<id>.png           RGB uint8, size×size
    <split_dir>/masks/<id>.png            vessels 0/255
    <split_dir>/fov/<id>.png              field of view 0/255

The datasets are small (tens of images), so every image is decoded once into memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import read_csv
from retinaseg.data.preprocess import image_to_tensor
from retinaseg.data.transforms import apply_train_transform


class DatasetError(RetinasegError, ValueError):
    """A processed split that cannot be read (missing folder, missing or unreadable file)."""


class VesselDataset(Dataset):
    """Images, vessel masks and FOV masks of one processed split.

    Args:
        split_dir: ``data/processed/<split>``.
        transform: an albumentations Compose from
            :func:`retinaseg.data.transforms.build_train_transform`, or None (no augmentation).
        length: number of items per pass; larger than the number of images → the images cycle
            (used with random crops for ``train.samples_per_epoch``). None → one per image.

    Items: ``{"image": 3×H×W float (ImageNet-normalised), "mask": 1×H×W float {0,1},
    "fov": 1×H×W float {0,1}, "id": str}``.

    Example:
        >>> ds = VesselDataset(Path("data/processed/val"))
        >>> ds[0]["image"].shape
        torch.Size([3, 256, 256])
    """

    def __init__(self, split_dir: str | Path, transform: Callable | None = None, length: int | None = None):
        self.split_dir = Path(split_dir)
        self.transform = transform
        self.ids = _read_ids(self.split_dir)
        self.images = [_read_png(self.split_dir / "images" / f"{i}.png", "RGB") for i in self.ids]
        self.masks = [_read_binary(self.split_dir / "masks" / f"{i}.png") for i in self.ids]
        self.fovs = [_read_binary(self.split_dir / "fov" / f"{i}.png") for i in self.ids]
        for image, mask, fov, sample_id in zip(self.images, self.masks, self.fovs, self.ids, strict=True):
            if not image.shape[:2] == mask.shape == fov.shape:
                raise DatasetError(
                    f"{self.split_dir}: sample {sample_id!r} has image {image.shape[:2]}, mask {mask.shape}, "
                    f"fov {fov.shape}; they must be the same size (re-run the preprocess stage)"
                )
        if length is not None and length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length if length is not None else len(self.ids)

    def __len__(self) -> int:
        return self.length

    @property
    def n_images(self) -> int:
        """Number of distinct images (``len(self)`` may be larger when cycling)."""
        return len(self.ids)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images (the smallest when sizes differ)."""
        return min(im.shape[0] for im in self.images), min(im.shape[1] for im in self.images)

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation (called per epoch and per DataLoader worker)."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(seed))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        k = index % len(self.ids)
        image, mask, fov = self.images[k], self.masks[k], self.fovs[k]
        if self.transform is not None:
            image, mask, fov = apply_train_transform(self.transform, image, mask, fov)
        return {
            "image": image_to_tensor(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "fov": torch.from_numpy(np.ascontiguousarray(fov, dtype=np.float32))[None],
            "id": self.ids[k],
        }


def _read_ids(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: processed split folder not found (run the preprocess stage first)")
    index = split_dir / "index.csv"
    if index.is_file():
        try:
            frame = read_csv(index, text_columns=("id",), required=("id",), what="processed index")
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        ids = [str(i) for i in frame["id"]]
    else:
        # no index (hand-made folder): the image files define the samples
        ids = sorted(p.stem for p in (split_dir / "images").glob("*.png"))
    if not ids:
        raise DatasetError(f"{split_dir}: the split is empty (no samples in index.csv or images/)")
    return ids


def _read_png(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (listed in {path.parent.parent / 'index.csv'})")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode), dtype=np.uint8).copy()
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


def _read_binary(path: Path) -> np.ndarray:
    """A 0/255 mask PNG → HxW uint8 in {0, 1}."""
    return (_read_png(path, "L") > 127).astype(np.uint8)
