"""scripts/gpu_check.sh and scripts/recipe.py: the GPU check's steps, run on the CPU at smoke size.

The GPU machine has no git and no network: the smoke run copies the working tree without .git (DVC
runs with core.no_scm, as there), applies recipes/drive-gpu.yaml to params.yaml, runs the whole
pipeline on the real DRIVE dataset, the benchmarks, and writes the JSON the README's GPU table is
filled from. Only the sizes differ from a real run (and the CUDA check, which --smoke skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retinaseg.core.config import load_params
from tests.repo_copy import copy_tree

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "scripts"))
import recipe  # noqa: E402  (scripts/recipe.py)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
    }


def _copy_tree(dest: Path) -> Path:
    """What travels to the GPU machine: the working tree without .git and pipeline outputs."""
    return copy_tree(REPO, dest)


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["drive-cpu", "drive-gpu"])
def test_every_recipe_applies_to_params_and_loads(tmp_path, name):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    overrides = recipe.read_recipe(REPO / "recipes" / f"{name}.yaml")
    recipe.apply(params, overrides)
    loaded = load_params(params)
    assert loaded.data.source == "drive"
    assert loaded.preprocess.size == overrides["preprocess.size"]
    assert "# [32, 4096]" in params.read_text()  # comments kept


def test_recipe_args_are_what_dvc_exp_run_takes():
    args = recipe.dvc_args({"train.lr": 0.002, "models.resnet34_unet.encoder_weights": None, "x.y": "a b"})
    assert args == "-S train.lr=0.002 -S models.resnet34_unet.encoder_weights=null -S 'x.y=a b'"


def test_a_recipe_that_would_not_load_leaves_params_untouched(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_bytes()
    with pytest.raises(ValueError, match=r"models\.unet\.depth.*9.*\[1, 6\]"):
        recipe.apply(params, {"models.unet.depth": 9})
    with pytest.raises(ValueError, match="'train.nope' is not a key"):
        recipe.apply(params, {"train.nope": 1})
    assert params.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no temp file left


# ----------------------------------------------------------------------------- gpu_check.sh


def test_gpu_check_without_a_gpu_says_so_and_names_the_smoke_flag(tmp_path, drive_root):
    if shutil.which("nvidia-smi") or _cuda():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    tree = _copy_tree(tmp_path / "tree")
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--wheels", "none", "--drive", str(drive_root)],
        cwd=tree,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no CUDA device visible to torch" in proc.stderr and "--smoke" in proc.stderr
    assert (tree / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()


def test_gpu_check_refuses_a_folder_that_is_not_drive(tmp_path):
    tree = _copy_tree(tmp_path / "tree")
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--smoke", "--wheels", "none", "--drive", str(tmp_path)],
        cwd=tree,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"{tmp_path} is not a DRIVE folder" in proc.stderr


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.drive
def test_gpu_check_smoke_runs_the_whole_pipeline_and_writes_the_report(tmp_path, drive_root):
    tree = _copy_tree(tmp_path / "tree")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--smoke", "--wheels", "none", "--drive", str(drive_root)],
        cwd=tree,
        env={**_env(tmp_path), "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tree / "reports/benchmarks/gpu.json").read_text())
    assert report["kind"].startswith("smoke")
    assert report["settings"]["preprocess.size"] == 128  # the recipe, then the smoke sizes
    assert [m["model"] for m in report["models"]] == ["unet", "attention_unet", "resnet34_unet"]
    for m in report["models"]:
        assert m["epochs"] == 1
        assert m["train_seconds"] > 0 and m["train_images_per_s"] > 0  # from the MLflow runs
        assert 0.0 <= m["fov_f1"] <= 1.0 and 0.0 <= m["fov_auc_roc"] <= 1.0
        metrics = json.loads((tree / "reports/metrics" / f"{m['model']}.json").read_text())
        assert m["fov_f1"] == round(metrics["fov"]["f1"], 4)
        assert metrics["n_test_images"] == 20  # the DRIVE test set
    assert any(r["kind"] == "end_to_end" for r in report["inference"])
    assert report["data_loader"] is not None and report["train_throughput"]
    assert all(m["data_wait_share"] is not None for m in report["models"])  # the loader benchmark's
    assert (out / "gpu.json").is_file()  # copied where the device tool fetches files from
    assert not (tree / ".git").exists()  # ran as on the GPU machine: DVC without git
