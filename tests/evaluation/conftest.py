"""A tiny dataset (original files + split CSVs) and a tiny saved U-Net for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinaseg.core.config import PreprocessParams
from retinaseg.models.factory import build_model
from retinaseg.models.saved import ModelCard, save_model_dir
from tests.tiny import TINY_UNET

H, W = 40, 48


def fundus_like(seed: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, vessel mask {0,1}, fov {0,1}): a reddish disk with darker random lines (the vessels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    fov = ((yy - h / 2) ** 2 / (0.48 * h) ** 2 + (xx - w / 2) ** 2 / (0.48 * w) ** 2 <= 1).astype(np.uint8)
    vessels = np.zeros((h, w), dtype=np.uint8)
    for _ in range(4):
        if rng.random() < 0.5:
            vessels[rng.integers(2, h - 2), :] = 1
        else:
            vessels[:, rng.integers(2, w - 2)] = 1
    vessels &= fov
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = 190 * fov
    image[..., 1] = (110 - 70 * vessels) * fov + rng.integers(0, 10, (h, w)) * fov
    image[..., 2] = 40 * fov
    return image, vessels, fov


def write_dataset(root: Path, ids_by_split: dict[str, list[str]], with_fov: bool = True) -> Path:
    """Original files under ``root/{images,masks,fov}`` and ``root/splits/<split>.csv``; returns root."""
    for sub in ("images", "masks", "fov"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, ids in ids_by_split.items():
        rows = []
        for sample_id in ids:
            image, mask, fov = fundus_like(seed)
            seed += 1
            Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
            Image.fromarray(mask * 255).save(root / "masks" / f"{sample_id}.png")
            fov_rel = ""
            if with_fov:
                Image.fromarray(fov * 255).save(root / "fov" / f"{sample_id}.png")
                fov_rel = f"fov/{sample_id}.png"
            rows.append(
                {
                    "id": sample_id,
                    "image_path": f"images/{sample_id}.png",
                    "mask_path": f"masks/{sample_id}.png",
                    "fov_path": fov_rel,
                    "fov_derived": not with_fov,
                }
            )
        (root / "splits").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(root / "splits" / f"{split}.csv", index=False)
    return root


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    return write_dataset(
        tmp_path / "data", {"train": ["t0"], "val": ["v0", "v1"], "test": ["s0", "s1", "s2"]}
    )


@pytest.fixture()
def tiny_model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET)
    card = ModelCard(
        name="unet",
        model_params=TINY_UNET,
        preprocess=PreprocessParams(size=32),
        extra={"train_image_size": 32, "train_orig_width": W, "train_orig_height": H},
    )
    out = tmp_path / "models" / "unet"
    save_model_dir(model, card, out)
    return out
