"""Fixtures for the data tests: small datasets built once per session (read-only for tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinaseg.core.config import SyntheticParams
from retinaseg.data.synthetic import generate_dataset
from tests.data.builders import make_kaggle_from_drive


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (4 train + 2 test, 64 px) in the layout the generator writes."""
    root = tmp_path_factory.mktemp("synthetic") / "synthetic"
    generate_dataset(root, SyntheticParams(n_train=4, n_test=2, size=64, seed=7))
    return root


@pytest.fixture(scope="session")
def kaggle_drive_root(drive_root, tmp_path_factory) -> Path:
    """A small Kaggle-layout dataset from real DRIVE eyes (2 eyes x 4 copies + 1 test eye, 128 px)."""
    return make_kaggle_from_drive(
        drive_root, tmp_path_factory.mktemp("kaggle"), n_train=2, n_test=1, size=128
    )
