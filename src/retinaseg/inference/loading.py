"""Getting a :class:`~retinaseg.inference.predictor.Predictor` from a model reference, and the web
demo's list of models.

A reference is a model package file (``retinaseg model export``), a saved model directory
(``models/<name>``) or an MLflow URI (``models:/name@alias``, ``runs:/id/path``);
:func:`retinaseg.models.saved.load_model` resolves all three.
"""

from __future__ import annotations

from pathlib import Path

import torch

from retinaseg.core.config import MlflowParams
from retinaseg.core.devices import resolve_device
from retinaseg.core.mlflow_store import champion_uri
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.saved import load_model, local_model_dirs


def default_model_ref(mlflow: MlflowParams | None = None) -> str:
    """The registry champion of the configured registered model: ``models:/<registered_model>@champion``."""
    return champion_uri((mlflow or MlflowParams()).registered_model)


def load_predictor(
    ref: str | Path, device: str | torch.device = "auto", settings: InferenceSettings | None = None
) -> Predictor:
    """Load the model ``ref`` (weights only) onto ``device`` (``"auto"``: cuda > mps > cpu) with its
    card's preprocessing and threshold. Raises ``ModelLoadError`` naming the reference."""
    dev = resolve_device(device)
    model, card = load_model(ref, dev)
    return Predictor.from_card(model, card, dev, settings)


def model_choices(default: str, models_root: str | Path = "models") -> list[str]:
    """The demo's model list: ``default`` first (the env override or the registry champion), then
    every local model directory."""
    choices = [default]
    for path in local_model_dirs(models_root):
        if str(path) not in choices:
            choices.append(str(path))
    return choices
