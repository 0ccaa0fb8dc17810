"""Fixtures of the fault suite: a tiny saved model, and predict's earlier output to protect."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.faults.images import picture
from tests.tiny import TINY_UNET


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved U-Net (random weights, 4 channels, depth 2, 32 px preprocessing): seconds to load."""
    import torch

    from retinaseg.core.config import PreprocessParams
    from retinaseg.models.factory import build_model
    from retinaseg.models.saved import ModelCard, save_model_dir

    torch.manual_seed(0)
    card = ModelCard(name="unet", model_params=dict(TINY_UNET), preprocess=PreprocessParams(size=32))
    out = tmp_path_factory.mktemp("faults-model") / "unet"
    save_model_dir(build_model("unet", TINY_UNET), card, out)
    return out


@pytest.fixture(scope="session")
def good_inputs(tmp_path_factory) -> Path:
    """A folder of two good fundus-like pictures (``eye_a.png``, ``eye_b.png``)."""
    folder = tmp_path_factory.mktemp("faults-inputs") / "in"
    folder.mkdir()
    for seed, stem in enumerate(("eye_a", "eye_b")):
        Image.fromarray(picture(seed + 1)).save(folder / f"{stem}.png")
    return folder


@pytest.fixture(autouse=True)
def _neutral_cwd(tmp_path, monkeypatch):
    """Commands run from an empty folder: the built-in params, never the checkout's params.yaml (which
    may be mid-edit) or its outputs."""
    monkeypatch.chdir(tmp_path)
