"""`mlflow ui` opens the project's experiment on its runs table, not on MLflow 3's GenAI traces tab."""

from __future__ import annotations


def test_experiment_is_marked_as_model_training(mlflow_uri, tmp_path, monkeypatch):
    import mlflow

    from retinaseg.tracking import EXPERIMENT_KIND, MODEL_TRAINING, use_experiment

    monkeypatch.chdir(tmp_path)
    use_experiment("retinaseg")
    assert mlflow.get_experiment_by_name("retinaseg").tags[EXPERIMENT_KIND] == MODEL_TRAINING

    # a store made before the tag existed gets it on the next run
    client = mlflow.MlflowClient()
    old = client.create_experiment("older")
    assert EXPERIMENT_KIND not in client.get_experiment(old).tags
    use_experiment("older")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    mlflow.set_tracking_uri(None)
