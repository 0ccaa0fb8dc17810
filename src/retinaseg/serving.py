"""The MLflow pyfunc model (``mlflow models serve``) and the request contract it shares with
``retinaseg serve`` (:mod:`retinaseg.server`): base64 images in, masks out.

Request and response (one row per image)::

    input  DataFrame: image (str) - base64 of the PNG/JPEG/TIFF file bytes
    output DataFrame: mask (str)  - base64 of a PNG, 0/255, the input's exact size
                      vessel_fraction (float), width (int), height (int),
                      error (str)  - "" for a good row; for a bad row the reason, with mask ""
                                     and the numbers 0. One bad image does not fail the batch.

Optional parameter ``threshold`` (0-1; default: the threshold stored with the model, else 0.5).

Each image is checked before decoding (type by content, at most ``MAX_FILE_BYTES`` bytes and
``MAX_PIXELS`` pixels by header), exactly like ``retinaseg predict`` and the web demo, and is
predicted by the same :class:`~retinaseg.inference.predictor.Predictor` (its model, preprocessing
and the tile size and overlap stored with the model when it was logged: params.yaml's ``evaluate``
group). Rows are segmented one at a time and the full-size mask is built in strips of rows
(:func:`full_size_mask`), so no full-size float copy of a large image is ever made.

**No pickle.** The model is logged as *code* (MLflow's "models from code"): the logged model holds
a three-line Python file that imports :class:`VesselSegmenter` from this module and hands an
instance to ``mlflow.models.set_model``, the saved model directory (``model.json`` + ``model.pt``),
and the ``MLmodel``/requirements/example files (YAML and JSON). There is no ``python_model.pkl``,
so replacing a file of the logged model cannot smuggle in a pickle that runs code when the model
is loaded; the weights are read by the project's loader with ``torch.load(weights_only=True)``.
The serving environment must have ``retinaseg`` installed (the code file imports it): serve with
``mlflow models serve -m models:/retinaseg-vessels@champion --env-manager local``, or with
``retinaseg serve``, which adds request limits (:mod:`retinaseg.server`).

The logged model's ``artifacts/model_dir`` is the saved model directory, so
``retinaseg predict --model models:/retinaseg-vessels@champion`` finds it too.
Registration and the ``@champion`` alias are :mod:`retinaseg.registry`'s job.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from retinaseg.core.devices import resolve_device
from retinaseg.core.errors import RetinasegError
from retinaseg.core.mlflow_store import MODEL_FILES
from retinaseg.data.preprocess import Geometry, image_to_tensor, preprocess_image
from retinaseg.data.synthetic import generate_sample
from retinaseg.inference.inputs import MAX_FILE_BYTES, MAX_PIXELS, decode_image_bytes, encode_png
from retinaseg.inference.predictor import (
    DEFAULT_THRESHOLD,
    InferenceSettings,
    Predictor,
    resolve_threshold,
    sliding_window_probs,
    zero_outside_fov,
)
from retinaseg.models.saved import ModelLoadError, load_model_dir, save_model_dir

#: The output columns and their MLflow types (the model signature's outputs).
OUTPUT_TYPES = {
    "mask": "string",
    "vessel_fraction": "double",
    "width": "long",
    "height": "long",
    "error": "string",
}
OUTPUT_COLUMNS = tuple(OUTPUT_TYPES)

#: The file name of the model code inside the logged model (MLflow's "models from code").
MODEL_CODE_FILE = "retinaseg_pyfunc.py"

#: What that file says: no state of its own; the model directory arrives as the artifact
#: ``model_dir`` and the settings as the model config (both read in ``load_context``).
MODEL_CODE = '''"""retinaseg's MLflow pyfunc model, logged as code (no pickle): see retinaseg.serving."""

import mlflow

from retinaseg.serving import VesselSegmenter

