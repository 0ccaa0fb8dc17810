"""Compare the evaluated models: one Markdown table, a metrics JSON and the champion choice.

Reads ``reports/metrics/<model>.json`` (from evaluate) and ``reports/training/<model>.json`` (from
train), ranks the models on ``compare.metric`` (a score of the FOV block, at the val-chosen threshold),
writes ``reports/comparison.md``, ``reports/comparison.json`` and ``models/champion.json``, and
returns the choice. Registering it (alias ``@champion``) is :mod:`retinaseg.registry`'s job, called by
the compare stage. It never touches README.md: ``scripts/update_readme.py`` copies the table there on
request.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinaseg.core.config import CompareMetric, ConfigError, Params
from retinaseg.core.fileio import write_json, write_text
from retinaseg.evaluation.reporting import markdown_table

RANKABLE: tuple[str, ...] = typing.get_args(CompareMetric)  # the one list, in the config


@dataclass(frozen=True)
class Column:
    """A table column: header, key in the flat row, decimals, and which direction is better."""

    header: str
    key: str
    digits: int
    higher_is_better: bool


COLUMNS: tuple[Column, ...] = (
    Column("F1", "f1", 4, True),
    Column("IoU", "iou", 4, True),
    Column("ROC-AUC", "auc_roc", 4, True),
    Column("MCC", "mcc", 4, True),
    Column("Se", "sensitivity", 4, True),
    Column("Sp", "specificity", 4, True),
    Column("F1 (whole image)", "image_f1", 4, True),
    Column("Params (M)", "params_m", 2, False),
)
# Training time and inference latency differ from run to run: they are in MLflow (and the
# benchmarks), never in these DVC-tracked files, so two identical runs give identical bytes.

HEADLINE = ("f1", "auc_roc", "mcc")  # per model in comparison.json: what `dvc exp show` lists


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_reports(metrics_dir: str | Path, training_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{model: {"metrics": ..., "training": ... or {}}}`` for every ``<metrics_dir>/<model>.json``."""
    metrics_dir, training_dir = Path(metrics_dir), Path(training_dir)
    files = sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{metrics_dir}: no metrics files (run the evaluate stage first)")
    reports = {}
    for path in files:
        metrics = _read_json(path)
        if not isinstance(metrics.get("fov"), dict):
            raise ValueError(f"{path}: no 'fov' block; not an evaluate metrics file")
        train_path = training_dir / path.name
        reports[path.stem] = {
            "metrics": metrics,
            "training": _read_json(train_path) if train_path.is_file() else {},
        }
    return reports


def flat_row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    """The numbers one model contributes to the comparison (``None`` where unknown)."""
    m, t = report["metrics"], report["training"]
    row: dict[str, Any] = {"model": name}
    row.update({k: m["fov"].get(k) for k in RANKABLE})
    row["image_f1"] = m.get("image", {}).get("f1")
    row["threshold"] = m.get("threshold")
    n_params = t.get("n_params")
    row["params_m"] = round(n_params / 1e6, 4) if isinstance(n_params, int | float) else None
    return row


def rank_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows sorted best-first on ``metric`` (missing values last, then by name)."""
    if metric not in RANKABLE:
        raise ConfigError(f"compare.metric is {metric!r}; expected one of {', '.join(RANKABLE)}")
    return sorted(rows, key=lambda r: (r[metric] is None, -(r[metric] or 0.0), r["model"]))


def comparison_markdown(rows: list[dict[str, Any]], metric: str, datasets: list[str]) -> str:
    """The comparison table with a protocol line; best value per column in bold."""
    headers = ["Model", *(c.header for c in COLUMNS)]
    cells = [[r["model"], *(r[c.key] for c in COLUMNS)] for r in rows]
    bold = {i + 1: c.higher_is_better for i, c in enumerate(COLUMNS)}
    table = markdown_table(headers, cells, digits=[0, *(c.digits for c in COLUMNS)], bold_best=bold)
    ranked = (
        next(c.header for c in COLUMNS if c.key == metric) if metric in {c.key for c in COLUMNS} else metric
    )
    protocol = (
        f"Dataset: {', '.join(datasets) or 'unknown'}, test split. Scores are pooled over the pixels "
        "inside the field of view (FOV), at the threshold chosen on the val split (max pooled F1); "
        '"F1 (whole image)" pools every pixel. '
        f"Sorted by {ranked}; the best value per column is bold "
        "(lowest for params). Training times and latencies are in MLflow and `make bench`."
    )
    return f"{table}\n\n{protocol}\n"


def compare_models(
    params: Params,
    metrics_dir: str | Path = "reports/metrics",
    training_dir: str | Path = "reports/training",
    out_md: str | Path = "reports/comparison.md",
    out_json: str | Path = "reports/comparison.json",
    champion_path: str | Path = "models/champion.json",
    models_dir: str | Path = "models",
) -> dict[str, Any]:
    """Write the comparison and the champion file (the local choice, before any registration).

    Returns the champion record ``{name, model_uri, metric, value, threshold}``; the compare stage
    hands it to :func:`retinaseg.registry.register_and_maybe_promote`. Every file written here is a
    DVC output: only values that are the same for the same code, params and data (no run ids,
    registry versions or durations).
    """
    metric = params.compare.metric
    reports = load_reports(metrics_dir, training_dir)
    rows = rank_rows([flat_row(name, rep) for name, rep in reports.items()], metric)
    best = rows[0]
    if best[metric] is None:
        raise ValueError(f"no model has a value for compare.metric {metric!r} in {metrics_dir}")
    datasets = sorted(
        {str(rep["metrics"].get("protocol", {}).get("dataset", "unknown")) for rep in reports.values()}
    )
    write_text(out_md, comparison_markdown(rows, metric, datasets))
    write_json(
        out_json,
        {
            "metric": metric,
            "champion": best["model"],
            "champion_value": best[metric],
            # the headline: a handful of numbers per model, the only metrics `dvc exp show` lists
            # (the full numbers are in reports/metrics/*.json, `dvc metrics show reports/metrics`)
            "models": {
                r["model"]: {"rank": i + 1, **{k: r[k] for k in dict.fromkeys((metric, *HEADLINE))}}
                | {"threshold": r["threshold"]}
                for i, r in enumerate(rows)
            },
        },
    )
    name = best["model"]
    model_dir = Path(models_dir) / name
    champion: dict[str, Any] = {
        "name": name,
        "model_uri": model_dir.as_posix(),
        "metric": metric,
        "value": best[metric],
        "threshold": best["threshold"],
    }
    write_json(champion_path, champion)
    return champion
