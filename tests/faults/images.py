"""Image files for the fault suite: a valid small file of every format we read, and bad ones made
from it (truncated, zero bytes, bytes flipped, a header that claims a huge size, another format's
suffix). Pure functions of their arguments: the same bytes every run."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

#: Every format retinaseg reads (retinaseg.data.io.IMAGE_SUFFIXES, by content), with a suffix.
FORMATS: dict[str, str] = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "TIFF": ".tif",
    "GIF": ".gif",
    "BMP": ".bmp",
    "PPM": ".ppm",
}

#: Where a file is cut, as a fraction of its length; 12 bytes keeps only the magic number.
CUTS: dict[str, float | int] = {"cut-12B": 12, "cut-10pct": 0.10, "cut-50pct": 0.50, "cut-95pct": 0.95}

#: A claimed size far above the 50-megapixel limit (10 gigapixels; 65535² for GIF/JPEG's 16-bit fields).
HUGE = 100_000


def picture(seed: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    """A noisy RGB picture (noise: every cut lands in pixel data, not in padding)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 40, (height, width, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(fmt: str, array: np.ndarray | None = None) -> bytes:
    """``array`` (default: :func:`picture`) as a ``fmt`` file."""
    buf = io.BytesIO()
    Image.fromarray(picture() if array is None else array).save(buf, format=fmt)
    return buf.getvalue()


def truncated(data: bytes, cut: float | int) -> bytes:
    return data[: cut if isinstance(cut, int) else max(1, int(len(data) * cut))]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge(fmt: str) -> bytes:
    """A small, well-formed header of format ``fmt`` that claims HUGE x HUGE pixels (or 65535 x 65535
    where the field has 16 bits), with a few bytes of data after it."""
    if fmt == "PNG":
        ihdr = struct.pack(">IIBBBBB", HUGE, HUGE, 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\0" * 64)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b"")
        )
    if fmt == "JPEG":
        sof = struct.pack(">BHHB", 8, 65535, 65535, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
        return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"
    if fmt == "TIFF":
        data_at = 8 + 2 + 12 * 9 + 4  # the strip right after the IFD
        tags = [
            (256, 4, 1, HUGE),  # ImageWidth
            (257, 4, 1, HUGE),  # ImageLength
            (258, 3, 1, 8),  # BitsPerSample
            (259, 3, 1, 1),  # Compression: none
            (262, 3, 1, 1),  # Photometric: black is zero
            (273, 4, 1, data_at),  # StripOffsets
            (277, 3, 1, 1),  # SamplesPerPixel
            (278, 4, 1, HUGE),  # RowsPerStrip
            (279, 4, 1, 16),  # StripByteCounts
        ]
        ifd = struct.pack("<H", len(tags))
        for tag, kind, count, value in tags:
            packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            ifd += struct.pack("<HHI", tag, kind, count) + packed
        return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16
    if fmt == "GIF":
        screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
        descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
        return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00\x3b"
    if fmt == "BMP":
        info = struct.pack("<IiiHHIIiiII", 40, HUGE, HUGE, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\0" * 16
    if fmt == "PPM":
        return f"P6\n{HUGE} {HUGE}\n255\n".encode() + b"\0" * 16
    raise ValueError(fmt)


def flipped(data: bytes, positions: list[int], values: list[int]) -> bytes:
    """``data`` with the bytes at ``positions`` (modulo its length) XOR-ed with ``values`` (1..255)."""
    out = bytearray(data)
    for pos, value in zip(positions, values, strict=False):
        out[pos % len(out)] ^= value
    return bytes(out)


#: Every bad file made of one format: name → (how to make it from the format, what its error says).
BAD_KINDS: dict[str, tuple[object, str]] = {
    **{
        name: ((lambda fmt, c=cut: truncated(encode(fmt), c)), r"truncated|corrupt")
        for name, cut in CUTS.items()
    },
    "zero-bytes": ((lambda fmt: b""), r"empty file"),
    "huge-header": (huge, r"too large .*the limit is 50,000,000"),
    "text": ((lambda fmt: b"these are my notes, not a picture\n" * 4), r"not an image"),
}


def bad_file(fmt: str, kind: str) -> bytes:
    make, _ = BAD_KINDS[kind]
    return make(fmt)  # type: ignore[operator]


def expected_reason(kind: str) -> str:
    """A regular expression the error's reason matches for a bad file of this kind."""
    return BAD_KINDS[kind][1]


def other_suffix(fmt: str) -> str:
    """The suffix of the next format: valid ``fmt`` content under a wrong name."""
    names = list(FORMATS)
    return FORMATS[names[(names.index(fmt) + 1) % len(names)]]
