"""MLflow tracking: where the store is, one run per training, tags, params, metrics, the model.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<main repo>/mlflow.db`` (MLflow 3
refuses the plain ``./mlruns`` file store). ``dvc exp run --temp`` / ``--queue`` execute in a
temporary copy at ``<repo>/.dvc/tmp/exps/<tmpdir>/`` where git-ignored files such as
``mlflow.db`` are absent; :func:`main_repo_root` resolves such a path back to ``<repo>`` (DVC also
exports ``DVC_ROOT`` pointing at the parent repository for those runs), so queued experiments
land in the same store as ``dvc repro``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retinaseg.config import Params

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_DVC_EXP_PARTS = (".dvc", "tmp", "exps")
_MODEL_FILES = ("model.json", "model.pt")


class TrackingError(ValueError):
    """An MLflow URI or run that cannot be used (names the URI and the problem)."""


def main_repo_root(start: str | Path | None = None) -> Path:
    """The main repository root for ``start`` (default: the current directory).

    ``<repo>/.dvc/tmp/exps/<tmp>/...`` → ``<repo>`` (a DVC temp experiment workspace); otherwise
    the nearest ancestor holding ``.dvc`` or ``.git``; otherwise ``start`` itself.
    """
    path = Path(start if start is not None else os.getcwd()).resolve()
    parts = path.parts
    n = len(_DVC_EXP_PARTS)
    for i in range(len(parts) - n + 1):
        if parts[i : i + n] == _DVC_EXP_PARTS:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return path


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<main repo root>/mlflow.db``.

    Inside a DVC stage, ``DVC_ROOT`` (the parent repository, also for temp/queued experiments)
    is the starting point; else the current directory.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    dvc_root = os.environ.get("DVC_ROOT")
    start = dvc_root if dvc_root and Path(dvc_root).is_dir() else None
    return f"sqlite:///{(main_repo_root(start) / 'mlflow.db').as_posix()}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local sqlite store (``<dir>/mlartifacts/<experiment>``), not in the cwd."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None  # a tracking server decides for itself
    db = Path(uri[len(prefix) :])
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri()


def configure(params: Params) -> str:
    """Point MLflow at :func:`tracking_uri` and select ``params.mlflow.experiment``; returns the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = params.mlflow.experiment
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created meanwhile by another run
            client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    mlflow.set_experiment(name)
    return uri


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` in ``cwd``, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def run_tags(params: Params, model_name: str, data_hash: str, device: str) -> dict[str, str]:
    """The tags every training run carries."""
    return {
        "model": model_name,
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_stage": os.environ.get("DVC_STAGE", f"train@{model_name}"),
        "data_source": params.data.source,
        "data_hash": data_hash,
        "device": device,
    }


def run_params(params: Params, model_name: str) -> dict[str, str]:
    """Every param the train stage reads, flattened, as MLflow-sized strings."""
    flat = params.flat("base", "train", "augment", "preprocess", f"models.{model_name}")
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in flat.items()}


@contextlib.contextmanager
def start_run(params: Params, model_name: str, data_hash: str, device: str) -> Iterator[Any]:
    """An MLflow run named after the model, with tags and params logged; yields the active run."""
    import mlflow

    configure(params)
    with mlflow.start_run(run_name=model_name, tags=run_tags(params, model_name, data_hash, device)) as run:
        mlflow.log_params(run_params(params, model_name))
        yield run


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """Log one epoch's metrics with ``step=epoch`` to the active run."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(epoch))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file or a folder's files to the active run."""
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_torch_model(model: Any, model_dir: str | Path, input_size: int = 64) -> str:
    """Log ``model`` with ``mlflow.pytorch`` as ``model``, carrying model.json + model.pt as extra files.

    The extra files let :func:`download_model_dir` rebuild the model safely from the state dict
    (``weights_only``) instead of unpickling the MLflow-pickled module. Returns the model URI.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    model_dir = Path(model_dir)
    was_training = model.training
    model = model.eval()
    example = np.zeros((1, 3, input_size, input_size), dtype=np.float32)
    with torch.no_grad():
        param = next(model.parameters())
        output = model(torch.from_numpy(example).to(param.device)).float().cpu().numpy()
    signature = infer_signature(example, output)
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        extra_files=[str(model_dir / f) for f in _MODEL_FILES],
        # explicit requirements: MLflow's inference re-imports the model in a subprocess (slow)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "retinaseg"],
        # MLflow 3's default "pt2" (torch.export) specialises the batch size to the example's;
        # the pickled module keeps any batch and image size (it needs retinaseg importable)
        serialization_format="pickle",
    )
    model.train(was_training)
    return info.model_uri


def download_model_dir(uri: str, dst: str | Path | None = None) -> Path:
    """Download a ``models:/…``/``runs:/…`` model's artifacts; return the folder with model.json + model.pt.

    The model files may sit anywhere in the downloaded tree (``extra_files/`` of an
    ``mlflow.pytorch`` model, ``artifacts/model_dir/`` of the pyfunc model); the shallowest
    folder holding both wins.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="retinaseg-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        store = tracking_uri()
        raise TrackingError(f"{uri}: cannot download the model from {store} ({exc.message})") from None
    candidates = sorted(
        (p.parent for p in local.rglob(_MODEL_FILES[0]) if (p.parent / _MODEL_FILES[1]).is_file()),
        key=lambda p: (len(p.parts), str(p)),
    )
    if not candidates:
        raise TrackingError(f"{uri}: the downloaded artifacts hold no folder with {' + '.join(_MODEL_FILES)}")
    return candidates[0]


def latest_run_id(model_name: str, experiment: str = "retinaseg") -> str | None:
    """The id of the most recent run tagged ``model=<model_name>`` in ``experiment`` (None if none)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.model = '{model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None
