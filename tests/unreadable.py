"""A real path whose ``open()`` fails with ``PermissionError``, for the "one bad file" tests.

No monkeypatching: the file really cannot be read by this process. As an ordinary user that is a
file with mode 000. Tests here often run as root, which reads any file whatever its mode (the
capability CAP_DAC_OVERRIDE), so there the path is a symbolic link to a write-only ``/proc/sys``
entry: the kernel refuses to open those for reading even to root. Only ever opened for reading here.
When neither works the test is skipped, with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: write-only (mode 0200) sysctl entries: reading is refused even to root; opening them for reading
#: has no effect (they act on write)
_WRITE_ONLY = ("/proc/sys/vm/compact_memory", "/proc/sys/vm/drop_caches")


def _refuses_reads(path: Path) -> bool:
    try:
        with path.open("rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


def unreadable_file(path: Path, content: bytes = b"\x89PNG\r\n\x1a\n") -> Path:
    """Make ``path`` (a new path) a regular file, as ``stat`` sees it, that cannot be opened for
    reading; returns ``path``. ``content`` is what an ordinary user's mode-000 file holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.write_bytes(content)
        path.chmod(0)
        if _refuses_reads(path):
            return path
        path.chmod(0o644)
        path.unlink()
    for target in map(Path, _WRITE_ONLY):
        if target.is_file() and _refuses_reads(target):
            path.symlink_to(target)
            return path
    pytest.skip(
        "no unreadable file can be made here (root reads mode-000 files; no write-only /proc/sys entry)"
    )
