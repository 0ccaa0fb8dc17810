"""Reading fundus images and vessel masks in the formats the public datasets ship.

Everything goes through Pillow, which decodes every format we meet (DRIVE's TIFF and palette/greyscale
GIFs, STARE's PPM, CHASE's JPEG/PNG, Kaggle's PNG, 16-bit PNGs from microscopy-style exports). What this
module adds is normalisation to one array convention and errors that say which file is bad and why:

- images  → ``H×W×3`` uint8 RGB (greyscale repeated, alpha dropped, palette expanded, 16-bit scaled);
- masks   → ``H×W`` uint8 grey values *as stored* (palette through its palette, RGB → luminance,
  16-bit scaled); :func:`binarise_mask` turns them into {0, 1}.

Pixel data is used as stored: EXIF orientation is *not* applied, so an image and its mask stay aligned.

No file is decoded that claims more than :data:`MAX_PIXELS` pixels in its header (a "decompression
bomb": a small file that would need gigabytes): it is refused when opened, before any pixel is read.
A file that cannot be opened (permission denied, an I/O error) is an ``ImageReadError`` that says so.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from retinaseg.core.errors import RetinasegError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".bmp")

EMPTY = "empty file"
TRUNCATED = "truncated or corrupt image data"
NOT_AN_IMAGE = "not an image (unrecognised format)"
NOT_FOUND = "file not found"
NOT_A_FILE = "not a regular file"
TOO_LARGE = "image too large (decompression bomb guard)"
UNREADABLE = "cannot read the file"

#: The largest image we decode, in pixels (width x height). 50 megapixels is about 8 times a high-end
#: fundus camera's frame (e.g. 3888 x 2592 = 10 MP) and keeps the float32 working copies of one image
#: under a few GB. The same limit for dataset files, ``retinaseg predict`` inputs and uploads.
MAX_PIXELS = 50_000_000

# Pillow's own guard at the same limit, so no code path in this process (ours or a library's) decodes
# more than we accept; Pillow raises above twice this at open time (header only). Its warning between
# once and twice the limit is silenced: _open refuses those files itself, with the sizes, in one error.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's plugins warn about what they could not parse ("Corrupt EXIF data", "Truncated File Read") on
# stderr; the error (or the pixels) we return says what matters, in one line per file.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

#: Formats recognised from their leading bytes (magic numbers), mapped to a display name: the type of
#: a file is its content, never its suffix. Hand-written: ``python-magic``/``filetype`` are not
#: dependencies, and it lets an error say what a file starts like.
MAGIC: tuple[tuple[bytes, str], ...] = (
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


def sniff_format(head: bytes) -> str | None:
    """The image format named by the leading bytes ``head``, or None when they match none we read."""
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return None


def too_many_pixels(exc: Exception | None = None, width: int = 0, height: int = 0, limit: int = 0) -> str:
    """The one message for a header that claims more than ``limit`` (default :data:`MAX_PIXELS`)
    pixels: from its size, or from Pillow's ``DecompressionBombError`` (which gives the count only)."""
    limit = limit or MAX_PIXELS
    if exc is not None:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
        return f"{TOO_LARGE}: the header claims {claimed}; the limit is {limit:,}"
    claimed = f"{width}x{height} = {width * height:,} pixels"
    return f"{TOO_LARGE}: the header says {claimed}; the limit is {limit:,}"


