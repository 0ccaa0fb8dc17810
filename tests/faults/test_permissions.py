"""Permission denied: an input file or folder that cannot be read, an output folder that cannot be
written, through the commands run as their own processes.

Tests often run as root (CI does), and root ignores permission bits; so each command runs without the
two capabilities that let it (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``): in this process they leave
the thread's effective set for the command's ``main`` (capset), as a process of its own they leave its
bounding set (``setpriv --bounding-set``). The same uid, bound by the bits like any user. (As an
ordinary user nothing is dropped.) A file that cannot be read is one error line and the batch goes
on (exit 1); a folder that cannot be written stops the command with one line naming the path (exit
2); nothing written earlier is lost or changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.core.fileio import hash_tree
from tests.data.builders import make_folder_dataset
from tests.faults.helpers import BOTH, HOWS, error_lines, run_cli, snapshot, temp_leftovers
from tests.faults.images import picture

FAMILY = "Permission denied (input unreadable, output folder read-only)"


@pytest.fixture()
def locked():
    """``lock(path, mode)`` chmods a path for one test and gives the old mode back afterwards."""
    changed: list[tuple[Path, int]] = []

    def lock(path: Path, mode: int) -> Path:
        changed.append((path, path.stat().st_mode & 0o7777))
        path.chmod(mode)
        return path

    yield lock
    for path, mode in reversed(changed):
        path.chmod(mode)


@pytest.fixture()
def predict_setup(tmp_path, tiny_model_dir, good_inputs):
    """Inputs (eye_a, eye_b) in a folder of this test, and predict's earlier output of them."""
    inputs = tmp_path / "in"
    shutil.copytree(good_inputs, inputs)
    out = tmp_path / "out"
    done = run_cli(
        ["retinaseg", "predict", str(inputs), "--model", str(tiny_model_dir), "--out", str(out)]
        + ["--device", "cpu"]
    )
    assert done.returncode == 0, done.stderr
    return inputs, out


def _predict(inputs, model, out):
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


@pytest.mark.parametrize("how", BOTH)
def test_predict_an_unreadable_input_is_one_line_and_the_others_are_segmented(
    how, predict_setup, tiny_model_dir, locked
):
    inputs, out = predict_setup
    Image.fromarray(picture(5)).save(inputs / "eye_c.png")
    locked(inputs / "eye_c.png", 0o000)
    before = snapshot(out, ignore=lambda rel: rel == "predict_report.json")
    done = run_cli(_predict([inputs], tiny_model_dir, out), unprivileged=True, process=how == "process")
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [
        f"error: {inputs / 'eye_c.png'}: cannot read the file (Permission denied)",
        "1 of 3 files failed",
    ]
    assert snapshot(out, ignore=lambda rel: rel == "predict_report.json") == before  # rewritten identical
    assert not list(out.glob("eye_c_*"))


