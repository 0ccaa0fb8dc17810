"""A tiny saved U-Net (random weights, 32 px preprocessing) for the `retinaseg predict` tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import TINY_UNET


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch

    from retinaseg.core.config import PreprocessParams
    from retinaseg.models.factory import build_model
    from retinaseg.models.saved import ModelCard, save_model_dir

    torch.manual_seed(0)
    card = ModelCard(name="unet", model_params=dict(TINY_UNET), preprocess=PreprocessParams(size=32))
    out = tmp_path_factory.mktemp("models") / "unet"
    save_model_dir(build_model("unet", TINY_UNET), card, out)
    return out
