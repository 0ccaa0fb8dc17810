"""The team's shared services on one machine: PostgreSQL, an S3-compatible store, ``mlflow server``.

``python -m retinaseg.team.services up`` (also ``retinaseg services up`` / ``make services``):

1. **PostgreSQL** — a cluster of its own in ``<state>/pg/data`` (``initdb`` once, then ``pg_ctl``),
   listening on TCP only (``RETINASEG_SERVICES_HOST``:``RETINASEG_PG_PORT``), with a role
   ``retinaseg`` whose password is ``RETINASEG_DB_PASSWORD`` and a database ``mlflow``. PostgreSQL
   refuses to run as root: as root, the cluster is owned by and runs as the ``postgres`` user (or
   ``nobody`` where there is none).
2. **S3** — ``RETINASEG_S3_ENDPOINT`` unset: moto's S3 emulator on loopback (``RETINASEG_S3_PORT``),
   in memory, gone when it stops: for tests and trying things out. Set it to a MinIO URL
   (``http://minio.example:9000``) or to ``aws`` for Amazon S3 itself: then nothing is started for
   S3 and ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` must be set. The bucket
   (``RETINASEG_S3_BUCKET``) is created when absent.
3. **MLflow** — ``mlflow server`` on ``RETINASEG_MLFLOW_PORT`` with the PostgreSQL backend store and
   artifacts proxied to ``s3://<bucket>/mlartifacts`` (clients need no S3 credentials for MLflow;
   only DVC talks to S3 directly). One uvicorn worker by default (``RETINASEG_MLFLOW_WORKERS``): with
   more, uvicorn's supervisor killed workers that were slow to import on a loaded machine.

``down`` stops all three (PostgreSQL's data stays in ``<state>``), ``status`` says what runs.
The state folder is ``RETINASEG_SERVICES_DIR`` (default ``<repo>/.services``, git-ignored):
pid files, logs, the database. Secrets come from the environment only; the defaults
(:data:`LOCAL_DB_PASSWORD`, :data:`LOCAL_S3_KEY`) are for services bound to loopback and are
refused for any other host.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_json, write_text
from retinaseg.core.repo import main_repo_root

LOCAL_DB_PASSWORD = "retinaseg-local"  # noqa: S105 - loopback-only default, refused elsewhere
LOCAL_S3_KEY = ("retinaseg-local", "retinaseg-local-secret")  # the emulator accepts any key
DB_USER = "retinaseg"
DB_NAME = "mlflow"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 300.0  # mlflow server's first start creates its tables; slow on a busy machine


class ServicesError(RetinasegError, RuntimeError):
    """A service that cannot be started, reached or stopped (names the service, the setting, the fix)."""


class PortTakenError(ServicesError):
    """A service's port is already taken by another program (choose another with its variable)."""


