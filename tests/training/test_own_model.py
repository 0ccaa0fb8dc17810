"""A run only ever saves what it trained (issue 10): never a best.pt another run left in the folder."""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest

from retinaseg.core.config import ConfigError
from retinaseg.training import engine
from retinaseg.training.checkpoint import BEST, TrainingError, load_checkpoint
from retinaseg.training.engine import train_model


def _train(params, processed, root):
    return train_model(
        params,
        "unet",
        processed,
        out_dir=root / "models" / "unet",
        report_dir=root / "reports",
        checkpoint_dir=root / "ckpt",
    )


@pytest.fixture()
def foreign_best(tiny_params, processed, tmp_path):
    """A best.pt written by another configuration (another learning rate)."""
    other = tmp_path / "other"
    _train(tiny_params(**{"train.lr": 0.01}), processed, other)
    return other / "ckpt" / BEST


def test_a_stale_foreign_best_is_not_resumed_and_not_saved(
    tiny_params, processed, tmp_path, foreign_best, capsys
):
    run = tmp_path / "run"
    _train(tiny_params(), processed, run)
    own_model = (run / "models" / "unet" / "model.pt").read_bytes()
    shutil.copy(foreign_best, run / "ckpt" / BEST)  # e.g. a run of another config killed after its best.pt
    capsys.readouterr()

    _train(tiny_params(), processed, run)  # last.pt is this config's, finished: but its best epoch is gone
    out = capsys.readouterr().out
    assert "best epoch is gone" in out and "fingerprint mismatch" in out and "epoch 1/1" in out
    assert (run / "models" / "unet" / "model.pt").read_bytes() == own_model  # retrained, same bytes
    assert (foreign_best.parent.parent / "models" / "unet" / "model.pt").read_bytes() != own_model


def test_a_foreign_best_at_the_end_fails_the_run_and_writes_no_model(
    tiny_params, processed, tmp_path, foreign_best, monkeypatch
):
    run = tmp_path / "run"
    real_finish = engine._finish

    def finish_after_another_run_wrote_best(s, state, out_dir, report_dir, run_id):
        shutil.copy(foreign_best, s.job.checkpoint_dir / BEST)
        return real_finish(s, state, out_dir, report_dir, run_id)

    monkeypatch.setattr(engine, "_finish", finish_after_another_run_wrote_best)
    with pytest.raises(TrainingError, match=r"best epoch 1 is not in its checkpoints .*fingerprint mismatch"):
        _train(tiny_params(), processed, run)
    assert not (run / "models").exists()
    assert load_checkpoint(run / "ckpt" / BEST)["fingerprint"] == load_checkpoint(foreign_best)["fingerprint"]


def test_a_run_without_a_best_epoch_fails(tiny_params, processed, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "_validate", lambda s: (math.nan, math.nan))
    with pytest.raises(TrainingError, match="no epoch of this run improved the validation Dice"):
        _train(tiny_params(), processed, tmp_path / "run")
    assert not (tmp_path / "run" / "models").exists()


def test_zero_epochs_is_a_config_error(tiny_params):
    with pytest.raises(ConfigError, match=r"'train.epochs' is 0; allowed range \[1, 10000\]"):
        tiny_params(**{"train.epochs": 0})


def test_the_stage_exits_non_zero_with_the_reason(repo_root, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_stage", repo_root / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text().replace("epochs: 12", "epochs: 0"))
    assert stage.main(["--model", "unet", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {params}: 'train.epochs' is 0; allowed range [1, 10000]")
    assert not (tmp_path / "models").exists()
