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

Files and folders written here follow the user's umask (``0o666 & ~umask`` for files, ``0o777 &
~umask`` for folders, like ``open()`` and ``mkdir()``), not the private 0600/0700 of the temporary
files they start as: a teammate sharing the checkout can read them.

Temporary names (:data:`TEMP_NAME`): ``.<name>.<host>-<pid>-<random>.tmp<suffix>`` for a file,
``.<name>.<host>-<pid>-<random>.tmp`` for a folder being built, ``.<name>.<host>-<pid>-<random>.old``
for the folder being replaced. ``<host>`` is a short hash of the machine's host name and ``<pid>``
the writing process, so :func:`clean_stale_temps` can tell a leftover of a killed run (its process is
gone) from the work of a run in progress.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from retinaseg.core.errors import RetinasegError, WriteError

if TYPE_CHECKING:
    import pandas as pd


class CsvError(RetinasegError, ValueError):
    """A CSV table that cannot be read or lacks required columns (names the file)."""


# ------------------------------------------------------------------------------ temporary names

#: How much of the target's name a temporary name repeats (file names are at most 255 bytes).
_NAME_KEPT = 96

#: ``.<name>.<host>-<pid>-<random>.tmp[<suffix>]`` or ``...old``: what :func:`atomic_path` and
#: :func:`atomic_dir` create, and the only names :func:`clean_stale_temps` ever removes.
TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[a-z0-9_]{8}\.(?:tmp(?:\..*)?|old)$", re.DOTALL
)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _temp_prefix(name: str) -> str:
    """``.<name>.<host>-<pid>-``; ``tempfile`` appends 8 random characters and the suffix."""
    return f".{name[:_NAME_KEPT]}.{_host_tag()}-{os.getpid()}-"


