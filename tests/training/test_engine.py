"""The training engine on a tiny real processed dataset: outputs, MLflow run, resume, failure modes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from retinaseg.core.devices import resolve_device
from retinaseg.models.saved import load_model, load_model_dir
from retinaseg.tracking import MlflowTrainingLogger, model_sha256
from retinaseg.training import engine
from retinaseg.training.checkpoint import LAST, load_checkpoint
from retinaseg.training.engine import train_model


def _train(params, processed, tmp_path, tag="run"):
    return train_model(
        params,
        "unet",
        processed,
        out_dir=tmp_path / tag / "models" / "unet",
        report_dir=tmp_path / tag / "reports",
        checkpoint_dir=tmp_path / tag / "ckpt",
        logger=MlflowTrainingLogger(),  # what stages/train.py passes
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_explicit_cuda_without_cuda_is_an_error_naming_the_flag():
    assert resolve_device("auto") == torch.device("cpu") or resolve_device("auto").type == "mps"
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"torch.cuda.is_available\(\) is False.*-S base.device=cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_model_refuses_absent_cuda_before_writing(tiny_params, processed, tmp_path, mlflow_uri):
    with pytest.raises(RuntimeError, match="base.device"):
        _train(tiny_params(**{"base.device": "cuda"}), processed, tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_one_epoch_writes_model_history_summary_and_mlflow_run(tiny_params, processed, tmp_path, mlflow_uri):
    params = tiny_params()
    summary = _train(params, processed, tmp_path)
    run_dir = tmp_path / "run"

    model, card = load_model_dir(run_dir / "models" / "unet")
    assert card.name == "unet" and card.model_params["base_channels"] == 4
    assert card.preprocess["size"] == 32
    assert card.extra["best_epoch"] == 1 and len(card.extra["data_hash"]) == 64
    assert card.extra["train_orig_width"] == 33 and len(card.extra["code_hash"]) == 64
    assert card.extra["run_fingerprint"] == load_checkpoint(run_dir / "ckpt" / LAST)["fingerprint"]
    env = card.extra["environment"]
    assert (
        env["torch"] == torch.__version__
        and env["accelerator"] == "none"
        and len(env["packages_sha256"]) == 64
    )
    assert {"python", "cpu", "platform", "torch_threads"} <= set(env)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)

    history = pd.read_csv(run_dir / "reports" / "unet.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_dice", "lr"]  # no wall times
    assert history["epoch"].tolist() == [1] and history["train_loss"].notna().all()
    on_disk = json.loads((run_dir / "reports" / "unet.json").read_text())
    # what differs from run to run is returned (and logged to MLflow), never written to the DVC outputs
    assert on_disk == {k: v for k, v in summary.items() if k not in ("train_seconds", "mlflow_run_id")}
    assert summary["train_seconds"] > 0 and summary["mlflow_run_id"]
    assert set(summary) >= {
        "best_val_dice",
        "best_epoch",
        "epochs_run",
        "train_seconds",
        "n_params",
        "device",
    }
    assert summary["epochs_run"] == 1 and summary["device"] == "cpu" and summary["n_params"] > 0
    assert 0.0 <= summary["best_val_dice"] <= 1.0

    run = mlflow.MlflowClient(tracking_uri=mlflow_uri).get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "unet"
    tags = run.data.tags
    assert tags["model"] == "unet" and tags["device"] == "cpu" and tags["dvc_stage"] == "train@unet"
    assert tags["data_source"] == params.data.source and tags["data_hash"] == card.extra["data_hash"]
    assert "git_commit" in tags and "dvc_exp_name" in tags
    # the environment the model was trained in: the same as in its model card
    logged_env = {f"env.{k}": str(v) for k, v in card.extra["environment"].items()}
    assert logged_env.items() <= tags.items()
    assert tags["model_sha256"] == model_sha256(run_dir / "models" / "unet")  # how evaluate finds it
    assert "seconds" in run.data.metrics  # epoch wall times: in MLflow, not in the history CSV
    assert run.data.params["train.lr"] == str(params.train.lr)
    assert run.data.params["models.unet.base_channels"] == "4"
    assert run.data.params["augment.crop_size"] == "24" and "preprocess.size" in run.data.params
    assert {"train_loss", "val_loss", "val_dice", "lr"} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=mlflow_uri).list_artifacts(run.info.run_id)}
    assert {"training", "samples"} <= artifacts  # (MLflow 3 keeps the model beside the run, as a LoggedModel)
    # the run's model is the project's pyfunc model logged as code: no pickle, loadable by the project
    local = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "dl"))
    )
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    loaded, loaded_card = load_model(f"runs:/{run.info.run_id}/model")
    assert loaded_card.name == "unet"

    # the logged model's extra files give back a loadable model directory
    from retinaseg.core.mlflow_store import download_model_dir
    from retinaseg.tracking import latest_run_id

    assert latest_run_id("unet", params.mlflow.experiment) == run.info.run_id
    model_dir = download_model_dir(f"runs:/{run.info.run_id}/model", dst=tmp_path / "dl")
    _, card2 = load_model_dir(model_dir)
    assert card2.extra["data_hash"] == card.extra["data_hash"]


def _interrupt_on_validation(monkeypatch, call: int) -> None:
    """Make the ``call``-th validation raise KeyboardInterrupt (an interrupted run)."""
    real = engine._validate
    calls = {"n": 0}

    def flaky(setup):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(setup)

    monkeypatch.setattr(engine, "_validate", flaky)


@pytest.mark.slow
def test_resumed_run_ends_identical_to_uninterrupted(
    tiny_params, processed, tmp_path, mlflow_uri, monkeypatch, capsys
):
    params = tiny_params(**{"train.epochs": 2, "train.warmup_epochs": 1, "train.samples_per_epoch": 6})
    straight = _train(params, processed, tmp_path, "straight")

    with monkeypatch.context() as patch:
        _interrupt_on_validation(patch, call=2)
        with pytest.raises(KeyboardInterrupt):
            _train(params, processed, tmp_path, "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "ckpt" / LAST)["epoch"] == 1
    capsys.readouterr()
    resumed = _train(params, processed, tmp_path, "resumed")
    assert "resuming from" in capsys.readouterr().out

    assert resumed["best_val_dice"] == straight["best_val_dice"] and resumed["epochs_run"] == 2
    a = torch.load(tmp_path / "straight" / "models" / "unet" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "models" / "unet" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and byte for byte: the model, its card, the history and the summary
    for rel in ("models/unet/model.pt", "models/unet/model.json", "reports/unet.csv", "reports/unet.json"):
        assert (tmp_path / "straight" / rel).read_bytes() == (tmp_path / "resumed" / rel).read_bytes(), rel


def test_changed_params_do_not_resume(tiny_params, processed, tmp_path, mlflow_uri, capsys):
    _train(tiny_params(), processed, tmp_path)
    capsys.readouterr()
    _train(tiny_params(), processed, tmp_path)  # same fingerprint, already finished: nothing to train
    out = capsys.readouterr().out
    assert "resuming from" in out and "epoch 1/1" not in out

    summary = _train(tiny_params(**{"train.lr": 0.001}), processed, tmp_path)
    out = capsys.readouterr().out
    assert "fingerprint mismatch" in out and "epoch 1/1" in out
    assert summary["epochs_run"] == 1


def test_changed_data_does_not_resume(tiny_params, processed, tmp_path, mlflow_uri, capsys):
    _train(tiny_params(), processed, tmp_path)
    (processed / "train" / "index.csv").write_text((processed / "train" / "index.csv").read_text() + "\n")
    capsys.readouterr()
    _train(tiny_params(), processed, tmp_path)
    assert "fingerprint mismatch" in capsys.readouterr().out


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(
    tiny_params, processed, tmp_path, mlflow_uri
):
    _train(tiny_params(), processed, tmp_path)
    last = tmp_path / "run" / "ckpt" / LAST
    model_pt = tmp_path / "run" / "models" / "unet" / "model.pt"
    before, model_before = last.read_bytes(), model_pt.read_bytes()

    exploding = tiny_params(**{
        "train.lr": 1e30, "train.grad_clip": 0.0, "train.scheduler": "none", "train.samples_per_epoch": 12,
    })  # fmt: skip
    with pytest.raises(RuntimeError, match=r"non-finite training loss .* at epoch 1, step \d+"):
        _train(exploding, processed, tmp_path)
    assert last.read_bytes() == before
    assert model_pt.read_bytes() == model_before
    assert load_checkpoint(last)["epoch"] == 1


def test_crop_larger_than_images_is_a_clear_error(tiny_params, processed, tmp_path, mlflow_uri):
    # crop_size > preprocess.size is refused when the params are loaded (tests/core); here the params
    # agree (48 <= 64) but the processed images on disk are 32 px
    params = tiny_params(**{"preprocess.size": 64, "augment.crop_size": 48})
    with pytest.raises(ValueError, match="augment.crop_size=48"):
        _train(params, processed, tmp_path)


def test_the_loss_counts_pixels_inside_the_fov_only(tiny_params, processed, tmp_path, monkeypatch):
    weights = []
    real = engine.build_loss

    def recording_loss(params):
        loss = real(params)

        def call(logits, target, weight=None):
            weights.append(weight)
            return loss(logits, target, weight)

        return call

    monkeypatch.setattr(engine, "build_loss", recording_loss)
    train_model(
        tiny_params(), "unet", processed, tmp_path / "m", tmp_path / "r", checkpoint_dir=tmp_path / "c"
    )
    assert weights, "the loss was never called"
    for weight in weights:  # training and validation: the batch's FOV mask, 1 inside and 0 outside
        assert weight is not None and weight.dim() == 4 and weight.shape[1] == 1
        assert set(weight.unique().tolist()) <= {0.0, 1.0} and 0 < weight.mean() < 1


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "none"])
def test_schedulers(scheduler, tiny_params):
    params = tiny_params(**{"train.scheduler": scheduler, "train.epochs": 4, "train.warmup_epochs": 1})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=params.train.lr)
    sched, per_step = engine._build_scheduler(opt, params.train, steps_per_epoch=3)
    if scheduler == "none":
        assert sched is None
        return
    if scheduler == "plateau":
        assert not per_step
        for _ in range(engine.PLATEAU_PATIENCE + 2):
            sched.step(0.5)  # no improvement → the LR is cut
        assert opt.param_groups[0]["lr"] == pytest.approx(params.train.lr * engine.PLATEAU_FACTOR)
        return
    assert per_step
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(params.train.lr * engine.WARMUP_START_FACTOR)  # warm-up start
    assert max(lrs) == pytest.approx(params.train.lr)  # peak after 3 warm-up steps
    assert lrs[3] == pytest.approx(params.train.lr) and lrs[-1] < 0.1 * params.train.lr


@pytest.mark.gpu
def test_one_epoch_on_cuda_with_mixed_precision(tiny_params, processed, tmp_path):
    params = tiny_params(**{"base.device": "cuda", "train.amp": True, "train.channels_last": True})
    summary = train_model(
        params, "unet", processed, tmp_path / "m", tmp_path / "r", checkpoint_dir=tmp_path / "c"
    )  # no logger: nothing recorded in MLflow
    assert summary["device"].startswith("cuda") and summary["mlflow_run_id"] is None
    history = pd.read_csv(tmp_path / "r" / "unet.csv")
    assert history["train_loss"].map(math.isfinite).all() and 0.0 <= summary["best_val_dice"] <= 1.0
    model, _ = load_model_dir(tmp_path / "m")  # saved on the CPU, loadable anywhere
    assert next(model.parameters()).device.type == "cpu"


def test_epoch_seed_depends_on_seed_epoch_and_rank():
    seeds = {engine.epoch_seed(s, e, r) for s in (1, 2) for e in (1, 2) for r in (0, 1)}
    assert len(seeds) == 8
    assert engine.epoch_seed(1, 2, 0) == engine.epoch_seed(1, 2, 0)
