"""A model trained with ``preprocess.scale: fov`` sees the eye at one size however the photograph is
framed: the same eye in a wider black frame gives the same vessel map (the point of scaling by the
field of view's diameter rather than the image's width)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinaseg.core.config import PreprocessParams
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.factory import build_model
from retinaseg.models.saved import ModelCard
from tests.serving.helpers import toy_fundus
from tests.tiny import TINY_UNET


def _predictor(**preprocess) -> Predictor:
    torch.manual_seed(0)
    card = ModelCard(
        name="unet", model_params=dict(TINY_UNET), preprocess=PreprocessParams(size=64, **preprocess)
    )
    return Predictor.from_card(build_model("unet", TINY_UNET), card, "cpu", InferenceSettings())


def _framed(eye: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width, 3), np.uint8)
    out[top : top + eye.shape[0], left : left + eye.shape[1]] = eye
    return out


@pytest.mark.parametrize("normalise", ["none", "fov_standardise"])
def test_the_same_eye_framed_differently_gives_the_same_map(normalise):
    eye, _ = toy_fundus(3, 120, 120)
    yy, xx = np.mgrid[0:120, 0:120]
    eye[(yy - 60) ** 2 + (xx - 60) ** 2 > 57**2] = 0  # black around the disc, as a fundus camera's frame
    wide = _framed(eye, 10, 90, 140, 300)  # the eye off-centre in a wide frame
    fov_scaled = _predictor(scale="fov", normalise=normalise)
    inside = fov_scaled.probability(wide)[10:130, 90:210]
    alone = fov_scaled.probability(eye)
    assert np.abs(inside - alone).max() < 1e-5  # the same box, the same canvas: the same map
    assert fov_scaled.probability(wide)[:, :80].max() == 0  # nothing outside the eye's box
    # width-matching preprocessing sees the framed eye at another size: the maps differ
    image_scaled = _predictor()
    assert (
        np.abs(image_scaled.probability(wide)[10:130, 90:210] - image_scaled.probability(eye)).mean() > 0.01
    )
