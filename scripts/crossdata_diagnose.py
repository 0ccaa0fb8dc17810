"""Why does a model lose F1 on another dataset? A diagnostic, not a result: it scores one trained model
of this checkout on one dataset (the crossdata protocol's images and FOV) at input sizes and
thresholds of your choice, so that a cross-dataset loss can be told apart into

* **scale**: does another ``preprocess.size`` for the target's photographs (the eye larger or
  smaller in pixels than in training) do better than the model card's size?
  Each size also prints the eye's diameter and the annotated vessels' mean width in the model's
  pixels (:func:`retinaseg.evaluation.crossdata.vessel_scale`, from the reference masks): run it on
  the training dataset too to compare the two.
* **calibration**: does the model rank vessel pixels well on the target (AUC) but at probabilities
  below or above the threshold chosen on the training data's val split? Then F1 at other thresholds
  rises, and sensitivity/specificity at the val threshold show which way it errs.
* **where** (``--errors``): how much the model marks against what was annotated, and whether its false
  positives lie next to annotated vessels (vessels drawn wider than the annotators drew them), away
  from them, or at the FOV's rim (:func:`retinaseg.evaluation.crossdata.error_breakdown`).

Any threshold or size other than the model card's is chosen by looking at the target's labels: such
F1 values say what is lost where, and are never the cross-dataset score (that is
``scripts/crossdata_models.py`` and the ``crossdata`` stage).

    python scripts/crossdata_diagnose.py --model unet --dataset DRIVE=drive:../shared/datasets/DRIVE \\
        --thresholds val,0.3,0.2,0.12 --sizes card,500,680 [--errors] [--out crossdata-diagnose/DRIVE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from retinaseg.core.budget import cpu_threads
from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_json
from retinaseg.evaluation.crossdata import (
    dataset_spec,
    error_breakdown,
    read_evaluated_threshold,
    score_matrix_row,
    select_images,
    vessel_scale,
)
from retinaseg.inference.predictor import InferenceSettings, Predictor
from retinaseg.models.saved import load_model_dir


def _values(text: str, keyword: str, kind: type) -> list:
    """``"val,0.3"`` -> ``[None, 0.3]``: the keyword (the model's own value) is None."""
    try:
        return [None if item == keyword else kind(item) for item in text.split(",") if item]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {keyword} or numbers, comma-separated: {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="unet", help="a name under models/ (default: unet)")
    parser.add_argument("--dataset", required=True, type=dataset_spec, metavar="NAME=SOURCE:ROOT")
    parser.add_argument(
        "--thresholds",
        default="val",
        type=lambda t: _values(t, "val", float),
        help="comma-separated; val = the one evaluate chose on the training data's val split",
    )
    parser.add_argument(
        "--sizes",
        default="card",
        type=lambda t: _values(t, "card", int),
        help="comma-separated preprocess.size values; card = the model card's",
    )
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument(
        "--errors",
        action="store_true",
        help="also sort each cell's errors by where they lie (predicts every image once more)",
    )
    parser.add_argument("--out", type=Path, help="write the grid here as JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, {"datasets": [args.dataset], "evaluate.tta": args.tta})
        torch.set_num_threads(cpu_threads(params.base.threads))
        name = args.dataset["name"]
        selection = select_images(params, name)
        val = read_evaluated_threshold(Path("reports/metrics") / f"{args.model}.json").value
        model, card = load_model_dir(Path("models") / args.model, "cpu")
        settings = InferenceSettings.from_params(params.evaluate)
        card_pre = card.preprocess_params()
        rows, scales = [], []
        for size in args.sizes:
            pre = card_pre if size is None else dataclasses.replace(card_pre, size=size)
            scale = vessel_scale(selection.paths, pre)
            scales.append({k: scale[k] for k in ("size", "scale", "mean", "min", "max")})
            mean, low, high = scale["mean"], scale["min"], scale["max"]
            print(
                f"{name} at size {pre.size}{' (card)' if size is None else ''} (scale: {pre.scale}): "
                f"FOV {mean['fov_diameter']:.0f} px across ({low['fov_diameter']:.0f}-"
                f"{high['fov_diameter']:.0f}), vessels {100 * mean['vessel_share']:.1f} % of it, "
                f"{mean['vessel_width']:.2f} px wide on average ({low['vessel_width']:.2f}-"
                f"{high['vessel_width']:.2f}; reference masks)",
                flush=True,
            )
            predictor = Predictor(model, pre, "cpu", settings, card.threshold, card)
            thresholds = {
                f"{t if t is not None else val:.4g}": t if t is not None else val for t in args.thresholds
            }
            result = score_matrix_row(
                {label: (predictor, t) for label, t in thresholds.items()},
                selection.paths,
                params.evaluate.curve_points,
                params.base.seed,
            )
            errors = {}
            if args.errors:
                found = error_breakdown(predictor, selection.paths, list(thresholds.values()))
                errors = dict(zip(thresholds, found, strict=True))
            for label, t in thresholds.items():
                block = result["blocks"][label]
                row = {
                    "size": pre.size,
                    "card_size": size is None,
                    "threshold": t,
                    "val_threshold": t == val,
                    **{k: block[k] for k in ("f1", "auc_roc", "sensitivity", "specificity")},
                }
                rows.append(row)
                print(
                    f"{args.model} on {name} ({len(selection.paths)} images{', TTA' if args.tta else ''}): "
                    f"size {pre.size}{' (card)' if size is None else ''}, threshold {t:.3f}"
                    f"{' (val)' if t == val else ''}: F1 {block['f1']:.4f}  AUC {block['auc_roc']:.4f}  "
                    f"sensitivity {block['sensitivity']:.3f}  specificity {block['specificity']:.3f}",
                    flush=True,
                )
                if errors:
                    where = errors[label]
                    row["errors"] = where
                    print(
                        f"    errors: marks {where['marked_over_reference']:.3f}x the annotated pixels; "
                        f"false positives {100 * where['fp_near_share']:.1f} % within "
                        f"{where['near_px']:g} px of an annotated vessel, "
                        f"{100 * where['fp_rim_share']:.1f} % within {where['rim_px']:g} px of the FOV's "
                        f"edge (false negatives there: {100 * where['fn_rim_share']:.1f} %)",
                        flush=True,
                    )
        if args.out:
            write_json(
                args.out,
                {
                    "model": args.model,
                    "dataset": args.dataset,
                    "tta": args.tta,
                    "grid": rows,
                    "scale": scales,
                },
            )
    except (ConfigError, RetinasegError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
