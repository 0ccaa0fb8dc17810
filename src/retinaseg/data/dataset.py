"""PyTorch dataset over one split of the processed data (``data/processed/<split>/``).

Layout read here (written by ``retinaseg.data.preprocess.run_preprocess``)::

    <split_dir>/index.csv                 id, orig_h, orig_w, scale, pad_top, pad_left, size, ...
    <split_dir>/images/<id>.png           RGB uint8, size×size
    <split_dir>/masks/<id>.png            vessels 0/255
    <split_dir>/fov/<id>.png              field of view 0/255

Images are decoded when an item is asked for (in the DataLoader's workers when there are any), so
the memory a dataset holds does not grow with the number of images: a FIVES-sized split (800 images
at 2048²) would take about 17 GB decoded up front (``benchmarks/fives_rss.py`` measures the peak
resident memory of one epoch over such a set). Construction reads only the PNG headers, so a missing,
unreadable or mis-sized file is still reported before training starts.

A decoded sample is kept for the next use while the dataset's cache (``cache_bytes``, per process:
the engine divides ``base.cache_mb`` among the loader's workers) has room; past it, samples are
decoded each time. A small set (DRIVE's 16 training images at 584²: 27 MB) is then decoded once per
process instead of at every random crop (``benchmarks/data_loader.py`` on a 2-core CPU without
loader workers: 192 items/s with the cache, 84 without), and a large one costs at most the budget. The cache hands out copies, so an augmentation that works in
place cannot alter what the next epoch reads; the items, and so the training, are the same with
and without it.

Why lazy PNG decoding rather than memory-mapped arrays written by the preprocess stage: decoding costs
about 13 ms per DRIVE-sized RGB image with OpenCV on one core here (PIL: 18 ms), small next to a
training step and spread over the workers; raw arrays are uncompressed (21 MB per 2048² sample, 17 GB
for FIVES, again in the DVC cache), and mapped pages count in the resident set as they are touched.

Augmentation is seeded per item: the DataLoader's sampler may yield ``(index, seed)`` pairs
(:class:`retinaseg.training.engine` does), and that item's augmentation is drawn from ``seed`` alone,
so the same sampler gives the same batches whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import read_csv
from retinaseg.data.preprocess import image_to_tensor
from retinaseg.data.transforms import apply_train_transform, seed_transform

SUBFOLDERS = ("images", "masks", "fov")


class DatasetError(RetinasegError, ValueError):
    """A processed split that cannot be read (missing folder, missing or unreadable file)."""


class VesselDataset(Dataset):
    """Images, vessel masks and FOV masks of one processed split, decoded per item.

    Args:
        split_dir: ``data/processed/<split>``.
        transform: an albumentations Compose from
            :func:`retinaseg.data.transforms.build_train_transform`, or None (no augmentation).
        length: number of items per pass; larger than the number of images → the images cycle
            (used with random crops for ``train.samples_per_epoch``). None → one per image.

    Items: ``{"image": 3×H×W float (ImageNet-normalised), "mask": 1×H×W float {0,1},
    "fov": 1×H×W float {0,1}, "id": str}``. ``ds[i]`` draws the augmentation from the transform's
    running generator (:meth:`reseed`); ``ds[(i, seed)]`` draws it from ``seed`` alone.

    Example:
        >>> ds = VesselDataset(Path("data/processed/val"))
        >>> ds[0]["image"].shape
        torch.Size([3, 256, 256])
    """

    def __init__(
        self,
        split_dir: str | Path,
        transform: Callable | None = None,
        length: int | None = None,
        cache_bytes: int = 0,
    ):
        self.split_dir = Path(split_dir)
        self.transform = transform
        self.ids = _read_ids(self.split_dir)
        self.sizes = [self._check_sample(sample_id) for sample_id in self.ids]
        if length is not None and length < 1:
            raise ValueError(f"length must be positive, got {length}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.length = length if length is not None else len(self.ids)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0

    def _check_sample(self, sample_id: str) -> tuple[int, int]:
        """(H, W) of one sample, from the PNG headers; the three files must exist and agree."""
        shapes = [_png_shape(self.path(sub, sample_id)) for sub in SUBFOLDERS]
        if len(set(shapes)) != 1:
            image, mask, fov = shapes
            raise DatasetError(
                f"{self.split_dir}: sample {sample_id!r} has image {image}, mask {mask}, fov {fov}; "
                "they must be the same size (re-run the preprocess stage)"
            )
        return shapes[0]

    def path(self, sub: str, sample_id: str) -> Path:
        """``<split_dir>/<sub>/<id>.png`` (``sub``: images, masks or fov)."""
        return self.split_dir / sub / f"{sample_id}.png"

    def __len__(self) -> int:
        return self.length

    @property
    def n_images(self) -> int:
        """Number of distinct images (``len(self)`` may be larger when cycling)."""
        return len(self.ids)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images (the smallest when sizes differ)."""
        return min(h for h, _ in self.sizes), min(w for _, w in self.sizes)

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation's running generator (used by items asked for without a seed)."""
        if self.transform is not None:
            seed_transform(self.transform, int(seed))

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded samples this process's cache holds (at most :attr:`cache_bytes`)."""
        return self._cached_bytes

    def load(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``k`` (of :attr:`ids`): ``(image H×W×3 uint8 RGB, mask H×W {0,1}, fov H×W {0,1})``,
        from the cache (a copy) or decoded, and then cached while the budget has room."""
        cached = self._cache.get(k)
        if cached is not None:
            return tuple(a.copy() for a in cached)  # type: ignore[return-value]
        sample = self.decode(k)
        size = sum(a.nbytes for a in sample)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[k] = tuple(a.copy() for a in sample)  # type: ignore[assignment]
            self._cached_bytes += size
        return sample

    def decode(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode image ``k`` from its PNG files (no cache)."""
        sample_id = self.ids[k]
        image = _read_rgb(self.path("images", sample_id))
        mask = _read_binary(self.path("masks", sample_id))
        fov = _read_binary(self.path("fov", sample_id))
        if not image.shape[:2] == mask.shape == fov.shape:  # changed on disk since construction
            raise DatasetError(
                f"{self.split_dir}: sample {sample_id!r} has image {image.shape[:2]}, mask {mask.shape}, "
                f"fov {fov.shape}; they must be the same size (re-run the preprocess stage)"
            )
        return image, mask, fov

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        k = index % len(self.ids)
        image, mask, fov = self.load(k)
        if self.transform is not None:
            if seed is not None:
                seed_transform(self.transform, int(seed))
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


def _missing(path: Path) -> DatasetError:
    return DatasetError(f"{path}: file not found (listed in {path.parent.parent / 'index.csv'})")


def _png_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the file's header (nothing decoded)."""
    if not path.is_file():
        raise _missing(path)
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


def _read(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise _missing(path)
    array = cv2.imread(str(path), flags)
    if array is None:
        raise DatasetError(f"{path}: not a readable image (OpenCV could not decode it)")
    return array


def _read_rgb(path: Path) -> np.ndarray:
    """A PNG → H×W×3 uint8 RGB."""
    return cv2.cvtColor(_read(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _read_binary(path: Path) -> np.ndarray:
    """A 0/255 mask PNG → H×W uint8 in {0, 1}."""
    return (_read(path, cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
