"""``retinaseg serve`` (retinaseg.server): the /invocations contract and its limits, against a real
uvicorn server on 127.0.0.1 (in a thread here; in a subprocess for the slow end-to-end test)."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from retinaseg.core.config import PreprocessParams
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.server import ServerLimits, create_app, load_served_predictor, parse_invocation
from retinaseg.serving import encode_image_b64, load_served_mask
from tests.serving.helpers import png_bytes, png_header_only, stop_process_group, toy_fundus, wait_for_http_ok

HOST = "127.0.0.1"


@contextlib.contextmanager
def running(app, port: int) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1:``port``; stopped (bounded) on exit."""
    import uvicorn

    config = uvicorn.Config(app, host=HOST, port=port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def call(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, headers) of one request (a fresh connection, 60 s bound)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(method, path, body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                         headers=headers, encode_chunked=True)  # fmt: skip
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            payload = {"text": raw.decode(errors="replace")}
        return resp.status, payload, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def invocation(images: list[str], params: dict | None = None, fmt: str = "dataframe_split") -> bytes:
    if fmt == "dataframe_split":
        payload = {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}}
    elif fmt == "dataframe_records":
        payload = {"dataframe_records": [{"image": i} for i in images]}
    else:
        payload = {fmt: {"image": images}}
    if params is not None:
        payload["params"] = params
    return json.dumps(payload).encode()


def b64_fundus(seed: int, height: int, width: int) -> str:
    return encode_image_b64(png_bytes(toy_fundus(seed, height, width)[0]))


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return load_served_predictor(tiny_model_dir, "cpu")


@pytest.fixture()
def served(predictor, free_port) -> Iterator[str]:
    limits = ServerLimits(max_body_bytes=2 * 2**20, max_pixels=1_000_000, timeout_s=30)
    with running(create_app(predictor, limits), free_port) as address:
        yield address


# ------------------------------------------------------------------------------------ the contract


def test_ping_health_version(served):
    assert call(served, "GET", "/ping")[0] == 200
    assert call(served, "GET", "/health")[0] == 200
    status, payload, _ = call(served, "GET", "/version")
    assert status == 200 and payload  # "0.1.0" parses as JSON text: a number-like string


def test_invocations_answer_like_the_pyfunc_model(served, predictor):
    image = toy_fundus(3, 57, 49)[0]
    status, payload, _ = call(
        served, "POST", "/invocations", invocation([encode_image_b64(png_bytes(image))])
    )
    assert status == 200, payload
    (row,) = payload["predictions"]
    assert set(row) == {"mask", "vessel_fraction", "width", "height", "error"}
    assert row["error"] == "" and (row["width"], row["height"]) == (49, 57)
    mask = load_served_mask(row["mask"])
    expected = predictor.segment([image])[0].mask
    assert mask.shape == (57, 49) and np.mean(mask != expected) < 1e-3
    assert row["vessel_fraction"] == pytest.approx((mask > 0).mean())


@pytest.mark.parametrize("fmt", ["dataframe_records", "inputs", "instances"])
def test_invocations_accept_mlflows_other_formats_and_the_threshold(served, fmt):
    body = invocation([b64_fundus(1, 40, 40), b64_fundus(2, 30, 50)], {"threshold": 0.0}, fmt)
    status, payload, _ = call(served, "POST", "/invocations", body)
    assert status == 200, payload
    assert [r["vessel_fraction"] for r in payload["predictions"]] == [1.0, 1.0]
    assert [(r["width"], r["height"]) for r in payload["predictions"]] == [(40, 40), (50, 30)]


