"""Sweeps over models × losses × seeds as Ray Tune trials, each a real training logged to MLflow.

``python -m retinaseg.team.sweep --models unet,attention_unet --losses bce_dice,focal_dice --seeds 1,2``
runs one trial per combination (a grid) on the local machine (``ray.init()``), or on a Ray cluster
with ``--address ray://head:10001`` (or ``auto`` on a cluster node). Each trial is
:func:`retinaseg.training.engine.train_model` on the processed data (``data/processed``, from
``dvc pull`` or ``dvc repro preprocess``: on a cluster, every node needs it at the same path) with
``params.yaml`` plus the trial's ``base.seed``, ``train.loss.name``, the model, and any ``--set
key=value``. Each trial asks Ray for ``--cpus-per-trial`` CPUs and sets ``RETINASEG_JOBS`` to the
number of trials that fit on its node, so its torch threads are its share of the cores
(:mod:`retinaseg.core.budget`).

Every trial logs a run to the MLflow store (``MLFLOW_TRACKING_URI``; on a cluster it must be the
shared ``http://`` server, or the runs would land on each node's disk) in the experiment
``<mlflow.experiment>-sweeps``, tagged ``sweep`` and ``trial``. The result table (``results.csv`` and
``results.md``, best first by validation Dice) goes to ``--out`` (default ``reports/sweeps/<name>``),
with the ``dvc exp run -S …`` command that reproduces the best trial in the pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retinaseg.core.budget import JOBS_ENV, available_cores
from retinaseg.core.config import MODEL_NAMES, Params, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_text
from retinaseg.core.mlflow_store import tracking_uri
from retinaseg.tracking import MlflowTrainingLogger

LOSSES = ("bce_dice", "focal_dice", "focal_tversky")
METRIC = "best_val_dice"
COLUMNS = (
    "model",
    "loss",
    "seed",
    METRIC,
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "status",
    "mlflow_run_id",
)


class SweepError(RetinasegError, ValueError):
    """A sweep that cannot start (names the option and the problem)."""


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep: the grid, the params file and the fixed overrides, where the data is."""

    models: tuple[str, ...]
    losses: tuple[str, ...]
    seeds: tuple[int, ...]
    params_path: Path
    processed_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value, applied to every trial
    name: str = "sweep"
    cpus_per_trial: int = 1

    def grid(self) -> list[dict[str, Any]]:
        return [
            {"model": m, "loss": loss, "seed": s}
            for m, loss, s in itertools.product(self.models, self.losses, self.seeds)
        ]

    def trial_overrides(self, trial: dict[str, Any]) -> dict[str, Any]:
        """The ``-S`` overrides of one trial (the model is the pipeline stage, not a param)."""
        return {**self.overrides, "base.seed": int(trial["seed"]), "train.loss.name": trial["loss"]}

    def check(self) -> None:
        for model in self.models:
            if model not in MODEL_NAMES:
                raise SweepError(f"--models: unknown model {model!r} (choose from {', '.join(MODEL_NAMES)})")
        for loss in self.losses:
            if loss not in LOSSES:
                raise SweepError(f"--losses: unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
        if not (self.models and self.losses and self.seeds):
            raise SweepError("--models, --losses and --seeds each need at least one value")
        if not (self.processed_dir / "train").is_dir():
            raise SweepError(
                f"--processed {self.processed_dir}: no train/ folder; run `dvc pull data/processed` "
                "or `dvc repro preprocess` first"
            )
        for trial in self.grid():  # every trial's params are valid before anything starts
            load_params(self.params_path, self.trial_overrides(trial))


class _SweepLogger(MlflowTrainingLogger):
    """The train stage's MLflow run, tagged with the sweep and trial, remembering its run id."""

    def __init__(self, sweep: str, trial: str) -> None:
        self.sweep, self.trial, self.run_id = sweep, trial, ""

    @contextlib.contextmanager
    def run(self, params: Params, model_name: str, data_hash: str, device: str) -> Iterator[str | None]:
        import mlflow

        with super().run(params, model_name, data_hash, device) as run_id:
            mlflow.set_tags({"sweep": self.sweep, "trial": self.trial})
            self.run_id = run_id or ""
            yield run_id


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One trial (a Ray Tune function trainable; also callable directly): train, report, return the row."""
    from retinaseg.training.engine import train_model  # torch: imported in the trial's process

    spec: SweepSpec = config["spec"]
    trial = {k: config[k] for k in ("model", "loss", "seed")}
    os.environ[JOBS_ENV] = str(max(1, available_cores() // spec.cpus_per_trial))
    if config.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    overrides = {**spec.trial_overrides(trial), "mlflow.experiment": config["experiment"]}
    params = load_params(spec.params_path, overrides)
    label = f"{trial['model']}-{trial['loss']}-seed{trial['seed']}"
    logger = _SweepLogger(spec.name, label)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"retinaseg-trial-{label}-") as work:
        summary = train_model(
            params,
            trial["model"],
            processed_dir=spec.processed_dir,
            out_dir=Path(work) / "model",
            report_dir=Path(work) / "reports",
            checkpoint_dir=Path(work) / "checkpoints",
            logger=logger,
        )
    row = {
        **trial,
        METRIC: float(summary[METRIC]),
        "best_epoch": int(summary["best_epoch"]),
        "epochs_run": int(summary["epochs_run"]),
        "train_seconds": round(time.monotonic() - start, 1),
        "status": "done",
        "mlflow_run_id": logger.run_id,
    }
    with contextlib.suppress(ImportError, RuntimeError):  # not under Ray Tune: nothing to report to
        from ray import tune

        if tune.get_context().get_trial_id() is not None:
            tune.report({k: v for k, v in row.items() if k not in ("model", "loss", "seed")})
    return row


def run_sweep(
    spec: SweepSpec, address: str | None = None, num_cpus: int | None = None
) -> list[dict[str, Any]]:
    """Run the grid on Ray Tune; returns the rows, best first (failed trials last, status failed)."""
    import ray
    from ray import tune

    spec.check()
    uri = tracking_uri()
    if address and not uri.startswith(("http://", "https://")):
        raise SweepError(
            f"--address {address}: trials on other machines must log to a shared MLflow server, but "
            f"MLFLOW_TRACKING_URI is {uri!r}; set it to the server (`retinaseg services up` prints it)"
        )
    base_params = load_params(spec.params_path)
    experiment = f"{base_params.mlflow.experiment}-sweeps"
    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = (
            {"address": address} if address else {"num_cpus": num_cpus or available_cores()}
        )
        ray.init(**init, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        trainable = tune.with_resources(run_trial, {"cpu": spec.cpus_per_trial})
        space = {
            "spec": spec,
            "tracking_uri": uri,
            "experiment": experiment,
            "model": tune.grid_search(list(spec.models)),
            "loss": tune.grid_search(list(spec.losses)),
            "seed": tune.grid_search(list(spec.seeds)),
        }
        storage = Path(tempfile.mkdtemp(prefix="retinaseg-ray-"))
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max"),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0),
        )
        results = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    rows = []
    for result in results:
        cfg = result.config or {}
        row = {k: cfg.get(k) for k in ("model", "loss", "seed")}
        if result.error is not None or METRIC not in (result.metrics or {}):
            row.update({METRIC: float("nan"), "status": f"failed: {str(result.error).splitlines()[0][:200]}"})
        else:
            row.update({k: result.metrics.get(k) for k in COLUMNS if k not in row})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["status"] != "done", -(r[METRIC] if r["status"] == "done" else 0)))


def reproduce_command(spec: SweepSpec, row: dict[str, Any]) -> str:
    """The ``dvc exp run`` that trains and evaluates this trial's model in the pipeline."""
    sets = " ".join(f"-S {shlex.quote(f'{k}={v}')}" for k, v in spec.trial_overrides(row).items())
    name = f"{spec.name}-{row['model']}-{row['loss']}-seed{row['seed']}".replace("_", "-")
    return f"dvc exp run -n {name} {sets} evaluate@{row['model']}"


def write_table(rows: list[dict[str, Any]], spec: SweepSpec, out_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md`` (with the best trial's ``dvc exp run``) in ``out_dir``."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    write_text(csv_path, frame.to_csv(index=False))
    lines = [
        f"# Sweep {spec.name}: {len(rows)} trials, ranked by validation Dice ({METRIC})",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [
            f"{row.get(c):.4f}" if c == METRIC and row.get("status") == "done" else str(row.get(c, ""))
            for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    done = [r for r in rows if r["status"] == "done"]
    if done:
        lines += [
            "",
            "Reproduce the best trial in the pipeline:",
            "",
            "```",
            reproduce_command(spec, done[0]),
            "```",
        ]
    write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _csv(text: str, cast: type = str) -> tuple:
    try:
        return tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise SweepError(f"{text!r}: expected a comma-separated list of {cast.__name__}") from None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m retinaseg.team.sweep",
        description="Models × losses × seeds as Ray Tune trials, each a real training logged to MLflow.",
    )
    parser.add_argument("--models", default="unet", help="comma-separated (default: unet)")
    parser.add_argument("--losses", default="bce_dice", help=f"comma-separated: {', '.join(LOSSES)}")
    parser.add_argument("--seeds", default="42", help="comma-separated integers")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a params override for every trial"
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--processed", default="data/processed", help="the preprocess stage's output")
    parser.add_argument(
        "--address", default=None, help="a Ray cluster (ray://head:10001, or auto); default: local"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    parser.add_argument("--cpus-per-trial", type=int, default=1)
    parser.add_argument("--name", default=None, help="the sweep's name (default: sweep-<UTC time>)")
    parser.add_argument("--out", default=None, help="result table folder (default: reports/sweeps/<name>)")
    args = parser.parse_args(argv)
    try:
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise SweepError(f"--set {item!r}: expected KEY=VALUE")
            import yaml

            overrides[key.strip()] = yaml.safe_load(value)
        name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S", time.gmtime())
        spec = SweepSpec(
            models=_csv(args.models),
            losses=_csv(args.losses),
            seeds=_csv(args.seeds, int),
            params_path=Path(args.params).resolve(),
            processed_dir=Path(args.processed).resolve(),
            overrides=overrides,
            name=name,
            cpus_per_trial=args.cpus_per_trial,
        )
        rows = run_sweep(spec, args.address, args.num_cpus)
        out = Path(args.out) if args.out else Path("reports") / "sweeps" / name
        csv_path, md_path = write_table(rows, spec, out)
    except RetinasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(md_path.read_text(), end="")
    print(f"\n(table: {csv_path}, {md_path}; runs in MLflow at {tracking_uri()})")
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
