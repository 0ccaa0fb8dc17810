"""The repository we run in: its root (also from a ``dvc exp run --temp`` workspace) and its git commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_DVC_EXP_PARTS = (".dvc", "tmp", "exps")


def main_repo_root(start: str | Path | None = None) -> Path:
    """The main repository root for ``start`` (default: the current directory).

    ``<repo>/.dvc/tmp/exps/<tmp>/...`` → ``<repo>`` (a DVC temp experiment workspace); otherwise
    the nearest ancestor holding ``.dvc`` or ``.git``; otherwise ``start`` itself.
    """
    path = Path(start if start is not None else os.getcwd()).resolve()
    parts = path.parts
    n = len(_DVC_EXP_PARTS)
    for i in range(len(parts) - n + 1):
        if parts[i : i + n] == _DVC_EXP_PARTS:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return path


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` in ``cwd``, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"
