"""Score some of this checkout's trained models on datasets of your choice with the cross-dataset
protocol of the `crossdata` stage (retinaseg.evaluation.crossdata): inside the FOV, at the threshold
evaluate@<model> chose on the training data's val split, each model's own preprocessing.

The stage scores all three models; this is for an experiment that trained only some of them, e.g.
the drive-cpu recipe (`dvc exp run ... evaluate@unet`), and for the README's cross-dataset figures:

    python scripts/crossdata_models.py --models unet \\
        --dataset DRIVE=drive:../shared/datasets/DRIVE \\
        --dataset CHASE_DB1=chase:../shared/datasets/CHASE_DB1 [--tta] [--out crossdata-models/]

A dataset given with the training data's source and root is scored on the held-out test split; a part
of a multi-dataset training set on its rows of that split; any other on its own test split, else all.
Without --dataset, params.yaml's datasets list is used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from retinaseg.cli import add_tta_scales_argument
from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.evaluation.crossdata import dataset_spec, evaluate_on_dataset
from retinaseg.inference.predictor import InferenceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["unet"], help="names under models/ (default: unet)")
    parser.add_argument(
        "--dataset", action="append", type=dataset_spec, default=[], metavar="NAME=SOURCE:ROOT"
    )
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (evaluate.tta)")
    add_tta_scales_argument(parser, "evaluate.tta_scales of the checkout's params.yaml")
    parser.add_argument("--out", type=Path, default=Path("crossdata-models"), help="folder for <name>.json")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    overrides: dict = {"evaluate.tta": True} if args.tta else {}
    if args.tta_scales is not None:
        overrides["evaluate.tta_scales"] = args.tta_scales
    if args.dataset:
        overrides["datasets"] = args.dataset
    try:
        params = load_params(args.params, overrides)
        words = InferenceSettings.from_params(params.evaluate).tta_words()  # "" for a plain pass
        for entry in params.datasets:
            start = time.perf_counter()
            out = args.out / f"{entry.name}{'-tta' if args.tta else ''}.json"
            report = evaluate_on_dataset(params, entry.name, out_path=out, model_names=args.models)["report"]
            d = report["dataset"]
            for model, s in report["models"].items():
                print(
                    f"{model} on {entry.name} ({d['images']}, {d['n_images']} images, FOV {d['fov']}"
                    f"{f', {words}' if words else ''}): F1 {s['f1']:.4f}  AUC {s['auc_roc']:.4f}  "
                    f"MCC {s['mcc']:.4f}  threshold {s['threshold']:.3f}"
                )
            print(f"  -> {out} ({time.perf_counter() - start:.0f} s)")
    except (ConfigError, RetinasegError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
