"""Pictures of a prediction: vessels tinted on the image (``retinaseg predict``, the web demo) and a
probability map as a grey image. The evaluation's error maps build on these
(:mod:`retinaseg.evaluation.overlays`).
"""

from __future__ import annotations

import numpy as np

VESSEL_TINT = (0, 255, 120)


def as_rgb(image: np.ndarray, *others: np.ndarray | None) -> np.ndarray:
    """``image`` as H×W×3 uint8 (greyscale repeated); ``ValueError`` when it is not an image or when
    one of ``others`` (masks, maps) has another H×W."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    for arr in others:
        if arr is not None and np.asarray(arr).shape != image.shape[:2]:
            raise ValueError(
                f"overlay array shape {np.asarray(arr).shape} differs from image {image.shape[:2]}"
            )
    return image.astype(np.uint8, copy=False)


def probability_overlay(
    image: np.ndarray, prob: np.ndarray, threshold: float = 0.5, colour: tuple[int, int, int] = VESSEL_TINT
) -> np.ndarray:
    """H×W×3 uint8: pixels with ``prob >= threshold`` tinted ``colour``, more strongly where prob is high."""
    base = as_rgb(image, prob).astype(np.float32)
    p = np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)
    alpha = np.where(p >= threshold, 0.35 + 0.5 * p, 0.0)[..., None]
    tinted = base * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    return np.clip(np.rint(tinted), 0, 255).astype(np.uint8)


def probability_image(prob: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 greyscale rendering of a probability map (0 → black, 1 → white)."""
    grey = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
