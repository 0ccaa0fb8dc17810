"""Builders of small datasets in each supported on-disk layout, for tests across the project.

Plain functions (not fixtures) so any test can call them with its own ``tmp_path``. Content comes from
:func:`retinaseg.data.synthetic.generate_sample` (or the real DRIVE files for the Kaggle quirk), written
in the formats the real datasets use.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from retinaseg.data.io import read_image, read_mask
from retinaseg.data.synthetic import generate_sample


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        kwargs.setdefault("compress_level", 1)  # fast: these are throwaway test files
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rotate(array: np.ndarray, angle: float, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
    return cv2.warpAffine(array, matrix, (w, h), flags=interpolation, borderValue=0)


def kaggle_variants(image: np.ndarray, mask: np.ndarray, angle: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four copies the Kaggle set keeps of one eye: original, horizontal flip, vertical flip, rotation.

    ``mask`` is grey (0..255, already interpolated); the rotation is bilinear for both.
    """
    return [
        (image, mask),
        (image[:, ::-1].copy(), mask[:, ::-1].copy()),
        (image[::-1].copy(), mask[::-1].copy()),
        (_rotate(image, angle, cv2.INTER_LINEAR), _rotate(mask, angle, cv2.INTER_LINEAR)),
    ]


def make_kaggle_from_drive(
    drive_root: str | Path, out_root: str | Path, n_train: int = 6, n_test: int = 3, size: int = 512
) -> Path:
    """A Kaggle "Retina Blood Vessel"-layout dataset made from real DRIVE eyes, with the Kaggle quirks.

    ``<out_root>/Data/train/{image,mask}/<N>.png``: each of the first ``n_train`` DRIVE training eyes
    stored four times (original, horizontal flip, vertical flip, a rotation by an angle that differs per
    eye), numbered ``4*eye + variant``, so train holds ``4*n_train`` pairs. ``Data/test/...``: the first
    ``n_test`` DRIVE test eyes once each. Everything resized to ``size``×``size`` PNG; masks resized with
    bilinear interpolation, so their edges carry grey values (as in the Kaggle set). Returns ``out_root``.
    """
    drive_root, out_root = Path(drive_root), Path(out_root)
    data = out_root / "Data"

    def load(folder: str, number: int, image_name: str) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(drive_root / folder / "images" / image_name)
        mask = read_mask(drive_root / folder / "1st_manual" / f"{number:02d}_manual1.gif")
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
        return image, mask

    for eye in range(n_train):
        number = 21 + eye
        image, mask = load("training", number, f"{number}_training.tif")
        for variant, (img, msk) in enumerate(kaggle_variants(image, mask, angle=17.0 + 23.0 * eye)):
            _save(data / "train" / "image" / f"{4 * eye + variant}.png", img)
            _save(data / "train" / "mask" / f"{4 * eye + variant}.png", msk)
    for k in range(n_test):
        number = 1 + k
        image, mask = load("test", number, f"{number:02d}_test.tif")
        _save(data / "test" / "image" / f"{k}.png", image)
        _save(data / "test" / "mask" / f"{k}.png", mask)
    return out_root


def make_folder_dataset(
    out_root: str | Path, n: int = 4, size: int = 64, seed: int = 0, split: bool = False, fov: bool = True
) -> Path:
    """A ``folder``-layout dataset: ``images/case_NN.png``, ``masks/case_NN_mask.png`` (0/255),
    ``fov/case_NN_fov.png`` (0/255) when ``fov``. With ``split``, the first ``n`` samples go under
    ``train/`` and ``max(1, n // 2)`` more under ``test/``. Returns ``out_root``.
    """
    out_root = Path(out_root)
    groups = [("train", range(n)), ("test", range(n, n + max(1, n // 2)))] if split else [("", range(n))]
    for sub, indices in groups:
        base = out_root / sub if sub else out_root
        for k in indices:
            image, mask, fov_mask = generate_sample(seed + k, size)
            _save(base / "images" / f"case_{k:02d}.png", image)
            _save(base / "masks" / f"case_{k:02d}_mask.png", mask * 255)
            if fov:
                _save(base / "fov" / f"case_{k:02d}_fov.png", fov_mask * 255)
    return out_root


def make_stare_like(
    out_root: str | Path, n: int = 3, size: int = 64, seed: int = 0, vk_only: tuple[int, ...] = ()
) -> Path:
    """A STARE-layout dataset: ``imNNNN.ppm`` images with ``imNNNN.ah.ppm`` (and ``.vk.ppm``) labels.

    Labels are RGB PPMs with 0/255 values, as STARE ships them. Samples whose index is in ``vk_only``
    have only the ``.vk`` label. Numbering starts at ``im0001``. Returns ``out_root``.
    """
    out_root = Path(out_root)
    for k in range(n):
        image, mask, _ = generate_sample(seed + k, size)
        name = f"im{k + 1:04d}"
        label = np.repeat((mask * 255)[..., None], 3, axis=2)
        _save(out_root / f"{name}.ppm", image, format="PPM")
        _save(out_root / f"{name}.vk.ppm", label, format="PPM")
        if k not in vk_only:
            _save(out_root / f"{name}.ah.ppm", label, format="PPM")
    return out_root


def make_chase_like(out_root: str | Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A CHASE_DB1-layout dataset: ``Image_NNL.jpg``/``Image_NNR.jpg`` with ``_1stHO.png`` and
    ``_2ndHO.png`` labels (0/255 greyscale PNG). The second observer marks what the first did plus
    one more "vessel": the middle row (:func:`second_observer_extra`). Returns ``out_root``.
    """
    out_root = Path(out_root)
    for k in range(n):
        image, mask, _ = generate_sample(seed + k, size)
        name = f"Image_{k // 2 + 1:02d}{'LR'[k % 2]}"
        _save(out_root / f"{name}.jpg", image, format="JPEG", quality=95)
        _save(out_root / f"{name}_1stHO.png", mask * 255)
        _save(out_root / f"{name}_2ndHO.png", np.maximum(mask, second_observer_extra(size)) * 255)
    return out_root


def second_observer_extra(size: int) -> np.ndarray:
    """What :func:`make_chase_like`'s second observer marks beyond the first: the middle row (0/1)."""
    extra = np.zeros((size, size), np.uint8)
    extra[size // 2, :] = 1
    return extra