@dataclass(frozen=True)
class Settings:
    """Where the services live and listen; every field comes from the environment (see module doc)."""

    state_dir: Path
    host: str = "127.0.0.1"
    pg_port: int = 5433
    s3_port: int = 9000
    mlflow_port: int = 5050
    bucket: str = "retinaseg"
    s3_endpoint: str = ""  # "" = start the emulator; "aws" = Amazon S3; else an external endpoint URL
    db_password: str = field(default=LOCAL_DB_PASSWORD, repr=False)
    aws_key: str = field(default=LOCAL_S3_KEY[0], repr=False)
    aws_secret: str = field(default=LOCAL_S3_KEY[1], repr=False)
    region: str = "us-east-1"
    mlflow_workers: int = 1  # >1: uvicorn's supervisor kills workers slow to start on a busy machine

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, state_dir: str | Path | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        state = state_dir or env.get("RETINASEG_SERVICES_DIR") or main_repo_root() / ".services"
        endpoint = env.get("RETINASEG_S3_ENDPOINT", "").strip()
        host = env.get("RETINASEG_SERVICES_HOST", "127.0.0.1").strip()
        if endpoint and not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
            raise ServicesError(
                f"RETINASEG_S3_ENDPOINT={endpoint!r} is a real object store: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY to its credentials (the built-in defaults are for the loopback "
                "emulator only)"
            )
        password = env.get("RETINASEG_DB_PASSWORD", "")
        if host not in LOOPBACK and not password:
            raise ServicesError(
                f"RETINASEG_SERVICES_HOST={host!r} is not loopback: set RETINASEG_DB_PASSWORD "
                "(the built-in default password is only used on 127.0.0.1)"
            )
        return cls(
            state_dir=Path(state).resolve(),
            host=host,
            pg_port=_port(env, "RETINASEG_PG_PORT", 5433),
            s3_port=_port(env, "RETINASEG_S3_PORT", 9000),
            mlflow_port=_port(env, "RETINASEG_MLFLOW_PORT", 5050),
            mlflow_workers=_count(env, "RETINASEG_MLFLOW_WORKERS", 1),
            bucket=env.get("RETINASEG_S3_BUCKET", "retinaseg").strip() or "retinaseg",
            s3_endpoint=endpoint,
            db_password=password or LOCAL_DB_PASSWORD,
            aws_key=env.get("AWS_ACCESS_KEY_ID", "") if endpoint else LOCAL_S3_KEY[0],
            aws_secret=env.get("AWS_SECRET_ACCESS_KEY", "") if endpoint else LOCAL_S3_KEY[1],
            region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    SAVED = ("host", "pg_port", "s3_port", "mlflow_port", "bucket", "s3_endpoint")

    def save(self) -> None:
        """Record where the services listen (no secrets), for ``down``/``status`` and clients."""
        write_json(self.state_dir / "services.json", {k: getattr(self, k) for k in self.SAVED})

    def with_saved(self) -> Settings:
        """These settings with the ports/host/bucket recorded by the ``up`` that started the services."""
        path = self.state_dir / "services.json"
        if not path.is_file():
            return self
        saved = json.loads(path.read_text())
        return dataclasses.replace(self, **{k: saved[k] for k in self.SAVED if k in saved})

    # ---- derived
    @property
    def emulated_s3(self) -> bool:
        return not self.s3_endpoint

    @property
    def s3_url(self) -> str:
        """The S3 endpoint URL clients use ("" for Amazon S3 itself)."""
        if self.emulated_s3:
            return f"http://{_url_host(self.host)}:{self.s3_port}"
        return "" if self.s3_endpoint == "aws" else self.s3_endpoint

    @property
    def tracking_uri(self) -> str:
        return f"http://{_url_host(self.host)}:{self.mlflow_port}"

    @property
    def backend_store_uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database, without the password (passed as PGPASSWORD)."""
        return f"postgresql+psycopg://{DB_USER}@{_url_host(self.host)}:{self.pg_port}/{DB_NAME}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/mlartifacts"

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{self.bucket}/dvcstore"

    @property
    def pg_dir(self) -> Path:
        return self.state_dir / "pg"

    def s3_env(self) -> dict[str, str]:
        """What boto3 (MLflow's artifact proxy, DVC) needs to reach the store."""
        env = {
            "AWS_ACCESS_KEY_ID": self.aws_key,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.s3_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_url
        return env


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServicesError(f"{name}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def _count(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ServicesError(f"{name}={raw!r} is not a positive integer")
    return int(raw)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------------------------ PostgreSQL


def find_pg_binary(name: str) -> Path:
    """``name`` (initdb, pg_ctl, postgres) from PATH, else Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return Path(versions[-1])
    raise ServicesError(
        f"PostgreSQL's {name} is not in PATH nor in /usr/lib/postgresql/*/bin: install the PostgreSQL "
        "server (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16)"
    )


def _pg_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServicesError(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as"
    )


def _as_pg_user(cmd: list[str]) -> list[str]:
    user = _pg_user()
    if user is None:
        return cmd
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]


def _check_reachable_by(user: pwd.struct_passwd, path: Path) -> None:
    """Every folder above ``path`` must let ``user`` through (PostgreSQL runs as that user)."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & 0o001:
            raise ServicesError(
                f"PostgreSQL runs as user {user.pw_name} (it refuses root) and cannot enter {parent} "
                f"(mode {oct(st.st_mode & 0o777)}): put the state folder elsewhere "
                "(RETINASEG_SERVICES_DIR or --state-dir)"
            )


def _pg_data(s: Settings) -> Path:
    return s.pg_dir / "data"


def pg_running(s: Settings) -> bool:
    data = _pg_data(s)
    if not (data / "PG_VERSION").is_file():
        return False
    proc = subprocess.run(
        _as_pg_user([str(find_pg_binary("pg_ctl")), "-D", str(data), "status"]),
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


def start_postgres(s: Settings) -> str:
    """initdb (first time), start the cluster, create the MLflow database; returns a line for the user."""
    data = _pg_data(s)
    user = _pg_user()
    if not (data / "PG_VERSION").is_file():
        s.pg_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _check_reachable_by(user, s.pg_dir)
            os.chown(s.pg_dir, user.pw_uid, user.pw_gid)
        s.pg_dir.chmod(0o700)
        pwfile = s.pg_dir / "pwfile"
        pwfile.write_text(s.db_password + "\n")
        pwfile.chmod(0o600)
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        try:
            _run_checked(
                _as_pg_user(
                    [
                        str(find_pg_binary("initdb")),
                        "-D",
                        str(data),
                        "-U",
                        DB_USER,
                        f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                    ]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "postgresql.conf", "a") as fh:  # TCP only: no socket folder to own
            fh.write("\n# retinaseg services\nunix_socket_directories = ''\n")
    elif user is not None:
        _check_reachable_by(user, s.pg_dir)
    if pg_running(s):
        line = f"PostgreSQL: already running ({data})"
    else:
        _require_free_port(s.host, s.pg_port, "RETINASEG_PG_PORT", "PostgreSQL")
        _run_checked(
            _as_pg_user(
                [
                    str(find_pg_binary("pg_ctl")),
                    "-D",
                    str(data),
                    "-l",
                    str(s.pg_dir / "postgres.log"),
                    "-o",
                    f"-p {s.pg_port} -c listen_addresses={s.host}",
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT_S)),
                    "start",
                ]
            ),
            f"pg_ctl start (log: {s.pg_dir / 'postgres.log'})",
        )
        line = f"PostgreSQL: {s.host}:{s.pg_port} ({data})"
    _ensure_database(s)
    return line


def _ensure_database(s: Settings) -> None:
    import psycopg  # the team extra: only the services need it

    try:
        with psycopg.connect(
            host=s.host,
            port=s.pg_port,
            user=DB_USER,
            password=s.db_password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DB_NAME}")
    except psycopg.OperationalError as exc:
        raise ServicesError(
            f"PostgreSQL at {s.host}:{s.pg_port} refused user {DB_USER}: {str(exc).strip()} "
            "(is RETINASEG_DB_PASSWORD the password the cluster was created with?)"
        ) from None


def stop_postgres(s: Settings) -> str:
    data = _pg_data(s)
    if not pg_running(s):
        return "PostgreSQL: not running"
    _run_checked(
        _as_pg_user([str(find_pg_binary("pg_ctl")), "-D", str(data), "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )
    return "PostgreSQL: stopped"


# ------------------------------------------------------------------------------ background processes


def _pidfile(s: Settings, name: str) -> Path:
    return s.state_dir / f"{name}.pid"


def _logfile(s: Settings, name: str) -> Path:
    return s.state_dir / "logs" / f"{name}.log"


def _alive_pid(s: Settings, name: str) -> int | None:
    path = _pidfile(s, name)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


def _spawn(s: Settings, name: str, cmd: list[str], env: dict[str, str]) -> int:
    log = _logfile(s, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    write_text(_pidfile(s, name), f"{proc.pid}\n")
    return proc.pid


def _stop_process(s: Settings, name: str, label: str) -> str:
    pid = _alive_pid(s, name)
    if pid is None:
        _pidfile(s, name).unlink(missing_ok=True)
        return f"{label}: not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # the session it leads: uvicorn/gunicorn workers too
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid_exists(pid):
        time.sleep(0.2)
        _reap(pid)
    if _pid_exists(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    _pidfile(s, name).unlink(missing_ok=True)
    return f"{label}: stopped"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own child not yet reaped) counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def _require_free_port(host: str, port: int, variable: str, service: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        if sock.connect_ex((host, port)) == 0:
            raise PortTakenError(
                f"{service}: {host}:{port} is already taken by another program; "
                f"choose another port with {variable}"
            )


def _wait_http(url: str, what: str, log: Path, pid: int | None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not _pid_exists(pid):
            raise ServicesError(f"{what} exited while starting; its log: {log}\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback URL
                if resp.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServicesError(f"{what} did not answer {url} within {timeout:.0f} s; its log: {log}\n{_tail(log)}")


def _tail(log: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    return ""


def _run_checked(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServicesError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()}")


def _venv_tool(name: str) -> str:
    """A console script of this environment (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


# --------------------------------------------------------------------------------------------- S3


def start_s3(s: Settings) -> str:
    if s.emulated_s3:
        pid = _alive_pid(s, "s3")
        if pid is None:
            _require_free_port(s.host, s.s3_port, "RETINASEG_S3_PORT", "the S3 emulator")
            pid = _spawn(
                s,
                "s3",
                [sys.executable, "-m", "moto.server", "-H", s.host, "-p", str(s.s3_port)],
                {**os.environ, **s.s3_env()},
            )
            _wait_http(f"{s.s3_url}/moto-api/", "the S3 emulator (moto)", _logfile(s, "s3"), pid)
        line = f"S3 (moto emulator, in memory): {s.s3_url}"
    else:
        line = f"S3: {s.s3_url or 'Amazon S3'}"
    ensure_bucket(s)
    return f"{line}, bucket {s.bucket}"


def s3_client(s: Settings):  # noqa: ANN201 - a boto3 client
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s.s3_url or None,
        aws_access_key_id=s.aws_key,
        aws_secret_access_key=s.aws_secret,
        region_name=s.region,
    )


def ensure_bucket(s: Settings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(s)
    try:
        client.head_bucket(Bucket=s.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise ServicesError(f"S3 bucket {s.bucket} at {s.s3_url or 'Amazon S3'}: {exc}") from None
        client.create_bucket(Bucket=s.bucket)
    except BotoCoreError as exc:
        raise ServicesError(
            f"cannot reach S3 at {s.s3_url or 'Amazon S3'} ({exc}); check RETINASEG_S3_ENDPOINT"
        ) from None


# ------------------------------------------------------------------------------------------ MLflow


def start_mlflow(s: Settings) -> str:
    pid = _alive_pid(s, "mlflow")
    if pid is None:
        _require_free_port(s.host, s.mlflow_port, "RETINASEG_MLFLOW_PORT", "mlflow server")
        env = {
            **os.environ,
            **s.s3_env(),
            "MLFLOW_BACKEND_STORE_URI": s.backend_store_uri,  # not on the command line: ps shows that
            "PGPASSWORD": s.db_password,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        pid = _spawn(
            s,
            "mlflow",
            [
                _venv_tool("mlflow"),
                "server",
                "--host",
                s.host,
                "--port",
                str(s.mlflow_port),
                "--artifacts-destination",
                s.artifacts_destination,
                "--serve-artifacts",
                "--workers",
                str(s.mlflow_workers),
            ],
            env,
        )
    _wait_http(f"{s.tracking_uri}/health", "mlflow server", _logfile(s, "mlflow"), pid)
    return f"MLflow: {s.tracking_uri} (PostgreSQL store, artifacts in {s.artifacts_destination})"


# ----------------------------------------------------------------------------------- up/down/status


def up(s: Settings) -> list[str]:
    """Start PostgreSQL, S3 (or check the external one) and ``mlflow server``; returns status lines."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    # ignored by git whatever the repository's .gitignore says: `dvc exp run` snapshots untracked
    # files into the experiment and restores them, which broke a running cluster's file permissions
    write_text(s.state_dir / ".gitignore", "*\n")
    if _pg_user() is not None:
        s.state_dir.chmod(0o711)  # PostgreSQL's user must pass through to <state>/pg
    lines = [start_postgres(s), start_s3(s), start_mlflow(s)]
    s.save()
    return lines


def down(s: Settings) -> list[str]:
    """Stop ``mlflow server``, the S3 emulator and PostgreSQL (the database stays in the state folder)."""
    return [
        _stop_process(s, "mlflow", "MLflow"),
        _stop_process(s, "s3", "S3 emulator") if s.emulated_s3 else "S3: external, left alone",
        stop_postgres(s),
    ]


def status(s: Settings) -> tuple[bool, list[str]]:
    """(all running?, one line per service)."""
    lines, ok = [], True
    running = pg_running(s)
    ok &= running
    lines.append(f"PostgreSQL: {'running on ' + s.host + ':' + str(s.pg_port) if running else 'not running'}")
    if s.emulated_s3:
        pid = _alive_pid(s, "s3")
        ok &= pid is not None
        lines.append(f"S3 emulator: {'running on ' + s.s3_url if pid else 'not running'}")
    else:
        lines.append(f"S3: external ({s.s3_url or 'Amazon S3'})")
    pid = _alive_pid(s, "mlflow")
    healthy = pid is not None and _healthy(f"{s.tracking_uri}/health")
    ok &= healthy
    lines.append(f"MLflow: {'running on ' + s.tracking_uri if healthy else 'not running'}")
    return ok, lines


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback URL
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def client_exports(s: Settings) -> list[str]:
    """The shell lines that point a clone (MLflow, DVC) at these services; secrets set by the user
    are not echoed, only named."""
    lines = [f"export MLFLOW_TRACKING_URI={s.tracking_uri}"]
    if s.emulated_s3:
        lines.append(f"export AWS_ACCESS_KEY_ID={s.aws_key} AWS_SECRET_ACCESS_KEY={s.aws_secret}")
    else:
        lines.append("# DVC uses your AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the remote")
    return lines


def dvc_remote_commands(s: Settings, name: str = "team") -> list[str]:
    """``dvc remote add`` lines for this store (``--local``: the loopback endpoint is per machine)."""
    lines = [f"dvc remote add --local --force -d {name} {s.dvc_remote_url}"]
    if s.s3_url:
        lines.append(f"dvc remote modify --local {name} endpointurl {s.s3_url}")
    return lines


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m retinaseg.team.services",
        description="Start, stop or check the team services: PostgreSQL, S3, mlflow server.",
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir",
        default=None,
        help="pid files, logs, the database (default: $RETINASEG_SERVICES_DIR, else .services)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(state_dir=args.state_dir)
        if args.action != "up":
            settings = settings.with_saved()
        if args.action == "up":
            for line in up(settings):
                print(line)
            print("\n# point this shell (and any clone on this machine) at them:")
            for line in client_exports(settings) + dvc_remote_commands(settings):
                print(line)
            return 0
        if args.action == "down":
            for line in down(settings):
                print(line)
            return 0
        ok, lines = status(settings)
        for line in lines:
            print(line)
        return 0 if ok else 1
    except RetinasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
