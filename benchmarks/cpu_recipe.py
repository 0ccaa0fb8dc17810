"""The DRIVE CPU recipe against the one before it, side by side in one run: training time, FOV F1/AUC
on the DRIVE test set, and the U-Net's ``retinaseg predict`` latency.

Each variant is a recipe file (``recipes/*.yaml``) plus ``--set``-style overrides, run through the
pipeline's own functions in a temporary folder, one after the other on the same machine: validate
(Great Expectations, the manifest), split, preprocess (shared by variants whose split and
preprocessing agree), ``train_model`` for the U-Net, ``evaluate_model`` (inside the FOV, at the
threshold chosen on the val split), then the latency of :class:`~retinaseg.inference.predictor.Predictor`
(what ``retinaseg predict`` runs per image, the model loaded once) on the first ``--latency-images``
DRIVE test photographs (565×584), median of ``--repeats`` timed passes after a warm-up, with predict's
settings before this work (contiguous memory, batch norms kept) and now (channels-last, batch norms
folded into the convolutions). Training seconds are ``train_model``'s own clock (the epochs, not the
set-up).

The default variants: ``before`` = ``recipes/drive-cpu.yaml`` with ``train.channels_last=false`` and
``base.cache_mb=0`` (the CPU recipe as it was when the CPU training took 15 minutes: contiguous
tensors, every random crop decoding its whole image) and ``now`` = ``recipes/drive-cpu.yaml`` as it
is (channels-last, decoded images cached: the same schedule and augmentation). Run it on a machine
with nothing else running: the two cores are shared by nothing else and the figures are what the
recipes cost.

    python benchmarks/cpu_recipe.py --drive /path/to/DRIVE
    python benchmarks/cpu_recipe.py --drive /path/to/DRIVE \\
        --variant now=recipes/drive-cpu.yaml --variant e50=recipes/drive-cpu.yaml:train.epochs=50
    python benchmarks/cpu_recipe.py --drive /path/to/DRIVE --quick   # smoke test: tiny settings

Prints a Markdown table and writes ``reports/benchmarks/cpu_recipe.json`` (the machine, the torch
version and threads, each variant's overrides and figures).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaseg.core.budget import cpu_threads
from retinaseg.core.config import ConfigError, Params, load_params
from retinaseg.core.fileio import write_json
from retinaseg.data.io import read_image
from retinaseg.data.manifest import read_manifest
from retinaseg.data.preprocess import run_preprocess
from retinaseg.data.split import split_dataset, write_splits
from retinaseg.data.validation import validate_dataset
from retinaseg.evaluation.evaluate import evaluate_model
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.saved import load_model_dir
from retinaseg.training.engine import train_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from recipe import parse_sets, read_recipe  # noqa: E402  (scripts/recipe.py: the one recipe reader)

DEFAULT_OUT = Path("reports/benchmarks/cpu_recipe.json")
DEFAULT_VARIANTS = (
    "before=recipes/drive-cpu.yaml:train.channels_last=false,base.cache_mb=0",
    "now=recipes/drive-cpu.yaml",
)
# predict's settings before this work and now (see the module docstring)
PREDICT_SETTINGS = {
    "before": {"channels_last": False, "fold_batch_norm": False},
    "now": {"channels_last": True, "fold_batch_norm": True},
}
# --quick: a smoke test of every step in seconds (tiny network, few small crops, 2 epochs)
QUICK = {
    "preprocess.size": 128,
    "augment.crop_size": 64,
    "train.samples_per_epoch": 8,
    "train.epochs": 2,
    "train.batch_size": 4,
    "models.unet.base_channels": 4,
    "models.unet.depth": 2,
    "evaluate.bootstrap": 0,
    "evaluate.n_overlays": 0,
}


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo's "model name"), else the architecture."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def parse_variant(text: str, repo: Path = REPO) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``name=recipe.yaml[:key=value,key=value]`` → ``(name, the recipe's overrides, the extra ones)``.
    Raises ConfigError naming the variant when it is malformed."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--variant {text!r}: expected NAME=RECIPE[:key=value,...]")
    recipe, _, extra = rest.partition(":")
    path = Path(recipe) if Path(recipe).is_absolute() else repo / recipe
    return name, read_recipe(path), parse_sets([item for item in extra.split(",") if item])


def variant_params(
    params_path: Path, recipe: dict[str, Any], extra: dict[str, Any], drive: Path, quick: bool
) -> Params:
    """params.yaml with the recipe's overrides, then (``quick``) the smoke-test sizes, then the
    variant's extra overrides, and DRIVE at ``drive``."""
    fixed = {"data.source": "drive", "data.root": str(drive)}
    return load_params(params_path, {**recipe, **(QUICK if quick else {}), **extra, **fixed})


def prepare_data(params: Params, work: Path) -> tuple[Path, Path]:
    """validate → split → preprocess into ``work`` (as the pipeline's stages do); returns the splits
    folder and the processed folder."""
    manifest = work / "manifest.csv"
    result = validate_dataset(
        params.data.source, params.data.root, params.validate, manifest, work / "validation"
    )
    if not result.success:
        raise ConfigError(f"{params.data.root}: the dataset did not pass validation ({work / 'validation'})")
    splits, report = split_dataset(read_manifest(manifest), params.split, params.base.seed)
    write_splits(splits, report, work / "splits", work / "split.json")
    run_preprocess(work / "splits", params.data.root, work / "processed", params.preprocess)
    return work / "splits", work / "processed"


