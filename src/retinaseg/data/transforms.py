"""Training-time augmentation (albumentations 2.x), applied jointly to image, vessel mask and FOV.

albumentations 2.x ignores the global numpy/random seeds: every :class:`albumentations.Compose`
carries its own generator (``seed=``), and ``Compose.set_random_seed`` gives every transform in it
the *same* seed: two transforms with the same probability (``HorizontalFlip(p=0.5)`` and
``VerticalFlip(p=0.5)``) then draw the same numbers and always fire together. :func:`seed_transform`
gives each transform a seed of its own, derived from one seed.

Reproducibility whatever the number of DataLoader workers: the training sampler yields
``(index, seed)`` pairs with ``seed = item_seed(epoch seed, index)``, and the dataset seeds the
transform with it before drawing that item's augmentation (:class:`retinaseg.data.dataset.VesselDataset`),
so an item's augmentation does not depend on which worker made it, nor on the items before it.

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
    Photometric transforms touch the image only; the camera ones (hue and saturation, blur, lighting,
    noise, JPEG) are added only when on, after the others, so that the others draw as before. With
    ``params.crop_size > 0`` a ``crop_size``×``crop_size`` crop containing at least one FOV pixel is
    taken first.
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
    if params.hue_saturation > 0:  # added only when on: the default keeps the seeds of the others
        x = params.hue_saturation
        # shift limits in albumentations' units (its defaults, 20/30/20, at x = 1)
        transforms.append(
            A.HueSaturationValue(
                hue_shift_limit=20 * x, sat_shift_limit=30 * x, val_shift_limit=20 * x, p=0.5
            )
        )
    if params.blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.3, 1.5), p=params.blur))
    if params.illumination > 0:
        # Illumination's third mode, a Gaussian spot, is left out: it goes through cv2.exp, whose
        # result differs between OpenCV's SIMD kernels (AVX2, AVX-512), and with it a model's bytes.
        lighting = [A.Illumination(mode=m, intensity_range=(0.05, 0.2), p=1.0) for m in ("linear", "corner")]
        transforms.append(A.OneOf(lighting, p=params.illumination))
    if params.noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.01, 0.04), per_channel=True, p=params.noise))
    if params.jpeg > 0:
        transforms.append(A.ImageCompression(compression_type="jpeg", quality_range=(40, 90), p=params.jpeg))
    compose = A.Compose(
        transforms,
        additional_targets={VESSEL_KEY: "mask"},
        mask_interpolation=cv2.INTER_NEAREST,
        seed=seed,
    )
    seed_transform(compose, seed)
    return compose


def _mixed(*words: int) -> int:
    """A well-mixed 32-bit seed for a tuple of non-negative integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(w) % 2**64 for w in words]).generate_state(1)[0])


def item_seed(epoch_seed: int, index: int) -> int:
    """The augmentation seed of item ``index`` in the epoch seeded with ``epoch_seed``."""
    return _mixed(epoch_seed, index)


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Seed ``transform`` and give each transform inside it a distinct seed derived from ``seed``.

    ``Compose.set_random_seed`` alone seeds every child identically (see the module docstring).
    """
    transform.set_random_seed(seed)
    for k, child in enumerate(getattr(transform, "transforms", [])):
        if hasattr(child, "transforms"):
            seed_transform(child, _mixed(seed, k))
        elif hasattr(child, "set_random_seed"):
            child.set_random_seed(_mixed(seed, k))


def apply_train_transform(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray, fov: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``transform`` jointly: ``(image HxWx3 uint8, mask HxW, fov HxW)`` → same, transformed."""
    out = transform(image=image, mask=fov, **{VESSEL_KEY: mask})
    return out["image"], out[VESSEL_KEY], out["mask"]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed numpy, ``random`` and the dataset's augmentation.

    Inside a worker ``torch.initial_seed()`` is the loader's base seed plus the worker id (drawn
    from the loader's ``generator``), so a seeded generator gives every worker a distinct,
    reproducible stream for items asked for without a seed. Items asked for as ``(index, seed)``
    (the training sampler's) are seeded per item and do not depend on the worker.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    if dataset is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
