"""Fixtures for the inference/serving tests: a saved tiny trained U-Net and a free port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