# ----------------------------------------------------------------------------------------- umask

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: ``/proc/self/status``); elsewhere it
    is set and put back under a lock (only files created by other threads in that instant could
    see a different umask)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _follow_umask(path: Path, is_dir: bool) -> None:
    """Give ``path`` the mode ``open()``/``mkdir()`` would have given it (0666/0777 less the umask)."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


# ----------------------------------------------------------------------------------------- files


#: Error numbers that mean "this could not be written" even when the error names no file.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def _as_write_error(target: Path, exc: OSError, ours: tuple[Path, ...] = ()) -> OSError:
    """``exc``, raised while writing ``target``, as a :class:`WriteError` naming ``target``: when it
    names no file, ``target`` itself or one of ``ours`` (the temporary names). An error about another
    file (e.g. an input read inside the block) is returned unchanged."""
    if isinstance(exc, WriteError):
        return exc
    reason = exc.strerror or str(exc)
    named = exc.filename
    if named is None or Path(os.fsdecode(named)) in (target, *ours):
        return WriteError(target, reason, exc.errno)
    return exc


def _own_step_error(target: Path, exc: OSError) -> WriteError:
    """A failure of our own preparation (making the folder, the temporary name) for ``target``."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # a file where a folder on the way should be
            return WriteError(target, f"{blocker} is a file, not a folder", errno.ENOTDIR)
    if exc.filename is not None:
        named = Path(os.fsdecode(exc.filename))
        if named != target and not (named.parent == target.parent and TEMP_NAME.match(named.name)):
            reason = f"{reason}: {named}"  # e.g. a file where a folder on the way should be
    return WriteError(target, reason, exc.errno)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The new file gets the mode the user's umask gives new files (``0o666 & ~umask``). On an
    exception the temporary file is removed and ``path`` is left untouched. A failure to write
    (disk full, the file-size limit, permission denied, a folder where the file should be) is a
    :class:`~retinaseg.core.errors.WriteError` naming ``path``, never the temporary name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=_temp_prefix(path.name), suffix=".tmp" + path.suffix, dir=path.parent
        )
    except OSError as exc:
        raise _own_step_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _follow_umask(tmp_path, is_dir=False)
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            mapped = _as_write_error(path, exc, (tmp_path,))
            if mapped is not exc:
                raise mapped from exc
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
    live in ``path``'s parent, so the renames never cross a file system. A file at ``path`` is
    never replaced (``WriteError``: it may be the user's). The new folder gets the
    mode the user's umask gives new folders (``0o777 & ~umask``; what is inside was created with it).
    A failure to write a file inside is a :class:`~retinaseg.core.errors.WriteError` naming its
    place under ``path`` (not under the temporary folder).
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        # a file (or a link to one) where the folder goes: never replaced, it may be the user's
        raise WriteError(path, "exists and is not a folder (not replaced)", errno.ENOTDIR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _own_step_error(path, exc) from exc
    try:
        yield tmp
        _follow_umask(tmp, is_dir=True)
        _swap_into_place(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            mapped = _inside_error(exc, tmp, path)
            if mapped is not exc:
                raise mapped from exc
        raise


def _inside_error(exc: OSError, tmp: Path, path: Path) -> OSError:
    """An error raised while building ``tmp`` (to become ``path``), naming the place under ``path``."""
    named = exc.filename
    reason = exc.strerror or str(exc)
    if named is None:
        return WriteError(path, reason, exc.errno) if exc.errno in _WRITE_ERRNOS else exc
    named_path = Path(os.fsdecode(named))
    if named_path == path:
        return WriteError(path, reason, exc.errno)
    if named_path.is_relative_to(tmp):
        return WriteError(path / named_path.relative_to(tmp), reason, exc.errno)
    if named_path.parent == path.parent and TEMP_NAME.match(named_path.name):
        return WriteError(path, reason, exc.errno)  # the swap's own names
    return exc


def _swap_into_place(new: Path, path: Path) -> None:
    """Rename folder ``new`` to ``path``; an existing ``path`` is moved aside first, then deleted."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".old", dir=path.parent))
    old = aside / path.name
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # put the old tree back before reporting the failure
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------- leftovers of killed runs


def _process_start() -> float:
    """When this process started (epoch seconds; Linux ``/proc``), else when this module was imported.

    Rounded down (the boot time is whole seconds), so it errs towards keeping files."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, counted after the ")" of the command name
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (it can still write)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and, for a folder, of anything inside it."""
    newest = path.lstat().st_mtime
    if stat.S_ISDIR(path.lstat().st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def _is_stale(entry: Path, started: float) -> bool:
    match = TEMP_NAME.match(entry.name)
    if match is None or match["host"] != _host_tag():
        return False  # not ours, or made on another machine (whose processes we cannot see)
    pid = int(match["pid"])
    if pid != os.getpid() and _pid_alive(pid):
        return False  # its writer is still running
    try:
        return _newest_mtime(entry) < started  # never touch anything written since this process began
    except OSError:
        return False


def _named_after(entry: str, name: str) -> bool:
    match = TEMP_NAME.match(entry)
    return match is not None and match["name"] == name


def clean_stale_temps(paths: Iterable[str | Path]) -> list[Path]:
    """Remove the temporary files and folders a killed run left beside or inside ``paths``.

    Call it when a stage starts, with the stage's outputs. Looked at: the entries beside each path
    named after it (``.<name>.*``) and, when the path is a folder, every entry inside it. Removed is
    only an entry that (1) has one of our temporary names (:data:`TEMP_NAME`), (2) was made on this
    machine by a process that no longer runs (or is a zombie), and (3) was last modified, all of it,
    before this process started. (2) keeps the temporary files of a run in progress (another stage,
    a second ``retinaseg`` command); (3) also covers a process id the system has reused since.
    Nothing else is ever removed. Returns what was removed.
    """
    started = _process_start()
    candidates: list[Path] = []
    for raw in paths:
        path = Path(raw)
        name = path.name[:_NAME_KEPT]
        with contextlib.suppress(OSError):
            candidates += [p for p in path.parent.iterdir() if _named_after(p.name, name)]
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                candidates += [Path(dirpath) / n for n in dirnames + filenames if TEMP_NAME.match(n)]
                dirnames[:] = [d for d in dirnames if not TEMP_NAME.match(d)]
    removed: list[Path] = []
    for entry in sorted(set(candidates)):
        if not _is_stale(entry, started):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # removed meanwhile, or not ours to remove (permissions): left as it is
        removed.append(entry)
    return removed


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
