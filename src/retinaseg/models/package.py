"""Exporting a trained model as one self-contained, pickle-free file users can take home.

``retinaseg model export --model <ref> --out unet.retinaseg.zip`` calls :func:`export_model`: it
loads the model through :func:`retinaseg.models.saved.load_model` (a saved directory, an MLflow
``models:/``/``runs:/`` URI, or another package) and writes a zip file holding exactly

- ``model.json``: the model card (architecture, its params, the preprocessing, the threshold and
  the source card's ``extra``), with an ``extra["export"]`` block: the package format, what kind of
  reference it was exported from (``directory``, ``mlflow`` or ``package``), the exporting
  retinaseg version and the sha256 of the weights file;
- ``model.safetensors``: the state_dict (``safetensors``: tensors and a JSON header, no pickle);
- ``MODEL_CARD.md``: the same facts for people, with the intended use and how to run it.

Anything that loads a model through ``load_model`` (``retinaseg predict``, ``evaluate``, ``serve``,
the web demo) takes the file (:func:`retinaseg.models.saved.read_package` checks it). The bytes
depend on the model only: fixed zip timestamps and permissions, members in sorted order, stored
uncompressed (no zlib version in the bytes), no dates or paths, so two exports of one model are
byte-identical. The file is written atomically: an existing ``out`` is replaced only by a complete
package that has been read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from retinaseg.core.config import MAX_TTA_SCALE, MIN_TTA_SCALE
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import atomic_path
from retinaseg.core.mlflow_store import is_mlflow_uri
from retinaseg.models.factory import count_parameters
from retinaseg.models.saved import (
    CARD_FILE,
    FORMAT_VERSION,
    PACKAGE_FORMAT,
    PACKAGE_MEMBERS,
    PACKAGE_README_FILE,
    PACKAGE_SUFFIX,
    PACKAGE_WEIGHTS_FILE,
    ModelCard,
    ModelLoadError,
    load_model,
    read_package,
)

#: the timestamp of every member (the earliest a zip can record): no date in the bytes
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_MEMBER_MODE = 0o644

ARCHITECTURES = {
    "unet": "U-Net (Ronneberger et al., 2015), as written in retinaseg",
    "attention_unet": "Attention U-Net (Oktay et al., 2018), as written in retinaseg",
    "resnet34_unet": 'U-Net with a ResNet-34 encoder (segmentation-models-pytorch `Unet("resnet34")`)',
}


class ExportError(RetinasegError, ValueError):
    """An export that cannot be written where asked (names the path and the problem)."""


@dataclass(frozen=True)
class ExportedPackage:
    """What :func:`export_model` wrote: the file, its size in bytes, the packaged card, the number of
    parameters and the sha256 of the weights member."""

    path: Path
    size: int
    card: ModelCard
    n_params: int
    weights_sha256: str


def source_kind(ref: str | Path) -> str:
    """``mlflow`` for ``models:/``/``runs:/`` URIs, ``directory`` for a saved model directory,
    ``package`` for a package file."""
    if is_mlflow_uri(ref):
        return "mlflow"
    return "directory" if Path(ref).is_dir() else "package"


def _retinaseg_version() -> str:
    try:
        return importlib.metadata.version("retinaseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state_dict as safetensors bytes (CPU, contiguous, one copy per tensor): the same
    tensors give the same bytes."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return safetensors.torch.save(state, metadata={"format": "pt"})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"`{value:.6g}`"
    if isinstance(value, dict | list | bool) or value is None:
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _table(rows: dict[str, Any]) -> list[str]:
    if not rows:
        return ["(none)"]
    return ["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows.items())]


THRESHOLD_INFERENCE_KEY = "threshold_inference"  # extra.export.<this>: {"tta": bool, "tta_scales": [...]}


def threshold_inference(card: ModelCard, ref: str | Path) -> tuple[bool, tuple[float, ...]] | None:
    """The test-time augmentation the card's threshold was chosen with, ``(flip, scales)``, as
    ``retinaseg model export`` recorded it from the evaluation (``extra.export.threshold_inference``);
    ``None`` when the card records none (a model directory, an MLflow model, an older package).

    Raises :class:`ModelLoadError` naming ``ref`` when the record is malformed.
    """
    export = card.extra.get("export")
    record = export.get(THRESHOLD_INFERENCE_KEY) if isinstance(export, dict) else None
    if record is None:
        return None
    key = f"model card key 'extra.export.{THRESHOLD_INFERENCE_KEY}'"
    flip = record.get("tta") if isinstance(record, dict) else None
    scales = record.get("tta_scales") if isinstance(record, dict) else None
    ok = (
        isinstance(flip, bool)
        and isinstance(scales, list)
        and 1 <= len(scales) <= 8
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in scales)
        and len(set(scales)) == len(scales)
        and all(MIN_TTA_SCALE <= x <= MAX_TTA_SCALE for x in scales)
    )
    if not ok:
        raise ModelLoadError(
            ref,
            f"{key} must be {{'tta': true|false, 'tta_scales': [1 to 8 different numbers in "
            f"[{MIN_TTA_SCALE:g}, {MAX_TTA_SCALE:g}]]}}, got {record!r}",
        )
    return flip, tuple(float(x) for x in scales)


def render_model_card(card: ModelCard, n_params: int) -> str:
    """``MODEL_CARD.md``: the package's model card for people. Markdown made from the card alone (no
    dates, not the file's name), so it is part of a byte-reproducible package."""
    extra = card.extra
    export = extra.get("export", {})
    pre = dataclasses.asdict(card.preprocess_params())  # every field, defaults included
    threshold = (
        f"**{card.threshold:.6g}** (chosen on validation data: the best pooled F1 inside the field of view)"
        if card.threshold is not None
        else "none stored: `retinaseg predict` uses 0.5 unless given `--threshold`"
    )
    scale = {"image": "the photograph's longest side", "fov": "the field of view's diameter"}.get(
        pre.get("scale", "image"), "the photograph's longest side"
    )
    recipe = [
        f"- {scale} is resized to {pre.get('size')} px (aspect ratio kept), then the image is zero-padded "
        f"to {pre.get('size')} x {pre.get('size')};",
    ]
    if pre.get("normalise", "none") != "none":
        recipe.append(f"- colour normalisation: `{pre['normalise']}`;")
    if pre.get("clahe"):
        recipe.append(
            f"- CLAHE on the green channel (clip {pre.get('clahe_clip')}, tile {pre.get('clahe_tile')});"
        )
    if pre.get("channels", "rgb") == "green":
        recipe.append("- the green channel alone, copied into all three input channels;")
    recipe.append(
        "- the probability map is mapped back to the photograph's own size. `retinaseg predict` does all "
        f"of this from {CARD_FILE}: nothing to set by hand."
    )
    augmentation = threshold_inference(card, CARD_FILE)
    if augmentation is not None and augmentation != (False, (1.0,)):
        flip, scales = augmentation
        words = ["flip test-time augmentation"] if flip else []
        if scales != (1.0,):
            words.append(f"the maps at input scales {', '.join(f'{x:g}' for x in scales)} averaged")
        recipe.append(
            f"- the threshold was chosen on maps made with {' and '.join(words)}; `retinaseg predict` "
            "makes them the same way unless told otherwise (`--no-tta`, `--tta-scales 1`)."
        )
    training_keys = (
        "data_hash",
        "train_image_size",
        "train_orig_width",
        "train_orig_height",
        "train_labels",
        "best_epoch",
        "best_val_dice",
        "code_hash",
        "run_fingerprint",
    )
    training = {k: extra[k] for k in training_keys if k in extra}
    environment = extra.get("environment")
    env_line = []
    if isinstance(environment, dict) and environment:
        versions = ", ".join(f"{k} {environment[k]}" for k in ("python", "torch") if k in environment)
        env_line = [
            "",
            (f"Trained with {versions}; the" if versions else "The")
            + f" training environment is recorded in {CARD_FILE} (`extra.environment`).",
        ]
    lines = [
        f"# Retinal vessel segmentation model: {card.name}",
        "",
        "A model that marks the blood vessels in colour fundus photographs (the retina): for each pixel, "
        "the probability that it is a vessel, and a mask at the threshold below. Made with retinaseg.",
        "",
        "## Intended use",
        "",
        "A research tool and a **screening aid**: it draws attention to the vessel tree for a person to "
        "review. It is **not a diagnosis** and not a medical device; do not use its output alone for any "
        "clinical decision. It was trained on a limited set of photographs: on other cameras, resolutions, "
        "populations or diseases its accuracy is unknown until measured (`retinaseg evaluate`).",
        "",
        "## How to run it",
        "",
        "With retinaseg installed (`pip install .` in a checkout of the retinaseg project), from any folder "
        f"(here the package is saved as {card.name}{PACKAGE_SUFFIX}; any name works):",
        "",
        "```",
        f"retinaseg predict --model {card.name}{PACKAGE_SUFFIX} eye1.jpg eye2.png photos/ --out predictions/",
        "```",
        "",
        "For each image it writes `<name>_mask.png` (vessels 255, background 0), `<name>_prob.png` (the "
        "probability x 255) and `<name>_overlay.png` into the output folder. No params.yaml, git checkout "
        "or MLflow store is needed; `--threshold` overrides the threshold below, `--device cpu` keeps it "
        "off the GPU.",
        "",
        "## Model",
        "",
        f"- architecture: `{card.name}`, {ARCHITECTURES.get(card.name, card.name)}",
        f"- parameters: {n_params:,}",
        "- input: an RGB photograph of any size; output: one vessel probability per pixel",
        f"- threshold: {threshold}",
        "",
        "Architecture parameters:",
        "",
        *_table(card.model_params),
        "",
        "## Preprocessing",
        "",
        *recipe,
        "",
        *_table(pre),
        "",
        "## Training",
        "",
        *(
            _table(training)
            if training
            else ["Not recorded in this model (it was saved without training provenance)."]
        ),
        *env_line,
        "",
        *(
            [
                "`data_hash` is the sha256 of the processed training data (what the model saw), `code_hash` "
                "that of the training code: together they identify the training run in the retinaseg "
                "project's DVC pipeline.",
                "",
            ]
            if training
            else []
        ),
        "## This file",
        "",
        f"A zip holding exactly {', '.join(PACKAGE_MEMBERS)}: the model card as JSON ({CARD_FILE}), "
        f"the weights as safetensors ({PACKAGE_WEIGHTS_FILE}: tensors only, no pickle, no code) and this "
        "text. retinaseg reads it in memory and refuses any other content.",
        "",
        f"- package format: {export.get('package_format', PACKAGE_FORMAT)}",
        f"- exported from: a {export.get('source', 'saved model')} reference"
        + (f", by retinaseg {export['retinaseg_version']}" if "retinaseg_version" in export else ""),
        f"- sha256 of {PACKAGE_WEIGHTS_FILE}: `{export.get('weights_sha256', 'not recorded')}`",
        "",
    ]
    return "\n".join(lines)


