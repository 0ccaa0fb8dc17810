"""The base class of every error retinaseg raises on purpose.

Each module keeps its own error class next to the code that raises it (``ConfigError``,
``ImageReadError``, ``SourceError``, ``ModelLoadError``, ...); all of them derive from
:class:`RetinasegError` *and* from ``ValueError``, so ``except RetinasegError`` catches every
expected failure while existing ``except ValueError`` handlers keep working. The CLI prints
``error: <message>`` for these and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RetinasegError(Exception):
    """An expected failure with a message for the user (it names the file or key and the problem)."""
