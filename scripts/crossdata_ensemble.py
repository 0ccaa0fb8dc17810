"""Score a seed ensemble with the cross-dataset protocol: the mean probability map of one model
trained in several checkouts with different ``base.seed`` and one shared split (``split.seed``),
next to each member alone (retinaseg.evaluation.crossdata.evaluate_ensemble_on_dataset).

Each member's threshold and the ensemble's are chosen on the shared split's val images, never on
the dataset scored. For the README's seed-ensemble row:

    for s in 1 2 3; do   # three checkouts, e.g. git clone . ../seed$s
        (cd ../seed$s && dvc exp run $(python scripts/recipe.py args recipes/drive-cpu.yaml) \\
            -S data.root=<DRIVE> -S split.seed=42 -S base.seed=$s evaluate@unet)
    done
    python scripts/crossdata_ensemble.py ../seed1 ../seed2 ../seed3 \\
        --dataset DRIVE=drive:<DRIVE> --dataset CHASE_DB1=chase:<CHASE_DB1> [--tta]

The first checkout's params.yaml gives the training data, the inference settings and (without
--dataset) the datasets; the report goes to <out>/<dataset>[-tta].json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from retinaseg.cli import add_tta_scales_argument
from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.evaluation.crossdata import dataset_spec, evaluate_ensemble_on_dataset
from retinaseg.inference.predictor import InferenceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="two or more checkouts that ran the pipeline")
    parser.add_argument("--model", default="unet", help="the folder in each checkout's models/")
    parser.add_argument(
        "--dataset", action="append", type=dataset_spec, default=[], metavar="NAME=SOURCE:ROOT"
    )
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (evaluate.tta)")
    add_tta_scales_argument(parser, "evaluate.tta_scales of the checkout's params.yaml")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (base.threads)")
    parser.add_argument("--out", type=Path, default=Path("crossdata-ensemble"), help="folder for <name>.json")
    args = parser.parse_args(argv)
    overrides: dict = {"evaluate.tta": True} if args.tta else {}
    if args.tta_scales is not None:
        overrides["evaluate.tta_scales"] = args.tta_scales
    if args.dataset:
        overrides["datasets"] = args.dataset
    if args.threads is not None:
        overrides["base.threads"] = args.threads
    try:
        params = load_params(args.checkouts[0] / "params.yaml", overrides)
        words = InferenceSettings.from_params(params.evaluate).tta_words()  # "" for a plain pass
        for entry in params.datasets:
            start = time.perf_counter()
            out = args.out / f"{entry.name}{'-tta' if args.tta else ''}.json"
            report = evaluate_ensemble_on_dataset(
                params, entry.name, args.checkouts, model_name=args.model, out_path=out
            )
            d = report["dataset"]
            print(
                f"{args.model} on {entry.name} ({d['images']}, {d['n_images']} images, FOV {d['fov']}"
                f"{f', {words}' if words else ''}):"
            )
            seeds = {m["name"]: m["seed"] for m in report["members"]}
            for member, s in report["scores"].items():
                label = member if member == "ensemble" else f"{member} (seed {seeds[member]})"
                print(
                    f"  {label:<28} F1 {s['f1']:.4f}  AUC {s['auc_roc']:.4f}  MCC {s['mcc']:.4f}  "
                    f"threshold {s['threshold']:.3f} (val F1 {s['val_f1']:.4f})"
                )
            print(f"  -> {out} ({time.perf_counter() - start:.0f} s)")
    except (ConfigError, RetinasegError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
