"""Builds a tiny processed-data tree (the layout `run_preprocess` writes) for training tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

INDEX_COLUMNS = (
    "id", "orig_h", "orig_w", "scale", "pad_top", "pad_left", "size",
    "image_path", "mask_path", "fov_path", "fov_derived",
)  # fmt: skip


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image RGB uint8, vessel mask {0,1}, fov {0,1}): dark random lines on an orange disc."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    fov = ((yy - c) ** 2 + (xx - c) ** 2 <= (0.48 * size) ** 2).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(4):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(
            mask, tuple(int(v) for v in p1), tuple(int(v) for v in p2), 1, thickness=int(rng.integers(1, 3))
        )
    mask &= fov
    base = np.array([200, 90, 40], np.float32)
    image = base * fov[..., None] * (1 - 0.5 * mask[..., None])
    image += rng.normal(0, 8, image.shape) * fov[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), mask, fov


def make_processed(
    root: Path, n_train: int = 4, n_val: int = 2, n_test: int = 1, size: int = 32, seed: int = 0
) -> Path:
    """Write ``root/{train,val,test}/{images,masks,fov}/<id>.png`` + ``index.csv``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = []
        for k in range(n):
            sid = f"{split}_{k:02d}"
            image, mask, fov = make_sample(rng, size)
            for sub, arr in (("images", image), ("masks", mask * 255), ("fov", fov * 255)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / sub / f"{sid}.png")
            rows.append(
                (
                    sid,
                    size + 3,
                    size + 1,
                    1.0,
                    0,
                    0,
                    size,
                    f"i/{sid}.png",
                    f"m/{sid}.png",
                    f"f/{sid}.png",
                    False,
                )
            )
        pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(root / split / "index.csv", index=False)
    return root
