"""The thin `stages/train.py` script: known errors become one `error:` line and a non-zero exit."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture()
def stage(repo_root):
    spec = importlib.util.spec_from_file_location("train_stage", repo_root / "stages" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_params_file(stage, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert stage.main(["--model", "unet", "--params", "nope.yaml"]) == 1
    assert capsys.readouterr().err.strip() == "error: nope.yaml: params file not found"


def test_missing_processed_data(stage, repo_root, tmp_path, capsys, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text().replace("device: auto", "device: cpu"))
    assert stage.main(["--model", "unet", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: data/processed/train: processed split folder not found")


def test_unknown_model_is_an_argparse_error(stage):
    with pytest.raises(SystemExit) as exc:
        stage.main(["--model", "vgg"])
    assert exc.value.code == 2
