"""Segmenting users' own fundus images: ``retinaseg predict``, and the helpers the web demo and the
MLflow pyfunc model share.

Every input is checked *before* it is decoded: its type is read from the first bytes of the content
(never from the suffix), empty and oversized files are refused, and the pixel count is read from the
image header so a "decompression bomb" (a small file whose header claims 100k x 100k pixels) is
rejected without allocating the pixels. Errors name the file and the problem.

Folder inputs are expanded **non-recursively**: the files directly inside the folder whose suffix is
one of :data:`retinaseg.data.io.IMAGE_SUFFIXES` (case-insensitive), in sorted order. Files named
explicitly on the command line are checked by content whatever their suffix.

For each input ``<stem>.<ext>`` three PNGs are written to the output folder (atomically):
``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (probability x 255) and ``<stem>_overlay.png``
(vessels tinted on the image), plus ``predict_report.json`` listing the outputs and the errors.
The input folders are only read; an output folder equal to an input folder is refused.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from retinaseg.config import EvaluateParams, PreprocessParams
from retinaseg.fileio import write_json, write_png

#: The largest image we accept, in pixels (width x height). 50 megapixels is about 8 times a
#: high-end fundus camera's frame (e.g. 3888 x 2592 = 10 MP) and keeps the float32 working copies
#: of one image under a few GB.
MAX_PIXELS = 50_000_000

#: The largest file we accept, in bytes (uploads to the web demo and the pyfunc model).
MAX_FILE_BYTES = 50 * 1024 * 1024

# Pillow's own decompression-bomb guard, set to the same limit so that no code path in this
# process (ours or a library's) decodes more than we would accept. Pillow warns above this
# and raises DecompressionBombError above twice this, at Image.open time (header only).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

#: Formats recognised from their leading bytes (magic numbers), mapped to a display name.
#: Hand-written because the check must happen before Pillow parses anything, and it lets the
#: error say exactly what the content is not. ``python-magic``/``filetype`` are not dependencies.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"P2", "PPM"),
    (b"P3", "PPM"),
    (b"P5", "PPM"),
    (b"P6", "PPM"),
)

#: Every format we read (the suffixes in ``IMAGE_SUFFIXES``).
ALL_FORMATS: frozenset[str] = frozenset(name for _, name in _MAGIC)

#: What the web demo accepts (the brief: PNG, JPEG, TIFF).
UPLOAD_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "TIFF"})

DEFAULT_THRESHOLD = 0.5
DEFAULT_MODEL_REF = "models:/retinaseg-vessels@champion"


@dataclass(frozen=True)
class InputInfo:
    """What the header check learned about an input, before decoding."""

    name: str
    format: str
    width: int
    height: int
    n_bytes: int


@dataclass
class Segmentation:
    """One image's result: probability map, binary mask and overlay, all at the input's size."""

    prob: np.ndarray  # H x W float32 in [0, 1]
    mask: np.ndarray  # H x W uint8 {0, 255}
    overlay: np.ndarray  # H x W x 3 uint8
    threshold: float

    @property
    def vessel_fraction(self) -> float:
        """Fraction of pixels labelled vessel."""
        return float((self.mask > 0).mean())

    def prob_uint8(self) -> np.ndarray:
        """The probability map scaled to 0-255 (rounded)."""
        return np.clip(np.rint(self.prob * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# input checks (shared by the CLI, the pyfunc model and the web demo)
# --------------------------------------------------------------------------------------------


def _image_read_error(name: str | Path, reason: str) -> ValueError:
    from retinaseg.data.io import ImageReadError

    return ImageReadError(name, reason)


def sniff_format(head: bytes) -> str | None:
    """The image format named by the leading bytes ``head``, or None when they match none we read."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _check_header(
    source: str | Path | io.BytesIO,
    name: str | Path,
    n_bytes: int,
    head: bytes,
    max_pixels: int,
    max_bytes: int,
    formats: Iterable[str],
) -> InputInfo:
    """The checks common to files and uploaded bytes; ``source`` is opened lazily (header only)."""
    if n_bytes == 0:
        raise _image_read_error(name, "empty file")
    if n_bytes > max_bytes:
        raise _image_read_error(
            name, f"file is {n_bytes / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB"
        )
    fmt = sniff_format(head)
    allowed = sorted(set(formats))
    if fmt is None:
        raise _image_read_error(
            name, f"not an image: the content is none of {', '.join(allowed)} (the file suffix is ignored)"
        )
    if fmt not in allowed:
        raise _image_read_error(name, f"{fmt} images are not accepted here; accepted: {', '.join(allowed)}")
    try:
        # Image.open reads the header only; the pixel data is decoded later, after this check.
        with Image.open(source) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses at open time (header only) above 2 x MAX_IMAGE_PIXELS
        raise _image_read_error(name, f"too many pixels (limit {max_pixels:,}): {exc}") from None
    except UnidentifiedImageError:
        raise _image_read_error(name, f"starts like {fmt} but its header is corrupt") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _image_read_error(name, f"corrupt {fmt} header ({exc})") from None
    if width <= 0 or height <= 0:
        raise _image_read_error(name, f"the header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise _image_read_error(
            name, f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    return InputInfo(name=str(name), format=fmt, width=width, height=height, n_bytes=n_bytes)


def validate_input_file(
    path: str | Path,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    formats: Iterable[str] = ALL_FORMATS,
) -> InputInfo:
    """Check an image file before decoding it: exists, non-empty, at most ``max_bytes``, an image
    format by content (magic bytes, not the suffix), and at most ``max_pixels`` pixels according
    to its header. Raises ``ImageReadError(path, reason)``; returns the header facts."""
    path = Path(path)
    if not path.exists():
        raise _image_read_error(path, "file not found")
    if not path.is_file():
        raise _image_read_error(path, "not a regular file")
    n_bytes = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
    return _check_header(path, path, n_bytes, head, max_pixels, max_bytes, formats)


def validate_image_bytes(
    data: bytes,
    name: str = "<upload>",
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    formats: Iterable[str] = ALL_FORMATS,
) -> InputInfo:
    """:func:`validate_input_file` for bytes in memory (uploads, base64 payloads); ``name`` is
    used in the error message."""
    return _check_header(io.BytesIO(data), name, len(data), data[:16], max_pixels, max_bytes, formats)


def decode_image_bytes(
    data: bytes,
    name: str = "<upload>",
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    formats: Iterable[str] = ALL_FORMATS,
) -> np.ndarray:
    """Validate then decode image bytes to HxWx3 uint8 RGB with the project's one image reader
    (:func:`retinaseg.data.io.read_image`, so 16-bit, palette and greyscale inputs are handled the
    same way as files). Raises ``ImageReadError`` naming ``name``."""
    from retinaseg.data.io import ImageReadError, read_image

    info = validate_image_bytes(data, name, max_pixels, max_bytes, formats)
    suffix = {"JPEG": ".jpg", "TIFF": ".tif", "PPM": ".ppm"}.get(info.format, f".{info.format.lower()}")
    with tempfile.TemporaryDirectory(prefix="retinaseg-upload-") as tmp:
        # read_image takes a path; a private temp file keeps one decoder for files and bytes
        tmp_path = Path(tmp) / f"upload{suffix}"
        tmp_path.write_bytes(data)
        try:
            return read_image(tmp_path)
        except ImageReadError as exc:
            raise _image_read_error(name, exc.reason) from None


def read_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file for the web demo: PNG, JPEG or TIFF by content, at most ``MAX_FILE_BYTES``
    and ``MAX_PIXELS``, checked before decoding. Raises ``ImageReadError`` naming ``name``."""
    return decode_image_bytes(data, name, formats=UPLOAD_FORMATS)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxW or HxWx3 array (for downloads and the pyfunc model's output)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------


def resolve_threshold(threshold: float | None, card: Any) -> float:
    """The threshold to use: the explicit one, else the model card's, else 0.5; must be in [0, 1]."""
    if threshold is None:
        threshold = getattr(card, "threshold", None)
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    return threshold


def preprocess_params_of(card: Any) -> PreprocessParams:
    """The model card's preprocessing as :class:`PreprocessParams` (validated like params.yaml)."""
    return card.preprocess_params()


def segmentation_from_prob(image: np.ndarray, prob: np.ndarray, threshold: float) -> Segmentation:
    """Threshold a probability map and build the overlay."""
    from retinaseg.evaluation.overlays import probability_overlay

    prob = np.asarray(prob, dtype=np.float32)
    mask = np.where(prob >= threshold, 255, 0).astype(np.uint8)
    overlay = probability_overlay(image, prob, threshold)
    return Segmentation(prob=prob, mask=mask, overlay=overlay, threshold=threshold)


def probability_map(
    model: Any, card: Any, image: np.ndarray, tta: bool = False, device: Any = "cpu"
) -> np.ndarray:
    """Vessel probability for one HxWx3 uint8 RGB image at its exact size: the shared
    :func:`retinaseg.evaluation.predict.predict_proba` with the model card's preprocessing, tiled
    above ``evaluate.tile_size``."""
    from retinaseg.evaluation.predict import predict_proba

    evaluate = EvaluateParams()
    return predict_proba(
        model,
        image,
        preprocess_params_of(card),
        device,
        tile_size=evaluate.tile_size,
        overlap=evaluate.tile_overlap,
        tta=tta,
    )


def segment_image(
    model: Any,
    card: Any,
    image: np.ndarray,
    threshold: float | None = None,
    tta: bool = False,
    device: Any = "cpu",
) -> Segmentation:
    """Segment one image with a loaded model: :func:`probability_map`, then the threshold
    (explicit, else the card's, else 0.5)."""
    prob = probability_map(model, card, image, tta=tta, device=device)
    return segmentation_from_prob(image, prob, resolve_threshold(threshold, card))


# --------------------------------------------------------------------------------------------
# many files: retinaseg predict
# --------------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files named directly, plus the image files (by suffix, sorted, non-recursive) inside named
    folders. Returns (files, errors) where errors are ``{"input", "error"}`` for missing paths and
    folders without images."""
    from retinaseg.data.io import IMAGE_SUFFIXES

    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    files: list[Path] = []
    errors: list[dict[str, str]] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                errors.append(
                    {"input": str(path), "error": f"{path}: no image files ({' '.join(sorted(suffixes))})"}
                )
            candidates = found
        elif path.exists():
            candidates = [path]
        else:
            errors.append({"input": str(path), "error": f"{path}: no such file or folder"})
            candidates = []
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files, errors


def check_output_dir(inputs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Refuse an output folder that is an input folder or the folder of an input file (we never
    write beside the inputs); returns the output folder."""
    out = Path(out_dir)
    out_resolved = out.resolve()
    for raw in inputs:
        path = Path(raw)
        folder = path if path.is_dir() else path.parent
        if folder.exists() and folder.resolve() == out_resolved:
            raise ValueError(
                f"--out {out} is the input folder {folder}; choose another output folder "
                "(retinaseg predict never writes beside its inputs)"
            )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    return out


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """Where the three outputs for an input with this stem go."""
    return {kind: out_dir / f"{stem}_{kind}.png" for kind in ("mask", "prob", "overlay")}


def _assign_stems(files: list[Path], errors: list[dict[str, str]]) -> list[tuple[Path, str]]:
    """Pair each file with its output stem; a second file with the same stem is an error (its
    outputs would overwrite the first's)."""
    owner: dict[str, Path] = {}
    kept: list[tuple[Path, str]] = []
    for path in files:
        stem = path.stem
        if stem in owner:
            errors.append(
                {
                    "input": str(path),
                    "error": f"{path}: its outputs ({stem}_*.png) would overwrite those of "
                    f"{owner[stem]}; rename one",
                }
            )
            continue
        owner[stem] = path
        kept.append((path, stem))
    return kept


_Item = tuple[Path, str, InputInfo]  # (input path, output stem, header facts)


def _batches(items: list[_Item], batch_size: int) -> list[list[_Item]]:
    """Consecutive batches of at most ``batch_size`` inputs. Inputs of any original size batch
    together: preprocessing makes every image ``preprocess.size`` square (predict_batch maps each
    result back to its own size)."""
    step = max(1, batch_size)
    return [items[start : start + step] for start in range(0, len(items), step)]


def _predict_probs(
    model: Any, card: Any, images: list[np.ndarray], device: Any, tta: bool, batch_size: int
) -> list[np.ndarray]:
    """Probability maps at each image's own size: one batched forward pass per batch via the
    shared :func:`retinaseg.evaluation.predict.predict_batch` (tiled above ``evaluate.tile_size``)."""
    from retinaseg.evaluation.predict import predict_batch

    evaluate = EvaluateParams()
    return predict_batch(
        model,
        images,
        preprocess_params_of(card),
        device,
        tile_size=evaluate.tile_size,
        overlap=evaluate.tile_overlap,
        tta=tta,
        batch_size=max(1, batch_size),
    )


def _write_outputs(paths: dict[str, Path], seg: Segmentation) -> None:
    write_png(paths["mask"], seg.mask)
    write_png(paths["prob"], seg.prob_uint8())
    write_png(paths["overlay"], seg.overlay)


def predict_paths(
    inputs: Sequence[str | Path],
    model_ref: str | Path,
    out_dir: str | Path,
    threshold: float | None = None,
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 4,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Segment every input image (files, or folders expanded non-recursively) and write
    ``<stem>_{mask,prob,overlay}.png`` into ``out_dir`` plus ``predict_report.json``.

    A bad input (empty, corrupt, not an image, too many pixels) becomes an error entry naming the
    file and the problem, printed at once to stderr; the other files are still processed. Raises
    ``ValueError`` (``ModelLoadError``) when the model cannot be loaded, ``--out`` is an input folder,
    or the threshold is outside [0, 1]. Returns ``{"model", "threshold", "device", "n_inputs",
    "n_ok", "n_failed", "outputs": [...], "errors": [...]}``.
    """
    from tqdm import tqdm

    from retinaseg.data.io import read_image
    from retinaseg.models.saved import load_model
    from retinaseg.training.engine import resolve_device

    out = check_output_dir(inputs, out_dir)
    if threshold is not None:
        resolve_threshold(threshold, None)  # a bad --threshold fails before the model is loaded
    files, errors = expand_inputs(inputs)
    torch_device = resolve_device(device)
    model, card = load_model(str(model_ref), torch_device)
    thr = resolve_threshold(threshold, card)

    show = progress if progress is not None else len(files) > 1
    bar = tqdm(total=len(files), unit="image", disable=not show, file=sys.stderr)

    def fail(path: Path, exc: Exception) -> None:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        errors.append({"input": str(path), "error": message})
        tqdm.write(f"error: {message}", file=sys.stderr)
        bar.update(1)

    named = _assign_stems(files, errors)
    for entry in errors:  # missing paths, empty folders, output-name collisions
        tqdm.write(f"error: {entry['error']}", file=sys.stderr)
    bar.update(len(files) - len(named))
    pending: list[_Item] = []
    for path, stem in named:
        try:
            pending.append((path, stem, validate_input_file(path)))
        except ValueError as exc:
            fail(path, exc)

    outputs: list[dict[str, Any]] = []
    for batch in _batches(pending, batch_size):
        images, members = [], []
        for path, stem, info in batch:
            try:
                images.append(read_image(path))
                members.append((path, stem, info))
            except ValueError as exc:
                fail(path, exc)
        if not images:
            continue
        probs = _predict_probs(model, card, images, torch_device, tta, batch_size)
        for (path, stem, info), image, prob in zip(members, images, probs, strict=True):
            seg = segmentation_from_prob(image, prob, thr)
            paths = output_paths(out, stem)
            _write_outputs(paths, seg)
            outputs.append(
                {
                    "input": str(path),
                    "width": info.width,
                    "height": info.height,
                    "vessel_fraction": round(seg.vessel_fraction, 6),
                    **{kind: str(p) for kind, p in paths.items()},
                }
            )
            bar.update(1)
    bar.close()

    outputs.sort(key=lambda row: row["input"])
    report = {
        "model": str(model_ref),
        "model_name": getattr(card, "name", None),
        "threshold": thr,
        "tta": tta,
        "device": str(torch_device),
        "n_inputs": len(outputs) + len(errors),
        "n_ok": len(outputs),
        "n_failed": len(errors),
        "outputs": outputs,
        "errors": errors,
    }
    write_json(out / "predict_report.json", report)
    return report


def cli_predict(args: Any) -> int:
    """``retinaseg predict``: returns 0 when every input was segmented, 1 when any failed."""
    report = predict_paths(
        args.inputs,
        args.model,
        args.out,
        threshold=args.threshold,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(
        f"segmented {report['n_ok']} of {report['n_inputs']} image(s) with {report['model']} "
        f"(threshold {report['threshold']:.3f}, device {report['device']}) -> {args.out}"
    )
    if report["n_failed"]:
        print(f"{report['n_failed']} input(s) failed:", file=sys.stderr)
        for entry in report["errors"]:
            print(f"  {entry['error']}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# the web demo's model choices
# --------------------------------------------------------------------------------------------


def local_model_dirs(models_root: str | Path = "models") -> list[Path]:
    """Sub-folders of ``models_root`` that hold a saved model (``model.json`` + ``model.pt``), sorted."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "model.json").is_file() and (p / "model.pt").is_file())


def model_choices(default: str, models_root: str | Path = "models") -> list[str]:
    """The demo's model list: ``default`` first (the env override or the registry champion), then
    every local model directory."""
    choices = [default]
    for path in local_model_dirs(models_root):
        if str(path) not in choices:
            choices.append(str(path))
    return choices
