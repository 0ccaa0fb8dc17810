"""Error maps for evaluation: where a prediction agrees with the ground truth and where it does not.

Error overlay legend (colours painted over the fundus image):

==================  ===============  ==========================================
pixel               colour           RGB
==================  ===============  ==========================================
true positive       green            (0, 200, 0)
false positive      red              (255, 40, 40)
false negative      blue             (40, 120, 255)
true negative       the image        unchanged (darkened ×0.35 outside the FOV)
==================  ===============  ==========================================

The probability pictures (tint, grey map) live with inference: :mod:`retinaseg.inference.overlays`.
"""

from __future__ import annotations

import numpy as np

from retinaseg.inference.overlays import as_rgb

TP_COLOUR = (0, 200, 0)
FP_COLOUR = (255, 40, 40)
FN_COLOUR = (40, 120, 255)
OUTSIDE_FOV_DIM = 0.35


def error_overlay(
    image: np.ndarray, pred_bool: np.ndarray, gt_bool: np.ndarray, fov: np.ndarray | None = None
) -> np.ndarray:
    """H×W×3 uint8: TP green, FP red, FN blue over the image (legend in the module docstring).

    With ``fov``, pixels outside it are darkened and not coloured (they are not scored there).
    """
    out = as_rgb(image, pred_bool, gt_bool, fov).copy()
    pred = np.asarray(pred_bool) != 0
    gt = np.asarray(gt_bool) != 0
    inside = np.ones_like(gt) if fov is None else np.asarray(fov) != 0
    out[~inside] = (out[~inside] * OUTSIDE_FOV_DIM).astype(np.uint8)
    out[pred & gt & inside] = TP_COLOUR
    out[pred & ~gt & inside] = FP_COLOUR
    out[~pred & gt & inside] = FN_COLOUR
    return out


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
