"""Fixtures for the training tests: a tiny processed dataset and a shrunken real config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retinaseg.core.config import Params, load_params
from tests.tiny import TINY_TRAIN
from tests.training.processed_data import make_processed


@pytest.fixture(scope="session")
def processed_template(tmp_path_factory) -> Path:
    return make_processed(tmp_path_factory.mktemp("processed"), n_train=4, n_val=2, size=32)


@pytest.fixture()
def processed(processed_template, tmp_path) -> Path:
    """A private copy of the tiny processed tree (tests may damage it)."""
    import shutil

    return Path(shutil.copytree(processed_template, tmp_path / "processed"))


@pytest.fixture()
def tiny_params(repo_root) -> Callable[..., Params]:
    """``tiny_params(**{"train.epochs": 2})`` → the project's params.yaml shrunk to seconds of CPU."""

    def make(**overrides: Any) -> Params:
        return load_params(repo_root / "params.yaml", {**TINY_TRAIN, **overrides})

    return make
