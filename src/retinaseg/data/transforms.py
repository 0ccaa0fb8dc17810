"""Training-time augmentation (albumentations 2.x), applied jointly to image, vessel mask and FOV.

albumentations 2.x ignores the global numpy/random seeds: every :class:`albumentations.Compose`
carries its own generator (``seed=``), so reproducibility comes from seeding the Compose and
reseeding it per epoch and per DataLoader worker (:func:`seed_worker`).

Key convention inside the Compose: the FOV is passed as ``mask`` (so
``CropNonEmptyMaskIfExists`` centres crops on field-of-view pixels rather than on the black
corners) and the vessel mask as the additional mask target ``vessel``. Callers use
:func:`apply_train_transform`, which hides that convention.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch

from retinaseg.core.config import AugmentParams

VESSEL_KEY = "vessel"


def build_train_transform(params: AugmentParams, seed: int) -> A.Compose:
    """The training augmentation pipeline for ``params``, seeded with ``seed``.

    Geometric transforms move image, vessel mask and FOV together; masks are resampled with
    nearest-neighbour interpolation (they stay binary) and filled with 0 outside the image.
    Photometric transforms touch the image only. With ``params.crop_size > 0`` a
    ``crop_size``×``crop_size`` crop containing at least one FOV pixel is taken first.
    """
    transforms: list[A.BasicTransform] = []
    if params.crop_size > 0:
        transforms.append(A.CropNonEmptyMaskIfExists(height=params.crop_size, width=params.crop_size))
    if params.hflip > 0:
        transforms.append(A.HorizontalFlip(p=params.hflip))
    if params.vflip > 0:
        transforms.append(A.VerticalFlip(p=params.vflip))
    if params.rot90 > 0:
        transforms.append(A.RandomRotate90(p=params.rot90))
    if params.rotate_limit > 0 or params.scale_limit > 0:
        transforms.append(
            A.Affine(
                rotate=(-params.rotate_limit, params.rotate_limit),
                scale=(1.0 - params.scale_limit, 1.0 + params.scale_limit),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            )
        )
    if params.brightness_contrast > 0:
        limit = params.brightness_contrast
        transforms.append(A.RandomBrightnessContrast(brightness_limit=limit, contrast_limit=limit, p=0.5))
    if params.gamma > 0:
        low, high = 100 * (1 - params.gamma), 100 * (1 + params.gamma)
        transforms.append(A.RandomGamma(gamma_limit=(low, high), p=0.5))
    return A.Compose(
        transforms,
        additional_targets={VESSEL_KEY: "mask"},
        mask_interpolation=cv2.INTER_NEAREST,
        seed=seed,
    )


def apply_train_transform(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray, fov: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``transform`` jointly: ``(image HxWx3 uint8, mask HxW, fov HxW)`` → same, transformed."""
    out = transform(image=image, mask=fov, **{VESSEL_KEY: mask})
    return out["image"], out[VESSEL_KEY], out["mask"]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed numpy, ``random`` and the dataset's augmentation.

    Inside a worker ``torch.initial_seed()`` is the loader's per-epoch base seed plus the
    worker id (drawn from the loader's ``generator``), so a seeded generator gives every worker
    a distinct, reproducible augmentation stream.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    if dataset is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
