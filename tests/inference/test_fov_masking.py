"""Outside the field of view the probability is 0: the models learn from FOV pixels only."""

from __future__ import annotations

import numpy as np

from retinaseg.inference.predictor import zero_outside_fov


def _fundus(size: int = 96, margin: float = 3) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (the FOV) on black; and the pixels clearly outside it (3 px past its edge:
    the derived FOV's boundary is smoothed)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    image = np.zeros((size, size, 3), np.uint8)
    image[r < size * 0.4] = (180, 90, 40)
    return image, r > size * 0.4 + margin


def test_probability_outside_the_fov_is_zero_and_inside_unchanged():
    image, outside = _fundus()
    prob = np.full(outside.shape, 0.7, np.float32)
    out = zero_outside_fov(prob, image)
    assert out.dtype == np.float32
    assert np.all(out[outside] == 0.0)
    core = np.zeros_like(outside)
    core[30:66, 30:66] = True  # well inside the disc
    assert np.all(out[core] == np.float32(0.7))


def test_predictions_of_a_real_model_are_zero_on_the_border(tiny_model_dir):
    from retinaseg.inference.loading import load_predictor

    image, outside = _fundus(120, margin=16)  # the FOV edge of the 32 px canvas, resized back (×3.75)
    prob = load_predictor(tiny_model_dir, device="cpu").probability(image)
    assert prob.shape == outside.shape and np.all(prob[outside] == 0.0)
