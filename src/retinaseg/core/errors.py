"""The base class of every error retinaseg raises on purpose.

Each module keeps its own error class next to the code that raises it (``ConfigError``,
``ImageReadError``, ``SourceError``, ``ModelLoadError``, ...); all of them derive from
:class:`RetinasegError` *and* from ``ValueError``, so ``except RetinasegError`` catches every
expected failure while existing ``except ValueError`` handlers keep working. The CLI prints
``error: <message>`` for these and exits 2; anything else is a bug and keeps its traceback.

:class:`WriteError` is the one exception to the ``ValueError`` rule: a file or folder that could not
be written (disk full, the file-size limit, permission denied, a folder where the file should be) is
an ``OSError`` too, raised by the I/O helpers of :mod:`retinaseg.core.fileio` with the path the
caller asked for (never a temporary name), so each call site does not have to name it.
"""

from __future__ import annotations


class RetinasegError(Exception):
    """An expected failure with a message for the user (it names the file or key and the problem)."""


class WriteError(RetinasegError, OSError):
    """A file or folder that could not be written; ``str()`` is ``<path>: <reason>``.

    ``filename`` is the path the caller asked for, ``strerror`` the reason and ``errno`` the
    operating system's error number (e.g. ``errno.ENOSPC``, ``errno.EFBIG``, ``errno.EACCES``).
    """

    def __init__(self, path: object, reason: str, errno: int | None = None) -> None:
        super().__init__(errno, reason, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.filename, self.strerror, self.errno))
