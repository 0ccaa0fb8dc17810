"""Print the entries of a hashed lock file (requirements/lock-py*.txt) for the named packages.

    python scripts/lock_subset.py requirements/lock-py3.11.txt uv > /tmp/uv.txt
    pip install --require-hashes --no-deps -r /tmp/uv.txt

Used by `make lock` (to install the lock tool from the lock itself) and by the GPU wheel script
(to download exactly the locked versions of the packages the GPU machine lacks).
Runs on any Python 3, with no third-party package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(text: str) -> dict[str, str]:
    """``{normalised name: the entry's text (pin, markers and hashes)}`` of a uv/pip-tools lock."""
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", block)
        if match:
            lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
            entries[_normalise(match.group(1))] = "\n".join(lines).rstrip(" \\\n")
    return entries


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    lock = Path(argv[0])
    try:
        entries = lock_entries(lock.read_text())
    except OSError as exc:
        print(f"error: {lock}: {exc.strerror}", file=sys.stderr)
        return 1
    missing = [name for name in argv[1:] if _normalise(name) not in entries]
    if missing:
        print(f"error: {lock}: not in the lock: {', '.join(missing)}", file=sys.stderr)
        return 1
    for name in argv[1:]:
        print(entries[_normalise(name)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
