"""DDP is data parallelism and nothing else: ``torchrun --nproc_per_node=2`` (gloo, CPU) with batch
size b trains the same weights as one process with batch size 2b.

Both runs see the same global batches (the engine deals one ``DistributedSampler`` permutation out to
the ranks, and a single process draws that permutation with one replica) and DDP averages the
gradients. What must be off for the two to be equal: batch norm (its statistics are per process),
augmentation, and a loss that is not a mean over pixels: the soft Dice is computed per batch, and the
mean of two half-batch Dice losses is not the Dice of the whole batch, so the Dice term is weighted 0
here (BCE alone, a mean over FOV pixels; every image has the same FOV, so the ranks' means average to
the global mean)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.tiny import TINY_TRAIN, nested
from tests.training.processed_data import make_processed

pytestmark = pytest.mark.slow

NO_AUGMENT = {
    "augment.hflip": 0.0,
    "augment.vflip": 0.0,
    "augment.rot90": 0.0,
    "augment.rotate_limit": 0,
    "augment.scale_limit": 0.0,
    "augment.brightness_contrast": 0.0,
    "augment.gamma": 0.0,
    "augment.crop_size": 0,
}


def _params(repo_root: Path, path: Path, batch_size: int) -> Path:
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    update = nested(
        {
            **TINY_TRAIN,
            **NO_AUGMENT,
            "train.epochs": 2,
            "train.batch_size": batch_size,
            "train.loss.dice_weight": 0.0,
            "models.unet.norm": "none",
            "train.resume": "never",
        }
    )
    _merge(data, update)
    path.write_text(yaml.safe_dump(data))
    return path


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def _train(repo_root: Path, work: Path, processed: Path, batch_size: int, nproc: int, env: dict) -> Path:
    (work / "data").mkdir(parents=True)
    (work / "data" / "processed").symlink_to(processed)
    params = _params(repo_root, work / "params.yaml", batch_size)
    stage = [str(repo_root / "stages" / "train.py"), "--model", "unet", "--params", str(params)]
    if nproc == 1:
        cmd = [sys.executable, *stage]
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", *stage]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


def _weights(work: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(work / "models" / "unet" / "model.pt", map_location="cpu", weights_only=True)
    return saved.get("state_dict", saved) if isinstance(saved, dict) else saved


def test_two_gloo_processes_equal_one_process_with_the_global_batch(repo_root, tmp_path, mlflow_uri):
    processed = make_processed(tmp_path / "processed", n_train=4, n_val=2, size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": mlflow_uri}
    single = _train(repo_root, tmp_path / "single", processed, batch_size=4, nproc=1, env=env)
    ddp = _train(repo_root, tmp_path / "ddp", processed, batch_size=2, nproc=2, env=env)

    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys() and len(a) > 0
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-5, f"largest weight difference {worst:.3g}"
    h1 = pd.read_csv(single / "reports" / "training" / "unet.csv")
    h2 = pd.read_csv(ddp / "reports" / "training" / "unet.csv")
    assert h1["train_loss"].iloc[1] != h1["train_loss"].iloc[0]  # it trained: equal because alike, not idle
    pd.testing.assert_frame_equal(h1, h2, rtol=1e-4, atol=1e-6)
