"""The classic U-Net (Ronneberger et al., 2015), written here because smp 0.6 has no plain U-Net.

The building blocks (:class:`DoubleConv`, :class:`Down`, :class:`Up`) and the pad/crop helpers
are reused by :mod:`retinaseg.models.attention_unet` and the ResNet34-UNet wrapper in
:mod:`retinaseg.models.factory`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retinaseg.core.config import UNET_NORMS as NORMS

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), the order F.pad takes for 2-D


def check_norm(norm: str) -> None:
    """A ``ValueError`` naming the choices unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> list[nn.Module]:
    """A "same"-padded convolution and the norm after it (none for ``"none"``). With a norm the
    convolution has no bias: the norm's shift replaces it.

    - ``batch``: ``BatchNorm2d``. Training normalises with the batch's statistics and keeps running
      ones; inference uses those: the statistics of the training crops, whatever camera took the image.
    - ``instance``: ``InstanceNorm2d`` with a learned scale and shift and no running statistics. Each
      image (each tile, for images split into tiles) is normalised with its own statistics, in
      training and at inference alike, so an image's overall exposure and contrast are normalised
      away inside the network: the whole network is unchanged (to InstanceNorm's eps) when its input
      is multiplied by a positive number.
    """
    check_norm(norm)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "none")
    if norm == "batch":
        return [conv, nn.BatchNorm2d(out_channels)]
    if norm == "instance":
        return [conv, nn.InstanceNorm2d(out_channels, affine=True)]
    return [conv]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Pads]:
    """Pad an N×C×H×W tensor so H and W are multiples of ``multiple``; return it and the pads.

    The padding is split evenly between the two sides and mirrors the image (``reflect``) so the
    network sees no artificial edge; inputs too small to reflect (pad ≥ side) are padded by
    repeating the border instead.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    pads: Pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    if pad_h == 0 and pad_w == 0:
        return x, pads
    mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
    return F.pad(x, pads, mode=mode), pads


def crop_pads(x: torch.Tensor, pads: Pads, scale: int = 1) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a tensor whose grid is ``scale`` times coarser than the input."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    top_s, left_s = top // scale, left // scale
    height = -(-(h * scale - top - bottom) // scale)  # ceil division: cover every input pixel
    width = -(-(w * scale - left - right) // scale)
    return x[..., top_s : top_s + height, left_s : left_s + width]


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by a norm (:func:`conv_norm`) and ReLU; optional 2-D dropout.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        norm: ``batch``, ``instance`` or ``none`` (see :func:`conv_norm`).
        dropout: probability of ``Dropout2d`` after the block; 0 disables it.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [*conv_norm(c_in, out_channels, 3, norm), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """One encoder step: 2×2 max-pool, then a :class:`DoubleConv` (usually doubling the channels)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, norm, dropout))


class Up(nn.Module):
    """One decoder step: 2×2 transposed convolution (halving the channels), concatenation with the
    encoder's skip features, then a :class:`DoubleConv`.

    Args:
        in_channels: channels of the coarser decoder feature map (the gating level).
        skip_channels: channels of the encoder skip connection at the finer level.
        out_channels: output channels.
        norm: see :class:`DoubleConv`.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels, norm)

    def gate_skip(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The skip features passed to the concatenation (unchanged here; gated in Attention U-Net)."""
        return skip

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.gate_skip(coarse, skip)
        return self.conv(torch.cat([skip, self.up(coarse)], dim=1))


class UNet(nn.Module):
    """U-Net for binary segmentation, returning logits (Ronneberger et al., 2015).

    Encoder: a :class:`DoubleConv` at full resolution, then ``depth`` steps of 2×2 max-pool +
    double conv with the channels doubled each time (the last step is the bottleneck). Decoder:
    ``depth`` steps of 2×2 transposed convolution, concatenation with the matching encoder
    features, double conv. A 1×1 convolution produces ``classes`` logit maps. Convolutions are
    padded ("same"), so unlike the paper the output covers the whole input.

    Any input size works: the input is padded (mirrored) to a multiple of ``2**depth`` inside
    :meth:`forward` and the logits are cropped back, so the output is ``N×classes×H×W`` for an
    ``N×in_channels×H×W`` input.

    Args:
        in_channels: channels of the input image (3 for RGB).
        classes: output logit channels (1 for vessel / background).
        base_channels: channels of the first level (64 in the paper: 31.0 M parameters);
            level ``i`` has ``base_channels * 2**i``.
        depth: number of down-sampling steps (4 in the paper).
        norm: the normalisation after every 3×3 convolution (:func:`conv_norm`): ``batch``
            (the default), ``instance`` (each image's own statistics: exposure and contrast
            normalised away) or ``none`` (the paper, which predates batch norm).
        dropout: ``Dropout2d`` probability after the two deepest encoder blocks (the paper puts
            dropout at the end of the contracting path); 0 disables it.

    Example:
        >>> model = UNet(base_channels=16, depth=3)
        >>> model(torch.zeros(1, 3, 37, 45)).shape
        torch.Size([1, 1, 37, 45])

    Reference:
        Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
        Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597
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
        super().__init__()
        check_norm(norm)
        if depth < 1:
            raise ValueError(f"UNet depth must be >= 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"UNet base_channels must be >= 1, got {base_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {dropout}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], norm, dropout if i >= depth - 2 else 0.0) for i in range(depth)
        )
        self.ups = nn.ModuleList(
            self._make_up(widths[i + 1], widths[i], widths[i], norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)

    def _make_up(self, in_channels: int, skip_channels: int, out_channels: int, norm: str) -> Up:
        """The decoder block; subclasses override this to change the skip connections."""
        return Up(in_channels, skip_channels, out_channels, norm)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, finest first; the last one is the bottleneck output."""
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decoder: from the bottleneck up to full resolution, consuming the skips coarse to fine."""
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 2**self.depth)
        return crop_pads(self.head(self.decode(self.encode(x))), pads)
