"""The tiny pipeline against the real shared services, as a team uses them:

1. ``dvc repro`` with ``MLFLOW_TRACKING_URI=http://…`` (PostgreSQL store, artifacts on S3): the
   runs, the registered model and ``@champion`` are on the server; ``dvc push`` to the S3 remote.
2. A teammate's fresh clone: ``dvc pull``, then ``dvc repro`` has nothing to do and git is clean;
   ``retinaseg predict`` works from the pulled model and from ``models:/…@champion`` on the server.
3. Two experiments queued and run at once (``dvc queue start -j 2`` with ``RETINASEG_JOBS=2``) into
   the one server: every run, every epoch's metric and both model versions are there, and the
   queue workers inherited the thread budget.
4. ``dvc exp push`` of one experiment; the clone ``dvc exp pull``s and applies it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest

from retinaseg.core.budget import available_cores
from retinaseg.team import queue
from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env, run
from tests.tiny import TINY_PIPELINE

pytestmark = pytest.mark.slow

REGISTERED = "retinaseg-vessels"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_team_workflow_on_shared_services(repo_root, tmp_path, team_services, server_env):
    s = team_services
    shared = {k: v for k, v in server_env.items() if k.startswith(("MLFLOW_", "AWS_"))}
    env = {**pipeline_env(tmp_path), **shared}
    assert env["MLFLOW_TRACKING_URI"] == s.tracking_uri
    dvc = str(VENV_BIN / "dvc")
    repo = copy_repo(repo_root, tmp_path / "repo", TINY_PIPELINE, env)
    run([dvc, "remote", "add", "-d", "team", f"s3://{s.bucket}/dvcstore-{tmp_path.name}"], repo, env)
    run([dvc, "remote", "modify", "team", "endpointurl", s.s3_url], repo, env)

    # 1. the pipeline logs to the server; the champion is registered there
    run([dvc, "repro"], repo, env)
    client = mlflow.MlflowClient(tracking_uri=s.tracking_uri)
    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    champion_json = json.loads((repo / "models" / "champion.json").read_text())
    assert champion.tags["model_name"] == champion_json["name"]
    assert "Everything is up to date" not in run([dvc, "push"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "pipeline outputs"], repo, env)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(origin)], repo, env)
    run(["git", "push", "-q", "origin", "HEAD:main"], repo, env)

    # 2. a fresh clone pulls everything and has nothing to reproduce
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], tmp_path, env)
    run([dvc, "pull"], clone, env)
    assert json.loads(run([dvc, "status", "--json"], clone, env)) == {}
    assert "Running stage" not in run([dvc, "repro"], clone, env)
    assert run(["git", "status", "--short"], clone, env).strip() == ""
    assert _sha(clone / "models" / "unet" / "model.pt") == _sha(repo / "models" / "unet" / "model.pt")
    image = next((clone / "data" / "raw" / "synthetic" / "test" / "images").iterdir())
    retinaseg = str(VENV_BIN / "retinaseg")
    local = [retinaseg, "predict", "--model", "models/unet", "--out", str(tmp_path / "p1"), str(image)]
    run(local, clone, env)
    out = run([retinaseg, "predict", "--out", str(tmp_path / "p2"), str(image)], clone, env)
    assert f"models:/{REGISTERED}@champion" in out and (tmp_path / "p2" / f"{image.stem}_mask.png").is_file()

    # 3. two experiments at once into the one server: nothing lost
    versions_before = {v.version for v in client.search_model_versions(f"name='{REGISTERED}'")}
    outcomes = queue.run_queue(
        repo, [["models.unet.base_channels=6"], ["models.unet.base_channels=8"]], jobs=2, names=["e6", "e8"]
    )
    assert [(o.name, o.status) for o in outcomes] == [("e6", "Success"), ("e8", "Success")], outcomes
    experiment = client.get_experiment_by_name("retinaseg")
    for name in ("e6", "e8"):
        runs = client.search_runs(
            [experiment.experiment_id], f"tags.dvc_exp_name = '{name}' and tags.model = 'unet'"
        )
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", name
        r = runs[0]
        assert r.data.tags["env.torch_threads"] == str(max(1, available_cores() // 2))  # RETINASEG_JOBS=2
        assert r.data.params["models.unet.base_channels"] == name[1:]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_dice")] == [1, 2]
        assert "test_fov_f1" in r.data.metrics  # the evaluate stage logged to the same run
    new = [
        v for v in client.search_model_versions(f"name='{REGISTERED}'") if v.version not in versions_before
    ]
    assert sorted(v.tags["dvc_exp_name"] for v in new) == ["e6", "e8"]
    assert all(v.tags["promotion"] == "not attempted" for v in new)
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == champion.version

    # 4. dvc exp push / pull: the clone gets the experiment and its outputs
    run([dvc, "exp", "push", "origin", "e6"], repo, env)
    run([dvc, "exp", "pull", "origin", "e6"], clone, env)
    assert "e6" in run([dvc, "exp", "list", "--name-only"], clone, env)
    run([dvc, "exp", "apply", "e6"], clone, env)
    card = json.loads((clone / "models" / "unet" / "model.json").read_text())
    assert json.dumps(card).count('"base_channels": 6') >= 1, card
    assert json.loads(run([dvc, "status", "--json"], clone, env)) == {}
