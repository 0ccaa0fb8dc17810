"""Pictures of predictions: error maps for evaluation and probability tints for the web demo.

Error overlay legend (colours painted over the fundus image):

==================  ===============  ==========================================
pixel               colour           RGB
==================  ===============  ==========================================
true positive       green            (0, 200, 0)
false positive      red              (255, 40, 40)
false negative      blue             (40, 120, 255)
true negative       the image        unchanged (darkened ×0.35 outside the FOV)
==================  ===============  ==========================================
"""

from __future__ import annotations

import numpy as np

TP_COLOUR = (0, 200, 0)
FP_COLOUR = (255, 40, 40)
FN_COLOUR = (40, 120, 255)
VESSEL_TINT = (0, 255, 120)
OUTSIDE_FOV_DIM = 0.35


def _check_image(image: np.ndarray, *others: np.ndarray) -> np.ndarray:
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


def error_overlay(
    image: np.ndarray, pred_bool: np.ndarray, gt_bool: np.ndarray, fov: np.ndarray | None = None
) -> np.ndarray:
    """H×W×3 uint8: TP green, FP red, FN blue over the image (legend in the module docstring).

    With ``fov``, pixels outside it are darkened and not coloured (they are not scored there).
    """
    out = _check_image(image, pred_bool, gt_bool, fov).copy()
    pred = np.asarray(pred_bool) != 0
    gt = np.asarray(gt_bool) != 0
    inside = np.ones_like(gt) if fov is None else np.asarray(fov) != 0
    out[~inside] = (out[~inside] * OUTSIDE_FOV_DIM).astype(np.uint8)
    out[pred & gt & inside] = TP_COLOUR
    out[pred & ~gt & inside] = FP_COLOUR
    out[~pred & gt & inside] = FN_COLOUR
    return out


def probability_overlay(
    image: np.ndarray, prob: np.ndarray, threshold: float = 0.5, colour: tuple[int, int, int] = VESSEL_TINT
) -> np.ndarray:
    """H×W×3 uint8: pixels with ``prob >= threshold`` tinted ``colour``, more strongly where prob is high."""
    base = _check_image(image, prob).astype(np.float32)
    p = np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)
    alpha = np.where(p >= threshold, 0.35 + 0.5 * p, 0.0)[..., None]
    tinted = base * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    return np.clip(np.rint(tinted), 0, 255).astype(np.uint8)


def probability_image(prob: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 greyscale rendering of a probability map (0 → black, 1 → white)."""
    grey = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate equal-height H×W×3 panels horizontally with a black gap."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    h = panels[0].shape[0]
    spacer = np.zeros((h, gap, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if panel.shape[0] != h:
            raise ValueError("side_by_side panels must share one height")
        parts.extend([spacer, panel] if i else [panel])
    return np.concatenate(parts, axis=1)
