"""The saved-model format: a directory with ``model.pt`` (state_dict) and ``model.json`` (ModelCard).

A saved model is self-contained: the card names the architecture and its params, the
preprocessing the model was trained with and the chosen threshold, so evaluation, ``retinaseg
predict``, the pyfunc model and the app rebuild exactly the same model. Weights are a plain
state_dict loaded with ``torch.load(..., weights_only=True)``: nothing is ever unpickled.

:func:`load_model` also takes an MLflow URI (``models:/name@alias``, ``runs:/id/path``): the
artifacts are fetched by :mod:`retinaseg.core.mlflow_store` into a temporary folder that is
deleted once the weights are in memory.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retinaseg.core.config import MODEL_NAMES, ConfigError, PreprocessParams, params_from_dict
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_bytes, write_json
from retinaseg.core.mlflow_store import MODEL_FILES, downloaded_model_dir, is_mlflow_uri
from retinaseg.models.factory import build_model, state_dict_mismatch

CARD_FILE, WEIGHTS_FILE = MODEL_FILES
FORMAT_VERSION = 1


class ModelLoadError(RetinasegError, ValueError):
    """A model reference that cannot be loaded; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class ModelCard:
    """What a saved model needs besides its weights.

    Attributes:
        name: architecture, one of ``MODEL_NAMES``.
        model_params: the ``models.<name>`` params the model was built with.
        preprocess: the ``PreprocessParams`` fields as a dict (a ``PreprocessParams`` is accepted
            and converted).
        threshold: the probability threshold chosen on validation data, or ``None`` (use 0.5).
        extra: anything else worth keeping (training image size, data hash, git commit, epoch…);
            must be JSON-serialisable.
    """

    name: str
    model_params: dict[str, Any]
    preprocess: dict[str, Any]
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, PreprocessParams):
            self.preprocess = dataclasses.asdict(self.preprocess)
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.name!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] or None, got {self.threshold!r}")

    def preprocess_params(self) -> PreprocessParams:
        """The preprocessing as typed ``PreprocessParams`` (validated like params.yaml)."""
        return params_from_dict({"preprocess": self.preprocess}, source=CARD_FILE).preprocess

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the five fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; ``ValueError`` on missing/unknown keys or bad values."""
        if not isinstance(data, dict):
            raise ValueError(f"model card must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {"name", "model_params", "preprocess"}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            problems = [f"missing key(s) {', '.join(missing)}"] * bool(missing)
            problems += [f"unknown key(s) {', '.join(unknown)}"] * bool(unknown)
            raise ValueError(f"bad model card: {'; '.join(problems)}")
        for key in ("model_params", "preprocess", "extra"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"bad model card: {key!r} must be an object")
        card = cls(**data)
        try:
            card.preprocess_params()
        except ConfigError as exc:
            raise ValueError(f"bad model card preprocess: {exc}") from exc
        return card


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DataParallel/DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _json_ready(card_dict: dict[str, Any]) -> dict[str, Any]:
    """The card as plain JSON types; ``ValueError`` before anything is written if it cannot be."""
    try:
        return json.loads(json.dumps(card_dict, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card cannot be written as JSON: {exc}") from exc


def save_model_dir(model: nn.Module, card: ModelCard, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.pt`` (CPU state_dict) and ``out_dir/model.json`` (the card), atomically.

    Wrappers (DDP, ``torch.compile``) are removed first so the keys are the architecture's own.
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    card_dict = _json_ready({"format_version": FORMAT_VERSION, **card.to_dict()})
    write_bytes(out_dir / WEIGHTS_FILE, state_dict_bytes(state))
    write_json(out_dir / CARD_FILE, card_dict)
    return out_dir


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """``torch.save(state)`` as bytes that depend on the tensors only.

    ``torch.save`` to a path names the zip's records after the file (``<stem>/data.pkl``, …), so a
    save through a temporary file (as every atomic write is) would give other bytes each time; into a
    buffer the records are always ``archive/…``, with fixed zip timestamps. Tensors are made
    contiguous so the bytes do not depend on the memory format (channels_last on CUDA).
    """
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _read_card(path: Path) -> ModelCard:
    card_path = path / CARD_FILE
    if not card_path.is_file():
        raise ModelLoadError(card_path, f"missing {CARD_FILE} (not a saved retinaseg model directory)")
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(card_path, f"not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelLoadError(card_path, f"format_version {version!r} is not supported (expected 1)")
    try:
        return ModelCard.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(card_path, str(exc)) from exc


def _read_state_dict(weights_path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise ModelLoadError(weights_path, f"missing {WEIGHTS_FILE}")
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed objects, RuntimeError for corrupt zips
        raise ModelLoadError(weights_path, f"not a loadable state_dict (weights_only): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(weights_path, "expected a state_dict (a mapping of names to tensors)")
    return state


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a saved model directory → ``(model in eval mode on device, card)``.

    The architecture is rebuilt from the card (encoder weights forced to ``None``: the trained
    weights come from ``model.pt``, nothing is downloaded), then the state_dict is loaded strictly.
    Raises :class:`ModelLoadError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(path, "not a directory" if path.exists() else "model directory not found")
    card = _read_card(path)
    device = torch.device(device)
    params = dict(card.model_params)
    if card.name == "resnet34_unet":
        params["encoder_weights"] = None
    try:
        model = build_model(card.name, params)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(path / CARD_FILE, f"cannot build {card.name!r}: {exc}") from exc
    state = _read_state_dict(path / WEIGHTS_FILE, device)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise ModelLoadError(
            path / WEIGHTS_FILE,
            f"weights do not match the {card.name!r} architecture in {CARD_FILE}: {problem}",
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def load_model(ref: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a model from a saved directory or an MLflow URI (``models:/name@alias``, ``runs:/id/path``).

    Returns ``(model in eval mode, card)``; :class:`ModelLoadError` otherwise.
    """
    ref_str = str(ref)
    if Path(ref_str).is_dir():
        return load_model_dir(ref_str, device)
    if is_mlflow_uri(ref_str):
        try:
            with downloaded_model_dir(ref_str) as folder:
                return load_model_dir(folder, device)  # weights are in memory before the folder goes
        except ModelLoadError:
            raise
        except Exception as exc:  # TrackingError, MlflowException, network and registry errors
            raise ModelLoadError(ref_str, f"could not download the MLflow model: {exc}") from exc
    if Path(ref_str).is_file():
        raise ModelLoadError(ref_str, f"is a file; pass the directory holding {CARD_FILE} and {WEIGHTS_FILE}")
    raise ModelLoadError(
        ref_str,
        "not a model directory or MLflow URI (expected models/<name>, models:/<name>@<alias> or runs:/…)",
    )


def local_model_dirs(models_root: str | Path = "models") -> list[Path]:
    """Sub-folders of ``models_root`` that hold a saved model (``model.json`` + ``model.pt``), sorted."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file() and (p / WEIGHTS_FILE).is_file())
