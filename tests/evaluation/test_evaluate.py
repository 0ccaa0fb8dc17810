"""evaluate_model on a tiny real dataset + tiny U-Net: outputs, internal consistency, threshold, MLflow."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from retinaseg.cli import cli_evaluate
from retinaseg.core.config import PreprocessParams, params_from_dict
from retinaseg.data.io import binarise_mask, read_image, read_mask
from retinaseg.evaluation import metrics as M
from retinaseg.evaluation.evaluate import EvaluationOutputs, cross_dataset_size, evaluate_model
from retinaseg.inference.predictor import predict_proba
from retinaseg.models.saved import ModelCard, load_model_dir


def _params(**evaluate):
    ev = {"bootstrap": 50, "n_overlays": 2, "curve_points": 20, **evaluate}
    return params_from_dict(
        {"base": {"device": "cpu", "seed": 1}, "evaluate": ev, "data": {"source": "folder"}}
    )


def _truth(root, split):
    frame = pd.read_csv(root / "splits" / f"{split}.csv").sort_values("id")
    out = []
    for row in frame.itertuples():
        out.append(
            (
                read_image(root / row.image_path),
                binarise_mask(read_mask(root / row.mask_path)).astype(bool),
                binarise_mask(read_mask(root / row.fov_path)).astype(bool),
            )
        )
    return out


def test_evaluate_model_writes_consistent_outputs(tiny_dataset, tiny_model_dir, tmp_path, mlflow_uri):
    reports = tmp_path / "reports"
    result = evaluate_model(_params(), "unet", tiny_model_dir, tiny_dataset / "splits", tiny_dataset, reports)
    out = EvaluationOutputs.for_model(reports, "unet")
    metrics = json.loads(out.metrics_json.read_text())
    assert metrics == json.loads(json.dumps(result["metrics"]))
    assert metrics["n_test_images"] == 3 and metrics["n_val_images"] == 2
    assert set(metrics) >= {"protocol", "threshold", "fov", "image", "at_0_5"}
    assert "inference_ms_per_image" not in metrics  # differs per run: MLflow only, not the DVC output
    assert len(metrics["protocol"]["test_fingerprint"]) == 64
    for block in ("fov", "image"):
        assert list(metrics[block]) == [
            "f1", "iou", "auc_roc", "auc_pr", "mcc", "sensitivity", "specificity", "accuracy", "precision",
            "f1_mean", "f1_std", "f1_ci95_low", "f1_ci95_high",
        ]  # fmt: skip
    assert "nothing logged to MLflow" in result["mlflow"]  # no run in this store trained the model

    # the val threshold is the pooled-F1 optimum of the model's own val predictions
    model, card = load_model_dir(tiny_model_dir)
    pre = card.preprocess_params()
    val = _truth(tiny_dataset, "val")
    val_probs = [predict_proba(model, img, pre) for img, _, _ in val]
    t, _ = M.best_threshold(val_probs, [g for _, g, _ in val], [f for _, _, f in val])
    assert metrics["threshold"] == pytest.approx(t)

    # test metrics recomputed independently, inside the FOV and over the whole image, at t and 0.5
    test = _truth(tiny_dataset, "test")
    probs = [predict_proba(model, img, pre) for img, _, _ in test]
    for thr, where in ((t, metrics), (0.5, metrics["at_0_5"])):
        fov_c = sum((M.confusion(p >= thr, g, f) for p, (_, g, f) in zip(probs, test, strict=True)),
                    M.Confusion(0, 0, 0, 0))  # fmt: skip
        img_c = sum((M.confusion(p >= thr, g) for p, (_, g, _) in zip(probs, test, strict=True)),
                    M.Confusion(0, 0, 0, 0))  # fmt: skip
        assert where["fov"]["f1"] == pytest.approx(M.scores_from_confusion(*fov_c)["f1"])
        assert where["image"]["accuracy"] == pytest.approx(M.scores_from_confusion(*img_c)["accuracy"])
    assert metrics["fov"]["f1_ci95_low"] <= metrics["fov"]["f1"] + 1e-9

    # per-image table reproduces the pooled numbers; curves and overlays are there
    table = pd.read_csv(out.per_image_csv)
    assert list(table["id"]) == ["s0", "s1", "s2"]
    counts = table[["fov_tp", "fov_fp", "fov_fn", "fov_tn"]].sum().tolist()
    assert M.scores_from_confusion(*counts)["f1"] == pytest.approx(metrics["fov"]["f1"])
    assert table["fov_f1"].mean() == pytest.approx(metrics["fov"]["f1_mean"], abs=1e-6)
    roc = pd.read_csv(out.plots_dir / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and 2 <= len(roc) <= 20
    assert list(pd.read_csv(out.plots_dir / "pr.csv").columns) == ["recall", "precision", "threshold"]
    assert sorted(p.name for p in out.overlays_dir.glob("*.png")) == ["s0.png", "s1.png"]


def test_multi_scale_tta_chooses_the_threshold_on_the_averaged_val_maps(
    tiny_dataset, tiny_model_dir, tmp_path, mlflow_uri
):
    params = _params(tta_scales=[0.75, 1.0, 1.25])
    result = evaluate_model(params, "unet", tiny_model_dir, tiny_dataset / "splits", tiny_dataset, tmp_path)
    metrics = result["metrics"]
    assert metrics["protocol"]["threshold_from"] == "val (scales 0.75, 1, 1.25)"
    model, card = load_model_dir(tiny_model_dir)
    pre = card.preprocess_params()

    def averaged(img):
        sizes = [round(pre.size * s) for s in (0.75, 1.0, 1.25)]
        return np.mean([predict_proba(model, img, dataclasses.replace(pre, size=n)) for n in sizes], axis=0)

    val = _truth(tiny_dataset, "val")
    t, _ = M.best_threshold(
        [averaged(img) for img, _, _ in val], [g for _, g, _ in val], [f for _, _, f in val]
    )
    assert metrics["threshold"] == pytest.approx(t)
    test = _truth(tiny_dataset, "test")
    fov_c = sum((M.confusion(averaged(img) >= t, g, f) for img, g, f in test), M.Confusion(0, 0, 0, 0))
    assert metrics["fov"]["f1"] == pytest.approx(M.scores_from_confusion(*fov_c)["f1"])
    plain = evaluate_model(
        _params(), "unet", tiny_model_dir, tiny_dataset / "splits", tiny_dataset, tmp_path / "p"
    )
    assert plain["metrics"]["protocol"]["threshold_from"] == "val"


def test_missing_split_is_a_clear_error(tiny_dataset, tiny_model_dir, tmp_path):
    (tiny_dataset / "splits" / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="test.csv: split file not found"):
        evaluate_model(
            _params(), "unet", tiny_model_dir, tiny_dataset / "splits", tiny_dataset, tmp_path / "r"
        )
    assert not (tmp_path / "r" / "metrics" / "unet.json").exists()


def test_cross_dataset_size_rule():
    card = ModelCard(
        "unet", {}, PreprocessParams(size=512), extra={"train_orig_width": 565, "train_orig_height": 584}
    )
    # the training dataset itself: unchanged
    assert cross_dataset_size(card, 584, 565, None)[0] == 512
    # STARE 605×700 (h×w): width matched to 565 → longest 700·565/700 = 565 → ·512/584
    size, rule = cross_dataset_size(card, 605, 700, None)
    assert size == round(700 * (565 / 700) * 512 / 584) and "width matched" in rule
    assert cross_dataset_size(card, 605, 700, 0.5)[0] == round(700 * 0.5 * 512 / 584)
    bare = ModelCard("unet", {}, PreprocessParams(size=256))
    assert cross_dataset_size(bare, 605, 700, None)[0] == 256
    assert cross_dataset_size(bare, 605, 700, 2.0)[0] == 512
    # a model trained with preprocess.scale fov: its own preprocessing scales the FOV, nothing to match
    fov_card = ModelCard(
        "unet",
        {},
        PreprocessParams(size=512, scale="fov"),
        extra={"train_orig_width": 565, "train_orig_height": 584},
    )
    size, rule = cross_dataset_size(fov_card, 960, 999, None)
    assert size == 512 and "preprocess.scale: fov" in rule
    assert cross_dataset_size(fov_card, 605, 700, 0.5)[0] == round(700 * 0.5 * 512 / 584)  # an explicit scale


def test_cli_evaluate_on_a_folder_dataset(tiny_dataset, tiny_model_dir, tmp_path, capsys):
    for sub in ("splits",):
        for f in (tiny_dataset / sub).iterdir():
            f.unlink()
        (tiny_dataset / sub).rmdir()
    out = tmp_path / "cross.json"
    args = SimpleNamespace(
        model=str(tiny_model_dir), source="folder", root=str(tiny_dataset), split="test",
        vessel_scale=None, threshold=0.4, device="cpu", json=str(out), params=None,
    )  # fmt: skip
    assert cli_evaluate(args) == 0
    printed = capsys.readouterr().out
    assert "inside FOV" in printed and "whole image" in printed
    result = json.loads(out.read_text())
    assert result["n_test_images"] == 6 and result["threshold"] == 0.4
    assert result["protocol"]["threshold_from"] == "--threshold"
    assert len(result["per_image"]) == 6
    assert 0.0 <= result["fov"]["f1"] <= 1.0 and result["fov"]["auc_roc"] is not None


@pytest.mark.slow
def test_evaluation_is_logged_to_the_training_run(
    tiny_dataset, tiny_model_dir, tmp_path, mlflow_uri, monkeypatch
):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: keep it out of the repo

    from retinaseg.tracking import model_sha256

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(_params().mlflow.experiment)
    with mlflow.start_run() as run:  # the training run: found by the sha256 of the model it saved
        mlflow.log_metric("best_val_dice", 0.5)
        mlflow.set_tags({"model": "unet", "model_sha256": model_sha256(tiny_model_dir)})
    with mlflow.start_run():  # another model's run: not picked
        mlflow.set_tags({"model": "unet", "model_sha256": "0" * 64})
    reports = tmp_path / "reports"
    result = evaluate_model(_params(), "unet", tiny_model_dir, tiny_dataset / "splits", tiny_dataset, reports)
    assert run.info.run_id in result["mlflow"]
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["test_fov_f1"] == pytest.approx(result["metrics"]["fov"]["f1"])
    assert logged["test_threshold"] == pytest.approx(result["metrics"]["threshold"])
    assert "test_image_f1_at_0_5" in logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/unet.json",
        "evaluation/unet.csv",
        "evaluation/plots",
        "evaluation/overlays",
    } <= artifacts
    assert np.isfinite(logged["test_inference_ms_per_image"])


def test_cli_evaluate_refuses_two_files_claiming_one_sample(tiny_dataset, tiny_model_dir, tmp_path, capsys):
    import shutil

    shutil.copy(tiny_dataset / "images" / "s0.png", tiny_dataset / "images" / "s0.tif")  # a second "s0"
    from retinaseg.cli import main

    out = tmp_path / "x.json"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--source", "folder", "--root", str(tiny_dataset)]
    assert main([*argv, "--split", "test", "--device", "cpu", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "id 's0' is claimed by 2 image files" in err and "s0.png" in err and "s0.tif" in err
    assert not out.exists()
