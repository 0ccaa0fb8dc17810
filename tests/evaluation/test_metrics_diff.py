"""scripts/metrics_diff.sh in a throwaway git + DVC repository: changed, unchanged, missing base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DVC_YAML = """stages:
  evaluate:
    cmd: echo evaluated
    params:
      - evaluate
    metrics:
      - reports/metrics/unet.json:
          cache: false
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _commit(repo: Path, f1: float, bootstrap: int, message: str) -> None:
    (repo / "reports" / "metrics").mkdir(parents=True, exist_ok=True)
    (repo / "reports" / "metrics" / "unet.json").write_text(
        json.dumps({"fov": {"f1": f1}, "threshold": 0.45})
    )
    (repo / "params.yaml").write_text(f"evaluate:\n  bootstrap: {bootstrap}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


@pytest.fixture()
def dvc_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.fail("git is needed for the metrics-diff test")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "ci@example.com")
    _git(repo, "config", "user.name", "ci")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True, env=env, capture_output=True)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _commit(repo, 0.7512, 100, "base")
    return repo, env


def _report(repo: Path, env: dict, repo_root: Path, base: str) -> str:
    script = repo_root / "scripts" / "metrics_diff.sh"
    done = subprocess.run(["bash", str(script), base], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_metrics_diff_report(dvc_repo, repo_root):
    repo, env = dvc_repo
    _git(repo, "branch", "base")
    _commit(repo, 0.8123, 200, "better model")

    changed = _report(repo, env, repo_root, "base")
    assert "against `base`" in changed
    row = next(ln for ln in changed.splitlines() if "fov.f1" in ln)
    assert "0.7512" in row and "0.8123" in row and "0.0611" in row
    assert "threshold" not in changed  # unchanged metrics are not listed
    assert any("evaluate.bootstrap" in ln and "100" in ln and "200" in ln for ln in changed.splitlines())

    unchanged = _report(repo, env, repo_root, "HEAD")
    assert "no metric changes against HEAD" in unchanged and "no param changes against HEAD" in unchanged

    missing = _report(repo, env, repo_root, "origin/nope")
    assert "base revision 'origin/nope' not found; nothing to compare" in missing
