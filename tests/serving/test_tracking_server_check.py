"""A tracking server that does not answer is one clear error naming MLFLOW_TRACKING_URI, at once."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retinaseg.core.mlflow_store import TrackingError
from retinaseg.tracking import check_server, use_store
from tests.ports import free_ports


def test_an_unreachable_server_names_the_variable_and_the_way_out(monkeypatch):
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError) as exc:
        use_store()
    message = str(exc.value)
    assert f"the MLflow server at {uri} (MLFLOW_TRACKING_URI) does not answer" in message
    assert "make services" in message and "unset MLFLOW_TRACKING_URI" in message


def test_a_server_that_answers_health_is_accepted_and_a_500_is_not():
    class Health(BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(Health.status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        Health.status = 500
        with pytest.raises(TrackingError, match="does not answer: HTTP Error 500"):
            check_server(f"http://127.0.0.1:{port}/")
        Health.status = 200
        check_server(f"http://127.0.0.1:{port}/")  # no error
    finally:
        server.shutdown()


def test_local_stores_are_not_checked():
    check_server("sqlite:////nonexistent/dir/mlflow.db")  # a file store: nothing to ask