# Pillow modes whose samples are wider than 8 bits (16-bit PNG/TIFF greyscale opens as one of these).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageReadError(RetinasegError, ValueError):
    """A file that cannot be read as an image; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise ImageReadError(path, NOT_FOUND)
        if not path.is_file():
            raise ImageReadError(path, NOT_A_FILE)
        if path.stat().st_size == 0:
            raise ImageReadError(path, EMPTY)
    except OSError as exc:  # e.g. a folder on the way that we may not enter
        raise ImageReadError(path, f"{UNREADABLE} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _open(path: str | Path, decode: bool) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow (first frame), translating Pillow's failures into :class:`ImageReadError`.

    With ``decode`` the pixel data is loaded inside the guard so truncation is detected here. A
    header that claims more than :data:`MAX_PIXELS` pixels is refused before any pixel is read.
    """
    path = Path(path)
    _check_file(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # someone switched Pillow into "pad truncated files with grey" mode; we never want that
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to read padded images")
    try:
        handle = path.open("rb")
    except OSError as exc:  # permission denied, an I/O error: not "corrupt"
        raise ImageReadError(path, f"{UNREADABLE} ({exc.strerror or exc})") from None
    try:
        with handle, Image.open(handle) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageReadError(path, too_many_pixels(width=im.width, height=im.height))
            if decode:
                im.load()
            yield im
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, _unidentified(path)) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, too_many_pixels(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # Pillow reports truncation/corruption as OSError ("image file is truncated", "broken data
        # stream"), SyntaxError (bad chunk), ValueError/EOFError depending on the plugin.
        raise ImageReadError(path, f"{TRUNCATED} ({exc})" if str(exc) else TRUNCATED) from None


def _unidentified(path: Path) -> str:
    """Why Pillow could not identify ``path``: not an image at all, or a known format's corrupt header."""
    try:
        with path.open("rb") as fh:
            fmt = sniff_format(fh.read(16))
    except OSError:
        fmt = None
    return f"starts like {fmt} but its header is corrupt" if fmt else NOT_AN_IMAGE


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit samples (0..65535) to 8-bit (0..255) with rounding."""
    return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Floating point samples: [0, 1] data is scaled by 255, anything else clipped to [0, 255]."""
    arr = np.nan_to_num(arr.astype(np.float64))
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _grey_array(im: Image.Image) -> np.ndarray:
    """A single-band image as H×W uint8 (palette through its palette, colour through luminance)."""
    if im.mode in _WIDE_MODES:
        return _wide_to_uint8(np.asarray(im))
    if im.mode == "F":
        return _float_to_uint8(np.asarray(im))
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode == "P":
        # palette GIFs (e.g. DRIVE's 2nd_manual: indices 0/1 → grey 3/253): go through the palette
        im = im.convert("RGBA").convert("RGB")
    # "1", "LA", "RGB", "RGBA", "CMYK", "YCbCr", ... : Pillow's ITU-R 601 luminance
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read a fundus image as ``H×W×3`` uint8 RGB.

    Greyscale is repeated to three channels, RGBA/LA lose alpha, palette images are expanded,
    16-bit samples are scaled to 8 bits. Raises :class:`ImageReadError` for a missing, empty,
    truncated or non-image file.
    """
    with _open(path, decode=True) as im:
        if im.mode in _WIDE_MODES or im.mode in ("F", "L", "1", "LA"):
            grey = _grey_array(im)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode == "P":
            im = im.convert("RGBA")
        # RGBA → RGB drops alpha (no compositing); CMYK/YCbCr/… → RGB
        rgb = im.convert("RGB") if im.mode != "RGB" else im
        return np.asarray(rgb, dtype=np.uint8).copy()


def check_image(path: str | Path) -> None:
    """Decode ``path`` completely and drop the pixels: ``ImageReadError`` (naming the file and the
    problem) for a missing, unreadable, empty, truncated, corrupt, oversized or non-image file."""
    with _open(path, decode=True):
        pass


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as ``H×W`` uint8 grey values as stored (not binarised).

    Palette GIFs go through their palette (DRIVE stores some masks as palette indices 0/1 whose
    colours are 3/253), RGB masks become luminance, 16-bit masks are scaled to 8 bits.
    """
    with _open(path, decode=True) as im:
        return _grey_array(im)


def binarise_mask(mask: np.ndarray) -> np.ndarray:
    """``H×W`` uint8 in {0, 1}: values above 127 are vessel (1)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0] if mask.shape[2] == 1 else mask.max(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"binarise_mask expects an H×W array, got shape {mask.shape}")
    return (mask > 127).astype(np.uint8)


def probe_image(path: str | Path) -> dict[str, int | str]:
    """Header facts without decoding the pixels: ``width, height, channels, dtype, mode, format``.

    ``channels`` is the number of stored bands (a palette image has 1); ``dtype`` is ``"uint16"`` for
    16-bit samples, ``"float32"``/``"int32"`` for those modes, else ``"uint8"``. A truncated body is not
    detected here (that needs :func:`read_image`); an empty file or a non-image is.
    """
    with _open(path, decode=False) as im:
        if im.mode.startswith("I;16") or (im.mode == "I" and im.format in ("PNG", "TIFF")):
            dtype = "uint16"
        elif im.mode == "I":
            dtype = "int32"
        elif im.mode == "F":
            dtype = "float32"
        else:
            dtype = "uint8"
        return {
            "width": int(im.width),
            "height": int(im.height),
            "channels": len(im.getbands()),
            "dtype": dtype,
            "mode": im.mode,
            "format": str(im.format),
        }
