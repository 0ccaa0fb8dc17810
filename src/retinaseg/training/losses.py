"""Segmentation losses on logits: BCE + Dice, focal + Dice, focal Tversky.

Every loss is called as ``loss(logits, target, weight=None)`` with ``N×1×H×W`` tensors; the
optional ``weight`` (e.g. the field-of-view mask) restricts the loss to the pixels where it is
non-zero (and weights them by its value). Dice and Tversky are "soft" and pooled over the whole
batch (one score per batch, not a mean of per-image scores), with smoothing :data:`SMOOTH`.

Library pieces: BCE is ``F.binary_cross_entropy_with_logits`` and the focal term is
``torchvision.ops.sigmoid_focal_loss`` (both log-sum-exp stable). The soft Dice/Tversky scores are
written here because smp 0.6's ``DiceLoss``/``TverskyLoss`` do not fit: they take an
``ignore_index`` label rather than a per-pixel weight, they silently return 0 for a batch without
vessels, and ``TverskyLoss`` raises ``1 - TI`` to ``gamma < 1`` without a floor, whose gradient is
infinite (NaN after the chain rule) when a prediction is perfect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from retinaseg.core.config import LossParams

SMOOTH = 1.0  # added to numerator and denominator of Dice/Tversky; tiny next to the pixel counts
_FLOOR = 1e-6  # lower bound of 1 - Tversky before the fractional power (finite gradient at 1)


def _check_inputs(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate shapes; return float32 copies (losses are computed in fp32, also under AMP)."""
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"loss expects logits N×1×H×W, got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"loss target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
    if weight is not None and weight.shape != logits.shape:
        raise ValueError(f"loss weight shape {tuple(weight.shape)} != logits shape {tuple(logits.shape)}")
    weight = None if weight is None else weight.float()
    return logits.float(), target.float(), weight


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-pixel ``values``, weighted by ``weight`` (0 where the weight sums to 0)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def soft_tversky_index(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: float,
    beta: float,
    smooth: float = SMOOTH,
) -> torch.Tensor:
    """Soft Tversky index ``(TP + s) / (TP + alpha·FN + beta·FP + s)`` pooled over the batch.

    ``alpha`` weights false negatives and ``beta`` false positives (the convention of Abraham &
    Khan's focal Tversky loss; alpha = beta = 0.5 is the soft Dice coefficient).
    """
    if weight is not None:
        probs, target = probs * weight, target * weight
    tp = (probs * target).sum()
    fn = ((1.0 - probs) * target).sum()
    fp = (probs * (1.0 - target)).sum()
    return (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``1 - soft Dice`` of ``sigmoid(logits)`` and ``target``, pooled over the batch."""
    return 1.0 - soft_tversky_index(torch.sigmoid(logits), target, weight, 0.5, 0.5)


class BCEDiceLoss(nn.Module):
    """``BCE-with-logits + dice_weight × (1 − soft Dice)``."""

    def __init__(self, dice_weight: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits, target, weight = _check_inputs(logits, target, weight)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return weighted_mean(bce, weight) + self.dice_weight * soft_dice_loss(logits, target, weight)


class FocalDiceLoss(nn.Module):
    """Binary focal loss (Lin et al., 2017) ``+ dice_weight × (1 − soft Dice)``.

    The focal term ``−α_t (1 − p_t)^γ log p_t`` is ``torchvision.ops.sigmoid_focal_loss``
    (α weights the vessel class, ``1 − α`` the background).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, dice_weight: float = 1.0):
        super().__init__()
        self.alpha, self.gamma, self.dice_weight = alpha, gamma, dice_weight

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits, target, weight = _check_inputs(logits, target, weight)
        focal = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="none")
        return weighted_mean(focal, weight) + self.dice_weight * soft_dice_loss(logits, target, weight)


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss ``(1 − TI(α, β))^γ`` (Abraham & Khan, 2019, https://arxiv.org/abs/1810.07842).

    ``α`` weights false negatives, ``β`` false positives (α > β favours recall, which suits thin
    vessels); ``γ < 1`` focuses on examples with a high index. ``1 − TI`` is floored at 1e-6
    before the power so the gradient stays finite for a perfect prediction.
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75):
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits, target, weight = _check_inputs(logits, target, weight)
        index = soft_tversky_index(torch.sigmoid(logits), target, weight, self.alpha, self.beta)
        return (1.0 - index).clamp_min(_FLOOR) ** self.gamma


def build_loss(params: LossParams) -> nn.Module:
    """The loss named by ``train.loss.name``; called as ``loss(logits, target, weight=None)`` → scalar."""
    if params.name == "bce_dice":
        return BCEDiceLoss(dice_weight=params.dice_weight)
    if params.name == "focal_dice":
        return FocalDiceLoss(
            alpha=params.focal_alpha, gamma=params.focal_gamma, dice_weight=params.dice_weight
        )
    if params.name == "focal_tversky":
        return FocalTverskyLoss(
            alpha=params.tversky_alpha, beta=params.tversky_beta, gamma=params.tversky_gamma
        )
    raise ValueError(f"unknown loss {params.name!r}; expected bce_dice | focal_dice | focal_tversky")
