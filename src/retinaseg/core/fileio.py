"""File I/O with one home per job: atomic writes, the atomic folder swap, the folder hash, the CSV reader.

* Every file the pipeline writes goes through :func:`atomic_path` (or the ``write_*`` helpers on top
  of it): a temporary file beside the target, renamed over it at the end, so an interrupted stage
  never leaves a half-written file where a good one used to be.
* Every folder built as a whole (the synthetic dataset, the processed data, the validation Data
  Docs, a dataset copied into ``data/raw``) goes through :func:`atomic_dir`: built in a temporary
  folder beside the target and swapped into place, so a failure never leaves half a folder.
* :func:`hash_tree` is the one content hash of a folder (training's data fingerprint, "is this the
  same dataset" checks).
* :func:`read_csv` is the one reader of the pipeline's CSV tables (manifest, split files): text
  columns stay text, and a missing or unreadable file is an error that names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from retinaseg.core.errors import RetinasegError

if TYPE_CHECKING:
    import pandas as pd


class CsvError(RetinasegError, ValueError):
    """A CSV table that cannot be read or lacks required columns (names the file)."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths turn up in metric dicts; keep this module numpy-free
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_png(path: str | Path, array: Any) -> None:
    """Write a uint8 HxW or HxWx3 (RGB) array as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------- folders


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; on success it takes the place of ``path``.

    Build the whole tree inside the yielded folder. When the block succeeds, an existing ``path``
    is moved aside, the new folder renamed to ``path`` and the old tree deleted; when the block
    (or the swap) fails, the new folder is deleted and ``path`` is exactly as it was. Both folders
    live in ``path``'s parent, so the renames never cross a file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(new: Path, path: Path) -> None:
    """Rename folder ``new`` to ``path``; an existing ``path`` is moved aside first, then deleted."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old = aside / path.name
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # put the old tree back before reporting the failure
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def hash_tree(path: str | Path) -> str:
    """SHA-256 (hex) of every file under ``path``: relative POSIX path, size and bytes, in sorted order.

    Equal for two folders exactly when they hold the same files with the same bytes (names and
    contents; not timestamps, permissions or empty folders). Each file contributes
    ``path NUL size NUL bytes``, so no two different trees hash the same stream (a path holds no
    NUL and the size says where the bytes end). Hand-written rather than DVC's md5 of an output:
    it must work outside a DVC repository (tests, ``dvc exp --temp`` copies) and on folders DVC
    does not track.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        with file.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- CSV


def read_csv(
    path: str | Path,
    text_columns: Iterable[str] = (),
    required: Iterable[str] = (),
    what: str = "CSV file",
    hint: str = "",
) -> pd.DataFrame:
    """Read one of the pipeline's CSV tables.

    ``text_columns`` are read as strings, with empty cells as ``""`` (and ``NA``, ``null``, ...
    kept as the text they are: ids and hashes are never guessed to be missing values). A missing
    file raises ``FileNotFoundError("<path>: <what> not found (<hint>)")``; an unreadable file or a
    missing ``required`` column raises :class:`CsvError` naming the file.
    """
    import pandas as pd  # pandas takes ~0.5 s to import; fileio is on light paths (CLI, stages)

    path = Path(path)
    text = list(text_columns)
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str), keep_default_na=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found" + (f" ({hint})" if hint else "")) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CsvError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CsvError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame
