"""Distributed training: two CPU processes (gloo) under torchrun run the real stage script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from retinaseg.models.saved import load_model_dir
from retinaseg.training.distributed import DistInfo, all_reduce_sum, env_dist_info
from tests.tiny import TINY_TRAIN


def test_single_process_defaults(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = env_dist_info()
    assert info == DistInfo() and info.is_main and not info.enabled
    assert all_reduce_sum([1.0, 2.0], device=None, info=info) == [1.0, 2.0]


def test_env_is_read(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = env_dist_info()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert info.enabled and not info.is_main


def _params_file(repo_root: Path, path: Path) -> Path:
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    for dotted, value in TINY_TRAIN.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_torchrun_two_cpu_processes(repo_root, processed, tmp_path, mlflow_uri):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    processed.rename(work / "data" / "processed")
    params = _params_file(repo_root, work / "params.yaml")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": mlflow_uri}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(repo_root / "stages" / "train.py"),
         "--model", "unet", "--params", str(params)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, card = load_model_dir(work / "models" / "unet")
    assert card.name == "unet"
    history = pd.read_csv(work / "reports" / "training" / "unet.csv")
    assert history["epoch"].tolist() == [1]
    summary = json.loads((work / "reports" / "training" / "unet.json").read_text())
    assert summary["epochs_run"] == 1 and "mlflow_run_id" not in summary  # run ids live in MLflow only
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("retinaseg").experiment_id])
    assert [r.data.tags["model"] for r in runs] == ["unet"]  # one run, logged by rank 0
    # rank 0 alone printed the epoch line and wrote the checkpoint
    assert proc.stdout.count("epoch 1/1") == 1
    assert "distributed data parallel: 2 processes (gloo)" in proc.stdout
    assert (work / ".checkpoints" / "unet" / "last.pt").is_file()
