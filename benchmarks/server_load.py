"""Load test of ``retinaseg serve`` (:mod:`retinaseg.server`) on 127.0.0.1: latency, 503s and the
server's memory.

It saves a small, untrained but real U-Net (``--base-channels``, random weights; params.yaml's
preprocessing) with the project's ``save_model_dir``, starts ``serve()`` on it in a separate process
(127.0.0.1, a free port), and then

1. **one big request**: a ``--big-width`` x ``--big-height`` photograph (default 8576 x 5712 =
   49 megapixels, just under the 50 MP limit): the server's peak resident memory during that request
   minus its resident memory before it (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``;
   where that is not allowed, the peak of 20 Hz samples of ``VmRSS``); must be at most ``--big-limit-gb``;
2. **load**: ``--clients`` threads (default 8), each posting a ``--width`` x ``--height`` photograph
   (default 3504 x 2336 = 8 megapixels) over a keep-alive connection, one request after another, for
   ``--seconds`` (default 60). Every request must be answered: 200 (a mask of the right size) or 503
   (the queue is full); anything else, or a failed connection, counts as dropped. The server's peak
   resident memory during the load must be at most ``--rss-limit-gb``.

The photographs are synthetic fundus images (``retinaseg.data.synthetic`` at 1024 px, resized, placed
on a black camera frame, with a little sensor noise so JPEG sizes are photograph-like), generated on
the fly and sent as JPEG (``--format png`` for PNG). Every loop is bounded in time and count: the
script stops by itself, and stops the server.

Prints p50/p99 latency and the memory figures; writes ``reports/benchmarks/server_load.json``; exits
1 when a check fails.

    python benchmarks/server_load.py                 # 60 s, 8 clients
    python benchmarks/server_load.py --seconds 20    # a shorter check
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from retinaseg.core.config import PreprocessParams
from retinaseg.core.fileio import write_json
from retinaseg.data.synthetic import generate_sample
from retinaseg.models.factory import build_model, count_parameters
from retinaseg.models.saved import ModelCard, save_model_dir

HOST = "127.0.0.1"  # loopback only
GB = 1024**3


# ------------------------------------------------------------------------------------ the inputs


def fundus_photo(width: int, height: int, seed: int = 0, source_size: int = 1024) -> np.ndarray:
    """A fundus-like RGB photograph ``height x width``: the synthetic fundus (``source_size`` px,
    default 1024) resized to the frame's height, centred on a black frame, plus uniform noise of +-4
    grey levels."""
    image, _, _ = generate_sample(seed=seed, size=source_size)
    side = min(width, height)
    disc = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = disc
    del disc
    rng = np.random.default_rng(seed)
    for y in range(0, height, 256):  # in bands: no full-size int16 copy
        band = frame[y : y + 256].astype(np.int16)
        band += rng.integers(-4, 5, size=band.shape, dtype=np.int16)
        frame[y : y + 256] = np.clip(band, 0, 255).astype(np.uint8)
    return frame


def encode(image: np.ndarray, fmt: str) -> bytes:
    """JPEG (quality 92) or PNG bytes of an RGB image."""
    ext, opts = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 92]) if fmt == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, image[..., ::-1], opts)
    if not ok:
        raise RuntimeError(f"could not encode a {fmt} image")
    return buf.tobytes()


def invocation_body(file_bytes: bytes) -> bytes:
    """The /invocations JSON for one image."""
    b64 = base64.b64encode(file_bytes).decode("ascii")
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}}).encode()


# ------------------------------------------------------------------------------------ the server


def save_bench_model(out_dir: Path, base_channels: int, depth: int) -> int:
    """An untrained U-Net (random weights, seed 0) saved as a model directory; its parameter count."""
    torch.manual_seed(0)
    params = {"base_channels": base_channels, "depth": depth, "norm": "batch", "dropout": 0.0}
    model = build_model("unet", params)
    card = ModelCard(
        "unet", params, PreprocessParams(), threshold=0.5, extra={"note": "untrained, benchmark"}
    )
    save_model_dir(model.eval(), card, out_dir)
    return count_parameters(model)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(model_dir: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    code = (
        "from retinaseg.server import serve; "
        f"serve({str(model_dir)!r}, host={HOST!r}, port={port}, max_body_mb={args.max_body_mb}, "
        f"max_concurrency={args.max_concurrency}, max_queue={args.max_queue}, "
        f"timeout_s={args.timeout_s}, device='cpu', log_level='warning')"
    )
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_server(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"the server did not answer /ping within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
    )


# ------------------------------------------------------------------------------------ its memory


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class RssWatch:
    """The peak resident memory of a process over a phase: the kernel's high-water mark (``VmHWM``,
    reset at the start through ``clear_refs``) when that reset is allowed, else 20 Hz samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_peak_kb = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.sampled_peak_kb = max(self.sampled_peak_kb, proc_status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(0.05)

    def __enter__(self) -> RssWatch:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.exact = True
        except OSError:
            self.exact = False
        self.start_kb = proc_status_kb(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_kb = max(self.sampled_peak_kb, proc_status_kb(self.pid, "VmHWM") if self.exact else 0)


# ------------------------------------------------------------------------------------ the clients


@dataclass
class Results:
    statuses: Counter = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    latencies_all: list[float] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    status, payload, _ = post_with_headers(conn, body)
    return status, payload


def post_with_headers(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, payload, {k.lower(): v for k, v in resp.getheaders()}


def check_ok(payload: bytes, width: int, height: int) -> str:
    """'' when the answer is one good row of the right size, else what is wrong."""
    try:
        (row,) = json.loads(payload)["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable answer ({exc})"
    if row.get("error") or (row.get("width"), row.get("height")) != (width, height) or not row.get("mask"):
        return f"wrong row: error={row.get('error')!r} size={row.get('width')}x{row.get('height')}"
    return ""


def client(
    port: int,
    body: bytes,
    size: tuple[int, int],
    end: float,
    max_requests: int,
    timeout_s: float,
    out: Results,
) -> None:
    """Post ``body`` again and again until ``end`` (or ``max_requests``), on a keep-alive connection;
    after a 503, wait as its ``Retry-After`` says (a polite client), at most until ``end``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        for _ in range(max_requests):
            if time.monotonic() >= end:
                return
            start = time.perf_counter()
            try:
                status, payload, headers = post_with_headers(conn, body)
            except (OSError, http.client.HTTPException) as exc:
                with out.lock:
                    out.dropped.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
                continue
            elapsed = time.perf_counter() - start
            problem = check_ok(payload, *size) if status == 200 else ""
            with out.lock:
                out.statuses[status] += 1
                out.latencies_all.append(elapsed)
                if status == 200:
                    out.latencies_ok.append(elapsed)
                if problem:
                    out.wrong.append(problem)
                elif status not in (200, 503):
                    out.wrong.append(f"HTTP {status}: {payload[:200]!r}")
            if status == 503:
                try:
                    pause = float(headers.get("retry-after", "1"))
                except ValueError:
                    pause = 1.0
                time.sleep(max(0.0, min(pause, end - time.monotonic())))
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 1)


# ------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    print(f"generating a {args.width}x{args.height} and a {args.big_width}x{args.big_height} photograph ...")
    small_file = encode(
        fundus_photo(args.width, args.height, seed=1, source_size=args.source_size), args.format
    )
    small_body = invocation_body(small_file)
    big_body = b""
    big_file_mb = 0.0
    if not args.skip_big:
        big_file = encode(
            fundus_photo(args.big_width, args.big_height, seed=2, source_size=args.source_size), args.format
        )
        big_file_mb = len(big_file) / 2**20
        big_body = invocation_body(big_file)
        del big_file
    warm_body = invocation_body(
        encode(fundus_photo(640, 480, seed=3, source_size=args.source_size), args.format)
    )
    print(f"  {args.format}: {len(small_file) / 2**20:.1f} MiB (8 MP), {big_file_mb:.1f} MiB (big)")

    with tempfile.TemporaryDirectory(prefix="retinaseg-bench-") as tmp:
        model_dir = Path(tmp) / "unet"
        n_parameters = save_bench_model(model_dir, args.base_channels, args.depth)
        port = free_port()
        log = Path(tmp) / "server.log"
        proc = start_server(model_dir, port, args, log)
        try:
            wait_ready(port, proc, log)
            conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout_s + 30)
            status, _ = post(conn, warm_body)
            conn.close()
            if status != 200:
                raise RuntimeError(f"the warm-up request got HTTP {status}")
            idle_kb = proc_status_kb(proc.pid, "VmRSS")
            startup_peak_kb = proc_status_kb(proc.pid, "VmHWM")  # loading the model + the warm-up request

            big: dict[str, Any] = {"skipped": True}
            if not args.skip_big:
                print(f"one {args.big_width}x{args.big_height} request ...")
                conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout_s + 30)
                with RssWatch(proc.pid) as watch:
                    start = time.perf_counter()
                    status, payload = post(conn, big_body)
                    big_latency = time.perf_counter() - start
                conn.close()
                big = {
                    "skipped": False,
                    "megapixels": round(args.big_width * args.big_height / 1e6, 2),
                    "status": status,
                    "problem": check_ok(payload, args.big_width, args.big_height) if status == 200 else "",
                    "latency_s": round(big_latency, 2),
                    "rss_before_mb": round(watch.start_kb / 1024, 1),
                    "rss_peak_mb": round(watch.peak_kb / 1024, 1),
                    "added_mb": round((watch.peak_kb - watch.start_kb) / 1024, 1),
                    "peak_exact": watch.exact,
                    "body_mb": round(len(big_body) / 2**20, 1),
                }
                del payload, big_body

            print(f"{args.clients} clients for {args.seconds:g} s ...")
            results = Results()
            end = time.monotonic() + args.seconds
            with RssWatch(proc.pid) as load_watch:
                threads = [
                    threading.Thread(
                        target=client,
                        args=(
                            port,
                            small_body,
                            (args.width, args.height),
                            end,
                            100_000,
                            args.timeout_s + 30,
                            results,
                        ),
                        daemon=True,
                    )
                    for _ in range(args.clients)
                ]
                for t in threads:
                    t.start()
                for t in threads:  # each stops at `end` plus at most one request (bounded by its timeout)
                    t.join(timeout=args.seconds + 2 * args.timeout_s + 60)
                hung = sum(t.is_alive() for t in threads)
            server_alive = proc.poll() is None
        finally:
            stop_server(proc)
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""

    n = sum(results.statuses.values())
    ok = results.statuses.get(200, 0)
    elapsed = args.seconds
    report = {
        "config": {
            "clients": args.clients,
            "seconds": args.seconds,
            "image": f"{args.width}x{args.height}",
            "format": args.format,
            "image_file_mb": round(len(small_file) / 2**20, 2),
            "body_mb": round(len(small_body) / 2**20, 2),
            "max_concurrency": args.max_concurrency,
            "max_queue": args.max_queue,
            "max_body_mb": args.max_body_mb,
            "timeout_s": args.timeout_s,
            "model": {
                "name": "unet",
                "base_channels": args.base_channels,
                "depth": args.depth,
                "parameters": n_parameters,
                "preprocess_size": PreprocessParams().size,
                "weights": "random (untrained)",
            },
        },
        "load": {
            "requests": n,
            "statuses": {str(k): v for k, v in sorted(results.statuses.items())},
            "dropped": len(results.dropped),
            "dropped_examples": results.dropped[:5],
            "wrong_answers": len(results.wrong),
            "wrong_examples": results.wrong[:5],
            "hung_clients": hung,
            "ok_per_s": round(ok / elapsed, 2),
            "latency_ok_ms": {
                "p50": ms(percentile(results.latencies_ok, 50)),
                "p99": ms(percentile(results.latencies_ok, 99)),
                "mean": ms(statistics.fmean(results.latencies_ok)) if results.latencies_ok else None,
            },
            "latency_all_ms": {
                "p50": ms(percentile(results.latencies_all, 50)),
                "p99": ms(percentile(results.latencies_all, 99)),
            },
            "rss_idle_mb": round(idle_kb / 1024, 1),
            "rss_peak_mb": round(load_watch.peak_kb / 1024, 1),
            "peak_exact": load_watch.exact,
        },
        "big_request": big,
        "server": {
            "rss_peak_startup_mb": round(startup_peak_kb / 1024, 1),
            "rss_peak_whole_run_mb": round(
                max(startup_peak_kb, load_watch.peak_kb, big.get("rss_peak_mb", 0) * 1024) / 1024, 1
            ),
            "alive_at_end": server_alive,
        },
        "limits": {"rss_gb": args.rss_limit_gb, "big_added_gb": args.big_limit_gb},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "wall_s": round(time.monotonic() - t0, 1),
    }
    checks = {
        "every_request_answered": len(results.dropped) == 0 and hung == 0 and not results.wrong,
        "only_200_or_503": set(results.statuses) <= {200, 503},
        "some_served": ok > 0,
        "load_rss_within_limit": load_watch.peak_kb * 1024 <= args.rss_limit_gb * GB,
        "server_alive": server_alive,
    }
    if not big["skipped"]:
        checks["big_request_ok"] = big["status"] == 200 and not big["problem"]
        checks["big_added_within_limit"] = big["added_mb"] * 2**20 <= args.big_limit_gb * GB
    report["checks"] = checks
    report["passed"] = all(checks.values())
    if not report["passed"]:
        report["server_log_tail"] = server_log
    return report


def print_report(report: dict[str, Any]) -> None:
    load, big, cfg, limits = report["load"], report["big_request"], report["config"], report["limits"]
    lat, lat_all = load["latency_ok_ms"], load["latency_all_ms"]
    lines = [
        "",
        f"server load: {cfg['clients']} clients x {cfg['seconds']:g} s, {cfg['image']} {cfg['format']} "
        f"({cfg['image_file_mb']} MiB), concurrency {cfg['max_concurrency']}, queue {cfg['max_queue']}",
        f"  requests {load['requests']}  statuses {load['statuses']}  dropped {load['dropped']}  "
        f"wrong {load['wrong_answers']}  served/s {load['ok_per_s']}",
        f"  latency of 200s: p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
        f"(all answers: p50 {lat_all['p50']} ms, p99 {lat_all['p99']} ms)",
        f"  server RSS: idle {load['rss_idle_mb']} MB, peak under load {load['rss_peak_mb']} MB "
        f"(limit {limits['rss_gb']} GB); whole run {report['server']['rss_peak_whole_run_mb']} MB",
    ]
    if not big["skipped"]:
        lines.append(
            f"  {big['megapixels']} MP request: HTTP {big['status']} in {big['latency_s']} s, "
            f"body {big['body_mb']} MiB, RSS {big['rss_before_mb']} -> peak {big['rss_peak_mb']} MB "
            f"(+{big['added_mb']} MB; limit {limits['big_added_gb']} GB)"
        )
    failed = [name for name, ok in report["checks"].items() if not ok]
    lines.append("  checks: " + ("all passed" if not failed else "FAILED " + ", ".join(failed)))
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the load phase (default 60)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--width", type=int, default=3504)
    p.add_argument("--height", type=int, default=2336)
    p.add_argument("--big-width", type=int, default=8576)
    p.add_argument("--big-height", type=int, default=5712)
    p.add_argument("--skip-big", action="store_true", help="no 49-megapixel request")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument(
        "--source-size",
        type=int,
        default=1024,
        help="the synthetic fundus drawn at this size, then resized to the photograph (smaller: faster)",
    )
    p.add_argument("--max-concurrency", type=int, default=2)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-body-mb", type=float, default=70.0)
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--base-channels", type=int, default=8, help="U-Net width (untrained)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--rss-limit-gb", type=float, default=2.0)
    p.add_argument("--big-limit-gb", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=Path("reports/benchmarks/server_load.json"))
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 1 <= args.clients <= 64:
        p.error("--seconds must be in (0, 3600] and --clients in [1, 64]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    write_json(args.out, report)
    print_report(report)
    print(f"  -> {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
