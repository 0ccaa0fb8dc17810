"""Losses against values computed by hand from their definitions on 2×2 inputs."""

from __future__ import annotations

import math

import pytest
import torch

from retinaseg.core.config import LossParams
from retinaseg.training.losses import SMOOTH, build_loss

LOGITS = [[2.0, -1.0], [0.0, 3.0]]
TARGET = [[1.0, 0.0], [1.0, 0.0]]


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _pixels(weight=((1, 1), (1, 1))):
    """(p, t, w) for every pixel of LOGITS/TARGET."""
    return [
        (_sig(z), t, w)
        for zr, tr, wr in zip(LOGITS, TARGET, weight, strict=True)
        for z, t, w in zip(zr, tr, wr, strict=True)
    ]


def _tversky(pixels, a_fn: float, b_fp: float) -> float:
    tp = sum(w * p * t for p, t, w in pixels)
    fn = sum(w * (1 - p) * t for p, t, w in pixels)
    fp = sum(w * p * (1 - t) for p, t, w in pixels)
    return (tp + SMOOTH) / (tp + a_fn * fn + b_fp * fp + SMOOTH)


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _focal(p: float, t: float, alpha: float, gamma: float) -> float:
    return -alpha * (1 - p) ** gamma * math.log(p) if t else -(1 - alpha) * p**gamma * math.log(1 - p)


def _mean(values, weights) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def _expected(name: str, weight=((1, 1), (1, 1))) -> float:
    px = _pixels(weight)
    ws = [w for _, _, w in px]
    dice = 1 - _tversky(px, 0.5, 0.5)
    if name == "bce_dice":
        return _mean([_bce(p, t) for p, t, _ in px], ws) + 0.5 * dice
    if name == "focal_dice":
        return _mean([_focal(p, t, 0.25, 2.0) for p, t, _ in px], ws) + 0.5 * dice
    return (1 - _tversky(px, 0.7, 0.3)) ** 0.75


def _loss(name: str):
    return build_loss(LossParams(name=name, dice_weight=0.5))


NAMES = ["bce_dice", "focal_dice", "focal_tversky"]


def test_all_half_probabilities_by_hand():
    # p = 0.5 everywhere, 2 of 4 pixels are vessel: BCE = ln 2; TP = FN = FP = 1 -> Dice = (1+1)/(1+1+1) = 2/3
    loss = build_loss(LossParams(name="bce_dice", dice_weight=1.0))
    value = loss(torch.zeros(1, 1, 2, 2), _t([[1, 0], [0, 1]]))
    assert value.item() == pytest.approx(math.log(2) + 1 / 3, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_matches_hand_computed_value(name):
    assert _loss(name)(_t(LOGITS), _t(TARGET)).item() == pytest.approx(_expected(name), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_weight_mask_excludes_pixels(name):
    weight = ((1, 1), (0, 1))  # pixel (1, 0) is outside the FOV
    loss = _loss(name)
    value = loss(_t(LOGITS), _t(TARGET), _t(weight))
    assert value.item() == pytest.approx(_expected(name, weight), rel=1e-5)
    assert value.item() != pytest.approx(_expected(name), rel=1e-3)
    # whatever the model predicts outside the mask changes neither the loss nor the gradient there
    logits = _t(LOGITS).clone()
    logits[0, 0, 1, 0] = -7.0
    logits.requires_grad_(True)
    other = loss(logits, _t(TARGET), _t(weight))
    other.backward()
    assert other.item() == pytest.approx(value.item(), rel=1e-6)
    assert logits.grad[0, 0, 1, 0] == 0


@pytest.mark.parametrize("name", NAMES)
def test_perfect_prediction_is_near_zero(name):
    target = _t([[1, 0], [0, 1]]).repeat(2, 1, 1, 1)
    value = _loss(name)(50.0 * (2 * target - 1), target)
    assert value.item() < 1e-4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["right", "wrong"])
def test_gradients_finite_for_extreme_logits(name, sign):
    target = _t([[1, 0], [0, 1]])
    logits = (sign * 50.0 * (2 * target - 1)).requires_grad_(True)
    value = _loss(name)(logits, target, torch.ones_like(target))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    if sign < 0:
        assert value.item() > 0.5  # confidently wrong is expensive


def test_dice_is_pooled_over_the_batch():
    # two images: pooled Dice equals Dice of the images side by side, not the mean of per-image Dice
    loss = build_loss(LossParams(name="bce_dice", dice_weight=1.0))
    logits = torch.tensor([[[[3.0, -2.0]]], [[[-1.0, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    side_by_side = loss(
        logits.permute(1, 2, 0, 3).reshape(1, 1, 1, 4), target.permute(1, 2, 0, 3).reshape(1, 1, 1, 4)
    )
    per_image = (loss(logits[:1], target[:1]) + loss(logits[1:], target[1:])) / 2
    assert loss(logits, target).item() == pytest.approx(side_by_side.item(), rel=1e-6)
    assert loss(logits, target).item() != pytest.approx(per_image.item(), rel=1e-3)


def test_focal_tversky_alpha_weights_false_negatives():
    # all-background prediction on a vessel pixel is a false negative: a larger alpha costs more
    logits, target = torch.full((1, 1, 1, 2), -4.0), torch.tensor([[[[1.0, 0.0]]]])
    fn_heavy = build_loss(LossParams(name="focal_tversky", tversky_alpha=0.9, tversky_beta=0.1))
    fp_heavy = build_loss(LossParams(name="focal_tversky", tversky_alpha=0.1, tversky_beta=0.9))
    assert fn_heavy(logits, target) > fp_heavy(logits, target)


def test_runs_in_fp32_under_half_inputs():
    value = _loss("bce_dice")(_t(LOGITS).half(), _t(TARGET).half())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_expected("bce_dice"), rel=1e-3)


def test_bad_inputs():
    loss = _loss("bce_dice")
    with pytest.raises(ValueError, match="target shape"):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="weight shape"):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="N×1×H×W"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        build_loss(LossParams(name="dice"))
