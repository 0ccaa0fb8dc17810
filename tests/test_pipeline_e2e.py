"""The whole pipeline, generate → compare → crossdata, through `dvc repro` in a copy of the repository,
on a tiny synthetic config: three trained models, their metrics, the comparison table, the champion in
the MLflow registry, the cross-dataset matrix on two datasets (the training one and a second synthetic
one generated outside the repository, as ../shared/datasets would be). Then a fresh clone of that
commit reproduces every output byte for byte with a clean `git status`, a second `dvc repro` has
nothing to do, and editing one model's params invalidates only that model's training."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from retinaseg.core.config import SyntheticParams
from retinaseg.data.synthetic import generate_dataset
from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env, run
from tests.tiny import TINY_PIPELINE as TINY

pytestmark = pytest.mark.slow

MODELS = ("unet", "attention_unet", "resnet34_unet")


def test_full_pipeline_then_one_model_change_retrains_only_that_model(repo_root, tmp_path):
    env = pipeline_env(tmp_path)
    other = tmp_path / "other_synthetic"  # another seed and size, outside the repository
    generate_dataset(other, SyntheticParams(n_train=2, n_test=2, size=80, seed=11))
    datasets = [
        {"name": "synthetic", "source": "synthetic", "root": "data/raw/synthetic"},
        {"name": "synthetic-b", "source": "synthetic", "root": str(other)},
    ]
    repo = copy_repo(repo_root, tmp_path / "repo", {**TINY, "datasets": datasets}, env)
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
    assert champion["name"] in MODELS and champion["model_uri"] == f"models/{champion['name']}"

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["retinaseg"])
    assert sorted(runs["tags.model"].dropna()) == sorted(MODELS)
    version = mlflow.MlflowClient().get_model_version_by_alias("retinaseg-vessels", "champion")
    assert int(version.version) == 1 and version.tags["model_name"] == champion["name"]

    # the cross-dataset matrix: 3 models × 2 datasets; the training dataset's column is evaluate's F1
    cross = {
        d["name"]: json.loads((repo / "reports" / "crossdata" / f"{d['name']}.json").read_text())
        for d in datasets
    }
    assert cross["synthetic"]["dataset"]["training"] and not cross["synthetic-b"]["dataset"]["training"]
    assert cross["synthetic-b"]["dataset"]["n_images"] == 2  # its own test split
    matrix = (repo / "reports" / "crossdata.md").read_text()
    assert "| Model | Threshold (val) | synthetic (training) | synthetic-b |" in matrix
    rows = [line for line in matrix.splitlines() if line.startswith(tuple(f"| {m} |" for m in MODELS))]
    assert len(rows) == 3 and all(len(row.split(" | ")) == 4 for row in rows)  # model, threshold, 2 cells
    logged = runs.set_index("tags.model")
    for name in MODELS:
        metrics = json.loads((repo / "reports" / "metrics" / f"{name}.json").read_text())
        trained_on = cross["synthetic"]["models"][name]
        assert trained_on["f1"] == metrics["fov"]["f1"] and trained_on["threshold"] == metrics["threshold"]
        assert cross["synthetic-b"]["models"][name]["threshold"] == metrics["threshold"]
        row = next(r for r in rows if r.startswith(f"| {name} |"))
        assert f"| {metrics['threshold']:.3f} | {metrics['fov']['f1']:.4f} / " in row
        assert logged.loc[name, "metrics.cross_synthetic-b_f1"] == pytest.approx(
            cross["synthetic-b"]["models"][name]["f1"]
        )
    assert (repo / "reports" / "crossdata.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the developer commits the outputs; a teammate's fresh clone reproduces them byte for byte
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "pipeline outputs"], repo, env)
    first = _output_hashes(repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run([dvc, "repro"], clone, env)
    assert _output_hashes(clone) == first
    assert _git_status(clone) == "", "a fresh clone's `dvc repro` changed tracked files"
    # the clone's compare registered its best model (the registry lives outside DVC); the same model,
    # scored on the same data, is no better than the champion: registered, not promoted
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias("retinaseg-vessels", "champion").version) == 1
    assert client.get_model_version("retinaseg-vessels", "2").tags["promotion"] == "refused"

    # nothing to do on a second run
    assert "Running stage" not in run([dvc, "repro"], clone, env)
    assert _git_status(clone) == ""

    # editing one model's params changes that model's training stage and nothing else upstream
    # (`dvc status` lists the stages whose own deps changed; downstream ones follow on repro)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["models"]["unet"]["base_channels"] = 8
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([dvc, "status", "--json"], clone, env))
    assert set(status) == {"train@unet"}


def _output_hashes(repo: Path) -> dict[str, str]:
    """sha256 of every file the pipeline writes that DVC tracks (cached outs, metrics, plots data)."""
    roots = ["data/manifest.csv", "data/splits", "data/processed", "data/raw/synthetic", "models", "reports"]
    files = [p for r in roots for p in ([repo / r] if (repo / r).is_file() else (repo / r).rglob("*"))]
    untracked_by_dvc = ("reports/validation/docs/",)  # Data Docs carry timestamps: written, not tracked
    return {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(files)
        if p.is_file() and not p.relative_to(repo).as_posix().startswith(untracked_by_dvc)
    }


def _git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--short"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
