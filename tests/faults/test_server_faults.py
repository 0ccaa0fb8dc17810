"""``retinaseg serve`` under load and against hostile clients.

Load: benchmarks/server_load.py (the server in its own process, clients posting fundus photographs
for a bounded time, one very large request): every request answered (200, or 503 when the queue is
full), none dropped, no client hung, the server's memory within its limit. Fast: 4 clients, 2 MP
photographs, 5 s, one 12 MP request; full: the benchmark's own 8 clients and 8 MP photographs for
20 s and its 49 MP request.

Hostile clients (a real uvicorn server in a thread, one request at a time, a queue of one): bytes that
are not HTTP, a body that stops halfway, a client that leaves before its answer, a crowd of idle
connections. After each, the server answers ``/ping`` and segments a good request (200): it gave every
slot back. (The body, pixel, queue and time limits themselves: tests/serving/test_server.py.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from retinaseg.server import ServerLimits, create_app, load_served_predictor
from retinaseg.serving import encode_image_b64
from tests.conftest import REPO_ROOT
from tests.faults.helpers import FULL
from tests.faults.images import picture
from tests.ports import free_ports
from tests.serving.helpers import png_bytes

FAMILY = "Server under load and hostile clients"

HOST = "127.0.0.1"

LOAD_ARGS = (
    []
    if FULL
    else ["--width", "1600", "--height", "1200", "--big-width", "4000", "--big-height", "3000"]
    + ["--base-channels", "4", "--depth", "2", "--clients", "4", "--source-size", "256"]
)


@pytest.mark.slow
def test_under_load_every_request_is_answered_and_memory_stays_bounded(tmp_path):
    out = tmp_path / "server_load.json"
    seconds = "20" if FULL else "5"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "server_load.py"), "--seconds", seconds]
        + [*LOAD_ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert out.is_file(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["checks"] and all(report["checks"].values()), json.dumps(report, indent=1)
    load = report["load"]
    assert load["dropped"] == 0 and load["hung_clients"] == 0 and load["wrong_answers"] == 0
    assert set(load["statuses"]) <= {"200", "503"} and load["statuses"].get("200", 0) > 0
    assert report["big_request"]["status"] == 200
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------ hostile clients


@pytest.fixture(scope="module")
def served(tiny_model_dir) -> Iterator[tuple[str, int]]:
    import uvicorn

    predictor = load_served_predictor(tiny_model_dir, "cpu")
    limits = ServerLimits(max_body_bytes=4 * 2**20, max_concurrency=1, max_queue=1, timeout_s=20)
    (port,) = free_ports(1, HOST)
    config = uvicorn.Config(
        create_app(predictor, limits), host=HOST, port=port, log_level="critical", timeout_keep_alive=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield HOST, port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _good_body() -> bytes:
    image = encode_image_b64(png_bytes(picture(9, 96, 128)))
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]}}).encode()


def _still_serving(address: tuple[str, int]) -> None:
    """/ping answers and a good request is segmented (200): no slot was kept by a hostile client."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/ping")
    assert conn.getresponse().read() is not None
    conn.close()
    for _ in range(2):  # twice: a queue of one, a slot of one, both must be free
        conn = http.client.HTTPConnection(*address, timeout=30)
        conn.request("POST", "/invocations", body=_good_body(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        assert response.status == 200, payload[:300]


def _raw(address: tuple[str, int], data: bytes, read: bool = False) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        if not read:
            return b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            return sock.recv(65536)
    return b""


def _request_head(length: int) -> bytes:
    return (
        f"POST /invocations HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_bytes_that_are_not_http(served):
    for junk in (b"\x00\xff" * 512, b"GET / HTTP/9.9\r\n\r\n", b"\r\n\r\n\r\n", b"POST /invocations\r\n\r\n"):
        _raw(served, junk, read=True)
    _still_serving(served)


def test_a_body_that_stops_halfway(served):
    body = _good_body()
    for _ in range(4):
        _raw(served, _request_head(len(body)) + body[: len(body) // 2])  # then the client leaves
    _still_serving(served)


def test_a_client_that_leaves_before_its_answer(served):
    body = _good_body()
    for _ in range(3):
        _raw(served, _request_head(len(body)) + body)  # the whole request, then gone
    time.sleep(1.0)  # the server segments it and finds nobody to answer
    _still_serving(served)


def test_a_crowd_of_idle_connections(served):
    sockets = [socket.create_connection(served, timeout=10) for _ in range(pick_crowd())]
    try:
        _still_serving(served)
    finally:
        for sock in sockets:
            sock.close()
    _still_serving(served)


def pick_crowd() -> int:
    return 200 if FULL else 40


def test_a_lying_content_length(served):
    body = _good_body()
    _raw(served, _request_head(len(body) * 2) + body, read=False)  # claims twice what it sends, then leaves
    _raw(served, _request_head(10) + body, read=True)  # claims less than it sends
    _still_serving(served)


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/invocations/%00", "/" + "a" * 8000])
def test_odd_paths_are_refused_without_harm(served, path):
    conn = http.client.HTTPConnection(*served, timeout=10)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
    except (http.client.HTTPException, ConnectionError):
        status = None  # the server may close such a connection: also fine
    finally:
        conn.close()
    assert status in (None, 400, 404, 405, 414, 431)
    _still_serving(served)
