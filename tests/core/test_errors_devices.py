"""Errors raised on purpose are RetinasegErrors (and still ValueErrors); the one device resolver."""

from __future__ import annotations

import pytest
import torch

from retinaseg.core.config import ConfigError
from retinaseg.core.devices import resolve_device
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import CsvError
from retinaseg.core.mlflow_store import TrackingError
from retinaseg.data.dataset import DatasetError
from retinaseg.data.io import ImageReadError
from retinaseg.data.preprocess import PreprocessError
from retinaseg.data.sources import SourceError
from retinaseg.models.saved import ModelLoadError
from retinaseg.training.checkpoint import TrainingError


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("x"),
        CsvError("x"),
        TrackingError("x"),
        DatasetError("x"),
        ImageReadError("a.png", "empty file"),
        PreprocessError("x"),
        SourceError("x"),
        ModelLoadError("m", "missing model.json"),
        TrainingError("x"),
    ],
)
def test_errors_share_the_base_and_stay_value_errors(error):
    assert isinstance(error, RetinasegError) and isinstance(error, ValueError)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(RuntimeError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"-S base.device=cpu"):
            resolve_device("cuda")
