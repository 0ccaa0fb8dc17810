"""MLflow tracking: the experiment, one run per training (tags, params, metrics, the model), lookups.

Where the store is (:func:`retinaseg.core.mlflow_store.tracking_uri`) and fetching models by URI
live in ``core``, so the layers below can load a registered model; this module is the writing side.
Experiments are created with their artifacts beside a local sqlite store
(``<dir>/mlartifacts/<experiment>``), never in ``./mlruns`` of the working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from torch import nn

from retinaseg.core.config import Params
from retinaseg.core.fileio import write_png
from retinaseg.core.mlflow_store import TrackingError, tracking_uri
from retinaseg.core.repo import git_commit
from retinaseg.training.logger import TrainingLogger

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
SUMMARY_METRICS = ("best_val_dice", "best_epoch", "train_seconds", "n_params")


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local sqlite store (``<dir>/mlartifacts/<experiment>``), not in the cwd."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None  # a tracking server decides for itself
    db = Path(uri[len(prefix) :])
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri()


_ANSWERED: set[str] = set()  # tracking servers that answered their health check in this process
HEALTH_TIMEOUT_S = 10


def check_server(uri: str) -> None:
    """An ``http(s)://`` tracking server must answer ``/health``, else :class:`TrackingError` naming
    ``MLFLOW_TRACKING_URI`` (MLflow itself would retry for minutes and end in a traceback)."""
    if not uri.startswith(("http://", "https://")) or uri in _ANSWERED:
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as response:
            response.read()
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
        raise TrackingError(
            f"the MLflow server at {uri} (MLFLOW_TRACKING_URI) does not answer: {exc}; start it "
            "(make services) or unset MLFLOW_TRACKING_URI to use the local store (sqlite:///mlflow.db)"
        ) from None
    _ANSWERED.add(uri)


def use_store() -> str:
    """Point MLflow at :func:`tracking_uri` (left alone when it already agrees); returns the URI.
    A tracking server that does not answer is a :class:`TrackingError` (:func:`check_server`)."""
    uri = tracking_uri()
    check_server(uri)
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return uri


# MLflow 3's UI opens an experiment on its GenAI "Traces" tab unless the experiment says it is about
# training models: then it opens on the runs table, where the three models are compared.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def use_experiment(name: str) -> str:
    """Point MLflow at the store and make ``name`` the active experiment (created with its artifacts
    beside a local store when absent); returns the tracking URI."""
    uri = use_store()
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another run
            client.create_experiment(
                name, artifact_location=_artifact_location(uri, name), tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
    experiment = mlflow.set_experiment(name)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:  # stores made before this tag existed
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return uri


def run_tags(params: Params, model_name: str, data_hash: str, device: str) -> dict[str, str]:
    """The tags every training run carries."""
    return {
        "model": model_name,
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_stage": os.environ.get("DVC_STAGE", f"train@{model_name}"),
        "data_source": params.data.source,
        "data_hash": data_hash,
        "device": device,
    }


def run_params(params: Params, model_name: str) -> dict[str, str]:
    """Every param the train stage reads, flattened, as MLflow-sized strings."""
    flat = params.flat("base", "train", "augment", "preprocess", f"models.{model_name}")
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in flat.items()}


@contextlib.contextmanager
def start_run(params: Params, model_name: str, data_hash: str, device: str) -> Iterator[Any]:
    """An MLflow run named after the model in ``params.mlflow.experiment``, with tags and params
    logged; yields the active run."""
    use_experiment(params.mlflow.experiment)
    with mlflow.start_run(run_name=model_name, tags=run_tags(params, model_name, data_hash, device)) as run:
        mlflow.log_params(run_params(params, model_name))
        yield run


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """Log one epoch's metrics with ``step=epoch`` to the active run."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(epoch))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file or a folder's files to the active run."""
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def model_sha256(model_dir: str | Path) -> str:
    """sha256 of a saved model's weights file: ties the DVC output to the MLflow run that trained it
    (run ids change from run to run, so they are not written into DVC-tracked files)."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.pt", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _newest_run_id(experiment: str, filter_string: str) -> str | None:
    """The id of the newest run in ``experiment`` matching ``filter_string`` (None if none)."""
    use_store()
    if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def training_run_id(model_dir: str | Path, model_name: str, experiment: str) -> str | None:
    """The newest run in ``experiment`` that trained exactly ``model_dir/model.pt`` (tag
    ``model_sha256``), or None when there is none (a model trained elsewhere, another store)."""
    sha = model_sha256(model_dir)
    return _newest_run_id(experiment, f"tags.model = '{model_name}' and tags.model_sha256 = '{sha}'")


def latest_run_id(model_name: str, experiment: str) -> str | None:
    """The id of the most recent run tagged ``model=<model_name>`` in ``experiment`` (None if none)."""
    return _newest_run_id(experiment, f"tags.model = '{model_name}'")


class MlflowTrainingLogger(TrainingLogger):
    """The training engine's reports as one MLflow run (what ``stages/train.py`` passes):
    tags and params at the start, metrics per epoch, then the summary metrics, the history CSV,
    sample panels and the model (the project's pyfunc model, logged as code with model.json +
    model.pt: no pickled module, so loading ``runs:/<id>/model`` never unpickles project code)."""

    @contextlib.contextmanager
    def run(self, params: Params, model_name: str, data_hash: str, device: str) -> Iterator[str | None]:
        with start_run(params, model_name, data_hash, device) as run:
            yield run.info.run_id

    def log_environment(self, environment: dict[str, str]) -> None:
        """The package set, Python/torch versions and CPU/GPU the model was trained with, as tags."""
        mlflow.set_tags({f"env.{key}": str(value) for key, value in environment.items()})

    def log_epoch(self, row: dict[str, float]) -> None:
        log_epoch({k: v for k, v in row.items() if k != "epoch"}, epoch=int(row["epoch"]))

    def log_outputs(
        self,
        summary: dict[str, Any],
        history_csv: Path,
        samples: Sequence[tuple[str, np.ndarray]],
        model: nn.Module,
        model_dir: Path,
    ) -> None:
        mlflow.log_metrics({k: float(summary[k]) for k in SUMMARY_METRICS})
        log_artifact(history_csv, artifact_path="training")
        with tempfile.TemporaryDirectory(prefix="retinaseg-samples-") as tmp:
            for sample_id, panel in samples:
                write_png(Path(tmp) / f"{sample_id}.png", panel)
            log_artifact(tmp, artifact_path="samples")
        # imported here: serving imports the inference stack, which a logger-only import does not need
        from retinaseg.serving import log_pyfunc_model

        log_pyfunc_model(model_dir, threshold=None, name="model")
        mlflow.set_tag("model_sha256", model_sha256(model_dir))  # how evaluate finds this run
