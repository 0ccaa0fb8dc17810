"""The team services, started for real on loopback once per test session: PostgreSQL (initdb +
pg_ctl in a temporary folder), moto's S3 server, and ``mlflow server`` on the PostgreSQL store with
artifacts proxied to the S3 bucket. Random free ports; everything is stopped and deleted after.

Skipped (with the reason) only where the PostgreSQL server binaries are absent; under CI (``CI``
set) their absence fails instead, so these tests cannot silently vanish there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinaseg.team import services
from tests.ports import free_ports

#: tries with fresh ports when another program took one of ours between choosing it and starting on it
START_TRIES = 3


@pytest.fixture(scope="session")
def team_services() -> Iterator[services.Settings]:
    try:
        services.find_pg_binary("initdb")
        services.find_pg_binary("pg_ctl")
    except services.ServicesError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the team tests: {exc}")
        pytest.skip(str(exc))
    # not under pytest's tmp folder: as root, PostgreSQL runs as another user, who cannot enter it
    state = Path(tempfile.mkdtemp(prefix="retinaseg-services-"))
    state.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETINASEG_", "AWS_", "MLFLOW_S3"))}
    settings = None
    try:
        # A port is free when chosen and taken by another program a moment later (a CI machine runs
        # other jobs): services.up then refuses it by name, and we start again on fresh ports.
        for attempt in range(1, START_TRIES + 1):
            pg, s3, mlflow = free_ports(3)
            env.update(
                RETINASEG_PG_PORT=str(pg), RETINASEG_S3_PORT=str(s3), RETINASEG_MLFLOW_PORT=str(mlflow)
            )
            settings = services.Settings.from_env(env, state_dir=state / f"state-{attempt}")
            try:
                services.up(settings)
                break
            except services.PortTakenError as exc:
                services.down(settings)  # whatever did start
                settings = None  # stopped: nothing left for the finally below
                if attempt == START_TRIES:
                    raise
                print(f"team services, try {attempt}: {exc}; again on fresh ports")
        yield settings
    finally:
        if settings is not None:
            services.down(settings)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture()
def server_env(team_services, monkeypatch) -> dict[str, str]:
    """This process pointed at the services (MLflow + the S3 credentials DVC uses); returns the env."""
    import mlflow
    from mlflow.tracking import fluent

    values = {
        "MLFLOW_TRACKING_URI": team_services.tracking_uri,
        "AWS_ACCESS_KEY_ID": team_services.aws_key,
        "AWS_SECRET_ACCESS_KEY": team_services.aws_secret,
        "AWS_DEFAULT_REGION": team_services.region,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    fluent._active_experiment_id = None  # no public API resets it
    mlflow.set_tracking_uri(team_services.tracking_uri)
    yield {**os.environ}
    fluent._active_experiment_id = None
