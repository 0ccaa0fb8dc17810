"""A Ray Tune sweep for real: ``ray.init(num_cpus=2)``, a 2-trial grid (one model × two losses), each
trial a real training logging to the shared ``mlflow server``; the result table names the best
trial and the ``dvc exp run`` that reproduces it."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
import yaml

from retinaseg.core.config import load_params
from retinaseg.team.sweep import SweepError, SweepSpec, main, reproduce_command, run_sweep, write_table
from tests.tiny import TINY_TRAIN, nested
from tests.training.processed_data import make_processed


def _params_file(repo_root, path):
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    update = nested({**TINY_TRAIN, "base.threads": 0, "train.epochs": 2})  # threads: the trial's share

    def merge(into, upd):
        for k, v in upd.items():
            merge(into.setdefault(k, {}), v) if isinstance(v, dict) else into.__setitem__(k, v)

    merge(data, update)
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_grids_are_refused_before_anything_runs(repo_root, tmp_path):
    params = _params_file(repo_root, tmp_path / "params.yaml")
    processed = make_processed(tmp_path / "processed", n_train=2, n_val=1, size=32)
    good = {"params_path": params, "processed_dir": processed, "seeds": (1,)}
    with pytest.raises(SweepError, match="unknown loss 'dice'"):
        SweepSpec(models=("unet",), losses=("dice",), **good).check()
    with pytest.raises(SweepError, match="unknown model"):
        SweepSpec(models=("vit",), losses=("bce_dice",), **good).check()
    with pytest.raises(SweepError, match="dvc pull data/processed"):
        SweepSpec(("unet",), ("bce_dice",), (1,), params, tmp_path / "nowhere").check()
    assert main(["--losses", "dice", "--params", str(params), "--processed", str(processed)]) == 2


def test_reproduce_command_is_the_pipeline_experiment(repo_root, tmp_path):
    spec = SweepSpec(
        ("unet",), ("focal_dice",), (3,), tmp_path / "p.yaml", tmp_path, {"train.epochs": 5}, "s1"
    )
    cmd = reproduce_command(spec, {"model": "attention_unet", "loss": "focal_dice", "seed": 3})
    assert cmd == (
        "dvc exp run -n s1-attention-unet-focal-dice-seed3 -S train.epochs=5 -S base.seed=3 "
        "-S train.loss.name=focal_dice evaluate@attention_unet"
    )
    # every -S of it is a valid params override
    load_params(repo_root / "params.yaml", spec.trial_overrides({"loss": "focal_dice", "seed": 3}))


@pytest.mark.slow
def test_two_trial_ray_sweep_logs_to_the_server(repo_root, tmp_path, server_env):
    params = _params_file(repo_root, tmp_path / "params.yaml")
    processed = make_processed(tmp_path / "processed", n_train=4, n_val=2, size=32)
    spec = SweepSpec(
        models=("unet",),
        losses=("bce_dice", "focal_dice"),
        seeds=(7,),
        params_path=params,
        processed_dir=processed,
        name="t-sweep",
    )
    rows = run_sweep(spec, num_cpus=2)
    assert [r["status"] for r in rows] == ["done", "done"], rows
    assert sorted(r["loss"] for r in rows) == ["bce_dice", "focal_dice"]
    assert rows[0]["best_val_dice"] >= rows[1]["best_val_dice"] and not math.isnan(rows[1]["best_val_dice"])

    client = mlflow.MlflowClient(tracking_uri=server_env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("retinaseg-sweeps")
    runs = client.search_runs([experiment.experiment_id], "tags.sweep = 't-sweep'")
    assert sorted(r.info.run_id for r in runs) == sorted(r["mlflow_run_id"] for r in rows)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["train.loss.name"] in ("bce_dice", "focal_dice")
        assert r.data.tags["env.torch_threads"] == "1"  # RETINASEG_JOBS = trials per node
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_dice")] == [1, 2]

    csv_path, md_path = write_table(rows, spec, tmp_path / "out")
    table = pd.read_csv(csv_path)
    assert table["mlflow_run_id"].tolist() == [r["mlflow_run_id"] for r in rows]
    best = rows[0]
    assert reproduce_command(spec, best) in md_path.read_text()
    assert f"-S train.loss.name={best['loss']}" in reproduce_command(spec, best)
