"""The servers' memory-bounded segmentation: the full-size mask is built in strips and equals the
one inference API's result (``Predictor.segment``), without a full-size float map."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from retinaseg.data.preprocess import Geometry, compute_geometry, restore_geometry
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.saved import load_model_dir
from retinaseg.serving import LowResProbability, full_size_mask, low_res_probability
from tests.serving.helpers import toy_fundus

ULP = 1.2e-7  # bilinear interpolation in float32: numpy and OpenCV may differ in the last bit


def random_low_res(geometry: Geometry, seed: int = 0) -> LowResProbability:
    rng = np.random.default_rng(seed)
    return LowResProbability(rng.random((geometry.size, geometry.size), dtype=np.float32), geometry)


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(2336, 3504, 256), (3504, 2336, 256), (64, 64, 64), (45, 61, 64), (300, 301, 1024), (1000, 37, 96)],
)
def test_strips_equal_restore_geometry(height, width, size):
    low = random_low_res(compute_geometry(height, width, size))
    expected = np.clip(restore_geometry(low.prob, low.geometry), 0.0, 1.0)
    got = np.concatenate([strip for _, strip in low.strips(strip_bytes=width * 4 * 7)])  # 7 rows a strip
    assert got.shape == (height, width) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= ULP
    assert np.abs(low.at_size(height, width) - expected).max() == 0.0


@pytest.mark.parametrize(
    ("height", "width", "size", "crop"),
    [
        (960, 999, 128, (20, 40, 920, 921)),
        (584, 565, 64, (0, 10, 584, 540)),
        (300, 500, 96, (50, 100, 201, 201)),
    ],
)
def test_strips_equal_restore_geometry_when_preprocessing_cropped_to_the_fov(height, width, size, crop):
    # preprocess.scale: fov crops the FOV's box: the map fills the box and is 0 around it
    low = random_low_res(compute_geometry(height, width, size, crop), seed=5)
    expected = np.clip(restore_geometry(low.prob, low.geometry), 0.0, 1.0)
    got = np.concatenate([strip for _, strip in low.strips(strip_bytes=width * 4 * 11)])
    assert got.shape == (height, width) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= ULP
    assert np.abs(low.at_size(height, width) - expected).max() == 0.0
    top, left, h, w = crop
    assert (
        got[:top].max(initial=0) == 0 and got[:, :left].max(initial=0) == 0 and got[top : top + h].max() > 0
    )
    small = low.at_size(height // 4, width // 4)  # for display: the box scaled with the picture
    assert small.shape == (height // 4, width // 4) and small[: max(0, top // 4 - 1)].max(initial=0) == 0


def test_full_size_mask_is_the_thresholded_map():
    low = random_low_res(compute_geometry(700, 900, 128), seed=3)
    prob = np.clip(restore_geometry(low.prob, low.geometry), 0.0, 1.0)
    for threshold in (0.0, 0.3, 0.5, 1.0):
        mask, fraction = full_size_mask(low, threshold, strip_bytes=900 * 4 * 50)
        expected = np.where(prob >= threshold, 255, 0).astype(np.uint8)
        differ = mask != expected
        assert np.all(np.abs(prob[differ] - threshold) <= ULP)  # only where rounding decides
        assert fraction == pytest.approx((mask > 0).mean())
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(ValueError, match="threshold"):
        full_size_mask(low, 1.5)


@pytest.mark.parametrize("tile_size", [1024, 32])  # one pass; sliding window (preprocess size 64)
def test_low_res_path_equals_the_predictor(tiny_model_dir, tile_size):
    model, card = load_model_dir(tiny_model_dir)
    settings = InferenceSettings(tile_size=tile_size, tile_overlap=0.5)
    predictor = Predictor.from_card(model, card, "cpu", settings)
    image = toy_fundus(9, 83, 120)[0]
    low = low_res_probability(predictor, image)
    reference = predictor.probability(image)
    assert low.shape == (83, 120)
    assert np.abs(low.at_size(83, 120) - reference).max() <= 1e-6
    mask, fraction = full_size_mask(low, 0.5)
    seg = predictor.segment([image], 0.5)[0]
    assert np.mean(mask != seg.mask) < 1e-3
    assert fraction == pytest.approx(seg.vessel_fraction, abs=1e-3)


def test_full_size_mask_allocates_no_full_size_float_map():
    height, width = 4000, 6000  # 24 megapixels: a float32 map would be 96 MB
    geometry = compute_geometry(height, width, 256)
    low = random_low_res(geometry)
    tracemalloc.start()
    try:
        mask, _ = full_size_mask(low, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float_map = height * width * 4
    assert mask.nbytes == height * width
    # the uint8 mask (a quarter of the float map) + one 8 MiB strip, its lower rows, the widened crop
    assert peak < mask.nbytes + 32 * 2**20 < float_map, f"peak {peak / 2**20:.0f} MiB"
