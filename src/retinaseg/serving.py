"""The MLflow pyfunc model (``mlflow models serve``): base64 images in, masks out.

Request and response (one row per image)::

    input  DataFrame: image (str) - base64 of the PNG/JPEG/TIFF file bytes
    output DataFrame: mask (str)  - base64 of a PNG, 0/255, the input's exact size
                      vessel_fraction (float), width (int), height (int),
                      error (str)  - "" for a good row; for a bad row the reason, with mask ""
                                     and the numbers 0. One bad image does not fail the batch.

Optional parameter ``threshold`` (0-1; default: the threshold stored with the model, else 0.5).

Each image is checked before decoding (type by content, at most ``MAX_FILE_BYTES`` bytes and
``MAX_PIXELS`` pixels by header), exactly like ``retinaseg predict`` and the web demo, and is
predicted by the same :class:`~retinaseg.inference.predictor.Predictor`, with the tile size and
overlap stored with the model when it was logged (params.yaml's ``evaluate`` group).

The logged model's artifacts contain the saved model directory (``model.json`` + ``model.pt``),
so ``retinaseg predict --model models:/retinaseg-vessels@champion`` finds it too. The weights are
loaded with ``torch.load(weights_only=True)``. The python model itself is a tiny instance pickled
by reference to this module, so the serving environment must have ``retinaseg`` installed (serve
with ``mlflow models serve -m models:/retinaseg-vessels@champion --env-manager local``).
Registration and the ``@champion`` alias are :mod:`retinaseg.registry`'s job.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from PIL import Image

from retinaseg.core.devices import resolve_device
from retinaseg.core.mlflow_store import MODEL_FILES
from retinaseg.data.synthetic import generate_sample
from retinaseg.inference.inputs import MAX_FILE_BYTES, MAX_PIXELS, decode_image_bytes, encode_png
from retinaseg.inference.predictor import DEFAULT_THRESHOLD, InferenceSettings, Predictor, resolve_threshold
from retinaseg.models.saved import ModelLoadError, load_model_dir, save_model_dir

OUTPUT_COLUMNS = ("mask", "vessel_fraction", "width", "height", "error")

# the distributions the pyfunc model imports at load/predict time (pinned to what is installed)
_RUNTIME_DISTRIBUTIONS = (
    "torch",
    "segmentation-models-pytorch",
    "numpy",
    "pandas",
    "pillow",
    "opencv-python-headless",
    "ruamel.yaml",
    "mlflow",
)


def encode_image_b64(data: bytes) -> str:
    """Base64 text of file bytes (what a client puts in the ``image`` column)."""
    return base64.b64encode(data).decode("ascii")


def _decode_b64(text: Any, row: int) -> bytes:
    name = f"row {row}"
    if not isinstance(text, str | bytes) or len(text) == 0:
        raise ValueError(f"{name}: 'image' must be a non-empty base64 string")
    # reject oversized payloads before decoding them (base64 is 4/3 of the bytes)
    if len(text) > (MAX_FILE_BYTES * 4) // 3 + 4:
        raise ValueError(f"{name}: payload larger than {MAX_FILE_BYTES / 1e6:.1f} MB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name}: 'image' is not valid base64 ({exc})") from None


def _settings_from_config(config: dict[str, Any]) -> InferenceSettings:
    """Tile size and overlap stored with the model at logging time; params.yaml's defaults for a
    model logged before they were stored."""
    defaults = InferenceSettings()
    return InferenceSettings(
        tile_size=int(config.get("tile_size", defaults.tile_size)),
        tile_overlap=float(config.get("tile_overlap", defaults.tile_overlap)),
    )


class VesselSegmenter(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around a saved retinaseg model directory (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the model directory from ``context.artifacts["model_dir"]`` (weights_only)."""
        device = resolve_device("auto")
        model, card = load_model_dir(Path(context.artifacts["model_dir"]), device)
        config = getattr(context, "model_config", None) or {}
        self.predictor = Predictor.from_card(model, card, device, _settings_from_config(config))
        stored = config.get("threshold")
        self.threshold = resolve_threshold(stored, card)

    def _segment_row(self, text: Any, row: int, threshold: float) -> dict[str, Any]:
        data = _decode_b64(text, row)
        image = decode_image_bytes(data, name=f"row {row}", max_pixels=MAX_PIXELS, max_bytes=MAX_FILE_BYTES)
        seg = self.predictor.segment([image], threshold)[0]
        return {
            "mask": encode_image_b64(encode_png(seg.mask)),
            "vessel_fraction": seg.vessel_fraction,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "error": "",
        }

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Segment each row's base64 image; a bad row gets an ``error`` message instead of a mask."""
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise ValueError("input must be a DataFrame with an 'image' column of base64-encoded image bytes")
        threshold = (params or {}).get("threshold")
        threshold = self.threshold if threshold is None else resolve_threshold(threshold)
        rows = []
        for row, text in enumerate(model_input["image"].tolist()):
            try:
                rows.append(self._segment_row(text, row, threshold))
            except ValueError as exc:  # ImageReadError is a ValueError
                rows.append({"mask": "", "vessel_fraction": 0.0, "width": 0, "height": 0, "error": str(exc)})
        out = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        return out.astype({"vessel_fraction": "float64", "width": "int64", "height": "int64"})


