"""predict_proba: sliding window vs whole image, full coverage, flips, geometry round trip, batching."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch import nn

from retinaseg.core.config import PreprocessParams
from retinaseg.inference.predictor import (
    InferenceSettings,
    Predictor,
    autocast_dtype,
    fold_batch_norm,
    gaussian_weight,
    predict_batch,
    predict_proba,
    sliding_window_probs,
    tile_starts,
)
from retinaseg.models.factory import build_model
from tests.tiny import TINY_UNET


class GreenDarkness(nn.Module):
    """Pointwise (1×1) net: logit = -8 × normalised green. Dark (vessel-like) pixels → high probability.

    Each output pixel depends on its own input pixel only, so tiling cannot change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 1] = -8.0
            self.conv.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConstantLogit(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value) + 0 * self.dummy


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(64, 24, 0.25), (100, 32, 0.5), (33, 32, 0.0), (10, 32, 0.25)]
)
def test_tile_starts_cover_every_position(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        assert s >= 0 and s + min(tile, length) <= length
        covered[s : s + tile] = True
    assert covered.all()
    if length > tile:  # neighbours overlap by at least the requested fraction
        assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) <= tile * (1 - overlap) + 1


def test_gaussian_weight_peaks_in_the_centre_and_never_vanishes():
    w = gaussian_weight(32, 32)
    assert w.max() == pytest.approx(1.0) and w.min() >= 1e-3
    assert w[16, 16] > w[0, 0]


def test_sliding_window_equals_whole_image_for_a_pointwise_net():
    torch.manual_seed(0)
    model = GreenDarkness().eval()
    image = torch.randn(3, 64, 64)
    with torch.inference_mode():
        whole = sliding_window_probs(model, image, tile_size=64, overlap=0.25)
        tiled = sliding_window_probs(model, image, tile_size=24, overlap=0.25)
    assert torch.allclose(whole, tiled, atol=1e-6)


def test_sliding_window_covers_every_pixel():
    model = ConstantLogit(1.5).eval()
    with torch.inference_mode():
        probs = sliding_window_probs(model, torch.zeros(3, 70, 70), tile_size=32, overlap=0.3)
    assert torch.allclose(probs, torch.full((70, 70), torch.sigmoid(torch.tensor(1.5)).item()), atol=1e-6)


def test_sliding_window_close_to_whole_image_for_a_unet():
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET).eval()
    image = torch.randn(3, 64, 64)
    with torch.inference_mode():
        whole = sliding_window_probs(model, image, tile_size=64, overlap=0.5)
        tiled = sliding_window_probs(model, image, tile_size=32, overlap=0.5)
    # identical except where a tile border cut the receptive field; Gaussian blending keeps that small
    assert (whole - tiled).abs().mean() < 0.02


def test_predict_proba_restores_original_geometry():
    h, w = 37, 53  # odd, landscape: resized then padded, then restored
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    image[:, : w // 2, 1] = 20  # dark green on the left half → vessel-like
    pre = PreprocessParams(size=64)
    prob = predict_proba(GreenDarkness(), image, pre, "cpu", tile_size=512)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    assert prob[:, : w // 2 - 2].min() > 0.9  # left: vessel
    assert prob[:, w // 2 + 2 :].max() < 0.1  # right: background
    tiled = predict_proba(GreenDarkness(), image, pre, "cpu", tile_size=24, overlap=0.25)
    np.testing.assert_allclose(tiled, prob, atol=1e-5)


def test_tta_is_flip_equivariant_and_batch_matches_single():
    torch.manual_seed(1)
    model = build_model("unet", TINY_UNET).eval()
    image = _image(40, 48, seed=2)
    pre = PreprocessParams(size=32)
    p_tta = predict_proba(model, image, pre, "cpu", tta=True)
    p_tta_flipped = predict_proba(model, image[:, ::-1].copy(), pre, "cpu", tta=True)
    # averaging over the flip group makes the prediction of a flipped image the flipped prediction
    np.testing.assert_allclose(p_tta_flipped[:, ::-1], p_tta, atol=1e-4)
    images = [image, _image(30, 30, seed=3), _image(50, 20, seed=4)]
    batched = predict_batch(model, images, pre, "cpu", batch_size=2)
    for img, b in zip(images, batched, strict=True):
        assert b.shape == img.shape[:2]
        np.testing.assert_allclose(b, predict_proba(model, img, pre, "cpu"), atol=1e-5)


def test_predict_proba_is_deterministic_and_rejects_bad_input():
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET)
    image = _image(33, 33)
    pre = PreprocessParams(size=32)
    a = predict_proba(model, image, pre, "cpu")
    b = predict_proba(model, image, pre, "cpu")
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        predict_proba(model, image[..., 0], pre, "cpu")


@pytest.mark.gpu
def test_cuda_predictions_match_cpu():
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET).eval()
    images = [_image(40, 48, seed=5), _image(70, 70, seed=6)]
    pre = PreprocessParams(size=64)
    cpu = predict_batch(model, images, pre, "cpu", tile_size=48, overlap=0.25, tta=True)
    cuda = predict_batch(model, images, pre, "cuda", tile_size=48, overlap=0.25, tta=True)
    assert next(model.parameters()).device.type == "cuda"
    for a, b in zip(cpu, cuda, strict=True):
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, atol=1e-3)


