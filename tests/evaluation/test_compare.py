"""compare: the Markdown table (sorted, best in bold), comparison.json, the champion and its registration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retinaseg.core.config import ConfigError, params_from_dict
from retinaseg.evaluation.compare import compare_models

MODELS = {
    # name: (fov f1, fov auc_roc, image f1, n_params)
    "unet": (0.801, 0.975, 0.790, 1_900_000),
    "attention_unet": (0.812, 0.971, 0.800, 2_100_000),
    "resnet34_unet": (0.795, 0.979, 0.785, 24_400_000),
}


def _write_reports(reports, models=MODELS):
    for name, (f1, auc, image_f1, n_params) in models.items():
        fov = {"f1": f1, "iou": f1 / (2 - f1), "auc_roc": auc, "auc_pr": 0.9, "mcc": f1 - 0.03,
               "sensitivity": 0.8, "specificity": 0.97, "accuracy": 0.95, "precision": 0.82}  # fmt: skip
        protocol = {"dataset": "drive", "threshold_from": "val", "test_fingerprint": "f" * 64}
        metrics = {"protocol": protocol, "threshold": 0.45, "fov": fov, "image": {"f1": image_f1}}
        (reports / "metrics").mkdir(parents=True, exist_ok=True)
        (reports / "training").mkdir(parents=True, exist_ok=True)
        (reports / "metrics" / f"{name}.json").write_text(json.dumps(metrics))
        training = {"n_params": n_params}
        (reports / "training" / f"{name}.json").write_text(json.dumps(training))


def _run(tmp_path, metric="f1", register=False, models_dir=None):
    params = params_from_dict({"compare": {"metric": metric}})
    r = tmp_path / "reports"
    models_dir = models_dir or tmp_path / "models"
    champion_path = tmp_path / "models" / "champion.json"
    champion = compare_models(
        params, r / "metrics", r / "training", r / "comparison.md", r / "comparison.json",
        champion_path, models_dir,
    )  # fmt: skip
    if register:  # what the compare stage does after choosing
        from retinaseg.registry import register_and_maybe_promote

        metrics = json.loads((r / "metrics" / f"{champion['name']}.json").read_text())
        _, promotion, _ = register_and_maybe_promote(champion, metrics, params, models_dir)
        champion = {**champion, "promotion": promotion}
    return champion


def test_table_is_sorted_with_best_values_in_bold(tmp_path):
    _write_reports(tmp_path / "reports")
    champion = _run(tmp_path)
    md = (tmp_path / "reports" / "comparison.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith(
        "| Model | F1 | IoU | ROC-AUC | MCC | Se | Sp | F1 (whole image) | Params (M) |"
    )
    rows = [ln for ln in lines[2:5]]
    assert [r.split("|")[1].strip() for r in rows] == ["attention_unet", "unet", "resnet34_unet"]
    att, unet, res = (r.split("|") for r in rows)
    assert att[2].strip() == "**0.8120**" and unet[2].strip() == "0.8010"  # best F1
    assert res[4].strip() == "**0.9790**"  # best ROC-AUC belongs to another model
    assert unet[9].strip() == "**1.90**" and len(unet) == 11  # fewest params; no per-run timings
    assert "Train (min)" not in md and "ms/image" not in md
    assert "inside the field of view" in md and "val split" in md and "drive" in md
    assert champion["name"] == "attention_unet" and champion["value"] == pytest.approx(0.812)
    assert champion["metric"] == "f1" and champion["model_uri"].endswith("models/attention_unet")
    saved = json.loads((tmp_path / "models" / "champion.json").read_text())
    assert saved == champion and set(saved) == {"name", "model_uri", "metric", "value", "threshold"}
    comp = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    assert comp["champion"] == "attention_unet"
    assert comp["models"]["unet"] == {
        "rank": 2,
        "f1": 0.801,
        "auc_roc": 0.975,
        "mcc": 0.771,
        "threshold": 0.45,
    }


def test_ranking_follows_compare_metric(tmp_path):
    _write_reports(tmp_path / "reports")
    assert _run(tmp_path, metric="auc_roc")["name"] == "resnet34_unet"
    with pytest.raises(ConfigError, match="compare.metric"):
        _run(tmp_path, metric="loss")


def test_no_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics files"):
        _run(tmp_path)


def test_update_readme_script_copies_the_table(tmp_path, repo_root):
    (tmp_path / "README.md").write_text("x\n<!-- comparison:start -->\n<!-- comparison:end -->\n")
    (tmp_path / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    script = str(repo_root / "scripts" / "update_readme.py")
    cmd = [sys.executable, script, "--readme", "README.md", "--table", "table.md"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "| 1 |\n<!-- comparison:end -->" in (tmp_path / "README.md").read_text()


@pytest.mark.slow
def test_champion_is_registered_with_the_alias(tmp_path, tiny_model_dir, mlflow_uri, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: keep it out of the repo

    models = {"unet": MODELS["unet"]}
    _write_reports(tmp_path / "reports", models)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    champion = _run(tmp_path, register=True, models_dir=tiny_model_dir.parent)
    promotion = champion["promotion"]
    assert promotion.promoted and promotion.uri == "models:/retinaseg-vessels@champion"
    version = mlflow.MlflowClient(mlflow_uri).get_model_version_by_alias("retinaseg-vessels", "champion")
    assert int(version.version) == promotion.version == 1
    assert version.tags["test_fingerprint"] == "f" * 64 and float(version.tags["metric_value"]) == 0.801
