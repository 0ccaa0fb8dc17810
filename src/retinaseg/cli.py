"""`retinaseg` command line: the user-facing commands.

Argument parsing lives here; each command's work lives in the library module named in
``_COMMANDS`` (a function ``cli_<command>(args) -> int``), imported only when that command
runs so ``retinaseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

_COMMANDS = {
    "validate": "retinaseg.data.validation:cli_validate",
    "data-add": "retinaseg.data.sources:cli_data_add",
    "generate": "retinaseg.data.synthetic:cli_generate",
    "score": "retinaseg.evaluation.scoring:cli_score",
    "evaluate": "retinaseg.evaluation.evaluate:cli_evaluate",
    "predict": "retinaseg.inference:cli_predict",
}

SOURCES = ("synthetic", "kaggle", "drive", "stare", "chase", "folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinaseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="scan a dataset, write the manifest and a validation report")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument("--report", default="reports/validation", help="report folder (summary.json, docs/)")
    p.add_argument(
        "--manifest", default=None, help="where to write manifest.csv (default: <report>/manifest.csv)"
    )
    p.add_argument("--on-error", choices=("fail", "exclude"), default="fail")
    p.add_argument("--params", default="params.yaml", help="thresholds are read from its validate group")
    p.set_defaults(command_key="validate")

    p = sub.add_parser("data", help="manage the versioned datasets under data/raw")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    a = data_sub.add_parser("add", help="copy a dataset into data/raw/<source>/ and track it with DVC")
    a.add_argument("--source", required=True, choices=SOURCES[1:])
    a.add_argument("--root", required=True, help="the dataset's folder (left untouched)")
    a.set_defaults(command_key="data-add")

    p = sub.add_parser("generate", help="generate the synthetic fundus dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--params", default="params.yaml", help="sizes and seed from its synthetic group")
    p.add_argument("--montage", default=None, help="also write a montage PNG here")
    p.set_defaults(command_key="generate")

    p = sub.add_parser("score", help="score predicted masks/probability maps against ground truth")
    p.add_argument("--pred", required=True, help="folder of predictions (masks 0/255 or probability maps)")
    p.add_argument("--gt", required=True, help="folder of ground-truth vessel masks")
    p.add_argument("--fov", default=None, help="folder of field-of-view masks (scores inside the FOV too)")
    p.add_argument("--threshold", type=float, default=0.5, help="for probability maps (0-1 scale)")
    p.add_argument("--json", default=None, help="write the scores here")
    p.set_defaults(command_key="score")

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
    p.set_defaults(command_key="evaluate")

    p = sub.add_parser("predict", help="segment vessels in your own fundus images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--model",
        default="models:/retinaseg-vessels@champion",
        help="models/<name> directory or an MLflow model URI",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--threshold", type=float, default=None, help="default: the model's chosen threshold, else 0.5"
    )
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(command_key="predict")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    module_name, func_name = _COMMANDS[args.command_key].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # library errors carry the file and the problem; no traceback for a user's mistake
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
