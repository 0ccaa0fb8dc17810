"""Helpers for the inference/serving tests: toy fundus images and a tiny real U-Net."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.tiny import TINY_UNET


def toy_fundus(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A reddish disc with a few dark random lines ("vessels"): (HxWx3 uint8 image, HxW {0,1} mask)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    centre = (width // 2, height // 2)
    cv2.circle(image, centre, int(min(height, width) * 0.48), (200, 90, 40), -1)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(6):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(mask, p1, p2, 1, int(rng.integers(1, 3)))
    image[mask > 0] = (90, 30, 15)
    noise = rng.integers(0, 12, size=image.shape, dtype=np.uint8)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8), mask


def train_tiny_unet(steps: int = 15, seed: int = 0) -> torch.nn.Module:
    """The tiny U-Net, trained for ``steps`` Adam steps on toy images (so it is not a constant map)."""
    from retinaseg.data.preprocess import image_to_tensor
    from retinaseg.models.factory import build_model

    torch.manual_seed(seed)
    model = build_model("unet", TINY_UNET)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pairs = [toy_fundus(s, 64, 64) for s in range(4)]
    x = torch.stack([image_to_tensor(img) for img, _ in pairs])
    y = torch.stack([torch.from_numpy(m).float()[None] for _, m in pairs])
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    return model.eval()


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of an array."""
    ok, buf = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    assert ok
    return buf.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + a valid IHDR claiming ``width x height`` RGB, and no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


def wait_for_http_ok(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail the test with the server's log if ``proc`` exits
    or ``timeout_s`` passes (bounded: the test never hangs on a server that does not come up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not answer {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Terminate a subprocess started with ``start_new_session=True`` and its children (by group id)."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
