"""A ``folder``-layout dataset with one defect per file, for the validation tests.

``make_broken_corpus(root)`` writes valid pairs, one file for every error class of
:mod:`retinaseg.data.validation`, and valid-but-unusual files that must pass with a warning.
It returns what validation is expected to report: ``{relative_file: (check, severity)}``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from retinaseg.data.synthetic import generate_sample

SIZE = 64
VALID_IDS = ("case_00", "case_01", "case_02", "case_03")


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sample(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    image, mask, _ = generate_sample(seed, size)
    return image, mask * 255


def make_broken_corpus(root: str | Path) -> dict[str, tuple[str, str]]:
    """Build the corpus under ``root`` (``images/``, ``masks/``); return the expected problems."""
    root = Path(root)
    images, masks = root / "images", root / "masks"
    expected: dict[str, tuple[str, str]] = {}

    def pair(name: str, image: bytes, mask: bytes) -> None:
        _write(images / f"{name}.png", image)
        _write(masks / f"{name}_mask.png", mask)

    for k, name in enumerate(VALID_IDS):
        image, mask = _sample(k)
        pair(name, _png_bytes(image), _png_bytes(mask))

    # --- errors: one defect per file --------------------------------------------------------
    image, mask = _sample(10)
    full = _png_bytes(image)
    pair("truncated", full[: len(full) // 2], _png_bytes(mask))
    expected["images/truncated.png"] = ("unreadable", "error")

    pair("empty", b"", _png_bytes(mask))
    expected["images/empty.png"] = ("empty_file", "error")

    pair("notes", b"these are my notes, not a picture\n" * 10, _png_bytes(mask))
    expected["images/notes.png"] = ("not_an_image", "error")

    _write(images / "lonely.png", _png_bytes(_sample(11)[0]))
    expected["images/lonely.png"] = ("image_without_mask", "error")

    _write(masks / "ghost_mask.png", _png_bytes(_sample(12)[1]))
    expected["masks/ghost_mask.png"] = ("mask_without_image", "error")

    image, _ = _sample(13)
    pair("wrongsize", _png_bytes(image), _png_bytes(_sample(13, SIZE // 2)[1]))
    expected["masks/wrongsize_mask.png"] = ("mask_size_mismatch", "error")

    image, _ = _sample(14)
    photo = np.asarray(Image.fromarray(image).convert("L"))  # a photograph where the mask belongs
    pair("photo", _png_bytes(image), _png_bytes(photo))
    expected["masks/photo_mask.png"] = ("not_a_mask", "error")

    image, _ = _sample(15)
    pair("blank", _png_bytes(image), _png_bytes(np.zeros((SIZE, SIZE), np.uint8)))
    expected["masks/blank_mask.png"] = ("empty_mask", "error")

    _, mask = _sample(16)
    pair("flat", _png_bytes(np.full((SIZE, SIZE, 3), 90, np.uint8)), _png_bytes(mask))
    expected["images/flat.png"] = ("constant_image", "error")

    # two images with one id ("dup"): the folder adapter pairs both with dup_mask.png
    image, mask = _sample(17)
    pair("dup", _png_bytes(image), _png_bytes(mask))
    buffer = io.BytesIO()
    Image.fromarray(_sample(18)[0]).save(buffer, format="JPEG", quality=95)
    _write(images / "dup.jpg", buffer.getvalue())
    expected["images/dup.png"] = ("duplicate_id", "error")
    expected["images/dup.jpg"] = ("duplicate_id", "error")

    # --- valid but unusual: warnings --------------------------------------------------------
    image, mask = _sample(20)
    rgba = np.dstack([image, np.full((SIZE, SIZE), 200, np.uint8)])
    pair("rgba", _png_bytes(rgba, "RGBA"), _png_bytes(mask))
    expected["images/rgba.png"] = ("alpha_channel", "warning")

    image, mask = _sample(21)
    deep = (image[..., 1].astype(np.uint16) * 257).astype(np.uint16)  # 16-bit greyscale
    pair("deep", _png_bytes(deep), _png_bytes(mask))
    expected["images/deep.png"] = ("16bit", "warning")

    image, mask = _sample(22)
    edge = mask.copy()
    rng = np.random.default_rng(0)
    vessel = np.argwhere(mask > 0)
    picked = vessel[rng.choice(len(vessel), size=int(0.02 * mask.size), replace=False)]
    edge[picked[:, 0], picked[:, 1]] = 128 + rng.integers(0, 100, size=len(picked)).astype(np.uint8)
    pair("greyedge", _png_bytes(image), _png_bytes(edge))
    expected["masks/greyedge_mask.png"] = ("grey_edges", "warning")

    image, mask = _sample(23, SIZE + 16)
    pair("bigger", _png_bytes(image), _png_bytes(mask))
    expected["images/bigger.png"] = ("size_outlier", "warning")

    # byte-identical image under another id: a warning on both files
    _write(images / "twin.png", (images / "case_00.png").read_bytes())
    _write(masks / "twin_mask.png", (masks / "case_00_mask.png").read_bytes())
    expected["images/twin.png"] = ("duplicate_content", "warning")
    expected["images/case_00.png"] = ("duplicate_content", "warning")
    return expected


# pairs that must survive on_error=exclude
KEPT_IDS = ("bigger", "case_00", "case_01", "case_02", "case_03", "deep", "greyedge", "rgba", "twin")
