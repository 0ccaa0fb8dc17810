"""The three segmentation models and the saved-model format.

- :mod:`retinaseg.models.unet` — :class:`UNet` (Ronneberger et al., 2015), written here.
- :mod:`retinaseg.models.attention_unet` — :class:`AttentionUNet` (Oktay et al., 2018), written here.
- :mod:`retinaseg.models.factory` — ``build_model(name, params)``, ``count_parameters``; also wraps
  smp's ResNet34-UNet.
- :mod:`retinaseg.models.saved` — ``ModelCard``, ``save_model_dir``, ``load_model_dir``, ``load_model``.

The names below are imported lazily, so ``import retinaseg.models.unet`` does not pay for
importing segmentation-models-pytorch (about 2 s).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "UNet": "retinaseg.models.unet",
    "AttentionUNet": "retinaseg.models.attention_unet",
    "ResNet34UNet": "retinaseg.models.factory",
    "build_model": "retinaseg.models.factory",
    "count_parameters": "retinaseg.models.factory",
    "ModelCard": "retinaseg.models.saved",
    "ModelLoadError": "retinaseg.models.saved",
    "save_model_dir": "retinaseg.models.saved",
    "load_model_dir": "retinaseg.models.saved",
    "load_model": "retinaseg.models.saved",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
