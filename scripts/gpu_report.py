"""Gather one GPU run (scripts/gpu_check.sh) into reports/benchmarks/gpu.json and print its table.

Reads, from the working tree the pipeline just ran in: params.yaml (the recipe as applied), the
MLflow training runs (train seconds, peak device memory, data-wait share: values that differ per run
live in MLflow, never in DVC outputs), reports/training/<model>.csv (epochs run),
reports/metrics/<model>.json (FOV F1 / AUC on the DRIVE test set), and the benchmark JSONs the
script wrote (inference fp32 vs AMP, data loader). Missing pieces are recorded as null with the
reason in ``notes``, never invented.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from retinaseg.core.budget import loader_workers
from retinaseg.core.config import MODEL_NAMES, load_params
from retinaseg.core.fileio import write_json


def machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": (
            round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None
        ),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }


def training_runs(experiment: str) -> dict[str, dict[str, float]]:
    """The newest MLflow training run's metrics per model (``{}`` when MLflow has none)."""
    import mlflow

    from retinaseg.tracking import use_store

    use_store()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    out: dict[str, dict[str, float]] = {}
    for _, row in runs.iterrows():
        model = row.get("tags.model")
        if not isinstance(model, str) or model in out or pd.isna(row.get("metrics.train_seconds")):
            continue
        out[model] = {
            k.removeprefix("metrics."): float(v)
            for k, v in row.items()
            if k.startswith("metrics.") and pd.notna(v)
        }
    return out


def _load(path: Path, notes: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"no {path}: the {what} benchmark did not run")
        return None
    return json.loads(path.read_text())


def step_peak_memory(throughput: dict[str, Any] | None) -> dict[str, float]:
    """Peak GPU memory (MB) per model of a training step as the recipe trains it (CUDA, mixed
    precision, channels-last, no compile), from benchmarks/train_throughput.py."""
    out: dict[str, float] = {}
    for r in (throughput or {}).get("results", []):
        as_trained = r.get("precision") != "fp32" and r.get("channels_last") and not r.get("compile")
        if r.get("device") == "cuda" and as_trained and r.get("peak_mem_mb") is not None:
            out.setdefault(r["model"], r["peak_mem_mb"])
    return out


def loader_stall_share(loader: dict[str, Any] | None, workers: int) -> float | None:
    """The data-loader benchmark's stall share at this run's worker count (the nearest measured)."""
    rows = (loader or {}).get("loader", [])
    if not rows:
        return None
    return min(rows, key=lambda r: abs(r["workers"] - workers))["stall_share"]


def per_model(
    params: Any,
    runs: dict[str, dict[str, float]],
    notes: list[str],
    step_memory: dict[str, float] | None = None,
    stall: float | None = None,
) -> list[dict[str, Any]]:
    step_memory = step_memory or {}
    rows = []
    for model in MODEL_NAMES:
        metrics_path = Path("reports/metrics") / f"{model}.json"
        history_path = Path("reports/training") / f"{model}.csv"
        if not metrics_path.is_file():
            notes.append(f"{model}: no {metrics_path} (the pipeline did not evaluate it)")
            continue
        fov = json.loads(metrics_path.read_text())["fov"]
        epochs = len(pd.read_csv(history_path)) if history_path.is_file() else None
        run = runs.get(model, {})
        seconds = run.get("train_seconds")
        samples = params.train.samples_per_epoch
        images_per_s = round(epochs * samples / seconds, 1) if seconds and epochs and samples else None
        rows.append(
            {
                "model": model,
                "params_m": round(run["n_params"] / 1e6, 2) if "n_params" in run else None,
                "epochs": epochs,
                "train_seconds": round(seconds, 1) if seconds else None,
                "train_images_per_s": images_per_s,
                # training-step benchmark at the recipe's sizes (the pipeline's own run logs no memory)
                "peak_gpu_memory_mb": run.get("peak_device_memory_mb", step_memory.get(model)),
                "data_wait_share": run.get("data_wait_share", stall),
                "fov_f1": round(fov["f1"], 4),
                "fov_auc_roc": round(fov["auc_roc"], 4),
                "fov_mcc": round(fov["mcc"], 4),
            }
        )
        if not run:
            notes.append(f"{model}: no MLflow training run found: train seconds/memory unknown")
    return rows


def inference_rows(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """End-to-end ms per DRIVE-size image per model and precision, from benchmarks/inference_latency.py."""
    if not path.is_file():
        notes.append(f"no {path}: inference benchmark did not run")
        return []
    data = json.loads(path.read_text())
    keep = ("model", "kind", "device", "precision", "channels_last", "batch", "height", "width")
    keep += ("ms_per_image",)
    return [{k: r.get(k) for k in keep if k in r} for r in data.get("rows", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path(".gpu-run"))
    parser.add_argument("--pipeline-seconds", type=float, default=None)
    parser.add_argument("--total-seconds", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="a CPU smoke run: not a measurement")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/gpu.json"))
    args = parser.parse_args(argv)

    params = load_params("params.yaml")
    notes: list[str] = []
    runs = training_runs(params.mlflow.experiment)
    loader = _load(args.run_dir / "data_loader.json", notes, "data-loader")
    throughput = _load(args.run_dir / "train_throughput.json", notes, "training-step")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = loader_workers(params.base.workers, device, cores=os.cpu_count() or 1)
    models = per_model(params, runs, notes, step_peak_memory(throughput), loader_stall_share(loader, workers))
    report = {
        "kind": "smoke (CPU, tiny settings: not a measurement)" if args.smoke else "gpu",
        "machine": machine(),
        "recipe": "recipes/drive-gpu.yaml",
        "settings": {
            "preprocess.size": params.preprocess.size,
            "augment.crop_size": params.augment.crop_size,
            "train.batch_size": params.train.batch_size,
            "train.samples_per_epoch": params.train.samples_per_epoch,
            "train.epochs": params.train.epochs,
            "train.amp": params.train.amp,
            "train.channels_last": params.train.channels_last,
            "base.workers": params.base.workers,
            "models.unet": f"{params.models.unet.base_channels}x{params.models.unet.depth}",
            "models.attention_unet": (
                f"{params.models.attention_unet.base_channels}x{params.models.attention_unet.depth}"
            ),
        },
        "pipeline_seconds": args.pipeline_seconds,
        "total_seconds": args.total_seconds,
        "train_seconds_all_models": round(sum(m["train_seconds"] or 0 for m in models), 1),
        "models": models,
        "inference": inference_rows(args.run_dir / "inference.json", notes),
        "data_loader": loader,
        "train_throughput": (throughput or {}).get("results"),
        "notes": notes,
    }
    write_json(args.out, report)
    print(f"{'model':16} {'train s':>8} {'img/s':>8} {'peak MB':>8} {'wait':>6} {'F1':>7} {'AUC':>7}")
    for m in models:
        cells = [m["train_seconds"], m["train_images_per_s"], m["peak_gpu_memory_mb"], m["data_wait_share"]]
        shown = ["-" if c is None else f"{c:.4g}" for c in cells]
        print(
            f"{m['model']:16} {shown[0]:>8} {shown[1]:>8} {shown[2]:>8} {shown[3]:>6} "
            f"{m['fov_f1']:7.4f} {m['fov_auc_roc']:7.4f}"
        )
    for note in notes:
        print(f"note: {note}")
    print(f">> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
