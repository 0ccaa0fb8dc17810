"""``retinaseg serve``: the registered model behind an HTTP API with limits.

Same contract as ``mlflow models serve`` (:mod:`retinaseg.serving`): ``POST /invocations`` with a
JSON body in one of MLflow's formats (``dataframe_split``, ``dataframe_records``, ``inputs``,
``instances``), an ``image`` column of base64 image files and optional ``params.threshold``;
the answer is ``{"predictions": [{"mask", "vessel_fraction", "width", "height", "error"}, ...]}``.
``GET /ping`` and ``/health`` answer 200 once the model is loaded, ``/version`` the package version.

Why a server of our own, and not limits inside the pyfunc model behind ``mlflow models serve``:
MLflow's scoring app reads the whole request body into memory and parses it into a DataFrame
before the model sees a byte of it (no body limit), hands every request to a thread at once (no
queue; its 504 timeout answers the client but leaves the work running and admits more), and
``-w N`` loads N copies of the model. Limits inside the model would come after all of that. Here
the limits are enforced where they can be, in this order:

1. **body size**: a ``Content-Length`` above ``max_body_bytes`` gets 413 before anything is
   read; a body without one (chunked) is counted while it streams and cut off at the limit (413).
2. **bounded concurrency**: at most ``max_concurrency`` requests are read and predicted at once
   (one worker thread each; the model is loaded once) and at most ``max_queue`` more wait for a
   slot; the next one gets 503 with ``Retry-After`` (its body is read and discarded, up to the
   limit, so the client sees the answer rather than a reset connection). A waiting request holds
   a connection only: its body is read once it has a slot, so memory is bounded by the running
   requests, not the queue.
3. **pixels before decoding**: each image's type, bytes and pixel count are checked from its
   header (:mod:`retinaseg.inference.inputs`); a bad image fails its own row, not the request.
4. **memory per request**: images are segmented one at a time and the full-size mask is built in
   strips (:func:`retinaseg.serving.full_size_mask`): the largest allocations are the decoded
   image and its uint8 mask, never a full-size float map.
5. **timeout**: ``timeout_s`` from arrival to answer; a request still queued then gets 503, one
   whose body has not arrived 408, one still predicting 504. The worker stops at its next
   check (between steps and strips) and keeps its slot until it has, so a timed-out request
   cannot let more work in than ``max_concurrency``.

Start it with :func:`serve` (what the CLI calls); :func:`create_app` builds the ASGI app around an
already loaded :class:`~retinaseg.inference.predictor.Predictor` (tests, embedding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import retinaseg
from retinaseg.core.errors import RetinasegError
from retinaseg.core.mlflow_store import is_mlflow_uri, tracking_uri
from retinaseg.inference.inputs import MAX_FILE_BYTES, MAX_PIXELS
from retinaseg.inference.loading import as_threshold_was_chosen, load_predictor
from retinaseg.inference.predictor import InferenceSettings, Predictor, resolve_threshold
from retinaseg.serving import Deadline, DeadlineExceeded, segment_rows, settings_from_config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001  # mlflow ui has 5000
#: A 50 MiB image file (``MAX_FILE_BYTES``) is 66.7 MiB in base64, plus the JSON around it.
DEFAULT_MAX_BODY_MB = 70.0
DEFAULT_MAX_CONCURRENCY = 2
DEFAULT_MAX_QUEUE = 8
DEFAULT_TIMEOUT_S = 60.0
RETRY_AFTER_S = 1

INPUT_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class BadRequest(RetinasegError, ValueError):
    """A request body that is not the ``/invocations`` contract (answered 400)."""


@dataclass(frozen=True)
class ServerLimits:
    """The limits of :func:`create_app` (see the module docstring for what each one does)."""

    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_pixels: int = MAX_PIXELS  # per image, read from its header
    max_file_bytes: int = MAX_FILE_BYTES  # per image, after base64 decoding

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"the body limit must be at least 1 KiB, got {self.max_body_bytes} bytes")
        if self.max_concurrency < 1:
            raise ValueError(f"max concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise ValueError(f"max queue must be 0 or more, got {self.max_queue}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"the timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.max_pixels < 1 or self.max_file_bytes < 1:
            raise ValueError("the per-image pixel and byte limits must be positive")

    @classmethod
    def from_cli(
        cls,
        max_body_mb: float = DEFAULT_MAX_BODY_MB,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_queue: int = DEFAULT_MAX_QUEUE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> ServerLimits:
        """The limits in the CLI's units (``max_body_mb`` in MiB)."""
        if not (max_body_mb > 0 and math.isfinite(max_body_mb)):
            raise ValueError(f"--max-body-mb must be a positive number, got {max_body_mb}")
        return cls(int(max_body_mb * 2**20), int(max_concurrency), int(max_queue), float(timeout_s))