def _zip_bytes_to(path: Path, members: dict[str, bytes]) -> None:
    """Write ``members`` as a zip at ``path``: sorted, stored, fixed date and mode (reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, on every platform
            info.external_attr = (0o100000 | _MEMBER_MODE) << 16  # a regular file, rw-r--r--
            zf.writestr(info, members[name])


def export_model(
    ref: str | Path,
    out: str | Path,
    threshold: float | None = None,
    threshold_from: str | None = None,
    threshold_tta: tuple[bool, tuple[float, ...]] | None = None,
) -> ExportedPackage:
    """Export the model ``ref`` (a saved directory, an MLflow URI or a package) as one package file
    ``out`` (any name; ``*.retinaseg.zip`` suggested). Returns what was written.

    ``threshold`` (in [0, 1]) replaces the card's threshold (a ``models/<name>`` directory straight out
    of training has none: evaluation chooses it on the val split afterwards); ``threshold_from`` says
    where it came from, recorded in the card's ``extra.export``, and ``threshold_tta`` the
    test-time augmentation it was chosen with, ``(flip, scales)``, which ``retinaseg predict`` then
    applies by default (:func:`threshold_inference`). Without ``threshold`` the card's threshold
    stays, and so does what an earlier export recorded about it.

    Raises :class:`ModelLoadError` when ``ref`` cannot be loaded, :class:`ExportError` when ``out``
    is a folder, and :class:`~retinaseg.core.errors.WriteError` (an ``OSError`` naming ``out``) when
    it cannot be written. On any failure an existing ``out`` is left as it was.
    """
    out = Path(out)
    if out.is_dir():
        example = out / f"model{PACKAGE_SUFFIX}"
        raise ExportError(f"{out}: is a folder; a model package is one file: name it, e.g. {example}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ExportError(f"threshold must be in [0, 1], got {threshold!r}")
    model, card = load_model(ref, "cpu")
    if threshold is not None:
        card = dataclasses.replace(card, threshold=float(threshold))
    weights = weights_bytes(model)
    sha = hashlib.sha256(weights).hexdigest()
    extra = {k: v for k, v in card.extra.items() if k != "export"}
    earlier = card.extra.get("export") if isinstance(card.extra.get("export"), dict) else {}
    extra["export"] = {
        "package_format": PACKAGE_FORMAT,
        "source": source_kind(ref),
        "retinaseg_version": _retinaseg_version(),
        "weights_sha256": sha,
    }
    if threshold is not None:
        extra["export"]["threshold_from"] = threshold_from or "given at export"
        if threshold_tta is not None:
            flip, scales = threshold_tta
            record = {"tta": bool(flip), "tta_scales": [float(x) for x in scales]}
            extra["export"][THRESHOLD_INFERENCE_KEY] = record
    else:  # the card's threshold stays: so does what an earlier export said of it
        threshold_inference(card, ref)  # a malformed record is refused, not carried on
        for key in ("threshold_from", THRESHOLD_INFERENCE_KEY):
            if key in earlier:
                extra["export"][key] = earlier[key]
    packaged = dataclasses.replace(card, extra=extra)
    card_json = json.dumps({"format_version": FORMAT_VERSION, **packaged.to_dict()}, indent=2) + "\n"
    n_params = count_parameters(model)
    members = {
        CARD_FILE: card_json.encode("utf-8"),
        PACKAGE_WEIGHTS_FILE: weights,
        PACKAGE_README_FILE: render_model_card(packaged, n_params).encode("utf-8"),
    }
    with atomic_path(out) as tmp:
        _zip_bytes_to(tmp, members)
        _check_reads_back(tmp, out, packaged, model)
        size = tmp.stat().st_size
    return ExportedPackage(out, size, packaged, n_params, sha)


def _check_reads_back(tmp: Path, out: Path, card: ModelCard, model: torch.nn.Module) -> None:
    """The written file, read as any user would read it, holds this card and these exact tensors."""
    try:
        read_card, state = read_package(tmp)
    except ModelLoadError as exc:
        raise ExportError(f"{out}: the written package does not read back: {exc.reason}") from exc
    expected = model.state_dict()
    same = read_card == card and state.keys() == expected.keys()
    if not same or not all(torch.equal(state[k], expected[k].cpu()) for k in expected):
        raise ExportError(f"{out}: the written package does not read back as the exported model")
