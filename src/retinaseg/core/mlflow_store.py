"""Where the MLflow store is, and fetching a saved model directory from it by URI.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<main repo>/mlflow.db`` (MLflow 3
refuses the plain ``./mlruns`` file store). ``dvc exp run --temp`` / ``--queue`` execute in a
temporary copy at ``<repo>/.dvc/tmp/exps/<tmpdir>/`` where git-ignored files such as
``mlflow.db`` are absent; :func:`retinaseg.core.repo.main_repo_root` resolves such a path back to
``<repo>`` (DVC also exports ``DVC_ROOT`` pointing at the parent repository for those runs), so
queued experiments land in the same store as ``dvc repro``.

This sits in ``core`` so that loading a model by ``models:/…`` or ``runs:/…`` URI
(:func:`retinaseg.models.saved.load_model`) needs nothing above the models layer: it depends on
``mlflow`` only, and imports it only when a URI is actually fetched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from retinaseg.core.errors import RetinasegError
from retinaseg.core.repo import main_repo_root

MLFLOW_SCHEMES = ("models:/", "runs:/")
CHAMPION_ALIAS = "champion"
MODEL_FILES = ("model.json", "model.pt")  # what a saved model directory holds


class TrackingError(RetinasegError, ValueError):
    """An MLflow URI or run that cannot be used (names the URI and the problem)."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<main repo root>/mlflow.db``.

    Inside a DVC stage, ``DVC_ROOT`` (the parent repository, also for temp/queued experiments)
    is the starting point; else the current directory.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    dvc_root = os.environ.get("DVC_ROOT")
    start = dvc_root if dvc_root and Path(dvc_root).is_dir() else None
    return f"sqlite:///{(main_repo_root(start) / 'mlflow.db').as_posix()}"


def is_mlflow_uri(ref: str | Path) -> bool:
    """True for ``models:/…`` and ``runs:/…`` references."""
    return str(ref).startswith(MLFLOW_SCHEMES)


def champion_uri(registered_model: str) -> str:
    """``models:/<registered_model>@champion``: the registry's current champion."""
    return f"models:/{registered_model}@{CHAMPION_ALIAS}"


def download_model_dir(uri: str, dst: str | Path) -> Path:
    """Download a ``models:/…``/``runs:/…`` model's artifacts into ``dst``; return the folder with
    model.json + model.pt.

    The model files may sit anywhere in the downloaded tree (``extra_files/`` of an
    ``mlflow.pytorch`` model, ``artifacts/model_dir/`` of the pyfunc model); the shallowest
    folder holding both wins. Raises :class:`TrackingError` naming the URI.
    """
    # mlflow takes seconds to import: loading a model from a local directory must not pay for it
    import mlflow
    from mlflow.exceptions import MlflowException  # (same)

    store = tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise TrackingError(f"{uri}: cannot download the model from {store} ({exc.message})") from None
    candidates = sorted(
        (p.parent for p in local.rglob(MODEL_FILES[0]) if (p.parent / MODEL_FILES[1]).is_file()),
        key=lambda p: (len(p.parts), str(p)),
    )
    if not candidates:
        raise TrackingError(f"{uri}: the downloaded artifacts hold no folder with {' + '.join(MODEL_FILES)}")
    return candidates[0]


@contextlib.contextmanager
def downloaded_model_dir(uri: str) -> Iterator[Path]:
    """:func:`download_model_dir` into a private temporary folder that is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="retinaseg-model-") as tmp:
        yield download_model_dir(uri, tmp)