def test_bad_images_fail_their_own_row_and_pixels_are_checked_before_decoding(served):
    rows = [
        b64_fundus(1, 40, 40),
        "this is not base64!!",
        encode_image_b64(b"plain text, not an image"),
        # a header claiming 2000 x 1000 with no pixel data: refused by the header (this server's
        # limit is 1 MP), so it is never decoded (decoding would have said "truncated")
        encode_image_b64(png_header_only(2000, 1000)),
    ]
    status, payload, _ = call(served, "POST", "/invocations", invocation(rows))
    assert status == 200, payload
    errors = [r["error"] for r in payload["predictions"]]
    assert errors[0] == ""
    assert "row 1" in errors[1] and "base64" in errors[1]
    assert "row 2" in errors[2] and "not an image" in errors[2]
    assert "row 3" in errors[3] and "2,000,000 pixels; the limit is 1,000,000" in errors[3]
    assert [r["mask"] for r in payload["predictions"][1:]] == ["", "", ""]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        (b'{"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}', {}, 400, "no 'image' column"),
        (b'{"something": 1}', {}, 400, "exactly one of"),
        (invocation(["x"], {"threshold": 2.0}), {}, 400, "threshold"),
        (invocation(["x"]), {"Content-Type": "text/csv"}, 415, "application/json"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(served, body, headers, status, message):
    got, payload, _ = call(served, "POST", "/invocations", body, headers)
    assert got == status and message in payload["message"], payload


def test_parse_invocation_reads_each_format():
    images = ["a", "b"]
    for fmt in ("dataframe_split", "dataframe_records", "inputs", "instances"):
        assert parse_invocation(invocation(images, {"threshold": 0.2}, fmt)) == (images, {"threshold": 0.2})
    assert parse_invocation(b'{"inputs": [{"image": "a"}]}') == (["a"], {})


# --------------------------------------------------------------------------------------- the limits


def test_a_body_over_the_limit_gets_413_before_or_while_it_is_read(served):
    big = invocation(["A" * (3 * 2**20)])  # 3 MiB > the 2 MiB limit
    status, payload, _ = call(served, "POST", "/invocations", big)
    assert status == 413 and "2 MiB" in payload["message"]
    status, payload, _ = call(served, "POST", "/invocations", big, chunked=True)  # no Content-Length
    assert status == 413 and "2 MiB" in payload["message"]
    assert call(served, "POST", "/invocations", invocation([b64_fundus(1, 20, 20)]))[0] == 200


class BlockingNet(torch.nn.Module):
    """A "network" that waits until released (or ``hold_s``), then answers zeros: requests that
    stay in flight as long as a test needs."""

    def __init__(self, hold_s: float = 20.0) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold_s = hold_s
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.entered.set()
        self.release.wait(self.hold_s)
        return torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3])


def blocking_predictor(hold_s: float = 20.0) -> Predictor:
    return Predictor(BlockingNet(hold_s), PreprocessParams(size=32), "cpu", InferenceSettings())


@contextlib.contextmanager
def releasing(net: BlockingNet) -> Iterator[None]:
    """Release the blocked requests however the test ends (so the server stops promptly)."""
    try:
        yield
    finally:
        net.release.set()


