"""Fixtures for the inference/serving tests: a saved tiny trained U-Net and a free port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ports import free_ports
from tests.serving.helpers import train_tiny_unet
from tests.tiny import TINY_PREPROCESS, TINY_UNET


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model directory (model.pt + model.json), threshold 0.5."""
    from retinaseg.models.saved import ModelCard, save_model_dir

    out = tmp_path_factory.mktemp("models") / "unet"
    card = ModelCard(
        name="unet", model_params=dict(TINY_UNET), preprocess=dict(TINY_PREPROCESS), threshold=0.5
    )
    save_model_dir(train_tiny_unet(), card, out)
    return out


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]
