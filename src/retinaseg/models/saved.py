"""The saved-model formats: a directory with ``model.pt`` (state_dict) and ``model.json`` (ModelCard),
and the one-file model package (``*.retinaseg.zip``) that users take home.

A saved model is self-contained: the card names the architecture and its params, the
preprocessing the model was trained with and the chosen threshold, so evaluation, ``retinaseg
predict``, the pyfunc model and the app rebuild exactly the same model. Weights are a plain
state_dict loaded with ``torch.load(..., weights_only=True)``: nothing is ever unpickled.

:func:`load_model` also takes an MLflow URI (``models:/name@alias``, ``runs:/id/path``): the
artifacts are fetched by :mod:`retinaseg.core.mlflow_store` into a temporary folder that is
deleted once the weights are in memory.

A **model package** (written by :func:`retinaseg.models.package.export_model`, read here by
:func:`read_package` / :func:`load_model_package`; docs/model-package.md) is one zip file holding
exactly :data:`PACKAGE_MEMBERS`: ``model.json`` (the same card), ``model.safetensors`` (the weights,
read with ``safetensors.torch.load``: no pickle at all) and ``MODEL_CARD.md`` (for people). It is
read in memory, never extracted, and refused (:class:`ModelLoadError` naming the file) when it holds
anything else, an unsafe or duplicate member name, a member larger than its limit (declared or
actually read), a missing member, or weights that do not fit the card's architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from retinaseg.core.config import MODEL_NAMES, ConfigError, PreprocessParams, params_from_dict
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_bytes, write_json
from retinaseg.core.mlflow_store import MODEL_FILES, downloaded_model_dir, is_mlflow_uri
from retinaseg.models.factory import build_model, state_dict_mismatch

CARD_FILE, WEIGHTS_FILE = MODEL_FILES
FORMAT_VERSION = 1

# ------------------------------------------------------------------------------- the model package
PACKAGE_SUFFIX = ".retinaseg.zip"  # what `retinaseg model export` suggests; any name is read by content
PACKAGE_WEIGHTS_FILE = "model.safetensors"
PACKAGE_README_FILE = "MODEL_CARD.md"
#: the members of a package, exactly these (sorted: the order they are written in)
PACKAGE_MEMBERS = tuple(sorted((CARD_FILE, PACKAGE_WEIGHTS_FILE, PACKAGE_README_FILE)))
#: ``extra["export"]["package_format"]`` of the packages this version writes and reads
PACKAGE_FORMAT = 1
#: the most bytes a member may hold (declared in the zip and actually decompressed); the weights of
#: the largest model here (resnet34_unet) are ~100 MB
MAX_MEMBER_BYTES = {
    CARD_FILE: 1 << 20,
    PACKAGE_WEIGHTS_FILE: 1 << 30,
    PACKAGE_README_FILE: 1 << 20,
}
_READ_CHUNK = 1 << 20


class ModelLoadError(RetinasegError, ValueError):
    """A model reference that cannot be loaded; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class ModelCard:
    """What a saved model needs besides its weights.

    Attributes:
        name: architecture, one of ``MODEL_NAMES``.
        model_params: the ``models.<name>`` params the model was built with.
        preprocess: the ``PreprocessParams`` fields as a dict (a ``PreprocessParams`` is accepted
            and converted).
        threshold: the probability threshold chosen on validation data, or ``None`` (use 0.5).
        extra: anything else worth keeping (training image size, data hash, git commit, epoch…);
            must be JSON-serialisable.
    """

    name: str
    model_params: dict[str, Any]
    preprocess: dict[str, Any]
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, PreprocessParams):
            self.preprocess = dataclasses.asdict(self.preprocess)
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.name!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] or None, got {self.threshold!r}")

    def preprocess_params(self) -> PreprocessParams:
        """The preprocessing as typed ``PreprocessParams`` (validated like params.yaml)."""
        return params_from_dict({"preprocess": self.preprocess}, source=CARD_FILE).preprocess

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the five fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; ``ValueError`` on missing/unknown keys or bad values."""
        if not isinstance(data, dict):
            raise ValueError(f"model card must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {"name", "model_params", "preprocess"}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            problems = [f"missing key(s) {', '.join(missing)}"] * bool(missing)
            problems += [f"unknown key(s) {', '.join(unknown)}"] * bool(unknown)
            raise ValueError(f"bad model card: {'; '.join(problems)}")
        for key in ("model_params", "preprocess", "extra"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"bad model card: {key!r} must be an object")
        card = cls(**data)
        try:
            card.preprocess_params()
        except ConfigError as exc:
            raise ValueError(f"bad model card preprocess: {exc}") from exc
        return card


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DataParallel/DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _json_ready(card_dict: dict[str, Any]) -> dict[str, Any]:
    """The card as plain JSON types; ``ValueError`` before anything is written if it cannot be."""
    try:
        return json.loads(json.dumps(card_dict, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card cannot be written as JSON: {exc}") from exc


def save_model_dir(model: nn.Module, card: ModelCard, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.pt`` (CPU state_dict) and ``out_dir/model.json`` (the card), atomically.

    Wrappers (DDP, ``torch.compile``) are removed first so the keys are the architecture's own.
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    card_dict = _json_ready({"format_version": FORMAT_VERSION, **card.to_dict()})
    write_bytes(out_dir / WEIGHTS_FILE, state_dict_bytes(state))
    write_json(out_dir / CARD_FILE, card_dict)
    return out_dir


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """``torch.save(state)`` as bytes that depend on the tensors only.

    ``torch.save`` to a path names the zip's records after the file (``<stem>/data.pkl``, …), so a
    save through a temporary file (as every atomic write is) would give other bytes each time; into a
    buffer the records are always ``archive/…``, with fixed zip timestamps. Tensors are made
    contiguous so the bytes do not depend on the memory format (channels_last on CUDA).
    """
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _read_card(path: Path) -> ModelCard:
    card_path = path / CARD_FILE
    if not card_path.is_file():
        raise ModelLoadError(card_path, f"missing {CARD_FILE} (not a saved retinaseg model directory)")
    return _parse_card(card_path.read_bytes(), card_path, "")


def _parse_card(raw: bytes, where: Path, prefix: str) -> ModelCard:
    """The card in ``raw`` (model.json's bytes); errors name ``where`` and start with ``prefix``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(where, f"{prefix}not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelLoadError(where, f"{prefix}format_version {version!r} is not supported (expected 1)")
    try:
        return ModelCard.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(where, f"{prefix}{exc}") from exc


def _architecture(card: ModelCard, where: Path, prefix: str = "") -> nn.Module:
    """The card's architecture, freshly built (encoder weights forced to ``None``: the trained weights
    come from the saved file, nothing is downloaded)."""
    params = dict(card.model_params)
    if card.name == "resnet34_unet":
        params["encoder_weights"] = None
    try:
        return build_model(card.name, params)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(where, f"{prefix}cannot build {card.name!r}: {exc}") from exc


def _read_state_dict(weights_path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise ModelLoadError(weights_path, f"missing {WEIGHTS_FILE}")
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed objects, RuntimeError for corrupt zips
        raise ModelLoadError(weights_path, f"not a loadable state_dict (weights_only): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(weights_path, "expected a state_dict (a mapping of names to tensors)")
    return state


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a saved model directory → ``(model in eval mode on device, card)``.

    The architecture is rebuilt from the card (encoder weights forced to ``None``: the trained
    weights come from ``model.pt``, nothing is downloaded), then the state_dict is loaded strictly.
    Raises :class:`ModelLoadError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(path, "not a directory" if path.exists() else "model directory not found")
    card = _read_card(path)
    device = torch.device(device)
    model = _architecture(card, path / CARD_FILE)
    state = _read_state_dict(path / WEIGHTS_FILE, device)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise ModelLoadError(
            path / WEIGHTS_FILE,
            f"weights do not match the {card.name!r} architecture in {CARD_FILE}: {problem}",
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


# ---------------------------------------------------------------------------------- model packages


def is_model_package(path: str | Path) -> bool:
    """Whether ``path`` is a file that is a zip archive (by content, whatever its name): what
    :func:`load_model` hands to :func:`load_model_package`."""
    path = Path(path)
    try:
        return path.is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


def _member_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    """Why these zip members are not exactly a package's (empty when they are), before reading any."""
    names = [info.filename for info in infos]
    problems, reported = [], set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            problems.append(f"unsafe member name {name!r} (absolute or with '..')")
        elif info.is_dir():
            problems.append(f"unexpected folder {name!r}")
        elif info.flag_bits & 0x1:
            problems.append(f"{name}: encrypted members are not supported")
        elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            method = info.compress_type
            problems.append(f"{name}: unsupported compression (method {method}; stored or deflated only)")
        elif name in MAX_MEMBER_BYTES and info.file_size > MAX_MEMBER_BYTES[name]:
            problems.append(
                f"{name}: declares {info.file_size} bytes, more than the {MAX_MEMBER_BYTES[name]} allowed"
            )
        else:
            continue
        reported.add(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    unexpected = sorted({n for n in names if n not in PACKAGE_MEMBERS} - reported)
    missing = [n for n in PACKAGE_MEMBERS if n not in names]
    if duplicates:
        problems.append(f"member(s) stored twice: {', '.join(duplicates)}")
    if unexpected:
        problems.append(f"unexpected member(s) {', '.join(map(repr, unexpected))}")
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    return problems


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member's bytes, in memory; stops as soon as more than its limit has come out."""
    limit = MAX_MEMBER_BYTES[info.filename]
    chunks, total = [], 0
    with zf.open(info) as fh:
        while chunk := fh.read(_READ_CHUNK):
            total += len(chunk)
            if total > limit:
                raise ModelLoadError(path, f"{info.filename}: holds more than the {limit} bytes allowed")
            chunks.append(chunk)
    return b"".join(chunks)


def _safetensors_state(raw: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``raw`` (model.safetensors' bytes) on the CPU; never unpickles anything."""
    where = f"{PACKAGE_WEIGHTS_FILE}: "
    try:
        state = safetensors.torch.load(raw)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as exc:
        if raw.startswith(b"PK\x03\x04") or raw[:1] == b"\x80":  # a torch.save zip, a bare pickle
            reason = "holds a pickle (torch.save), not safetensors; a package's weights are never unpickled"
        else:
            reason = f"not a readable safetensors file ({exc})"
        raise ModelLoadError(path, where + reason) from exc
    if not state:
        raise ModelLoadError(path, f"{where}holds no tensors")
    return state


def _max_package_bytes() -> int:
    """The largest package file worth opening: every member at its limit, plus the zip's own records."""
    return sum(MAX_MEMBER_BYTES.values()) + (1 << 16)


def read_package(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """A model package's card and CPU state_dict, read in memory and checked (nothing is written).

    Checks, each a :class:`ModelLoadError` naming ``path``: a readable zip; exactly
    :data:`PACKAGE_MEMBERS`, each once, with safe names and sizes within :data:`MAX_MEMBER_BYTES`
    (declared and as read); a valid card (its package format one this version reads); weights that
    are safetensors (a pickle is refused, never loaded) and match the card's ``weights_sha256``.
    """
    path = Path(path)
    try:
        size, most = path.stat().st_size, _max_package_bytes()
        if size > most:
            raise ModelLoadError(path, f"{size} bytes, larger than any model package ({most} at most)")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if CARD_FILE not in names and any(n.endswith("data.pkl") for n in names):
                raise ModelLoadError(
                    path,
                    "a torch.save file (a pickle), not a model package; retinaseg never unpickles a file: "
                    f"pass the directory holding {CARD_FILE} and {WEIGHTS_FILE}, or a package written by "
                    "`retinaseg model export`",
                )
            problems = _member_problems(zf.infolist())
            if problems:
                raise ModelLoadError(path, "not a valid model package: " + "; ".join(problems))
            raw = {info.filename: _read_member(zf, info, path) for info in zf.infolist()}
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ModelLoadError(path, f"not a readable zip file, damaged or truncated ({exc})") from exc
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    card = _parse_card(raw[CARD_FILE], path, f"{CARD_FILE}: ")
    export = card.extra.get("export")
    export = export if isinstance(export, dict) else {}
    fmt = export.get("package_format", PACKAGE_FORMAT)
    if fmt != PACKAGE_FORMAT:
        raise ModelLoadError(
            path, f"package format {fmt!r} is not supported (this retinaseg reads {PACKAGE_FORMAT})"
        )
    weights = raw[PACKAGE_WEIGHTS_FILE]
    state = _safetensors_state(weights, path)
    recorded = export.get("weights_sha256")
    if recorded is not None and recorded != hashlib.sha256(weights).hexdigest():
        raise ModelLoadError(
            path,
            f"{PACKAGE_WEIGHTS_FILE} is not the file exported with this {CARD_FILE} (its sha256 differs "
            "from export.weights_sha256): the package was altered",
        )
    return card, state


def load_model_package(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a model package (one zip file, see :func:`read_package`) → ``(model in eval mode on
    device, card)``; the state_dict must fit the card's architecture exactly (as for a directory)."""
    path = Path(path)
    card, state = read_package(path)
    model = _architecture(card, path, f"{CARD_FILE}: ")
    problem = state_dict_mismatch(model, state)
    if problem:
        raise ModelLoadError(
            path,
            f"{PACKAGE_WEIGHTS_FILE}: weights do not match the {card.name!r} architecture in "
            f"{CARD_FILE}: {problem}",
        )
    model.load_state_dict(state, strict=True)
    return model.to(torch.device(device)).eval(), card


def load_model(ref: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a model from a package file (``retinaseg model export``), a saved directory or an MLflow
    URI (``models:/name@alias``, ``runs:/id/path``).

    Returns ``(model in eval mode, card)``; :class:`ModelLoadError` otherwise.
    """
    ref_str = str(ref)
    if Path(ref_str).is_dir():
        return load_model_dir(ref_str, device)
    if is_model_package(ref_str):
        return load_model_package(ref_str, device)
    if is_mlflow_uri(ref_str):
        try:
            with downloaded_model_dir(ref_str) as folder:
                return load_model_dir(folder, device)  # weights are in memory before the folder goes
        except ModelLoadError:
            raise
        except Exception as exc:  # TrackingError, MlflowException, network and registry errors
            raise ModelLoadError(ref_str, f"could not download the MLflow model: {exc}") from exc
    if Path(ref_str).is_file():
        raise ModelLoadError(
            ref_str,
            "is a file but not a model package (not a zip archive: another kind of file, or a package "
            "cut short); pass a package written by `retinaseg model export`, or the directory holding "
            f"{CARD_FILE} and {WEIGHTS_FILE}",
        )
    raise ModelLoadError(
        ref_str,
        "not a model directory or MLflow URI, and no such file (expected a package <file>.retinaseg.zip, "
        "models/<name>, models:/<name>@<alias> or runs:/…)",
    )


def local_model_dirs(models_root: str | Path = "models") -> list[Path]:
    """Sub-folders of ``models_root`` that hold a saved model (``model.json`` + ``model.pt``), sorted."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file() and (p / WEIGHTS_FILE).is_file())
