"""The wrong kind of path: a folder where a file should be written, a file where a folder should be
(the output itself or one on the way), for every command that writes.

One line naming the path and the problem, exit 2 (a stage: 1), and nothing that was there before is
lost, replaced or changed; no temporary file is left behind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.data.builders import make_folder_dataset
from tests.faults.helpers import error_lines, run_cli, snapshot, temp_leftovers

FAMILY = "A folder where a file should be, a file where a folder should be"

IS_A_DIRECTORY = "Is a directory"


def _predict(model: Path, out: Path, *inputs: Path) -> list[str]:
    return [
        "retinaseg",
        "predict",
        *map(str, inputs),
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]


def test_predict_out_is_a_file(tmp_path, tiny_model_dir, good_inputs):
    out = tmp_path / "out"
    out.write_text("my notes\n")
    done = run_cli(_predict(tiny_model_dir, out, good_inputs))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: --out {out} exists and is not a folder"]
    assert out.read_text() == "my notes\n"


def test_predict_a_folder_where_an_output_file_goes(tmp_path, tiny_model_dir, good_inputs):
    out = tmp_path / "out"
    assert run_cli(_predict(tiny_model_dir, out, good_inputs)).returncode == 0
    (out / "eye_a_mask.png").unlink()
    (out / "eye_a_mask.png" / "inside").mkdir(parents=True)
    before = snapshot(out)
    done = run_cli(_predict(tiny_model_dir, out, good_inputs))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {out / 'eye_a_mask.png'}: {IS_A_DIRECTORY}"]
    assert snapshot(out) == before and (out / "eye_a_mask.png" / "inside").is_dir()
    assert temp_leftovers(out) == []


def test_predict_out_under_a_file(tmp_path, tiny_model_dir, good_inputs):
    (tmp_path / "notes.txt").write_text("my notes\n")
    out = tmp_path / "notes.txt" / "out"
    done = run_cli(_predict(tiny_model_dir, out, good_inputs))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        f"error: {out / 'eye_a_mask.png'}: {tmp_path / 'notes.txt'} is a file, not a folder"
    ]
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


@pytest.fixture()
def score_folders(tmp_path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    mask = (np.random.default_rng(2).random((32, 32)) > 0.8).astype(np.uint8) * 255
    Image.fromarray(mask).save(gt / "a.png")
    Image.fromarray(mask).save(pred / "a.png")
    return gt, pred


def test_score_json_is_a_folder(tmp_path, score_folders):
    gt, pred = score_folders
    (tmp_path / "scores.json" / "kept").mkdir(parents=True)
    done = run_cli(
        ["retinaseg", "score", "--pred", str(pred), "--gt", str(gt), "--json", str(tmp_path / "scores.json")]
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {tmp_path / 'scores.json'}: {IS_A_DIRECTORY}"]
    assert (tmp_path / "scores.json" / "kept").is_dir() and temp_leftovers(tmp_path) == []


def test_score_json_under_a_file(tmp_path, score_folders):
    gt, pred = score_folders
    (tmp_path / "reports").write_text("a file\n")
    target = tmp_path / "reports" / "scores.json"
    done = run_cli(["retinaseg", "score", "--pred", str(pred), "--gt", str(gt), "--json", str(target)])
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {target}: {tmp_path / 'reports'} is a file, not a folder"]
    assert (tmp_path / "reports").read_text() == "a file\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("ds") / "ds", n=2, size=64)


def _validate(root: Path, report: Path, manifest: Path | None = None) -> list[str]:
    args = ["retinaseg", "validate", "--source", "folder", "--root", str(root), "--report", str(report)]
    return args + (["--manifest", str(manifest)] if manifest else [])


def test_validate_manifest_is_a_folder(tmp_path, dataset):
    manifest = tmp_path / "manifest.csv"
    (manifest / "kept").mkdir(parents=True)
    done = run_cli(_validate(dataset, tmp_path / "report", manifest))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {manifest}: {IS_A_DIRECTORY}"]
    assert (manifest / "kept").is_dir() and temp_leftovers(tmp_path) == []


def test_validate_report_is_a_file(tmp_path, dataset):
    report = tmp_path / "report"
    report.write_text("my report\n")
    done = run_cli(_validate(dataset, report, tmp_path / "manifest.csv"))
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {report / 'docs'}: {report} is a file, not a folder"]
    assert report.read_text() == "my report\n" and not (tmp_path / "manifest.csv").exists()


def _params(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["synthetic"].update({"n_train": 2, "n_test": 1, "size": 64})
    params["data"].update({"source": "synthetic", "root": "data/raw/synthetic"})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_generate_out_is_a_file_and_is_not_replaced(tmp_path):
    out = tmp_path / "synthetic"
    out.write_text("my notes\n")
    done = run_cli(["retinaseg", "generate", "--out", str(out), "--params", str(_params(tmp_path))])
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {out}: exists and is not a folder (not replaced)"]
    assert out.read_text() == "my notes\n" and temp_leftovers(tmp_path) == []


def test_generate_montage_is_a_folder(tmp_path):
    montage = tmp_path / "montage.png"
    (montage / "kept").mkdir(parents=True)
    args = ["retinaseg", "generate", "--out", str(tmp_path / "syn"), "--montage", str(montage)]
    done = run_cli([*args, "--params", str(_params(tmp_path))])
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {montage}: {IS_A_DIRECTORY}"]
    assert (montage / "kept").is_dir() and temp_leftovers(tmp_path) == []


@pytest.fixture()
def dvc_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    return repo


def test_data_add_root_is_a_file(tmp_path, dvc_repo):
    (tmp_path / "notes.txt").write_text("x")
    done = run_cli(
        ["retinaseg", "data", "add", "--source", "folder", "--root", str(tmp_path / "notes.txt")],
        cwd=dvc_repo,
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {tmp_path / 'notes.txt'}: not a folder"]
    assert not (dvc_repo / "data").exists()


def test_data_add_where_data_raw_is_a_file(dvc_repo, dataset):
    (dvc_repo / "data").mkdir()
    (dvc_repo / "data" / "raw").write_text("not a folder\n")
    done = run_cli(["retinaseg", "data", "add", "--source", "folder", "--root", str(dataset)], cwd=dvc_repo)
    assert done.returncode == 2
    assert error_lines(done.stderr) == ["error: data/raw/folder: data/raw is a file, not a folder"]
    assert (dvc_repo / "data" / "raw").read_text() == "not a folder\n"


def test_data_add_where_the_dataset_folder_is_a_file(dvc_repo, dataset):
    (dvc_repo / "data" / "raw").mkdir(parents=True)
    (dvc_repo / "data" / "raw" / "folder").write_text("not a folder\n")
    done = run_cli(["retinaseg", "data", "add", "--source", "folder", "--root", str(dataset)], cwd=dvc_repo)
    assert done.returncode == 2
    [line] = error_lines(done.stderr)
    assert line.startswith("error: data/raw/folder already exists with different content"), line
    assert (dvc_repo / "data" / "raw" / "folder").read_text() == "not a folder\n"


def test_the_validate_stage_with_a_folder_where_the_manifest_goes(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _params(work)
    assert run_cli(["stage", "generate"], cwd=work).returncode == 0
    (work / "data" / "manifest.csv" / "kept").mkdir(parents=True)
    done = run_cli(["stage", "validate"], cwd=work)
    assert done.returncode == 1
    assert error_lines(done.stderr) == [f"error: data/manifest.csv: {IS_A_DIRECTORY}"]
    assert (work / "data" / "manifest.csv" / "kept").is_dir() and temp_leftovers(work) == []
