"""Attention U-Net (Oktay et al., 2018): the U-Net of :mod:`retinaseg.models.unet` with additive
attention gates on every skip connection. smp 0.6 has no attention-gate U-Net
(its ``decoder_attention_type="scse"`` is squeeze-and-excitation), so it is written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retinaseg.models.unet import UNet, Up, conv_norm, crop_pads, pad_to_multiple


class AttentionGate(nn.Module):
    """Additive attention gate: ``skip * sigmoid(psi(relu(W_x(skip) + W_g(gate))))``.

    The gating signal comes from the coarser decoder level (half the skip's resolution), as in the
    paper: ``W_x`` (1×1 conv + norm) maps the skip features, which are then average-pooled to the
    gating grid; ``W_g`` (1×1 conv + norm) maps the gating signal; after ReLU, ``psi`` (1×1 conv to
    one channel + norm) and a sigmoid give the coefficients on the coarse grid, which are resampled
    (bilinear) to the skip's size and multiply the skip features.

    Args:
        skip_channels: channels of the skip connection ``x``.
        gate_channels: channels of the gating signal ``g``.
        inter_channels: channels of the intermediate space (default: ``skip_channels // 2``, at least 1).
        norm: the norm after each 1×1 convolution (``batch``, ``instance`` or ``none``; see
            :func:`retinaseg.models.unet.conv_norm`).
    """

    def __init__(
        self,
        skip_channels: int,
        gate_channels: int,
        inter_channels: int | None = None,
        norm: str = "batch",
    ):
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)
        self.w_x = nn.Sequential(*conv_norm(skip_channels, inter, 1, norm))
        self.w_g = nn.Sequential(*conv_norm(gate_channels, inter, 1, norm))
        self.psi = nn.Sequential(*conv_norm(inter, 1, 1, norm))

    def coefficients(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Gate coefficients in [0, 1], shape N×1×h×w at the skip's size."""
        theta_x = F.adaptive_avg_pool2d(self.w_x(skip), gate.shape[-2:])
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + self.w_g(gate))))
        return F.interpolate(alpha, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the gated skip features and the coefficients."""
        alpha = self.coefficients(skip, gate)
        return skip * alpha, alpha


class AttentionUp(Up):
    """A U-Net decoder step whose skip connection passes through an :class:`AttentionGate`
    driven by the coarser decoder features; the last coefficients are kept in ``self.last_alpha``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(in_channels, skip_channels, out_channels, norm)
        self.gate = AttentionGate(skip_channels, in_channels, norm=norm)
        self.last_alpha: torch.Tensor | None = None

    def gate_skip(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gated, alpha = self.gate(skip, coarse)
        self.last_alpha = alpha.detach()  # for visualisation only; keeps no autograd graph alive
        return gated


class AttentionUNet(UNet):
    """U-Net with additive attention gates on every skip connection (Oktay et al., 2018).

    The encoder, decoder and padding are :class:`~retinaseg.models.unet.UNet`'s; each decoder step
    gates its skip features with coefficients computed from the coarser decoder level, so the
    network learns to suppress background (here: the choroid, the optic disc rim, the FOV edge)
    and keep thin vessels. Output: ``N×classes×H×W`` logits for any ``N×in_channels×H×W`` input.

    After each forward pass ``model.attention_maps`` holds the gate coefficients (detached, in
    [0, 1]), finest level first: map ``k`` is ``N×1×ceil(H/2**k)×ceil(W/2**k)``, aligned with the
    input (padding cropped away). ``forward(x, return_attention=True)`` returns ``(logits, maps)``.

    Args:
        in_channels: channels of the input image.
        classes: output logit channels.
        base_channels: channels of the first level; level ``i`` has ``base_channels * 2**i``.
        depth: number of down-sampling steps.
        norm: the norm after every convolution, the gates' 1×1 convolutions included (``batch``,
            ``instance`` or ``none``; see :func:`retinaseg.models.unet.conv_norm`).
        dropout: ``Dropout2d`` probability after the two deepest encoder blocks.

    Example:
        >>> model = AttentionUNet(base_channels=8, depth=3)
        >>> logits, maps = model(torch.zeros(2, 3, 64, 48), return_attention=True)
        >>> logits.shape, [tuple(m.shape) for m in maps]
        (torch.Size([2, 1, 64, 48]), [(2, 1, 64, 48), (2, 1, 32, 24), (2, 1, 16, 12)])

    Reference:
        Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018,
        https://arxiv.org/abs/1804.03999
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        base_channels: int = 64,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__(in_channels, classes, base_channels, depth, norm, dropout)
        self.attention_maps: list[torch.Tensor] = []

    def _make_up(self, in_channels: int, skip_channels: int, out_channels: int, norm: str) -> Up:
        return AttentionUp(in_channels, skip_channels, out_channels, norm)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x, pads = pad_to_multiple(x, 2**self.depth)
        logits = crop_pads(self.head(self.decode(self.encode(x))), pads)
        # self.ups runs coarse to fine; level k (finest = 0) is ups[depth - 1 - k]
        self.attention_maps = [
            crop_pads(up.last_alpha, pads, scale=2**k)
            for k, up in enumerate(reversed(self.ups))
            if up.last_alpha is not None
        ]
        if return_attention:
            return logits, self.attention_maps
        return logits
