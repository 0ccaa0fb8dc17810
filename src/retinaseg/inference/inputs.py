r"""Checking inputs before they are decoded: files named on the command line, uploads to the web demo,
base64 payloads sent to the pyfunc model.

Every input is checked *before* it is decoded: its type is read from the first bytes of the content
(never from the suffix), empty and oversized files are refused, and the pixel count is read from the
image header so a "decompression bomb" (a small file whose header claims 100k x 100k pixels) is
rejected without allocating the pixels. Errors are ``ImageReadError``\ s naming the file and the
problem.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from retinaseg.data.io import MAGIC, MAX_PIXELS, ImageReadError, read_image, sniff_format, too_many_pixels

#: The largest file we accept, in bytes (uploads to the web demo and the pyfunc model).
MAX_FILE_BYTES = 50 * 1024 * 1024

# MAX_PIXELS (50 megapixels) is the one pixel limit of retinaseg.data.io, which also sets Pillow's own
# decompression-bomb guard to it (so no code path decodes more than we would accept).

#: Every format we read (the suffixes in ``IMAGE_SUFFIXES``).
ALL_FORMATS: frozenset[str] = frozenset(name for _, name in MAGIC)

#: What the web demo accepts (the brief: PNG, JPEG, TIFF).
UPLOAD_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "TIFF"})


@dataclass(frozen=True)
class InputInfo:
    """What the header check learned about an input, before decoding."""

    name: str
    format: str
    width: int
    height: int
    n_bytes: int


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
        raise ImageReadError(name, "empty file")
    if n_bytes > max_bytes:
        raise ImageReadError(name, f"file is {n_bytes / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB")
    fmt = sniff_format(head)
    allowed = sorted(set(formats))
    if fmt is None:
        raise ImageReadError(
            name, f"not an image: the content is none of {', '.join(allowed)} (the file suffix is ignored)"
        )
    if fmt not in allowed:
        raise ImageReadError(name, f"{fmt} images are not accepted here; accepted: {', '.join(allowed)}")
    try:
        # Image.open reads the header only; the pixel data is decoded later, after this check.
        with Image.open(source) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses at open time (header only) above 2 x MAX_IMAGE_PIXELS
        raise ImageReadError(name, too_many_pixels(exc, limit=max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageReadError(name, f"starts like {fmt} but its header is corrupt") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"corrupt {fmt} header ({exc})") from None
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"the header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageReadError(
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
    to its header. Raises ``ImageReadError(path, reason)`` (also when the file cannot be opened:
    permission denied, an I/O error); returns the header facts."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    try:
        n_bytes = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:  # permission denied, I/O error: this file, not the whole batch
        raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
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
    info = validate_image_bytes(data, name, max_pixels, max_bytes, formats)
    suffix = {"JPEG": ".jpg", "TIFF": ".tif", "PPM": ".ppm"}.get(info.format, f".{info.format.lower()}")
    with tempfile.TemporaryDirectory(prefix="retinaseg-upload-") as tmp:
        # read_image takes a path; a private temp file keeps one decoder for files and bytes
        tmp_path = Path(tmp) / f"upload{suffix}"
        tmp_path.write_bytes(data)
        try:
            return read_image(tmp_path)
        except ImageReadError as exc:
            raise ImageReadError(name, exc.reason) from None


def read_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file for the web demo: PNG, JPEG or TIFF by content, at most ``MAX_FILE_BYTES``
    and ``MAX_PIXELS``, checked before decoding. Raises ``ImageReadError`` naming ``name``."""
    return decode_image_bytes(data, name, formats=UPLOAD_FORMATS)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxW or HxWx3 array (for downloads and the pyfunc model's output)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