def _example_png(size: int = 32) -> bytes:
    """A small synthetic fundus PNG for the input example."""
    image, _, _ = generate_sample(seed=0, size=size)
    return encode_png(image)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (the installed versions). ``retinaseg`` itself is not
    on PyPI: the serving environment must have it installed (``--env-manager local``)."""
    reqs = []
    for dist in _RUNTIME_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def _signature(threshold: float) -> Any:
    example_in = pd.DataFrame({"image": ["<base64 image>"]})
    example_out = pd.DataFrame(
        {"mask": ["<base64 png>"], "vessel_fraction": [0.1], "width": [1], "height": [1], "error": [""]}
    )
    return infer_signature(example_in, example_out, params={"threshold": float(threshold)})


def log_pyfunc_model(
    model_dir: str | Path,
    threshold: float | None,
    settings: InferenceSettings | None = None,
    name: str = "pyfunc_model",
) -> Any:
    """Log a saved model directory as a :class:`VesselSegmenter` pyfunc model into the active run
    (one is started when none is active). The logged copy's model card carries ``threshold``, so
    every consumer of the registered model (``retinaseg predict``, the app, the server) uses the
    threshold chosen on validation data; the model config carries the threshold and the tile size
    and overlap of ``settings`` (default: params.yaml's), which the server predicts with.
    Returns MLflow's ``ModelInfo``."""
    model_dir = Path(model_dir)
    for required in MODEL_FILES:
        if not (model_dir / required).is_file():
            raise ModelLoadError(model_dir, f"{required} missing; not a saved model directory")
    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    settings = settings or InferenceSettings()
    config = {"threshold": thr, "tile_size": settings.tile_size, "tile_overlap": settings.tile_overlap}
    with tempfile.TemporaryDirectory(prefix="retinaseg-pyfunc-") as tmp:
        packaged = Path(tmp) / "model_dir"
        model, card = load_model_dir(model_dir)  # validates the directory, then re-saved with the threshold
        card.threshold = thr
        save_model_dir(model, card, packaged)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=VesselSegmenter(),
            artifacts={"model_dir": str(packaged)},
            model_config=config,
            signature=_signature(thr),
            input_example=pd.DataFrame({"image": [encode_image_b64(_example_png())]}),
            pip_requirements=pip_requirements(),
        )


def load_served_mask(b64_png: str) -> np.ndarray:
    """Decode a response's base64 mask PNG to an HxW uint8 array (for clients and tests)."""
    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as img:
        return np.asarray(img.convert("L")).copy()