mlflow.models.set_model(VesselSegmenter())
'''

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

#: Float32 bytes per strip when a mask is restored to full size (a few MB whatever the image size).
STRIP_BYTES = 8 * 2**20


# ------------------------------------------------------------------------------------ deadlines


class DeadlineExceeded(RetinasegError):
    """A request ran out of time (``retinaseg serve --timeout-s``). Deliberately not a
    ``ValueError``: it fails the whole request, never just one row."""


class Deadline:
    """A time limit that long-running work checks between steps (cooperative: a thread cannot be
    stopped from outside, so the work stops itself at the next :meth:`check`)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._expires = math.inf if seconds is None else time.monotonic() + float(seconds)
        self._cancelled = threading.Event()

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit; 0 once cancelled)."""
        return 0.0 if self._cancelled.is_set() else max(0.0, self._expires - time.monotonic())

    def cancel(self) -> None:
        """Make every later :meth:`check` fail (the caller has stopped waiting)."""
        self._cancelled.set()

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` when the time is up or the deadline was cancelled."""
        if self._cancelled.is_set() or time.monotonic() > self._expires:
            limit = "its time limit" if self.seconds is None else f"{self.seconds:g} s"
            raise DeadlineExceeded(f"the request took longer than {limit}")


def _no_deadline() -> None:
    return None


# ------------------------------------------------------------------- memory-bounded segmentation


@dataclass(frozen=True, eq=False)
class LowResProbability:
    """The network's probability map on the preprocessed ``size x size`` canvas and the geometry
    that maps it back to the input's pixels (kilobytes, whatever the input's size)."""

    prob: np.ndarray  # size x size float32 in [0, 1]
    geometry: Geometry

    @property
    def shape(self) -> tuple[int, int]:
        """The input's (height, width)."""
        return self.geometry.orig_h, self.geometry.orig_w

    def _crop(self) -> np.ndarray:
        g = self.geometry
        h, w = g.resized_shape()
        crop = self.prob[g.pad_top : g.pad_top + h, g.pad_left : g.pad_left + w]
        return np.ascontiguousarray(crop, dtype=np.float32)

    def at_size(self, height: int, width: int) -> np.ndarray:
        """The probability map resized (bilinear) to ``height x width``: at the input's size this
        is exactly what :func:`retinaseg.data.preprocess.restore_geometry` gives; smaller sizes are
        for display. When preprocessing cropped the image to its field of view, the map fills the
        crop box (scaled to ``height x width``) and is 0 around it."""
        height, width = int(height), int(width)
        top, left, crop_h, crop_w = self.geometry.crop_box()
        orig_h, orig_w = self.shape
        if (crop_h, crop_w) == (orig_h, orig_w):
            out = cv2.resize(self._crop(), (width, height), interpolation=cv2.INTER_LINEAR)
            return np.clip(out, 0.0, 1.0)
        y0, x0 = round(top * height / orig_h), round(left * width / orig_w)
        y1 = max(y0 + 1, min(height, round((top + crop_h) * height / orig_h)))
        x1 = max(x0 + 1, min(width, round((left + crop_w) * width / orig_w)))
        out = np.zeros((height, width), dtype=np.float32)
        box = cv2.resize(self._crop(), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out[y0:y1, x0:x1] = box[: height - y0, : width - x0]
        return np.clip(out, 0.0, 1.0)

    def strips(self, strip_bytes: int = STRIP_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows x orig_w float32)`` strips of the full-size probability map, top to
        bottom, each about ``strip_bytes``; together equal to ``restore_geometry`` up to float
        rounding (1 unit in the last place).

        ``cv2.resize`` (bilinear) is separable: the crop is widened to the output width once
        (``resized_h x orig_w``, small) and each strip interpolates between two of those rows with
        OpenCV's own coordinates (``src = (dst + 0.5) * scale - 0.5``, clamped at the borders).
        """
        crop = self._crop()
        h, w = crop.shape
        out_h, out_w = self.shape
        # the crop box (the whole image unless preprocessing cropped to the field of view)
        top, left, box_h, box_w = self.geometry.crop_box()
        wide = crop if w == box_w else cv2.resize(crop, (box_w, h), interpolation=cv2.INTER_LINEAR)
        scale = 1.0 / (box_h / h)  # as OpenCV computes it (double precision)
        rows = max(1, int(strip_bytes) // (4 * out_w))
        for y0 in range(0, out_h, rows):
            # a function call per strip: no reference to a finished strip outlives its turn
            y1 = min(out_h, y0 + rows)
            if (box_h, box_w) == (out_h, out_w):
                yield y0, _interpolate_rows(wide, y0, y1, scale)
                continue
            strip = np.zeros((y1 - y0, out_w), dtype=np.float32)
            a, b = max(y0, top), min(y1, top + box_h)  # the strip's rows inside the box
            if a < b:
                strip[a - y0 : b - y0, left : left + box_w] = _interpolate_rows(wide, a - top, b - top, scale)
            yield y0, strip


def _interpolate_rows(wide: np.ndarray, y0: int, y1: int, scale: float) -> np.ndarray:
    """Output rows ``y0:y1`` of a vertical bilinear resize of ``wide`` (OpenCV's coordinates)."""
    h = wide.shape[0]
    src = (np.arange(y0, y1, dtype=np.float64) + 0.5) * scale - 0.5
    top = np.floor(src)
    frac = (src - top).astype(np.float32)[:, None]
    top = top.astype(np.int64)
    out = wide[np.clip(top, 0, h - 1)]
    below = wide[np.clip(top + 1, 0, h - 1)]
    out *= np.float32(1.0) - frac
    below *= frac
    out += below
    return np.clip(out, 0.0, 1.0, out=out)


def low_res_probability(
    predictor: Predictor, image: np.ndarray, check: Callable[[], None] = _no_deadline
) -> LowResProbability:
    """The probability map of one HxWx3 uint8 RGB image on the preprocessed canvas: the same
    preprocessing, (tiled) forward pass and sigmoid as :meth:`Predictor.probabilities`, stopping
    before the map is resized to the input's size. ``check`` is called between the steps."""
    prepared, geometry = preprocess_image(np.asarray(image), predictor.preprocess)
    check()
    s = predictor.settings
    with torch.inference_mode():
        tensor = image_to_tensor(prepared).to(predictor.device)
        prob = sliding_window_probs(
            predictor.model,
            tensor,
            s.tile_size,
            s.tile_overlap,
            s.tta,
            tile_batch=s.batch_size,
            precision=s.precision,
            channels_last=s.channels_last,
        )
        small = zero_outside_fov(prob.float().cpu().numpy(), prepared)  # as Predictor.probabilities
    check()
    return LowResProbability(np.clip(small, 0.0, 1.0).astype(np.float32, copy=False), geometry)


def full_size_mask(
    low: LowResProbability,
    threshold: float,
    check: Callable[[], None] = _no_deadline,
    strip_bytes: int = STRIP_BYTES,
) -> tuple[np.ndarray, float]:
    """``(mask HxW uint8 0/255 at the input's size, vessel fraction)`` built strip by strip: the
    largest allocation is the uint8 mask itself (a float32 map of a 49-megapixel image would be
    196 MB, and its clipped/thresholded copies as much again). Same result as
    ``Segmentation(image, restore_geometry(...), threshold).mask`` (up to pixels within float
    rounding of the threshold). ``check`` is called after each strip."""
    thr = np.float32(resolve_threshold(threshold))
    height, width = low.shape
    mask = np.empty((height, width), dtype=np.uint8)
    vessels = 0
    for y0, strip in low.strips(strip_bytes):
        hit = strip >= thr
        vessels += int(np.count_nonzero(hit))
        np.multiply(hit, np.uint8(255), out=mask[y0 : y0 + strip.shape[0]], casting="unsafe")
        del strip, hit  # before the next strip is made
        check()
    return mask, vessels / float(height * width)


# -------------------------------------------------------------------------------- request rows


def encode_image_b64(data: bytes) -> str:
    """Base64 text of file bytes (what a client puts in the ``image`` column)."""
    return base64.b64encode(data).decode("ascii")


def _decode_b64(text: Any, row: int, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    name = f"row {row}"
    if not isinstance(text, str | bytes) or len(text) == 0:
        raise ValueError(f"{name}: 'image' must be a non-empty base64 string")
    # reject oversized payloads before decoding them (base64 is 4/3 of the bytes)
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise ValueError(f"{name}: payload larger than {max_bytes / 1e6:.1f} MB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name}: 'image' is not valid base64 ({exc})") from None


def error_row(message: str) -> dict[str, Any]:
    """The response row of an image that could not be segmented."""
    return {"mask": "", "vessel_fraction": 0.0, "width": 0, "height": 0, "error": message}


def segment_encoded(
    predictor: Predictor,
    text: Any,
    row: int,
    threshold: float,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    check: Callable[[], None] = _no_deadline,
) -> dict[str, Any]:
    """One response row for one base64 image: checked by header before decoding (type, bytes,
    pixels), decoded, segmented with bounded memory. A bad image raises ``ValueError`` naming
    ``row <row>``; a deadline raises :class:`DeadlineExceeded`."""
    data = _decode_b64(text, row, max_bytes)
    image = decode_image_bytes(data, name=f"row {row}", max_pixels=max_pixels, max_bytes=max_bytes)
    del data
    check()
    height, width = image.shape[:2]
    low = low_res_probability(predictor, image, check)
    del image  # the decoded pixels go before the full-size mask is built
    mask, fraction = full_size_mask(low, threshold, check)
    png = encode_png(mask)
    del mask
    return {
        "mask": encode_image_b64(png),
        "vessel_fraction": fraction,
        "width": int(width),
        "height": int(height),
        "error": "",
    }


def segment_rows(
    predictor: Predictor,
    images: Sequence[Any],
    threshold: float,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    check: Callable[[], None] = _no_deadline,
) -> list[dict[str, Any]]:
    """:func:`segment_encoded` for every row, one image at a time; a bad row gets an ``error``
    message instead of a mask (``ImageReadError`` is a ``ValueError``)."""
    rows = []
    for row, text in enumerate(images):
        check()
        try:
            rows.append(segment_encoded(predictor, text, row, threshold, max_pixels, max_bytes, check))
        except DeadlineExceeded:
            raise
        except ValueError as exc:
            rows.append(error_row(str(exc)))
    return rows


def settings_from_config(config: dict[str, Any] | None) -> InferenceSettings:
    """Tile size and overlap stored with the model at logging time; params.yaml's defaults for a
    model logged before they were stored."""
    config = config or {}
    defaults = InferenceSettings()
    return InferenceSettings(
        tile_size=int(config.get("tile_size", defaults.tile_size)),
        tile_overlap=float(config.get("tile_overlap", defaults.tile_overlap)),
    )


# -------------------------------------------------------------------------------- pyfunc model


class VesselSegmenter(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around a saved retinaseg model directory (see the module docstring).
    Holds no state until :meth:`load_context`; logged as code, never pickled."""

    def load_context(self, context: Any) -> None:
        """Load the model directory from ``context.artifacts["model_dir"]`` (weights_only)."""
        device = resolve_device("auto")
        model, card = load_model_dir(Path(context.artifacts["model_dir"]), device)
        config = getattr(context, "model_config", None) or {}
        self.predictor = Predictor.from_card(model, card, device, settings_from_config(config))
        stored = config.get("threshold")
        self.threshold = resolve_threshold(stored, card)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Segment each row's base64 image; a bad row gets an ``error`` message instead of a mask."""
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise ValueError("input must be a DataFrame with an 'image' column of base64-encoded image bytes")
        threshold = (params or {}).get("threshold")
        threshold = self.threshold if threshold is None else resolve_threshold(threshold)
        rows = segment_rows(self.predictor, model_input["image"].tolist(), threshold)
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


def model_signature(threshold: float) -> ModelSignature:
    """The pyfunc model's signature, declared (not inferred from an example, which made MLflow warn
    that ``width``/``height`` are integer columns that cannot hold missing values: they never miss,
    an error row has 0 x 0 and its message in ``error``)."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_TYPES.items()]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


def log_pyfunc_model(
    model_dir: str | Path,
    threshold: float | None,
    settings: InferenceSettings | None = None,
    name: str = "pyfunc_model",
) -> Any:
    """Log a saved model directory as the :class:`VesselSegmenter` pyfunc model into the active run
    (one is started when none is active), as code: :data:`MODEL_CODE` plus the model directory, no
    pickle. The logged copy's model card carries ``threshold``, so every consumer of the registered
    model (``retinaseg predict``, the app, the servers) uses the threshold chosen on validation
    data; the model config carries the threshold and the tile size and overlap of ``settings``
    (default: params.yaml's), which the servers predict with. Returns MLflow's ``ModelInfo``."""
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
        code = Path(tmp) / MODEL_CODE_FILE
        code.write_text(MODEL_CODE, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={"model_dir": str(packaged)},
            model_config=config,
            signature=model_signature(thr),
            input_example=pd.DataFrame({"image": [encode_image_b64(_example_png())]}),
            pip_requirements=pip_requirements(),
        )


def load_served_mask(b64_png: str) -> np.ndarray:
    """Decode a response's base64 mask PNG to an HxW uint8 array (for clients and tests)."""
    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as img:
        return np.asarray(img.convert("L")).copy()
