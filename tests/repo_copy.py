"""Run the real DVC pipeline in a throwaway copy of this repository (integration tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    """Run a command; fail the test with its whole output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return output


def pipeline_env(tmp_path: Path) -> dict[str, str]:
    """The venv first on PATH (DVC stages call `python`), an MLflow store inside tmp_path."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def copy_tree(repo_root: Path, dest: Path) -> Path:
    """Tracked + untracked-not-ignored files, without .git, pipeline outputs or dvc.lock."""
    dest.mkdir(parents=True)
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = repo_root / rel
        if src.is_file() and not rel.startswith(("reports/", "models/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def copy_repo(repo_root: Path, dest: Path, params_update: dict, env: dict[str, str]) -> Path:
    """Copy tracked + untracked-not-ignored files (the working tree as it would be committed),
    apply ``params_update`` ({group: {key: value}}, nested dicts merged) to params.yaml, and make
    the copy a git repository with one commit. Pipeline outputs of the source are not copied."""
    copy_tree(repo_root, dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    _merge(params, params_update)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "copy"], dest, env)
    return dest


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
