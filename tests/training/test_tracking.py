"""MLflow store resolution (incl. `dvc exp run --temp` workspaces), tags, params, model download."""

from __future__ import annotations

import pytest

from retinaseg.core.config import load_params
from retinaseg.core.mlflow_store import TrackingError, download_model_dir, tracking_uri
from retinaseg.core.repo import main_repo_root
from retinaseg.tracking import MAX_PARAM_CHARS, run_params, run_tags


@pytest.fixture()
def repo(tmp_path):
    root = tmp_path / "proj"
    (root / ".dvc").mkdir(parents=True)
    (root / ".git").mkdir()
    return root


def test_dvc_temp_experiment_workspace_resolves_to_the_main_repo(repo):
    # DVC 3 runs --temp/--queue experiments in <repo>/.dvc/tmp/exps/<mkdtemp>/ (a copy with its own .git)
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpa1b2c3" / "stages"
    workspace.mkdir(parents=True)
    (workspace.parent / ".git").mkdir()
    assert main_repo_root(workspace) == repo
    assert main_repo_root(workspace.parent) == repo


def test_repo_root_is_the_nearest_marked_ancestor(repo, tmp_path):
    sub = repo / "reports" / "training"
    sub.mkdir(parents=True)
    assert main_repo_root(sub) == repo
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main_repo_root(plain) == plain


def test_tracking_uri_precedence(repo, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpxyz"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert tracking_uri() == f"sqlite:///{(repo / 'mlflow.db').as_posix()}"
    other = repo.parent / "other"
    (other / ".git").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(other))  # what DVC exports to a stage command
    assert tracking_uri() == f"sqlite:///{(other / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri() == "sqlite:////elsewhere/x.db"


def test_tags_and_params(repo_root, monkeypatch):
    params = load_params(repo_root / "params.yaml")
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-oaks")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    tags = run_tags(params, "attention_unet", "abc123", "cpu")
    assert tags["dvc_exp_name"] == "bushy-oaks" and tags["dvc_stage"] == "train@attention_unet"
    assert tags["data_hash"] == "abc123" and tags["model"] == "attention_unet" and tags["device"] == "cpu"
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    monkeypatch.setenv("DVC_STAGE", "train@attention_unet")
    assert run_tags(params, "attention_unet", "x", "cpu")["dvc_stage"] == "train@attention_unet"

    flat = run_params(params, "attention_unet")
    assert flat["train.loss.name"] == "bce_dice" and flat["models.attention_unet.depth"] == "4"
    assert "base.seed" in flat and "augment.hflip" in flat and "preprocess.size" in flat
    assert not any(k.startswith(("models.unet.", "evaluate.")) for k in flat)
    params.data.root = "r" * (MAX_PARAM_CHARS + 10)  # not a param the train stage reads
    params.train.optimizer = "x" * (MAX_PARAM_CHARS + 10)  # over MLflow's limit: capped
    capped = run_params(params, "attention_unet")
    assert "data.root" not in capped and len(capped["train.optimizer"]) == MAX_PARAM_CHARS


def test_git_commit_outside_git_is_unknown(tmp_path):
    from retinaseg.core.repo import git_commit

    assert git_commit(tmp_path) == "unknown"


def test_download_of_a_missing_run_is_a_clear_error(mlflow_uri, tmp_path):
    with pytest.raises(TrackingError, match="runs:/0123456789abcdef/model"):
        download_model_dir("runs:/0123456789abcdef/model", dst=tmp_path)