# ------------------------------------------------------------------------------------ the payload


def parse_invocation(body: bytes | bytearray) -> tuple[list[Any], dict[str, Any]]:
    """The ``image`` values and the ``params`` of an ``/invocations`` JSON body, in MLflow's
    formats; :class:`BadRequest` naming what is wrong."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be an object")
    keys = [key for key in INPUT_KEYS if key in payload]
    if len(keys) != 1:
        raise BadRequest(f"the body must have exactly one of {', '.join(INPUT_KEYS)}")
    key = keys[0]
    data = payload[key]
    if key == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("columns"), list):
            raise BadRequest("dataframe_split must be an object with 'columns' and 'data'")
        if "image" not in data["columns"]:
            raise BadRequest("dataframe_split has no 'image' column")
        at = data["columns"].index("image")
        rows = data.get("data", [])
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) > at for r in rows):
            raise BadRequest("dataframe_split 'data' must be a list of rows matching 'columns'")
        return [r[at] for r in rows], params
    if isinstance(data, dict):  # {"inputs": {"image": [...]}}
        images = data.get("image")
        if not isinstance(images, list):
            raise BadRequest(f"{key} must map 'image' to a list of base64 strings")
        return images, params
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        if not all("image" in r for r in data):
            raise BadRequest(f"every record of {key} needs an 'image'")
        return [r["image"] for r in data], params
    raise BadRequest(f"{key} must be a list of records with an 'image' each")


def _predict_body(
    predictor: Predictor, body: bytes | bytearray, limits: ServerLimits, deadline: Deadline
) -> bytes:
    """Parse, segment and render one request (runs in a worker thread); the JSON answer's bytes."""
    images, params = parse_invocation(body)
    del body
    try:
        threshold = params.get("threshold")
        threshold = predictor.threshold if threshold is None else resolve_threshold(threshold)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"params.threshold: {exc}") from None
    rows = segment_rows(
        predictor, images, threshold, limits.max_pixels, limits.max_file_bytes, deadline.check
    )
    return json.dumps({"predictions": rows}, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------- the app


class _BodyTooLarge(Exception):
    pass


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytearray:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge
    return body


async def _discard_body(request: Request, limit: int, seconds: float) -> None:
    """Read and drop the body (at most ``limit`` bytes, ``seconds``), so a refused client gets
    its answer instead of a reset connection."""
    seen = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    return
    except (TimeoutError, ClientDisconnect):
        return


class _Gate:
    """Admission (running + waiting ≤ max_concurrency + max_queue) and the slots themselves."""

    def __init__(self, limits: ServerLimits) -> None:
        self.capacity = limits.max_concurrency + limits.max_queue
        self.admitted = 0  # running + waiting, as the handlers see them
        self.slots = asyncio.Semaphore(limits.max_concurrency)
        self.busy = 0  # slots held (including by a worker whose request timed out)


def create_app(predictor: Predictor, limits: ServerLimits | None = None) -> Starlette:
    """The ASGI app around a loaded predictor (see the module docstring)."""
    limits = limits or ServerLimits()
    gate = _Gate(limits)
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=limits.max_concurrency, thread_name_prefix="retinaseg-predict"
    )
    version = retinaseg.__version__

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    async def version_route(request: Request) -> Response:
        return Response(version, media_type="text/plain")

    async def invocations(request: Request) -> Response:
        deadline = Deadline(limits.timeout_s)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return _error(415, "UNSUPPORTED_MEDIA_TYPE", "send the request as Content-Type: application/json")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > limits.max_body_bytes
            except ValueError:
                return _error(400, "BAD_REQUEST", f"invalid Content-Length {length!r}")
            if too_large:
                return _body_too_large()
        if gate.admitted >= gate.capacity:
            await _discard_body(request, limits.max_body_bytes, min(10.0, deadline.remaining()))
            return _busy(f"{gate.capacity} requests are already running or queued")
        gate.admitted += 1
        try:
            return await _admitted(request, deadline)
        finally:
            gate.admitted -= 1

    async def _admitted(request: Request, deadline: Deadline) -> Response:
        try:
            async with asyncio.timeout(deadline.remaining()):
                await gate.slots.acquire()
        except TimeoutError:
            await _discard_body(request, limits.max_body_bytes, 10.0)
            return _busy(f"no free slot within the {limits.timeout_s:g} s timeout")
        gate.busy += 1
        handed_over = False
        try:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    body = await _read_body(request, limits.max_body_bytes)
            except _BodyTooLarge:
                return _body_too_large()
            except TimeoutError:
                return _error(
                    408, "REQUEST_TIMEOUT", f"the body did not arrive within {limits.timeout_s:g} s"
                )
            except ClientDisconnect:
                return Response(status_code=400)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(executor, _predict_body, predictor, body, limits, deadline)
            del body
            future.add_done_callback(_release)
            handed_over = True  # the worker's end releases the slot, whatever happens here
            try:
                async with asyncio.timeout(deadline.remaining()):
                    content = await asyncio.shield(future)
            except TimeoutError:
                deadline.cancel()
                return _timed_out()
            except DeadlineExceeded:
                return _timed_out()
            except BadRequest as exc:
                return _error(400, "BAD_REQUEST", str(exc))
            return Response(content, media_type="application/json")
        finally:
            if not handed_over:
                _release(None)

    def _release(future: asyncio.Future | None) -> None:
        gate.busy -= 1
        gate.slots.release()
        if future is not None and not future.cancelled():
            future.exception()  # retrieved: a late DeadlineExceeded is not logged as unhandled

    def _body_too_large() -> JSONResponse:
        mib = limits.max_body_bytes / 2**20
        return _error(413, "REQUEST_TOO_LARGE", f"the request body is larger than {mib:g} MiB")

    def _busy(why: str) -> JSONResponse:
        return _error(503, "SERVER_BUSY", f"try again later: {why}", {"Retry-After": str(RETRY_AFTER_S)})

    def _timed_out() -> JSONResponse:
        return _error(504, "TIMEOUT", f"the prediction took longer than {limits.timeout_s:g} s")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/health", ping, methods=["GET"]),
            Route("/version", version_route, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.gate = gate
    app.state.limits = limits
    app.state.predictor = predictor
    return app


# ------------------------------------------------------------------------------------ starting it


def stored_settings(ref: str | Path) -> InferenceSettings:
    """The tile size and overlap a registered pyfunc model was logged with (its ``MLmodel``
    config); params.yaml's defaults for a model directory or a model without them."""
    if not is_mlflow_uri(ref):
        return InferenceSettings()
    # mlflow is only needed here for an MLflow URI (the model itself is loaded by the project's loader)
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    try:
        flavor = mlflow.models.Model.load(str(ref)).flavors.get("python_function", {})
    except (MlflowException, OSError):
        return InferenceSettings()  # load_predictor reports an unusable reference
    return settings_from_config(flavor.get("config"))


def load_served_predictor(
    ref: str | Path, device: str | torch.device = "auto", settings: InferenceSettings | None = None
) -> Predictor:
    """The model to serve, loaded once by the project's loader (weights only): a model directory
    or an MLflow URI, with ``settings`` or else the ones stored with the model (for a package whose
    threshold was chosen on test-time augmented maps, that augmentation too)."""
    if settings is not None:
        return load_predictor(ref, device, settings)
    return as_threshold_was_chosen(load_predictor(ref, device, stored_settings(ref)), ref)[0]


def serve(
    model: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_queue: int = DEFAULT_MAX_QUEUE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: str = "auto",
    settings: InferenceSettings | None = None,
    log_level: str = "info",
) -> None:
    """Load ``model`` (``models:/retinaseg-vessels@champion``, ``runs:/…`` or ``models/<name>``) and
    serve it on ``host:port`` until interrupted. Raises ``ModelLoadError`` before listening when
    the model cannot be loaded, ``ValueError`` for a bad limit. This is ``retinaseg serve``."""
    import uvicorn  # only when serving: the app itself is testable without it

    limits = ServerLimits.from_cli(max_body_mb, max_concurrency, max_queue, timeout_s)
    app = create_app(load_served_predictor(model, device, settings), limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        log_level=log_level,
        # a backstop against connection floods; the app's own queue answers 503 long before this
        limit_concurrency=4 * (limits.max_concurrency + limits.max_queue) + 16,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()
