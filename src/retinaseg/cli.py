"""`retinaseg` command line: the user-facing commands.

This module owns argument parsing, printing and exit codes; every command's work is one library
call that returns values and raises ``RetinasegError``\\ s (printed here as ``error: <message>``,
exit 2). The library modules are imported inside the handlers, when their command runs: they pull
in torch, OpenCV, Great Expectations or MLflow (seconds), and ``retinaseg --help`` / ``--version``
stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retinaseg.core.config import DEFAULT_PARAMS, Params, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_json

SOURCES = ("synthetic", "kaggle", "drive", "stare", "chase", "folder")


def _params(path: str | Path | None) -> Params:
    """params.yaml's values; the built-in defaults (the same values) when the default params.yaml is
    absent (``retinaseg`` run outside a project checkout). An explicitly named file must exist."""
    if path is None or (Path(path) == DEFAULT_PARAMS and not Path(path).exists()):
        return Params()
    return load_params(path)


# ------------------------------------------------------------------------------------------ commands


def cli_validate(args: argparse.Namespace) -> int:
    """``retinaseg validate``: one line per finding (count + first files), a verdict; 1 when it fails."""
    from retinaseg.data.validation import findings, validate_dataset  # GX: seconds to import

    params = dataclasses.replace(_params(args.params).validate, on_error=args.on_error)
    report = Path(args.report)
    manifest = Path(args.manifest) if args.manifest else report / "manifest.csv"
    result = validate_dataset(args.source, args.root, params, manifest, report)
    for finding in findings(result.problems):
        print(finding.line())
    for sample_id in result.excluded:
        print(f"EXCLUDED {sample_id}")
    verdict = "passed" if result.success else "FAILED"
    print(
        f"validation {verdict}: {result.n_pairs} pairs kept, {len(result.errors)} errors, "
        f"{len(result.warnings)} warnings, {len(result.excluded)} excluded; report: {report / 'summary.json'}"
        + (f"; manifest: {manifest}" if result.success else "")
    )
    return 0 if result.success else 1


def cli_data_add(args: argparse.Namespace) -> int:
    """``retinaseg data add``: copy a dataset into data/raw/<source>/, track it with DVC, say what next."""
    from retinaseg.data.sources import add_dataset  # OpenCV via data.io: imported when the command runs

    added = add_dataset(args.source, args.root, ".")
    state = "copied" if added.copied else "already present (identical)"
    print(f"{added.source}: {added.n_pairs} pairs {state} in {added.rel} and tracked by DVC")
    print(f"commit it:   git add {' '.join(added.to_commit)}")
    print(f"use it:      set data.source: {added.source} and data.root: {added.rel} in params.yaml")
    print(f"             (or: dvc exp run -S data.source={added.source} -S data.root={added.rel})")
    return 0


def cli_generate(args: argparse.Namespace) -> int:
    """``retinaseg generate``: the synthetic dataset (and a montage)."""
    from retinaseg.data.synthetic import generate_dataset, write_montage  # OpenCV: when the command runs

    params = load_params(args.params).synthetic
    generate_dataset(args.out, params)
    print(
        f"synthetic: {params.n_train} train + {params.n_test} test samples of {params.size} px in {args.out}"
    )
    if args.montage:
        write_montage(args.out, args.montage)
        print(f"montage: {args.montage}")
    return 0


def cli_score(args: argparse.Namespace) -> int:
    """``retinaseg score``: pooled and per-image scores of a folder of predictions."""
    from retinaseg.evaluation.scoring import score_folders, scores_table  # sklearn: when the command runs

    result = score_folders(args.pred, args.gt, args.fov, args.threshold)
    kind = result["prediction_kind"]
    print(
        f"{result['n_images']} image(s), predictions: {kind}"
        + (f", threshold {args.threshold}" if kind != "binary" else "")
    )
    print(scores_table(result))
    for region in ("fov", "image"):
        if region in result:
            r = result[region]
            print(f"{region}: {r['n_pixels']} pixels, per-image F1 {r['f1_mean']:.4f} ± {r['f1_std']:.4f}")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def cli_evaluate(args: argparse.Namespace) -> int:
    """``retinaseg evaluate``: a trained model on any supported dataset, at its original resolution."""
    from retinaseg.evaluation.evaluate import evaluate_dataset, summary_table  # torch: when the command runs

    params = _params(args.params)
    result = evaluate_dataset(
        args.model,
        args.source,
        args.root,
        args.split,
        args.vessel_scale,
        args.threshold,
        args.device,
        params=params.evaluate,
        seed=params.base.seed,
    )
    p = result["protocol"]
    print(
        f"{p['model']} on {p['dataset']} ({p['split']}, {result['n_test_images']} images); "
        f"scaling: {'; '.join(p['scaling'])}; FOV: {p['fov']}"
    )
    print(summary_table(result))
    print(f"inference: {result['inference_ms_per_image']:.1f} ms/image")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def cli_predict(args: argparse.Namespace) -> int:
    """``retinaseg predict``: 0 when every input was segmented, 1 when any failed."""
    from retinaseg.inference.files import predict_paths  # torch: imported when the command runs
    from retinaseg.inference.loading import default_model_ref  # (same)
    from retinaseg.inference.predictor import InferenceSettings  # (same)

    params = _params(args.params)
    model = args.model or default_model_ref(params.mlflow)
    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="image", disable=total <= 1, file=sys.stderr))
        bars[0].n = done
        bars[0].refresh()

    def error(message: str) -> None:
        tqdm.write(f"error: {message}", file=sys.stderr)

    try:
        report = predict_paths(
            args.inputs,
            model,
            args.out,
            threshold=args.threshold,
            tta=args.tta,
            device=args.device,
            batch_size=args.batch_size,
            settings=InferenceSettings.from_params(params.evaluate),
            on_error=error,
            on_progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    print(
        f"segmented {report['n_ok']} of {report['n_inputs']} image(s) with {report['model']} "
        f"(threshold {report['threshold']:.3f}, device {report['device']}) -> {args.out}"
    )
    if report["n_failed"]:
        print(f"{report['n_failed']} input(s) failed:", file=sys.stderr)
        for entry in report["errors"]:
            print(f"  {entry['error']}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------- parser


def _version() -> str:
    try:
        return importlib.metadata.version("retinaseg")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinaseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    params_help = "params file (default params.yaml; its built-in values when there is none)"

    p = sub.add_parser("validate", help="scan a dataset, write the manifest and a validation report")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument("--report", default="reports/validation", help="report folder (summary.json, docs/)")
    p.add_argument(
        "--manifest", default=None, help="where to write manifest.csv (default: <report>/manifest.csv)"
    )
    p.add_argument("--on-error", choices=("fail", "exclude"), default="fail")
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help="thresholds from its validate group")
    p.set_defaults(handler=cli_validate)

    p = sub.add_parser("data", help="manage the versioned datasets under data/raw")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    a = data_sub.add_parser("add", help="copy a dataset into data/raw/<source>/ and track it with DVC")
    a.add_argument("--source", required=True, choices=SOURCES[1:])
    a.add_argument("--root", required=True, help="the dataset's folder (left untouched)")
    a.set_defaults(handler=cli_data_add)

    p = sub.add_parser("generate", help="generate the synthetic fundus dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help="sizes and seed from its synthetic group")
    p.add_argument("--montage", default=None, help="also write a montage PNG here")
    p.set_defaults(handler=cli_generate)

    p = sub.add_parser("score", help="score predicted masks/probability maps against ground truth")
    p.add_argument("--pred", required=True, help="folder of predictions (masks 0/255 or probability maps)")
    p.add_argument("--gt", required=True, help="folder of ground-truth vessel masks")
    p.add_argument("--fov", default=None, help="folder of field-of-view masks (scores inside the FOV too)")
    p.add_argument("--threshold", type=float, default=0.5, help="for probability maps (0-1 scale)")
    p.add_argument("--json", default=None, help="write the scores here")
    p.set_defaults(handler=cli_score)

    p = sub.add_parser("evaluate", help="evaluate a trained model on any supported dataset")
    p.add_argument("--model", required=True, help="models/<name> directory or an MLflow model URI")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--root", required=True)
    p.add_argument(
        "--split", default="test", help="which of the dataset's own splits to score (test|train|all)"
    )
    p.add_argument(
        "--vessel-scale",
        type=float,
        default=None,
        help="rescale input images by this factor before inference (cross-dataset); "
        "default: match the training image width recorded in the model",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="default: the model's chosen threshold, else 0.5"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: evaluate group")
    p.set_defaults(handler=cli_evaluate)

    p = sub.add_parser("predict", help="segment vessels in your own fundus images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--model",
        default=None,
        help="models/<name> directory or an MLflow model URI "
        "(default: models:/<mlflow.registered_model>@champion, i.e. models:/retinaseg-vessels@champion)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--threshold", type=float, default=None, help="default: the model's chosen threshold, else 0.5"
    )
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: evaluate tile size and overlap"
    )
    p.set_defaults(handler=cli_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except (RetinasegError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # library errors carry the file and the problem; no traceback for a user's mistake
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
