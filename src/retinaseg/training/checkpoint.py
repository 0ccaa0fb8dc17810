"""Training checkpoints: ``last.pt`` every epoch, ``best.pt`` on improvement, resume by fingerprint.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no numpy objects, no
pickled classes), written atomically with ``torch.save`` and read back with
``torch.load(weights_only=True)``. Checkpoints live in ``.checkpoints/<model>/`` at the
repository root, outside the DVC output ``models/<model>/`` (DVC deletes outputs before a stage
runs, which would throw the resume state away).

The **fingerprint** is a hash of everything that changes what training computes (the seed, the
``train``/``augment``/``preprocess`` groups, the model's own group) and of the processed data's
content (:func:`retinaseg.core.fileio.hash_tree`); a checkpoint is only resumed when its
fingerprint matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from retinaseg.core.config import Params
from retinaseg.core.fileio import atomic_path

LAST = "last.pt"
BEST = "best.pt"
# train keys that do not change the computation (resume policy)
_FINGERPRINT_IGNORED = ("train.resume",)


def training_fingerprint(params: Params, model_name: str, data_hash: str) -> str:
    """Hash of the params that affect training plus the processed data's content hash."""
    flat = params.flat("train", "augment", "preprocess", f"models.{model_name}")
    flat = {k: v for k, v in flat.items() if k not in _FINGERPRINT_IGNORED}
    payload = {"base.seed": params.base.seed, "model": model_name, "params": flat, "data": data_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically (temp file beside ``path``, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` on the CPU (``weights_only=True``).

    Raises ``ValueError`` naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model" not in state or "fingerprint" not in state:
        raise ValueError(f"{path}: not a retinaseg training checkpoint (missing 'model'/'fingerprint')")
    return state


def find_resumable(checkpoint_dir: str | Path, fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """The ``last.pt`` state to resume from, or ``(None, reason)`` when starting fresh."""
    path = Path(checkpoint_dir) / LAST
    if not path.is_file():
        return None, f"no checkpoint at {path}"
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        return None, str(exc)
    if state["fingerprint"] != fingerprint:
        return None, f"{path} was written with different params or data (fingerprint mismatch)"
    return state, f"resuming from {path} (epoch {state['epoch']})"
