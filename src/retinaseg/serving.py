"""The MLflow pyfunc model (``mlflow models serve``) and the champion registration.

Request and response (one row per image)::

    input  DataFrame: image (str) - base64 of the PNG/JPEG/TIFF file bytes
    output DataFrame: mask (str)  - base64 of a PNG, 0/255, the input's exact size
                      vessel_fraction (float), width (int), height (int),
                      error (str)  - "" for a good row; for a bad row the reason, with mask ""
                                     and the numbers 0. One bad image does not fail the batch.

Optional parameter ``threshold`` (0-1; default: the threshold stored with the model, else 0.5).

Each image is checked before decoding (type by content, at most ``MAX_FILE_BYTES`` bytes and
``MAX_PIXELS`` pixels by header), exactly like ``retinaseg predict`` and the web demo.

The logged model's artifacts contain the saved model directory (``model.json`` + ``model.pt``),
so ``retinaseg predict --model models:/retinaseg-vessels@champion`` finds it too. The weights are
loaded with ``torch.load(weights_only=True)``. The python model itself is a tiny instance pickled
by reference to this module, so the serving environment must have ``retinaseg`` installed (serve
with ``mlflow models serve -m models:/retinaseg-vessels@champion --env-manager local``).
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

from retinaseg.inference import (
    DEFAULT_THRESHOLD,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    decode_image_bytes,
    encode_png,
    segment_image,
)

CHAMPION_ALIAS = "champion"
OUTPUT_COLUMNS = ("mask", "vessel_fraction", "width", "height", "error")

# the distributions the pyfunc model imports at load/predict time (pinned to what is installed)
_RUNTIME_DISTRIBUTIONS = (
    "torch",
    "segmentation-models-pytorch",
    "numpy",
    "pandas",
    "pillow",
    "opencv-python-headless",
    "pyyaml",
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


class VesselSegmenter(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around a saved retinaseg model directory (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the model directory from ``context.artifacts["model_dir"]`` (weights_only)."""
        from retinaseg.models.saved import load_model_dir
        from retinaseg.training.engine import resolve_device

        self.device = resolve_device("auto")
        self.model, self.card = load_model_dir(Path(context.artifacts["model_dir"]), self.device)
        config = getattr(context, "model_config", None) or {}
        stored = config.get("threshold")
        if stored is None:
            stored = self.card.threshold
        self.threshold = float(stored) if stored is not None else DEFAULT_THRESHOLD

    def _segment_row(self, text: Any, row: int, threshold: float) -> dict[str, Any]:
        data = _decode_b64(text, row)
        image = decode_image_bytes(data, name=f"row {row}", max_pixels=MAX_PIXELS, max_bytes=MAX_FILE_BYTES)
        seg = segment_image(self.model, self.card, image, threshold=threshold, device=self.device)
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
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
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
    from retinaseg.data.synthetic import generate_sample

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
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({"image": ["<base64 image>"]})
    example_out = pd.DataFrame(
        {"mask": ["<base64 png>"], "vessel_fraction": [0.1], "width": [1], "height": [1], "error": [""]}
    )
    return infer_signature(example_in, example_out, params={"threshold": float(threshold)})


def log_pyfunc_model(model_dir: str | Path, threshold: float | None, name: str = "pyfunc_model") -> Any:
    """Log a saved model directory as a :class:`VesselSegmenter` pyfunc model into the active run
    (one is started when none is active). The logged copy's model card carries ``threshold``, so
    every consumer of the registered model (``retinaseg predict``, the app, the server) uses the
    threshold chosen on validation data. Returns MLflow's ``ModelInfo``."""
    from retinaseg.models.saved import ModelLoadError, load_model_dir, save_model_dir

    model_dir = Path(model_dir)
    for required in ("model.json", "model.pt"):
        if not (model_dir / required).is_file():
            raise ModelLoadError(model_dir, f"{required} missing; not a saved model directory")
    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    with tempfile.TemporaryDirectory(prefix="retinaseg-pyfunc-") as tmp:
        packaged = Path(tmp) / "model_dir"
        model, card = load_model_dir(model_dir)  # validates the directory, then re-saved with the threshold
        card.threshold = thr
        save_model_dir(model, card, packaged)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=VesselSegmenter(),
            artifacts={"model_dir": str(packaged)},
            model_config={"threshold": thr},
            signature=_signature(thr),
            input_example=pd.DataFrame({"image": [encode_image_b64(_example_png())]}),
            pip_requirements=pip_requirements(),
        )


def register_champion(
    model_name: str,
    model_dir: str | Path,
    threshold: float | None,
    run_id: str | None = None,
    registered_name: str = "retinaseg-vessels",
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc model into MLflow run ``run_id`` (a new run in the configured
    experiment when None), register it as ``registered_name`` and point the ``@champion`` alias at
    the new version (aliases, not the deprecated stages). The tracking store is
    :func:`retinaseg.tracking.tracking_uri`. Returns ``{"name", "version", "uri", "run_id",
    "model_name", "threshold"}``."""
    from mlflow import MlflowClient

    from retinaseg.tracking import tracking_uri

    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:  # leave MLflow's process-wide setting alone when it already agrees
        mlflow.set_tracking_uri(uri)
    run_kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"run_name": f"{model_name}-champion"}
    if run_id is None:
        mlflow.set_experiment(_experiment_name())
    with mlflow.start_run(**run_kwargs) as run:
        info = log_pyfunc_model(model_dir, threshold)
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
        "uri": f"models:/{registered_name}@{CHAMPION_ALIAS}",
        "run_id": active_run_id,
        "model_name": model_name,
        "threshold": threshold,
    }


def _experiment_name() -> str:
    from retinaseg.config import MlflowParams

    return MlflowParams().experiment


def load_served_mask(b64_png: str) -> np.ndarray:
    """Decode a response's base64 mask PNG to an HxW uint8 array (for clients and tests)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as img:
        return np.asarray(img.convert("L")).copy()
