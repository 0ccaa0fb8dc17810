"""The shared services for real: a run logged to ``mlflow server`` lands in PostgreSQL, its artifact
in the S3 bucket; status/down/up behave; secrets are refused off loopback."""

from __future__ import annotations

from pathlib import Path

import mlflow
import psycopg
import pytest

from retinaseg.team import services


def test_default_secrets_are_refused_off_loopback(tmp_path):
    with pytest.raises(services.ServicesError, match="RETINASEG_DB_PASSWORD"):
        services.Settings.from_env({"RETINASEG_SERVICES_HOST": "0.0.0.0"}, state_dir=tmp_path)
    with pytest.raises(services.ServicesError, match="AWS_ACCESS_KEY_ID"):
        services.Settings.from_env({"RETINASEG_S3_ENDPOINT": "http://minio:9000"}, state_dir=tmp_path)
    with pytest.raises(services.ServicesError, match="RETINASEG_PG_PORT"):
        services.Settings.from_env({"RETINASEG_PG_PORT": "54x"}, state_dir=tmp_path)
    real = services.Settings.from_env(
        {"RETINASEG_S3_ENDPOINT": "aws", "AWS_ACCESS_KEY_ID": "AKIDX7", "AWS_SECRET_ACCESS_KEY": "s3cr3tX7"},
        state_dir=tmp_path,
    )
    assert not real.emulated_s3 and real.s3_url == "" and "MLFLOW_S3_ENDPOINT_URL" not in real.s3_env()
    assert "AKIDX7" not in repr(real) and "s3cr3tX7" not in repr(real)  # secrets stay out of reprs and logs


def test_a_busy_port_is_named(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(services.PortTakenError, match="RETINASEG_MLFLOW_PORT"):
            services._require_free_port("127.0.0.1", port, "RETINASEG_MLFLOW_PORT", "mlflow server")


@pytest.mark.slow
def test_runs_go_to_postgres_and_artifacts_to_s3(team_services, server_env, tmp_path, capsys):
    s = team_services
    assert services.main(["status", "--state-dir", str(s.state_dir)]) == 0
    assert f"MLflow: running on {s.tracking_uri}" in capsys.readouterr().out

    mlflow.set_experiment("team-smoke")
    (tmp_path / "note.txt").write_text("hello")
    with mlflow.start_run() as run:
        mlflow.log_metric("dice", 0.5, step=1)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients need no S3 keys

    with psycopg.connect(
        host=s.host, port=s.pg_port, user=services.DB_USER, password=s.db_password, dbname=services.DB_NAME
    ) as conn:
        stored = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)).fetchone()
        metric = conn.execute(
            "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'dice'", (run.info.run_id,)
        ).fetchone()
    assert stored == ("FINISHED",) and metric == (0.5,)
    keys = [o["Key"] for o in services.s3_client(s).list_objects_v2(Bucket=s.bucket).get("Contents", [])]
    suffix = f"{run.info.run_id}/artifacts/note.txt"
    assert any(k.startswith("mlartifacts/") and k.endswith(suffix) for k in keys)
    back = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/note.txt", dst_path=str(tmp_path))
    assert Path(back).read_text() == "hello"

    # a second `up` finds everything running and changes nothing
    assert services.up(s)[0].startswith("PostgreSQL: already running")
