"""Byte-reproducible training outputs (issue 10): the same code, params and data on the same machine
type give byte-identical DVC outputs of the train stage (models/<name>/, reports/training/<name>.*)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retinaseg.models.saved import state_dict_bytes
from retinaseg.training.engine import train_model
from tests.training.test_distributed import _params_file

OUTPUTS = (
    "models/unet/model.pt",
    "models/unet/model.json",
    "reports/training/unet.csv",
    "reports/training/unet.json",
)


def _digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in OUTPUTS}


def _train_fresh(params, processed_template: Path, root: Path, device: str | None = None) -> dict[str, str]:
    """Train in a fresh folder (its own copy of the processed data, no checkpoints); output digests."""
    processed = shutil.copytree(processed_template, root / "data" / "processed")
    train_model(
        params,
        "unet",
        processed,
        out_dir=root / "models" / "unet",
        report_dir=root / "reports" / "training",
        checkpoint_dir=root / ".checkpoints" / "unet",
    )
    return _digests(root)


def test_training_twice_gives_byte_identical_outputs(tiny_params, processed_template, tmp_path):
    params = tiny_params(**{"train.epochs": 2, "train.warmup_epochs": 1, "train.samples_per_epoch": 6})
    first = _train_fresh(params, processed_template, tmp_path / "a")
    second = _train_fresh(params, processed_template, tmp_path / "b")
    assert first == second
    card = json.loads((tmp_path / "a" / "models" / "unet" / "model.json").read_text())
    summary = json.loads((tmp_path / "a" / "reports" / "training" / "unet.json").read_text())
    assert not {"git_commit", "train_seconds", "mlflow_run_id"} & (set(card["extra"]) | set(summary))
    # a different seed is a different model (the comparison above is not vacuous)
    other = _train_fresh(tiny_params(**{"base.seed": 1}), processed_template, tmp_path / "c")
    assert other["models/unet/model.pt"] != first["models/unet/model.pt"]


def test_saved_weights_do_not_depend_on_the_file_name_or_memory_format():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    state = conv.state_dict()
    channels_last = {
        k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in state.items()
    }
    assert state_dict_bytes(state) == state_dict_bytes(channels_last) == state_dict_bytes(dict(state))


@pytest.mark.slow
def test_the_train_stage_twice_in_fresh_directories_gives_identical_dvc_outputs(
    repo_root, processed_template, tmp_path, mlflow_uri
):
    """`python stages/train.py --model unet` (what `dvc repro` runs, MLflow logging included) in two
    fresh working directories, each in a new process."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONHASHSEED": "random"}
    digests = []
    for name in ("a", "b"):
        work = tmp_path / name
        shutil.copytree(processed_template, work / "data" / "processed")
        params = _params_file(repo_root, work / "params.yaml")
        stage = [sys.executable, str(repo_root / "stages" / "train.py"), "--model", "unet"]
        proc = subprocess.run(
            [*stage, "--params", str(params)], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        digests.append(_digests(work))
    assert digests[0] == digests[1]


@pytest.mark.gpu
def test_training_twice_on_cuda_gives_byte_identical_outputs(tiny_params, processed_template, tmp_path):
    params = tiny_params(**{"base.device": "cuda", "train.epochs": 2, "train.samples_per_epoch": 6})
    assert _train_fresh(params, processed_template, tmp_path / "a") == _train_fresh(
        params, processed_template, tmp_path / "b"
    )