# ------------------------------------------------------------------ speed paths, exercised on the CPU


def _vessel_sample(size: int = 64, seed: int = 0):
    from tests.training.processed_data import make_sample

    return make_sample(np.random.default_rng(seed), size)


def _fov_f1(prob: np.ndarray, mask: np.ndarray, fov: np.ndarray, threshold: float = 0.5) -> float:
    pred, truth, inside = prob >= threshold, mask > 0, fov > 0
    tp = np.sum(pred & truth & inside)
    fp = np.sum(pred & ~truth & inside)
    fn = np.sum(~pred & truth & inside)
    return 2 * tp / (2 * tp + fp + fn)


def test_batched_tiles_equal_tiles_one_at_a_time():
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET).eval()
    image = torch.randn(3, 80, 72)
    with torch.inference_mode():
        one = sliding_window_probs(model, image, tile_size=32, overlap=0.25, tile_batch=1)
        many = sliding_window_probs(model, image, tile_size=32, overlap=0.25, tile_batch=6)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)


def test_channels_last_gives_the_same_probabilities():
    torch.manual_seed(0)
    model = build_model("unet", TINY_UNET)
    images = [_image(40, 48, seed=7), _image(70, 70, seed=8)]
    pre = PreprocessParams(size=64)
    on = predict_batch(model, images, pre, "cpu", tile_size=48, channels_last=True)
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    off = predict_batch(model, images, pre, "cpu", tile_size=48, channels_last=False)
    assert next(model.parameters()).is_contiguous()
    for a, b in zip(on, off, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _trained_like_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Batch norms with the statistics and affine terms a training run leaves (not the identity of a
    fresh one, which folding would reproduce trivially)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "params", "left"),
    [
        ("unet", TINY_UNET, 0),
        ("attention_unet", TINY_UNET, 0),
        # the ResNet34 encoder's blocks hold their norms as attributes: the decoder's and the
        # downsampling shortcuts' are folded, the blocks' stay
        ("resnet34_unet", {"encoder_weights": None}, 33),
    ],
)
def test_folding_batch_norms_keeps_the_function_and_leaves_the_model_alone(name, params, left):
    torch.manual_seed(0)
    model = _trained_like_batch_norms(build_model(name, params), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batch_norm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == left < n_norms
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    # the caller's model is unchanged: same modules, same tensors
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_norms
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _LockedNet(nn.Module):
    """A conv + norm that cannot be deep-copied (it holds a lock, as a test double of the server does)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.BatchNorm2d(1))
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_folding_returns_a_model_with_nothing_to_fold_and_warns_for_one_it_cannot_copy():
    plain = nn.Sequential(nn.Conv2d(3, 1, 3), nn.ReLU()).eval()
    assert fold_batch_norm(plain) is plain  # nothing to fold: no copy
    # instance norms (models.unet.norm: instance) keep no running statistics: nothing to fold either
    instance = build_model("unet", {**TINY_UNET, "norm": "instance"}).eval()
    assert fold_batch_norm(instance) is instance
    locked = _LockedNet().eval()
    with pytest.warns(UserWarning, match=r"_LockedNet cannot be copied .*fold_batch_norm=False"):
        assert fold_batch_norm(locked) is locked
    assert isinstance(locked.body[1], nn.BatchNorm2d)  # unfolded, unchanged


def test_the_predictor_folds_by_default_and_predicts_the_same_maps():
    torch.manual_seed(0)
    model = _trained_like_batch_norms(build_model("unet", TINY_UNET), seed=3)
    pre = PreprocessParams(size=64)
    images = [_image(40, 48, seed=7), _image(70, 70, seed=8)]
    folded = Predictor(model, pre, "cpu", InferenceSettings(tile_size=48))
    kept = Predictor(model, pre, "cpu", InferenceSettings(tile_size=48, fold_batch_norm=False))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.model.modules())
    for a, b in zip(folded.probabilities(images), kept.probabilities(images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, "fp32") is None  # auto: fp32 off CUDA
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp16") is torch.float16
    if torch.cuda.is_available():
        assert autocast_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)
        assert autocast_dtype(torch.device("cuda"), "fp32") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype(cpu, "fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceSettings(precision="half")


def test_bf16_autocast_keeps_the_fov_f1_within_1e_3_of_fp32():
    # the CUDA mixed-precision branch, run with bf16 autocast on the CPU
    image, mask, fov = _vessel_sample(96, seed=3)
    pre = PreprocessParams(size=96)
    model = GreenDarkness()
    with torch.no_grad():  # the threshold between the sample's vessel and background greens
        model.conv.bias.fill_(-6.8)
    fp32 = predict_proba(model, image, pre, "cpu", precision="fp32")
    bf16 = predict_proba(model, image, pre, "cpu", precision="bf16")
    assert _fov_f1(fp32, mask, fov) > 0.5  # the comparison is not between two empty masks
    assert abs(_fov_f1(bf16, mask, fov) - _fov_f1(fp32, mask, fov)) <= 1e-3
    # a U-Net under autocast: fp32 probabilities out, close to the fp32 run
    torch.manual_seed(0)
    unet = build_model("unet", TINY_UNET)
    settings = InferenceSettings(tile_size=48, precision="bf16")
    amp = Predictor(unet, pre, "cpu", settings).probability(image)
    full = Predictor(unet, pre, "cpu", dataclasses.replace(settings, precision="fp32")).probability(image)
    assert amp.dtype == np.float32
    assert np.abs(amp - full).max() < 0.05 and np.abs(amp - full).mean() < 0.01


def test_evaluate_precision_reaches_the_settings():
    from retinaseg.core.config import EvaluateParams

    assert InferenceSettings.from_params(EvaluateParams()).precision == "auto"
    assert InferenceSettings.from_params(EvaluateParams(precision="fp32")).precision == "fp32"


def test_multi_scale_tta_averages_the_maps_of_each_scale_at_the_image_size():
    torch.manual_seed(2)
    model = build_model("unet", TINY_UNET).eval()
    pre = PreprocessParams(size=64)
    images = [_image(40, 48, seed=9), _image(90, 70, seed=10)]  # the second is tiled at tile_size 64
    base = InferenceSettings(tile_size=64, fold_batch_norm=False)
    one = Predictor(model, pre, "cpu", base).probabilities(images)
    # scales (1.0,) is the plain predictor, bit for bit
    same = Predictor(model, pre, "cpu", dataclasses.replace(base, scales=(1.0,))).probabilities(images)
    for a, b in zip(one, same, strict=True):
        assert np.array_equal(a, b)
    multi = Predictor(model, pre, "cpu", dataclasses.replace(base, scales=(0.5, 1.0, 1.5)))
    maps = multi.probabilities(images)
    for i, (image, prob) in enumerate(zip(images, maps, strict=True)):
        assert prob.shape == image.shape[:2] and prob.dtype == np.float32
        at = [
            Predictor(model, dataclasses.replace(pre, size=size), "cpu", base).probability(image)
            for size in (32, 64, 96)  # 0.5, 1 and 1.5 times preprocess.size
        ]
        np.testing.assert_allclose(prob, np.mean(at, axis=0), atol=1e-6)
        assert np.abs(prob - one[i]).max() > 1e-3  # the other scales do change the map
    # a cross-dataset preprocess given to the predictor is scaled in turn
    other = dataclasses.replace(pre, size=48)
    np.testing.assert_allclose(
        multi.probability(images[0], other),
        np.mean(
            [
                Predictor(model, dataclasses.replace(pre, size=s), "cpu", base).probability(images[0])
                for s in (24, 48, 72)
            ],
            axis=0,
        ),
        atol=1e-6,
    )


def test_tta_scales_reach_the_settings_and_bad_scales_are_refused():
    from retinaseg.core.config import EvaluateParams

    assert InferenceSettings.from_params(EvaluateParams()).scales == (1.0,)
    assert InferenceSettings.from_params(EvaluateParams(tta_scales=[0.85, 1.0, 1.15])).scales == (
        0.85,
        1.0,
        1.15,
    )
    for bad in [(), (0.0,), (1.0, -1.0), (float("nan"),)]:
        with pytest.raises(ValueError, match="scales must be positive numbers"):
            InferenceSettings(scales=bad)
