"""The whole pipeline, generate → compare, through `dvc repro` in a copy of the repository, on a
tiny synthetic config: three trained models, their metrics, the comparison table, the champion in
the MLflow registry; then editing one model's params invalidates only that model's training."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env, run
from tests.tiny import TINY_PIPELINE as TINY

pytestmark = pytest.mark.slow

MODELS = ("unet", "attention_unet", "resnet34_unet")


def test_full_pipeline_then_one_model_change_retrains_only_that_model(repo_root, tmp_path):
    env = pipeline_env(tmp_path)
    repo = copy_repo(repo_root, tmp_path / "repo", TINY, env)
    dvc = str(VENV_BIN / "dvc")

    run([dvc, "repro"], repo, env)

    for name in MODELS:
        assert (repo / "models" / name / "model.pt").is_file()
        metrics = json.loads((repo / "reports" / "metrics" / f"{name}.json").read_text())
        assert 0.0 <= metrics["fov"]["f1"] <= 1.0 and 0.0 <= metrics["threshold"] <= 1.0
        assert metrics["n_test_images"] >= 2
    table = (repo / "reports" / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in MODELS)
    champion = json.loads((repo / "models" / "champion.json").read_text())
    assert champion["name"] in MODELS and champion["model_uri"] == "models:/retinaseg-vessels@champion"

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["retinaseg"])
    assert sorted(runs["tags.model"]) == sorted(MODELS)
    version = mlflow.MlflowClient().get_model_version_by_alias("retinaseg-vessels", "champion")
    assert int(version.version) >= 1

    # nothing to do on a second run
    assert "Running stage" not in run([dvc, "repro"], repo, env)

    # editing one model's params changes that model's training stage and nothing else upstream
    # (`dvc status` lists the stages whose own deps changed; downstream ones follow on repro)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["unet"]["base_channels"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([dvc, "status", "--json"], repo, env))
    assert set(status) == {"train@unet"}
