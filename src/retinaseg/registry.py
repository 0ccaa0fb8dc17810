"""The MLflow model registry: register a model directory and point the ``@champion`` alias at it.

The compare stage ranks the evaluated models (:func:`retinaseg.evaluation.compare.compare_models`)
and hands the choice to :func:`register_champion_choice`, which logs the champion as the pyfunc
model (:mod:`retinaseg.serving`) into the configured experiment, registers it as
``mlflow.registered_model`` and moves the alias (aliases, not the deprecated stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from retinaseg.core.config import MlflowParams, Params
from retinaseg.core.fileio import write_json
from retinaseg.core.mlflow_store import CHAMPION_ALIAS, champion_uri
from retinaseg.inference.predictor import InferenceSettings
from retinaseg.serving import log_pyfunc_model
from retinaseg.tracking import use_experiment, use_store

_DEFAULTS = MlflowParams()  # = params.yaml's mlflow group


def register_champion(
    model_name: str,
    model_dir: str | Path,
    threshold: float | None,
    run_id: str | None = None,
    registered_name: str = _DEFAULTS.registered_model,
    experiment: str = _DEFAULTS.experiment,
    settings: InferenceSettings | None = None,
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc model into MLflow run ``run_id`` (a new run in ``experiment``
    when None), register it as ``registered_name`` and point the ``@champion`` alias at the new
    version. ``settings`` (tile size and overlap) are stored with the model for the server.
    Returns ``{"name", "version", "uri", "run_id", "model_name", "threshold"}``."""
    uri = use_store()
    if run_id is None:
        use_experiment(experiment)
    run_kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"run_name": f"{model_name}-champion"}
    with mlflow.start_run(**run_kwargs) as run:
        info = log_pyfunc_model(model_dir, threshold, settings)
        mlflow.set_tag("champion_model", model_name)
        active_run_id = run.info.run_id
    version = mlflow.register_model(info.model_uri, registered_name)
    client = MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version.version)
    client.set_model_version_tag(registered_name, version.version, "model_name", model_name)
    if threshold is not None:
        client.set_model_version_tag(registered_name, version.version, "threshold", f"{float(threshold):.6f}")
    return {
        "name": registered_name,
        "version": int(version.version),
        "uri": champion_uri(registered_name),
        "run_id": active_run_id,
        "model_name": model_name,
        "threshold": threshold,
    }


def register_champion_choice(
    champion: dict[str, Any],
    params: Params,
    models_dir: str | Path = "models",
    champion_path: str | Path = "models/champion.json",
) -> dict[str, Any]:
    """Register the model :func:`~retinaseg.evaluation.compare.compare_models` chose (in the
    configured experiment and registered model, with params.yaml's tile settings) and rewrite
    ``champion_path`` with the registry's answer; returns the updated champion record."""
    reg = register_champion(
        champion["name"],
        Path(models_dir) / champion["name"],
        champion["threshold"],
        champion["run_id"],
        registered_name=params.mlflow.registered_model,
        experiment=params.mlflow.experiment,
        settings=InferenceSettings.from_params(params.evaluate),
    )
    updated = {
        **champion,
        "run_id": reg.get("run_id", champion["run_id"]),
        "model_uri": reg["uri"],
        "registered_model": reg["name"],
        "version": reg["version"],
    }
    write_json(champion_path, updated)
    return updated