@pytest.mark.parametrize("how", HOWS)
def test_predict_an_input_folder_that_cannot_be_listed_is_one_line(
    how, predict_setup, tiny_model_dir, locked, tmp_path
):
    inputs, out = predict_setup
    closed = tmp_path / "closed"
    closed.mkdir()
    Image.fromarray(picture(6)).save(closed / "eye_d.png")
    locked(closed, 0o000)
    done = run_cli(
        _predict([inputs / "eye_a.png", closed], tiny_model_dir, out),
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [
        f"error: {closed}: cannot list the folder (Permission denied)",
        "1 of 2 files failed",
    ]


@pytest.mark.parametrize("how", HOWS)
def test_predict_into_a_read_only_folder_stops_with_its_name_and_changes_nothing(
    how, predict_setup, tiny_model_dir, locked
):
    inputs, out = predict_setup
    before = snapshot(out)
    locked(out, 0o555)
    done = run_cli(_predict([inputs], tiny_model_dir, out), unprivileged=True, process=how == "process")
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {out / 'eye_a_mask.png'}: Permission denied"]
    assert snapshot(out) == before and temp_leftovers(out) == []


@pytest.fixture()
def score_setup(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    rng = np.random.default_rng(0)
    for sid in ("a", "b", "c"):
        mask = (rng.random((40, 40)) > 0.8).astype(np.uint8) * 255
        Image.fromarray(mask).save(gt / f"{sid}.png")
        Image.fromarray(np.roll(mask, 1, axis=0)).save(pred / f"{sid}.png")
    return gt, pred


@pytest.mark.parametrize("how", HOWS)
def test_score_an_unreadable_prediction_is_one_line_and_the_others_are_scored(
    how, score_setup, locked, tmp_path
):
    gt, pred = score_setup
    locked(pred / "c.png", 0o000)
    report = tmp_path / "scores.json"
    done = run_cli(
        ["retinaseg", "score", "--pred", str(pred), "--gt", str(gt), "--json", str(report)],
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [
        f"error: {pred / 'c.png'}: cannot read the file (Permission denied)",
        "1 of 3 prediction files failed",
    ]
    assert json.loads(report.read_text())["n_images"] == 2


@pytest.mark.parametrize("how", HOWS)
def test_score_into_a_read_only_folder_stops_with_its_name(how, score_setup, locked, tmp_path):
    gt, pred = score_setup
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "scores.json").write_text('{"earlier": true}\n')
    locked(reports, 0o555)
    done = run_cli(
        ["retinaseg", "score", "--pred", str(pred), "--gt", str(gt)]
        + ["--json", str(reports / "scores.json")],
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {reports / 'scores.json'}: Permission denied"]
    assert (reports / "scores.json").read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize("how", HOWS)
def test_validate_an_unreadable_image_is_reported_and_the_manifest_kept(how, tmp_path, locked):
    root = make_folder_dataset(tmp_path / "ds", n=3, size=64)
    locked(root / "images" / "case_01.png", 0o000)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("the earlier manifest\n")
    report = tmp_path / "report"
    done = run_cli(
        ["retinaseg", "validate", "--source", "folder", "--root", str(root)]
        + ["--report", str(report), "--manifest", str(manifest)],
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 1, done.stderr
    assert "ERROR  images/case_01.png: unreadable: cannot read the file (Permission denied)" in done.stdout
    assert error_lines(done.stderr) == ["1 of 9 files failed"]
    assert manifest.read_text() == "the earlier manifest\n"


@pytest.mark.parametrize("how", HOWS)
def test_validate_into_a_read_only_report_folder_stops_with_its_name(how, tmp_path, locked):
    root = make_folder_dataset(tmp_path / "ds", n=2, size=64)
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text("{}\n")
    locked(report, 0o555)
    done = run_cli(
        ["retinaseg", "validate", "--source", "folder", "--root", str(root)] + ["--report", str(report)],
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {report / 'docs'}: Permission denied"]
    assert snapshot(report) == {"summary.json": snapshot(report / "summary.json")["."]}


@pytest.mark.parametrize("how", HOWS)
def test_generate_into_a_read_only_folder_stops_with_its_name(how, tmp_path, locked):
    params = _tiny_synthetic_params(tmp_path)
    parent = tmp_path / "data"
    parent.mkdir()
    locked(parent, 0o555)
    done = run_cli(
        ["retinaseg", "generate", "--out", str(parent / "synthetic"), "--params", str(params)],
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {parent / 'synthetic'}: Permission denied"]
    assert list(parent.iterdir()) == []


def _tiny_synthetic_params(tmp_path: Path) -> Path:
    import yaml

    from tests.conftest import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["synthetic"].update({"n_train": 2, "n_test": 1, "size": 64})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _dvc_repo(path: Path) -> Path:
    from tests.conftest import REPO_ROOT

    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", path / ".gitignore")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=path, check=True)
    return path


@pytest.mark.parametrize("how", HOWS)
def test_data_add_an_unreadable_file_copies_nothing(how, tmp_path, locked):
    root = make_folder_dataset(tmp_path / "user", n=2, size=32)
    locked(root / "masks" / "case_01_mask.png", 0o000)
    repo = _dvc_repo(tmp_path / "repo")
    done = run_cli(
        ["retinaseg", "data", "add", "--source", "folder", "--root", str(root)],
        cwd=repo,
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        f"error: {root / 'masks' / 'case_01_mask.png'}: cannot read the file (Permission denied)",
        f"error: {root}: 1 file(s) cannot be read, so the dataset cannot be copied; nothing copied "
        f"(first: {root / 'masks' / 'case_01_mask.png'})",
    ]
    assert not (repo / "data").exists()


@pytest.mark.parametrize("how", HOWS)
def test_data_add_into_a_read_only_data_folder_stops_with_its_name(how, tmp_path, locked):
    root = make_folder_dataset(tmp_path / "user", n=2, size=32)
    repo = _dvc_repo(tmp_path / "repo")
    (repo / "data" / "raw").mkdir(parents=True)
    before = hash_tree(root)
    locked(repo / "data" / "raw", 0o555)
    done = run_cli(
        ["retinaseg", "data", "add", "--source", "folder", "--root", str(root)],
        cwd=repo,
        unprivileged=True,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == ["error: data/raw/folder: Permission denied"]
    assert list((repo / "data" / "raw").iterdir()) == [] and hash_tree(root) == before
