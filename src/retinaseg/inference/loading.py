"""Getting a :class:`~retinaseg.inference.predictor.Predictor` from a model reference, and the web
demo's list of models.

A reference is a model package file (``retinaseg model export``), a saved model directory
(``models/<name>``) or an MLflow URI (``models:/name@alias``, ``runs:/id/path``);
:func:`retinaseg.models.saved.load_model` resolves all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from retinaseg.core.config import MlflowParams
from retinaseg.core.devices import resolve_device
from retinaseg.core.mlflow_store import champion_uri
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.package import threshold_inference
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


def as_threshold_was_chosen(
    predictor: Predictor, ref: str | Path, tta: bool | None = None, scales: Sequence[float] | None = None
) -> tuple[Predictor, bool]:
    """``predictor`` making its maps as its card's threshold was chosen: the flips and scales a model
    package records (:func:`retinaseg.models.package.threshold_inference`), except ``tta`` and
    ``scales`` where given; without a record, no flips and the predictor's own scales. Returns the
    predictor and whether the record set either. Raises ``ModelLoadError`` for a malformed record."""
    recorded = threshold_inference(predictor.card, ref) if predictor.card is not None else None
    flip = tta if tta is not None else (recorded[0] if recorded else False)
    chosen = tuple(scales) if scales is not None else (recorded[1] if recorded else predictor.settings.scales)
    from_record = recorded is not None and (tta is None or scales is None)
    return predictor.with_settings(tta=flip, scales=chosen), from_record


def model_choices(default: str, models_root: str | Path = "models") -> list[str]:
    """The demo's model list: ``default`` first (the env override or the registry champion), then
    every local model directory."""
    choices = [default]
    for path in local_model_dirs(models_root):
        if str(path) not in choices:
            choices.append(str(path))
    return choices
