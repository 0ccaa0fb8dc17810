"""Shared test fixtures: the repository root, the real DRIVE dataset, a shrunken real config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _drive_root() -> Path:
    env = os.environ.get("RETINASEG_DRIVE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets" / "DRIVE"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped (with the reason) where there is none."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch  # only when a gpu test was collected: collecting the data tests stays light

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def drive_root() -> Path:
    """The real DRIVE dataset (../shared/datasets/DRIVE). In CI it must be there: a missing
    dataset fails the test instead of skipping it, so real-data tests cannot silently vanish."""
    root = _drive_root()
    if not (root / "test" / "1st_manual").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"DRIVE not found at {root} (CI must run the real-data tests)")
        pytest.skip(f"DRIVE not found at {root}; set RETINASEG_DRIVE")
    return root


def _chase_root() -> Path:
    env = os.environ.get("RETINASEG_CHASE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets" / "CHASE_DB1"


@pytest.fixture(scope="session")
def chase_root() -> Path:
    """The real CHASE_DB1 dataset (../shared/datasets/CHASE_DB1: 28 images, two observers, no FOV
    masks); like ``drive_root``, missing in CI is a failure, elsewhere a skip."""
    root = _chase_root()
    if not (root / "Image_01L_1stHO.png").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CHASE_DB1 not found at {root} (CI must run the real-data tests)")
        pytest.skip(f"CHASE_DB1 not found at {root}; set RETINASEG_CHASE")
    return root


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    """An isolated MLflow store per test (never the project's own mlflow.db).

    ``mlflow.set_experiment`` keeps the active experiment in a module global and in the
    MLFLOW_EXPERIMENT_ID environment variable (inherited by subprocesses): both are cleared
    before and after, so no test runs against an experiment id from another test's store."""
    import mlflow
    from mlflow.tracking import fluent

    def _reset() -> None:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        fluent._active_experiment_id = None  # no public API resets it
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

    _reset()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    _reset()
