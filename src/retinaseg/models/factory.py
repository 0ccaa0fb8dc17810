"""Build the three models by name: ``unet``, ``attention_unet`` (written here) and ``resnet34_unet`` (smp).

``build_model(name, params)`` takes the ``models.<name>`` group of params.yaml as a plain dict
(``Params.model_params(name)``) and returns a module mapping ``N×3×H×W`` images to ``N×1×H×W``
logits for any ``H, W``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from retinaseg.core.config import MODEL_NAMES
from retinaseg.models.attention_unet import AttentionUNet
from retinaseg.models.unet import UNet, crop_pads, pad_to_multiple

IN_CHANNELS = 3
CLASSES = 1
WEIGHTS_FLAG = "-S models.resnet34_unet.encoder_weights"


class ResNet34UNet(smp.Unet):
    """smp's ``Unet("resnet34")`` that accepts any input size.

    smp requires H and W to be multiples of the encoder's output stride (32); like
    :class:`~retinaseg.models.unet.UNet`, this pads the input (mirrored) and crops the logits back.
    The state dict is exactly smp's, so ``model.encoder`` and saved weights are interchangeable.

    Args:
        encoder_weights: ``None`` (random init) or ``"imagenet"`` (downloaded by smp from the
            Hugging Face hub).
        in_channels: input channels.
        classes: output logit channels.
    """

    def __init__(
        self, encoder_weights: str | None = None, in_channels: int = IN_CHANNELS, classes: int = CLASSES
    ):
        super().__init__(
            encoder_name="resnet34", encoder_weights=encoder_weights, in_channels=in_channels, classes=classes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, self.encoder.output_stride)
        return crop_pads(super().forward(x), pads)


def _legacy_norm(params: dict[str, Any]) -> dict[str, Any]:
    """Model cards written before ``norm`` replaced ``batch_norm`` (true: ``batch``, false: ``none``)
    still build the model they describe."""
    if "batch_norm" not in params:
        return params
    if "norm" in params:
        raise TypeError("give norm or the older batch_norm, not both")
    params = dict(params)
    legacy = params.pop("batch_norm")
    if not isinstance(legacy, bool):
        raise TypeError(f"batch_norm must be true or false, got {legacy!r}")
    params["norm"] = "batch" if legacy else "none"
    return params


def _build_unet(params: dict[str, Any]) -> nn.Module:
    return UNet(in_channels=IN_CHANNELS, classes=CLASSES, **_legacy_norm(params))


def _build_attention_unet(params: dict[str, Any]) -> nn.Module:
    return AttentionUNet(in_channels=IN_CHANNELS, classes=CLASSES, **_legacy_norm(params))


def _build_resnet34_unet(params: dict[str, Any]) -> nn.Module:
    unknown = sorted(set(params) - {"encoder_weights"})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; known: encoder_weights")
    weights = params.get("encoder_weights")
    if weights is None:
        return ResNet34UNet(encoder_weights=None)
    if weights == "imagenet":
        return _resnet34_unet_imagenet()
    model = ResNet34UNet(encoder_weights=None)
    load_encoder_weights(model, weights)
    return model


def _resnet34_unet_imagenet() -> nn.Module:
    # smp 0.6 fetches the weights with huggingface_hub.hf_hub_download and has no offline fallback;
    # any failure there (no network, proxy, cache) is reported with the flag that avoids it.
    try:
        return ResNet34UNet(encoder_weights="imagenet")
    except Exception as exc:
        raise RuntimeError(
            "could not download the ImageNet weights for resnet34_unet "
            f"(models.resnet34_unet.encoder_weights=imagenet): {type(exc).__name__}: {exc}. "
            f"Train from random init with `{WEIGHTS_FLAG}=null`, or point it to a local encoder "
            f"state_dict file: `{WEIGHTS_FLAG}=/path/to/resnet34_encoder.pt`."
        ) from exc


def load_encoder_weights(model: ResNet34UNet, path: str | Path) -> None:
    """Load a local encoder state_dict file into ``model.encoder`` (strict).

    The file holds a plain state_dict (loaded with ``weights_only=True``) of the ResNet34 encoder;
    keys prefixed ``encoder.`` (a whole smp model's state_dict) are accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: encoder weights file not found (models.resnet34_unet.encoder_weights); "
            f"use `{WEIGHTS_FLAG}=null` for random init or `=imagenet` to download"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable torch state_dict (weights_only load failed: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    if any(k.startswith("encoder.") for k in state):  # a whole smp model: keep its encoder part
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    problem = state_dict_mismatch(model.encoder, state)
    if problem:
        raise ValueError(f"{path}: does not match the resnet34 encoder: {problem}")
    model.encoder.load_state_dict(state, strict=True)


def state_dict_mismatch(module: nn.Module, state: dict[str, torch.Tensor], show: int = 5) -> str | None:
    """Why ``state`` cannot be loaded strictly into ``module`` (a short summary), or ``None`` if it can."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f", … ({len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:show])}{more})")
    return "; ".join(parts) or None


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "unet": _build_unet,
    "attention_unet": _build_attention_unet,
    "resnet34_unet": _build_resnet34_unet,
}
assert set(_BUILDERS) == set(MODEL_NAMES), "factory and config.MODEL_NAMES disagree"


def build_model(name: str, params: dict[str, Any]) -> nn.Module:
    """Build model ``name`` (one of ``MODEL_NAMES``) from its ``models.<name>`` params dict.

    The model returns ``N×1×H×W`` logits for ``N×3×H×W`` input of any size. Unknown names and
    unknown or invalid params raise ``ValueError``; for ``resnet34_unet`` with
    ``encoder_weights="imagenet"`` a failed download raises ``RuntimeError`` naming the flag.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    try:
        return _BUILDERS[name](dict(params))
    except TypeError as exc:
        raise ValueError(f"invalid params for model {name!r} {params!r}: {exc}") from exc


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