def predict_latency(
    model_dir: Path, images: list[np.ndarray], settings: InferenceSettings, repeats: int
) -> dict[str, float]:
    """Milliseconds per image of ``Predictor.probabilities`` (one image per call, the model loaded
    once): the median and the minimum over ``repeats`` passes over ``images`` after one warm-up pass."""
    model, card = load_model_dir(model_dir, "cpu")
    predictor = Predictor.from_card(model, card, "cpu", settings)
    for image in images:
        predictor.probabilities([image])
    times = []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            predictor.probabilities([image])
            times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1)}


def run_variant(
    name: str,
    params: Params,
    data: tuple[Path, Path],
    work: Path,
    images: list[np.ndarray],
    repeats: int,
) -> dict[str, Any]:
    """Train and evaluate the U-Net of one variant; time its predict path."""
    splits_dir, processed = data
    out = work / name
    summary = train_model(
        params,
        "unet",
        processed,
        out_dir=out / "models" / "unet",
        report_dir=out / "training",
        checkpoint_dir=out / "checkpoints",
    )
    result = evaluate_model(
        params, "unet", out / "models" / "unet", splits_dir, params.data.root, out / "reports"
    )
    fov = result["metrics"]["fov"]
    latency = {
        label: predict_latency(
            out / "models" / "unet",
            images,
            dataclasses.replace(InferenceSettings.from_params(params.evaluate, tta=False), **changes),
            repeats,
        )
        for label, changes in PREDICT_SETTINGS.items()
    }
    epochs = summary["epochs_run"]
    return {
        "name": name,
        "train_seconds": round(summary["train_seconds"], 1),
        "epochs_run": epochs,
        "seconds_per_epoch": round(summary["train_seconds"] / max(1, epochs), 2),
        "best_val_dice": round(summary["best_val_dice"], 4),
        "best_epoch": summary["best_epoch"],
        "threshold": round(result["metrics"]["threshold"], 4),
        "test_fov_f1": round(fov["f1"], 4),
        "test_fov_auc_roc": round(fov["auc_roc"], 4),
        "test_fov_mcc": round(fov["mcc"], 4),
        "n_test_images": result["metrics"]["n_test_images"],
        "predict_ms_per_image": latency,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The variants as a Markdown table."""
    lines = [
        "| variant | training | epochs | s/epoch | FOV F1 | FOV AUC "
        "| predict, before (ms) | predict, now (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["predict_ms_per_image"]
        lines.append(
            f"| {r['name']} | {r['train_seconds'] / 60:.1f} min | {r['epochs_run']} "
            f"| {r['seconds_per_epoch']:.2f} | {r['test_fov_f1']:.4f} | {r['test_fov_auc_roc']:.4f} "
            f"| {lat['before']['median_ms']:.0f} | {lat['now']['median_ms']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", type=Path, required=True, help="the DRIVE folder (training/, test/)")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="NAME=RECIPE[:key=value,...], repeatable (default: before and now, see the docstring)",
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--latency-images", type=int, default=5, help="test images timed per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over those images")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny settings, 2 images timed once")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    try:
        variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
        names = [n for n, _, _ in variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"--variant: names must differ, got {', '.join(names)}")
        params = {n: variant_params(args.params, r, e, args.drive, args.quick) for n, r, e in variants}
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (args.drive / "test" / "images").is_dir():
        print(f"error: {args.drive}: not a DRIVE folder (no test/images/)", file=sys.stderr)
        return 2
    n_images, repeats = (2, 1) if args.quick else (args.latency_images, args.repeats)
    test_images = sorted((args.drive / "test" / "images").iterdir())[:n_images]
    images = [read_image(p) for p in test_images]
    with tempfile.TemporaryDirectory(prefix="cpu_recipe_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        # evaluate_model looks the model's training run up to log to it: a store of its own, empty
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        prepared: dict[tuple, tuple[Path, Path]] = {}
        rows = []
        for name, recipe, extra in variants:
            p = params[name]
            torch.set_num_threads(cpu_threads(p.base.threads))  # predict's timing: this job's cores
            key = (repr(p.data), repr(p.split), repr(p.preprocess), p.base.seed)
            if key not in prepared:
                prepared[key] = prepare_data(p, work / f"data{len(prepared)}")
            print(f">> {name}: training the U-Net", flush=True)
            row = run_variant(name, p, prepared[key], work, images, repeats)
            row["overrides"] = {**recipe, **extra}
            rows.append(row)
            print(markdown_table([row]).splitlines()[-1], flush=True)

    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "latency_images": [p.name for p in test_images],
        "latency_repeats": repeats,
        "predict_settings": PREDICT_SETTINGS,
        "variants": rows,
    }
    write_json(args.out, report)
    print(markdown_table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
