"""The file-size limit: ``RLIMIT_FSIZE`` set below what a command writes, so a write fails with a real
``EFBIG`` (as a full disk fails with ``ENOSPC``), with ``SIGXFSZ`` ignored.

The command prints one line naming the file it could not write (never a temporary name) and exits
non-zero (2; a stage 1); what an earlier run wrote is byte-for-byte still there (every write is
atomic); no temporary file is left behind. In this process (the command's ``main``, the limit lowered
around it) and, for one case always and for all in the full part, as a process of its own.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from retinaseg.core.fileio import hash_tree
from tests.conftest import REPO_ROOT
from tests.data.builders import make_folder_dataset
from tests.faults.helpers import BOTH, HOWS, error_lines, run_cli, snapshot, temp_leftovers
from tests.faults.images import picture

FAMILY = "File-size limit (RLIMIT_FSIZE: a real EFBIG on write)"

TOO_LARGE = os.strerror(errno.EFBIG)  # "File too large"


def _params(tmp_path: Path) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["synthetic"].update({"n_train": 2, "n_test": 1, "size": 64})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("how", BOTH)
def test_predict_stops_at_the_output_it_cannot_write_and_changes_nothing(how, tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(picture(7, 160, 200)).save(inputs / "eye.png")
    out = tmp_path / "out"
    args = [
        "retinaseg",
        "predict",
        str(inputs),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert run_cli(args).returncode == 0  # the earlier run: the same inputs, the same outputs
    before = snapshot(out)
    sizes = {kind: (out / f"eye_{kind}.png").stat().st_size for kind in ("mask", "prob", "overlay")}
    limit = min(sizes.values()) + 1
    first_too_big = next(kind for kind in ("mask", "prob", "overlay") if sizes[kind] > limit)
    done = run_cli(args, max_file_bytes=limit, process=how == "process")
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {out / f'eye_{first_too_big}.png'}: {TOO_LARGE}"]
    assert snapshot(out) == before and temp_leftovers(out) == []


@pytest.mark.parametrize("how", HOWS)
def test_score_keeps_the_earlier_report_when_the_new_one_cannot_be_written(how, tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    rng = np.random.default_rng(1)
    for sid in ("a", "b"):
        mask = (rng.random((40, 40)) > 0.8).astype(np.uint8) * 255
        Image.fromarray(mask).save(gt / f"{sid}.png")
        Image.fromarray(mask).save(pred / f"{sid}.png")
    report = tmp_path / "scores.json"
    report.write_text('{"earlier": true}\n')
    done = run_cli(
        ["retinaseg", "score", "--pred", str(pred), "--gt", str(gt), "--json", str(report)],
        max_file_bytes=256,
        process=how == "process",
    )
    assert done.returncode == 2
    assert error_lines(done.stderr) == [f"error: {report}: {TOO_LARGE}"]
    assert report.read_text() == '{"earlier": true}\n' and temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("how", HOWS)
def test_validate_keeps_the_earlier_manifest_and_report(how, tmp_path):
    root = make_folder_dataset(tmp_path / "ds", n=3, size=64)
    manifest, report = tmp_path / "manifest.csv", tmp_path / "report"
    args = ["retinaseg", "validate", "--source", "folder", "--root", str(root)]
    args += ["--report", str(report), "--manifest", str(manifest)]
    assert run_cli(args).returncode == 0  # the earlier run
    before = snapshot(manifest), snapshot(report / "summary.json")
    done = run_cli(args, max_file_bytes=4096, process=how == "process")
    assert done.returncode == 2
    [line] = error_lines(done.stderr)  # one line (the Data Docs library's own traceback is not shown)
    assert line.startswith(f"error: {report / 'docs'}") and line.endswith(TOO_LARGE), line
    assert (snapshot(manifest), snapshot(report / "summary.json")) == before
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("how", HOWS)
def test_generate_keeps_the_earlier_dataset(how, tmp_path):
    out = tmp_path / "synthetic"
    args = ["retinaseg", "generate", "--out", str(out), "--params", str(_params(tmp_path))]
    assert run_cli(args).returncode == 0
    before = snapshot(out)
    done = run_cli(args, max_file_bytes=2048, process=how == "process")
    assert done.returncode == 2
    [line] = error_lines(done.stderr)
    assert line.startswith(f"error: {out}/") and line.endswith(f".png: {TOO_LARGE}"), line
    assert snapshot(out) == before and temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("how", HOWS)
def test_the_generate_stage_keeps_the_earlier_dataset(how, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _params(work)
    assert run_cli(["stage", "generate"], cwd=work).returncode == 0
    before = snapshot(work / "data"), snapshot(work / "reports")
    done = run_cli(["stage", "generate"], cwd=work, max_file_bytes=2048, process=how == "process")
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert line.startswith("error: data/raw/synthetic/") and line.endswith(f".png: {TOO_LARGE}"), line
    assert (snapshot(work / "data"), snapshot(work / "reports")) == before
    assert temp_leftovers(work) == []


@pytest.mark.parametrize("how", HOWS)
def test_data_add_copies_nothing_when_a_file_cannot_be_copied(how, tmp_path):
    root = make_folder_dataset(tmp_path / "user", n=2, size=64)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    (repo / "data" / "raw" / "kaggle").mkdir(parents=True)
    (repo / "data" / "raw" / "kaggle" / "earlier.txt").write_text("an earlier dataset\n")
    before = hash_tree(repo / "data"), hash_tree(root)
    biggest = max(root.rglob("*.png"), key=lambda p: p.stat().st_size)
    done = run_cli(
        ["retinaseg", "data", "add", "--source", "folder", "--root", str(root)],
        cwd=repo,
        max_file_bytes=biggest.stat().st_size - 1,
        process=how == "process",
    )
    assert done.returncode == 2
    [line] = error_lines(done.stderr)
    assert line.startswith(f"error: {biggest}: cannot be copied into data/raw/folder: ") and TOO_LARGE in line
    assert line.endswith("; nothing copied"), line
    assert (hash_tree(repo / "data"), hash_tree(root)) == before
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == ["kaggle"]
