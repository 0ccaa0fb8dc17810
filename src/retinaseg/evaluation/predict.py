"""Vessel probability maps from a model: the one inference path used by evaluation, `retinaseg predict`,
the MLflow pyfunc model and the web demo.

``predict_proba`` preprocesses exactly as training did (``retinaseg.data.preprocess``), runs the model on
the whole padded image when it fits in one tile, otherwise on overlapping tiles blended with a Gaussian
weight, optionally averages flip test-time augmentation, applies the sigmoid, and maps the result back
to the input's original height and width.

The sliding window is written here (about 40 lines) rather than imported: MONAI's
``sliding_window_inference`` does the same but MONAI is not a dependency, and pulling it in for one
function would add a large package to every install. The weighting follows MONAI/nnU-Net: a Gaussian
centred on the tile (sigma = tile/8), clamped away from zero so border pixels covered by one tile only
keep a valid weight; overlapping tiles are averaged with those weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from retinaseg.config import EvaluateParams, PreprocessParams
from retinaseg.data.preprocess import image_to_tensor, preprocess_image, restore_geometry

_DEFAULTS = EvaluateParams()  # tile size and overlap when a caller does not pass them

TILE_BATCH = 4  # tiles per forward pass in the sliding window


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` overlap.

    The last tile is aligned to the end, so every position is covered. ``length <= tile`` → ``[0]``.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def gaussian_weight(height: int, width: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """A height×width Gaussian blending weight (peak 1, sigma = ``sigma_scale`` × side), floored at 1e-3."""

    def bell(n: int) -> torch.Tensor:
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        return torch.exp(-(coords**2) / (2.0 * (sigma_scale * n) ** 2))

    w = torch.outer(bell(height), bell(width))
    return (w / w.max()).clamp_min(1e-3)


def _flip_variants(tta: bool) -> list[tuple[int, ...]]:
    # identity, horizontal, vertical, both: the dims flipped on N×C×H×W
    return [(), (3,), (2,), (2, 3)] if tta else [()]


def forward_probs(model: nn.Module, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Sigmoid probabilities N×1×H×W for a normalised batch; with ``tta``, the mean over flips."""
    out = None
    variants = _flip_variants(tta)
    for dims in variants:
        x = torch.flip(batch, dims) if dims else batch
        p = torch.sigmoid(model(x).float())
        p = torch.flip(p, dims) if dims else p
        out = p if out is None else out + p
    return out / len(variants)


def sliding_window_probs(
    model: nn.Module, image: torch.Tensor, tile_size: int, overlap: float, tta: bool = False
) -> torch.Tensor:
    """Probability map H×W for one normalised image 3×H×W (already on the model's device).

    One forward pass when the image fits in a tile; otherwise overlapping tiles, Gaussian-blended.
    """
    _, h, w = image.shape
    if h <= tile_size and w <= tile_size:
        return forward_probs(model, image[None], tta)[0, 0]
    th, tw = min(tile_size, h), min(tile_size, w)
    weight = gaussian_weight(th, tw).to(image.device)
    acc = torch.zeros((h, w), dtype=torch.float32, device=image.device)
    norm = torch.zeros_like(acc)
    boxes = [(y, x) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]
    for i in range(0, len(boxes), TILE_BATCH):
        chunk = boxes[i : i + TILE_BATCH]
        tiles = torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])
        probs = forward_probs(model, tiles, tta)[:, 0]
        for (y, x), p in zip(chunk, probs, strict=True):
            acc[y : y + th, x : x + tw] += p * weight
            norm[y : y + th, x : x + tw] += weight
    return acc / norm


def _as_device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        from retinaseg.training.engine import resolve_device

        return resolve_device("auto")
    return torch.device(device)


def predict_proba(
    model: nn.Module,
    image_rgb_uint8: np.ndarray,
    preprocess: PreprocessParams,
    device: str | torch.device = "cpu",
    tile_size: int = _DEFAULTS.tile_size,
    overlap: float = _DEFAULTS.tile_overlap,
    tta: bool = False,
) -> np.ndarray:
    """Vessel probability map (orig_h × orig_w float32 in [0, 1]) for one H×W×3 uint8 RGB image.

    Args:
        model: a network returning logits N×1×H×W (put in eval mode here).
        image_rgb_uint8: the image as read by ``retinaseg.data.io.read_image``.
        preprocess: the preprocessing the model was trained with (its model card's ``preprocess``).
        device: where to run (``"cpu"``, ``"cuda"``, a ``torch.device``, or ``"auto"``).
        tile_size: preprocessed images larger than this are predicted with a sliding window.
        overlap: fraction of a tile shared with its neighbour.
        tta: average the predictions over horizontal/vertical flips (4 passes).
    """
    return predict_batch(model, [image_rgb_uint8], preprocess, device, tile_size, overlap, tta)[0]


def predict_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    preprocess: PreprocessParams,
    device: str | torch.device = "cpu",
    tile_size: int = _DEFAULTS.tile_size,
    overlap: float = _DEFAULTS.tile_overlap,
    tta: bool = False,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """:func:`predict_proba` for several images; images that fit in one tile go through in batches.

    Every preprocessed image is ``preprocess.size`` square, so images batch together whatever their
    original sizes; each result is mapped back to its own original size.
    """
    dev = _as_device(device)
    model.eval()
    model.to(dev)
    prepared = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an H×W×3 uint8 RGB array, got {arr.dtype} {arr.shape}")
        prepared.append(preprocess_image(arr, preprocess))
    results: list[np.ndarray | None] = [None] * len(prepared)
    with torch.inference_mode():
        fits = [i for i, (p, _) in enumerate(prepared) if max(p.shape[:2]) <= tile_size]
        for start in range(0, len(fits), max(1, batch_size)):
            chunk = fits[start : start + max(1, batch_size)]
            batch = torch.stack([image_to_tensor(prepared[i][0]) for i in chunk]).to(dev)
            probs = forward_probs(model, batch, tta)[:, 0].cpu().numpy()
            for i, p in zip(chunk, probs, strict=True):
                results[i] = p
        for i, (p, _) in enumerate(prepared):
            if results[i] is None:
                tensor = image_to_tensor(p).to(dev)
                results[i] = sliding_window_probs(model, tensor, tile_size, overlap, tta).cpu().numpy()
    out = []
    for prob, (_, geometry) in zip(results, prepared, strict=True):
        restored = restore_geometry(prob.astype(np.float32), geometry)
        out.append(np.clip(restored, 0.0, 1.0).astype(np.float32))
    return out


def scaled_preprocess(preprocess: PreprocessParams, size: int) -> PreprocessParams:
    """A copy of ``preprocess`` with another target size (used to rescale inputs for cross-dataset use)."""
    if size < 8:
        raise ValueError(f"preprocessed size {size} is too small (check --vessel-scale)")
    return dataclasses.replace(preprocess, size=int(size))