def wait_until(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_full_queue_answers_503_and_the_queued_requests_still_finish(free_port):
    predictor = blocking_predictor()
    net = predictor.model
    app = create_app(predictor, ServerLimits(max_concurrency=1, max_queue=1, timeout_s=30))
    body = invocation([b64_fundus(1, 24, 24)])
    results: dict[str, int] = {}

    def post(name: str) -> None:
        results[name] = call(address, "POST", "/invocations", body)[0]

    with running(app, free_port) as address, releasing(net):
        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert net.entered.wait(20)  # the first request holds the one slot
        second = threading.Thread(target=post, args=("second",))
        second.start()
        wait_until(lambda: app.state.gate.admitted == 2, "the second request to queue")
        status, payload, headers = call(address, "POST", "/invocations", body)
        assert status == 503 and "already running or queued" in payload["message"]
        assert headers.get("retry-after") == "1"
        assert call(address, "GET", "/ping")[0] == 200  # the server stays responsive
        net.release.set()
        first.join(30)
        second.join(30)
    assert results == {"first": 200, "second": 200}
    assert net.calls == 2


def test_a_request_over_the_timeout_gets_504_and_keeps_its_slot_until_its_worker_stops(free_port):
    predictor = blocking_predictor(hold_s=1.5)
    net = predictor.model
    app = create_app(predictor, ServerLimits(max_concurrency=1, max_queue=2, timeout_s=0.5))
    with running(app, free_port) as address:
        started = time.monotonic()
        status, payload, _ = call(address, "POST", "/invocations", invocation([b64_fundus(1, 24, 24)]))
        assert status == 504 and "0.5 s" in payload["message"]
        assert time.monotonic() - started < 1.4  # answered at the timeout, not when the work ended
        assert app.state.gate.busy == 1  # the worker still runs and holds the slot
        wait_until(lambda: app.state.gate.busy == 0, "the worker to stop at its next check")
        # the slot is free again: the next request is served
        net.release.set()
        status, payload, _ = call(address, "POST", "/invocations", invocation([b64_fundus(1, 24, 24)]))
        assert status == 200, payload
    assert app.state.gate.admitted == 0 and app.state.gate.busy == 0


def test_a_request_that_waits_past_the_timeout_in_the_queue_gets_503(free_port):
    predictor = blocking_predictor(hold_s=3.0)
    net = predictor.model
    app = create_app(predictor, ServerLimits(max_concurrency=1, max_queue=1, timeout_s=1.0))
    body = invocation([b64_fundus(1, 24, 24)])
    with running(app, free_port) as address, releasing(net):
        first = threading.Thread(target=call, args=(address, "POST", "/invocations", body))
        first.start()
        assert net.entered.wait(20)
        status, payload, _ = call(address, "POST", "/invocations", body)
        assert status == 503 and "no free slot within the 1 s timeout" in payload["message"]
        first.join(30)
        wait_until(lambda: app.state.gate.busy == 0, "the first worker to finish")


def test_a_body_that_does_not_arrive_in_time_gets_408(predictor, free_port):
    import socket

    app = create_app(predictor, ServerLimits(timeout_s=1.0))
    with running(app, free_port) as address, socket.create_connection(("127.0.0.1", free_port), 10) as sock:
        head = (
            "POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{"
        )
        sock.sendall(head.encode())  # 1 byte of the promised 1000, then nothing
        sock.settimeout(15)
        answer = sock.recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert app.state.gate.busy == 0  # the slot was given back
        assert call(address, "GET", "/ping")[0] == 200


def test_limits_are_validated():
    with pytest.raises(ValueError, match="concurrency"):
        ServerLimits(max_concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        ServerLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max-body-mb"):
        ServerLimits.from_cli(max_body_mb=-1)
    assert ServerLimits.from_cli(max_body_mb=1.5).max_body_bytes == int(1.5 * 2**20)


# ------------------------------------------------------------------------------- registered model


def test_a_registered_model_is_served_with_its_stored_tile_settings(
    tiny_model_dir, mlflow_uri, tmp_path, monkeypatch
):
    import mlflow

    from retinaseg.serving import log_pyfunc_model

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("server")
    try:
        with mlflow.start_run():
            info = log_pyfunc_model(tiny_model_dir, 0.3, InferenceSettings(tile_size=32, tile_overlap=0.5))
        served = load_served_predictor(info.model_uri, "cpu")
    finally:
        mlflow.set_tracking_uri(None)
    assert (served.settings.tile_size, served.settings.tile_overlap) == (32, 0.5)
    assert served.threshold == 0.3
    explicit = load_served_predictor(tiny_model_dir, "cpu", InferenceSettings(tile_size=48))
    assert explicit.settings.tile_size == 48


@pytest.mark.slow
def test_serve_runs_as_its_own_process(tiny_model_dir, free_port, tmp_path):
    """`retinaseg serve` as a user starts it: its own process, limits from its options."""
    cli = Path(sys.executable).with_name("retinaseg")
    cmd = [str(cli), "serve", "--model", str(tiny_model_dir), "--port", str(free_port), "--max-body-mb", "1"]
    cmd += ["--max-concurrency", "1", "--max-queue", "2", "--timeout-s", "30", "--device", "cpu"]
    log = tmp_path / "serve.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            cmd, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
        )
        try:
            address = f"{HOST}:{free_port}"
            wait_for_http_ok(f"http://{address}/ping", proc, log, "retinaseg serve", 90)
            status, payload, _ = call(address, "POST", "/invocations", invocation([b64_fundus(3, 57, 49)]))
            assert status == 200 and payload["predictions"][0]["width"] == 49, payload
            big = invocation(["A" * (2 * 2**20)])
            assert call(address, "POST", "/invocations", big)[0] == 413
        finally:
            stop_process_group(proc)
    assert Path(log).exists()
