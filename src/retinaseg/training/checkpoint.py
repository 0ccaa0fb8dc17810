"""Training checkpoints: ``last.pt`` every epoch, ``best.pt`` on improvement, resume by run identity.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no numpy objects, no
pickled classes), written atomically with ``torch.save`` and read back with
``torch.load(weights_only=True)``. Checkpoints live in ``.checkpoints/<model>/`` at the
repository root, outside the DVC output ``models/<model>/`` (DVC deletes outputs before a stage
runs, which would throw the resume state away).

Every checkpoint carries the **identity** of the run that wrote it (:class:`RunIdentity`): the
params that change what training computes (the seed, the ``train``/``augment``/``preprocess``
groups, the model's own group), the content hash of the processed data
(:func:`retinaseg.core.fileio.hash_tree`) and the hash of the code that trains (:func:`code_hash`).
A run resumes ``last.pt`` only when its identity matches and ``best.pt`` holds that run's best
epoch; the model a run saves is only ever its own best epoch (:func:`own_best`), never a
``best.pt`` left by another run in the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinaseg.core.config import Params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import atomic_path

LAST = "last.pt"
BEST = "best.pt"
# train keys that do not change the computation (resume policy)
_FINGERPRINT_IGNORED = ("train.resume",)
# The package source that decides what training computes, relative to src/retinaseg: the
# src/retinaseg deps of the train stage in dvc.yaml (tests/training/test_checkpoint.py checks both agree).
CODE_PATHS = (
    "core/fileio.py",
    "data/dataset.py",
    "data/preprocess.py",
    "data/transforms.py",
    "models",
    "training",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class TrainingError(RetinasegError, ValueError):
    """A training run that cannot produce its own model (names the checkpoint and the reason)."""


def code_hash(package_dir: str | Path = PACKAGE_DIR) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file under :data:`CODE_PATHS`."""
    root = Path(package_dir)
    digest = hashlib.sha256()
    for rel in CODE_PATHS:
        path = root / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() if file.is_file() else b"<missing>")
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What makes two training runs the same computation: model, params, data and code."""

    model: str
    params: dict[str, Any]  # flattened, the keys that change what training computes
    data_hash: str
    code_hash: str

    @property
    def fingerprint(self) -> str:
        payload = dataclasses.asdict(self)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: dict[str, Any] | None) -> str:
        """What differs from another checkpoint's identity dict, in words ("params (train.lr: 0.1 → 0.2)")."""
        if not isinstance(other, dict):
            return "a checkpoint without a recorded identity"
        parts = []
        if other.get("model") != self.model:
            parts.append(f"model {other.get('model')!r} → {self.model!r}")
        theirs = other.get("params") if isinstance(other.get("params"), dict) else {}
        changed = [
            f"{key}: {theirs.get(key, '<absent>')!r} → {self.params.get(key, '<absent>')!r}"
            for key in sorted(set(theirs) | set(self.params))
            if theirs.get(key) != self.params.get(key)
        ]
        if changed:
            more = f", … ({len(changed) - 3} more)" if len(changed) > 3 else ""
            parts.append(f"params ({', '.join(changed[:3])}{more})")
        if other.get("data_hash") != self.data_hash:
            parts.append("processed data")
        if other.get("code_hash") != self.code_hash:
            parts.append(f"code (under src/retinaseg/{{{','.join(CODE_PATHS)}}})")
        return ", ".join(parts) or "nothing recorded differs"


def run_identity(
    params: Params, model_name: str, data_hash: str, code_sha256: str | None = None
) -> RunIdentity:
    """The :class:`RunIdentity` of training ``model_name`` with ``params`` on data ``data_hash``
    with the installed code (or ``code_sha256``)."""
    flat = params.flat("train", "augment", "preprocess", f"models.{model_name}")
    flat = {k: v for k, v in flat.items() if k not in _FINGERPRINT_IGNORED}
    flat["base.seed"] = params.base.seed
    return RunIdentity(model_name, flat, data_hash, code_sha256 if code_sha256 is not None else code_hash())


def training_fingerprint(
    params: Params, model_name: str, data_hash: str, code_sha256: str | None = None
) -> str:
    """Hash of the params that affect training, the processed data's content hash and the code hash."""
    return run_identity(params, model_name, data_hash, code_sha256).fingerprint


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


def _fingerprint_of(identity: RunIdentity | str) -> str:
    return identity if isinstance(identity, str) else identity.fingerprint


def _mismatch(path: Path, state: dict[str, Any], identity: RunIdentity | str) -> str:
    what = "" if isinstance(identity, str) else f": {identity.differences(state.get('identity'))}"
    return f"{path} was written by another run (fingerprint mismatch{what})"


def _read_best(
    checkpoint_dir: Path, identity: RunIdentity | str, best_epoch: int
) -> tuple[dict[str, Any] | None, str]:
    """``(best.pt state, "")`` when it holds this run's best epoch ``best_epoch``, else ``(None, why)``."""
    path = checkpoint_dir / BEST
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        state = load_checkpoint(path)
    except (ValueError, FileNotFoundError) as exc:
        return None, str(exc)
    if state["fingerprint"] != _fingerprint_of(identity):
        return None, _mismatch(path, state, identity)
    if state.get("epoch") != best_epoch:
        return None, f"{path} holds epoch {state.get('epoch')}, not this run's best epoch {best_epoch}"
    return state, ""


def find_resumable(
    checkpoint_dir: str | Path, identity: RunIdentity | str
) -> tuple[dict[str, Any] | None, str]:
    """The ``last.pt`` state to resume from, or ``(None, reason)`` when starting fresh.

    Resumed only when ``last.pt`` carries this run's identity and, once the run has a best epoch,
    ``best.pt`` holds exactly that epoch of this run (else the finished run could not save its
    own best model).
    """
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / LAST
    if not path.is_file():
        return None, f"no checkpoint at {path}"
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        return None, str(exc)
    if state["fingerprint"] != _fingerprint_of(identity):
        return None, _mismatch(path, state, identity)
    best_epoch = int(state.get("best_epoch", 0))
    if best_epoch > 0:
        best, problem = _read_best(checkpoint_dir, identity, best_epoch)
        if best is None:
            return None, f"{path} matches, but its best epoch is gone: {problem}"
    return state, f"resuming from {path} (epoch {state['epoch']})"


def own_best(checkpoint_dir: str | Path, identity: RunIdentity | str, best_epoch: int) -> dict[str, Any]:
    """The ``best.pt`` state of this run (identity and best epoch checked); :class:`TrainingError` else."""
    checkpoint_dir = Path(checkpoint_dir)
    if best_epoch <= 0:
        raise TrainingError(
            f"no epoch of this run improved the validation Dice (all NaN?), so it has no best model "
            f"to save; nothing was written to the model folder (checkpoints: {checkpoint_dir})"
        )
    best, problem = _read_best(checkpoint_dir, identity, best_epoch)
    if best is None:
        raise TrainingError(
            f"this run's best epoch {best_epoch} is not in its checkpoints ({problem}; another run "
            "wrote to the same folder?); the model of another run is never saved in its place. "
            "Train again from scratch: -S train.resume=never"
        )
    return best
