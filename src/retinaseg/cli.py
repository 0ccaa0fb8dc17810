"""`retinaseg` command line: the user-facing commands.

This module owns argument parsing, printing and exit codes; every command's work is one library
call that returns values and raises. Exit status:

- 0: done;
- 1: done, but some files failed (``predict``, ``score``, ``data add``: one ``error:`` line per bad
  file as it happens, the others still processed, then ``N of M files failed``) or the dataset failed
  validation (``validate``);
- 2: nothing (more) could be done: a bad option value (argparse names the option and the allowed
  range), a ``RetinasegError`` (the project's errors about user data: printed as one line
  ``error: <message>``), or an ``OSError`` from reading or writing files (permission denied, disk
  full, a folder where a file should be: ``error: <path>: <reason>``).

Anything else (a bug, CUDA running out of memory) is not caught and keeps its traceback.

The library modules are imported inside the handlers, when their command runs: they pull in torch,
OpenCV, Great Expectations or MLflow (seconds), and ``retinaseg --help`` / ``--version`` stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retinaseg.core.config import DEFAULT_PARAMS, Params, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_json

ThresholdTTA = tuple[bool, tuple[float, ...]]  # (flip, scales): the maps a threshold was chosen on

SOURCES = ("synthetic", "kaggle", "drive", "stare", "chase", "folder")

#: Where ``retinaseg validate`` writes by default: a scratch folder in the current folder. Never the
#: validate stage's DVC-tracked outputs (``reports/validation``, ``data/manifest.csv``): a command run
#: by hand must not overwrite what ``dvc repro`` produced and recorded.
DEFAULT_VALIDATION_REPORT = "validation-report"

#: How many names a "not scored" note shows.
NAMES_SHOWN = 3


class CliError(RetinasegError, ValueError):
    """An option value that only turns out to be unusable when the command runs (e.g. ``--device cuda``
    on a machine without CUDA)."""


def _params(path: str | Path | None) -> Params:
    """params.yaml's values; the built-in defaults (the same values) when the default params.yaml is
    absent (``retinaseg`` run outside a project checkout). An explicitly named file must exist."""
    if path is None or (Path(path) == DEFAULT_PARAMS and not Path(path).exists()):
        return Params()
    return load_params(path)


def _error(message: str) -> None:
    """One error line on stderr (through tqdm, so a progress bar is not torn)."""
    tqdm.write(f"error: {message}", file=sys.stderr)


def _failed(n_failed: int, n_total: int, what: str = "files") -> None:
    print(f"{n_failed} of {n_total} {what} failed", file=sys.stderr)


def _check_device(name: str) -> None:
    """Fail early, in one line, when the requested device is absent (torch: imported here)."""
    from retinaseg.core.devices import resolve_device  # torch: when the command runs

    try:
        resolve_device(name)
    except RuntimeError as exc:  # resolve_device's documented "absent device" error, nothing else
        raise CliError(f"--device {name}: {exc}") from None


def _names(paths: list[str], show: int = NAMES_SHOWN) -> str:
    more = f", +{len(paths) - show} more" if len(paths) > show else ""
    return ", ".join(paths[:show]) + more


# ------------------------------------------------------------------------------------------ commands


def cli_validate(args: argparse.Namespace) -> int:
    """``retinaseg validate``: one line per finding (count + first files), a verdict; 1 when it fails."""
    from retinaseg.data.sources import scan_source  # OpenCV via data.io: when the command runs
    from retinaseg.data.validation import findings, validate_dataset  # GX: seconds to import

    # Great Expectations logs a whole traceback when it cannot write a Data Docs page (a full disk)
    # before the failure reaches us; the failure itself is our one error line
    logging.getLogger("great_expectations").setLevel(logging.CRITICAL)
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
    bad_files = {p.file for p in result.errors if p.file not in (".", "docs")}
    if bad_files:
        n_files = len(scan_source(args.source, args.root).files())
        _failed(len(bad_files), max(n_files, len(bad_files)), "files")
    return 0 if result.success else 1


def cli_data_add(args: argparse.Namespace) -> int:
    """``retinaseg data add``: copy a dataset into data/raw/<source>/, track it with DVC, say what next;
    1 when files of it cannot be decoded (each named on its own line; the dataset is added all the
    same and validation reports or excludes them)."""
    from retinaseg.data.sources import add_dataset  # OpenCV via data.io: imported when the command runs

    added = add_dataset(args.source, args.root, ".", on_error=_error)
    state = "copied" if added.copied else "already present (identical)"
    print(f"{added.source}: {added.n_pairs} pairs {state} in {added.rel} and tracked by DVC")
    print(f"commit it:   git add {' '.join(added.to_commit)}")
    print(f"use it:      set data.source: {added.source} and data.root: {added.rel} in params.yaml")
    print(f"             (or: dvc exp run -S data.source={added.source} -S data.root={added.rel})")
    if added.bad_files:
        print(
            "the files named above cannot be decoded: the validate stage reports them "
            "(validate.on_error: exclude drops their pairs)"
        )
        _failed(len(added.bad_files), added.n_files, "files")
        return 1
    return 0


def cli_generate(args: argparse.Namespace) -> int:
    """``retinaseg generate``: the synthetic dataset (and a montage)."""
    from retinaseg.data.synthetic import generate_dataset, write_montage  # OpenCV: when the command runs

    params = _params(args.params).synthetic
    generate_dataset(args.out, params)
    print(
        f"synthetic: {params.n_train} train + {params.n_test} test samples of {params.size} px in {args.out}"
    )
    if args.montage:
        write_montage(args.out, args.montage)
        print(f"montage: {args.montage}")
    return 0


def cli_score(args: argparse.Namespace) -> int:
    """``retinaseg score``: pooled and per-image scores of a folder of predictions; 1 when any
    prediction could not be scored (each named on its own line)."""
    from retinaseg.evaluation.scoring import score_folders, scores_table  # sklearn: when the command runs

    result = score_folders(args.pred, args.gt, args.fov, args.threshold, use=args.use, on_error=_error)
    kind = result["prediction_kind"]
    source = result["predictions"]
    origin = ""
    if source["predict_output"]:
        origin = f" (the _{source['use']} files of a retinaseg predict output"
        origin += f"; {source['ignored']} other files ignored)" if source["ignored"] else ")"
    threshold = ""
    if kind != "binary":
        threshold = f", threshold {result['threshold']}" + {
            "given": "",
            "default": " (default)",
        }.get(result["threshold_from"], f" (from {result['threshold_from']})")
    print(f"{result['n_images']} image(s), predictions: {kind}{origin}{threshold}")
    print(scores_table(result))
    for region in ("fov", "image"):
        if region in result:
            r = result[region]
            print(f"{region}: {r['n_pixels']} pixels, per-image F1 {r['f1_mean']:.4f} ± {r['f1_std']:.4f}")
    unscored = result["unscored_ground_truth"]
    if unscored:
        print(f"not scored: {len(unscored)} ground-truth file(s) without a prediction ({_names(unscored)})")
    if args.json:
        write_json(args.json, result)  # a failure is a WriteError naming args.json
        print(f"wrote {args.json}")
    if result["n_failed"]:
        _failed(result["n_failed"], result["n_failed"] + result["n_images"], "prediction files")
        return 1
    return 0


def cli_evaluate(args: argparse.Namespace) -> int:
    """``retinaseg evaluate``: a trained model on any supported dataset, at its original resolution."""
    from retinaseg.evaluation.evaluate import evaluate_dataset, summary_table  # torch: when the command runs

    params = _params(args.params)
    _check_device(args.device)
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
        write_json(args.json, result)  # a failure is a WriteError naming args.json
        print(f"wrote {args.json}")
    return 0


def cli_predict(args: argparse.Namespace) -> int:
    """``retinaseg predict``: 0 when every input was segmented, 1 when any failed (each named on its
    own line as it happens, the others still segmented)."""
    from retinaseg.inference.files import predict_paths  # torch: imported when the command runs
    from retinaseg.inference.loading import default_model_ref  # (same)
    from retinaseg.inference.predictor import InferenceSettings  # (same)

    params = _params(args.params)
    model = args.model or default_model_ref(params.mlflow)
    _check_device(args.device)
    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="image", disable=total <= 1, file=sys.stderr))
        bars[0].n = done
        bars[0].refresh()

    settings = InferenceSettings.from_params(params.evaluate)
    if args.precision is not None:  # --precision over params.yaml's evaluate.precision
        settings = dataclasses.replace(settings, precision=args.precision)
    try:
        report = predict_paths(
            args.inputs,
            model,
            args.out,
            threshold=args.threshold,
            tta=args.tta,
            tta_scales=args.tta_scales,
            device=args.device,
            batch_size=args.batch_size,
            settings=settings,
            on_error=_error,
            on_progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    augmented = InferenceSettings(tta=report["tta"], scales=tuple(report["tta_scales"])).tta_words()
    if augmented:
        as_chosen = " as the threshold was chosen" if report["tta_from"] == "model" else ""
        augmented = f", {augmented}{as_chosen}"
    print(
        f"segmented {report['n_ok']} of {report['n_inputs']} image(s) with {report['model']} "
        f"(threshold {report['threshold']:.3f}{augmented}, device {report['device']}) -> {args.out}"
    )
    if report["n_failed"]:
        _failed(report["n_failed"], report["n_inputs"], "files")
        return 1
    return 0


def _size(n_bytes: int) -> str:
    """``n_bytes`` for people: ``8.3 MB``, ``912 kB``, ``640 bytes`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def _evaluated_threshold(model: str) -> tuple[float | None, str | None, ThresholdTTA | None]:
    """For ``models/<name>`` in a checkout whose card stores no threshold: the one evaluate@<name>
    chose on the val split (``reports/metrics/<name>.json``), where it came from, and the test-time
    augmentation it was chosen with ``(flip, scales)``, so the package predicts as evaluated."""
    folder = Path(model)
    checkout = folder.parent.parent
    metrics = checkout / "reports" / "metrics" / f"{folder.name}.json"
    if not (folder.is_dir() and folder.parent.name == "models" and metrics.is_file()):
        return None, None, None
    card = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else {}
    if card.get("threshold") is not None:
        return None, None, None  # the card's own threshold stands
    from retinaseg.evaluation.crossdata import read_evaluated_threshold  # the one reader of that file
    from retinaseg.inference.predictor import InferenceSettings

    evaluated = read_evaluated_threshold(metrics)  # a CrossdataError names the file and the problem
    where = f"{metrics.as_posix()} (chosen on the {evaluated.chosen_on} split)"
    if not evaluated.chosen_on.startswith("val"):
        return evaluated.value, where, None  # "default (no val images)": chosen on no maps at all
    if evaluated.chosen_on == "val":
        return evaluated.value, where, (False, (1.0,))
    # "val (flip TTA, scales 0.85, 1, 1.15)": the exact settings are the checkout's params.yaml, as
    # evaluate@<name> read them; the words they make must be the ones evaluate wrote
    params_file = checkout / DEFAULT_PARAMS
    if not params_file.is_file():
        raise CliError(
            f"{metrics}: its threshold was chosen on {evaluated.chosen_on} maps, but there is no "
            f"{params_file} to say exactly how; pass --threshold"
        )
    settings = InferenceSettings.from_params(load_params(params_file).evaluate)
    words = settings.tta_words()
    if f"val ({words})" != evaluated.chosen_on:
        now = f"val ({words})" if words else "val"
        raise CliError(
            f"{metrics}: its threshold was chosen on '{evaluated.chosen_on}' maps, but {params_file}'s "
            f"evaluate.tta and evaluate.tta_scales now make '{now}' ones: run `dvc repro "
            f"evaluate@{folder.name}` first, or pass --threshold"
        )
    return evaluated.value, where, (settings.tta, settings.scales)


def cli_model_export(args: argparse.Namespace) -> int:
    """``retinaseg model export``: one self-contained, pickle-free package file of a model."""
    from retinaseg.core.mlflow_store import champion_uri
    from retinaseg.models.package import export_model  # torch: imported when the command runs

    model = args.model or champion_uri(_params(args.params).mlflow.registered_model)
    threshold, threshold_from = args.threshold, "--threshold" if args.threshold is not None else None
    threshold_tta = None
    if threshold is None:
        threshold, threshold_from, threshold_tta = _evaluated_threshold(model)
    exported = export_model(model, args.out, threshold, threshold_from, threshold_tta)
    card = exported.card
    threshold = "none stored (predict uses 0.5)" if card.threshold is None else f"{card.threshold:.3f}"
    if threshold_tta is not None and threshold_tta != (False, (1.0,)):
        from retinaseg.inference.predictor import InferenceSettings

        flip, scales = threshold_tta
        words = InferenceSettings(tta=flip, scales=scales).tta_words()
        threshold += f" (chosen on maps with {words}: predict makes them the same way)"
    print(
        f"exported {model} -> {exported.path} ({_size(exported.size)}): {card.name}, "
        f"{exported.n_params:,} parameters, threshold {threshold}"
    )
    print(f"run it:  retinaseg predict --model {exported.path} <images or folders> --out <folder>")
    return 0


# ------------------------------------------------------------------------------- option value types
# argparse calls these on the text; an ArgumentTypeError becomes one line naming the option:
# "retinaseg score: error: argument --threshold: must be a number in [0, 1], got '5'".


def cli_serve(args: argparse.Namespace) -> int:
    from retinaseg.inference.loading import default_model_ref  # torch: when the command runs
    from retinaseg.server import serve  # (same, and uvicorn)

    _check_device(args.device)
    params = _params(args.params)
    model = args.model or default_model_ref(params.mlflow)
    print(f"serving {model} on http://{args.host}:{args.port}/invocations (Ctrl-C stops)")
    serve(
        model,
        host=args.host,
        port=args.port,
        max_body_mb=args.max_body_mb,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        device=args.device,
    )
    return 0


def cli_promote(args: argparse.Namespace) -> int:
    from retinaseg.registry import promote  # mlflow: seconds to import

    params = _params(args.params)
    result = promote(params.mlflow.registered_model, args.version, force=args.force, reason=args.reason)
    if result.promoted:
        print(f"{result.uri} -> version {result.version} (was {result.previous}): {result.message}")
        return 0
    _error(f"not promoted: {result.message}")
    return 1


def _number(text: str, rule: str, ok: Callable[[float], bool]) -> float:
    """``text`` as a finite float for which ``ok`` holds, else an error saying ``must be <rule>``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A probability threshold: a finite number in [0, 1]."""
    return _number(text, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)


def positive_number(text: str) -> float:
    """A finite number > 0 (a scale factor)."""
    return _number(text, "a finite number > 0", lambda v: v > 0.0)


def tta_scales(text: str) -> list[float]:
    """Comma-separated input scales for multi-scale TTA (evaluate.tta_scales): each in [0.25, 4],
    at most 8, no repeats."""
    from retinaseg.core.config import TTA_SCALES_RULE, valid_tta_scales

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not valid_tta_scales(values):
        raise argparse.ArgumentTypeError(
            f"must be {TTA_SCALES_RULE}, comma-separated (e.g. 0.85,1,1.15), got {text!r}"
        )
    return values


def add_tta_scales_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--tta-scales S1,S2,...`` (:func:`tta_scales`): for ``retinaseg predict`` and the cross-dataset
    scripts alike; ``default`` says what applies without it."""
    parser.add_argument(
        "--tta-scales",
        type=tta_scales,
        default=None,
        metavar="S1,S2,...",
        help=f"multi-scale test-time augmentation: the maps at these input scales averaged, e.g. 0.85,1,1.15 "
        f"(default: {default})",
    )


def positive_int(text: str) -> int:
    """A whole number >= 1 (a batch size)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


_DEVICE = re.compile(r"auto|cpu|(?:cuda|mps)(?::\d+)?")


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (whether it is present is checked when the
    command runs)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


# ------------------------------------------------------------------------------------------- parser


def _version() -> str:
    try:
        return importlib.metadata.version("retinaseg")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


# `retinaseg services|queue|sweep ...`: the team commands keep their own parsers (retinaseg.team.*)
TEAM_COMMANDS = {
    "services": ("retinaseg.team.services", "PostgreSQL, S3 and mlflow server for a team: up, down, status"),
    "queue": ("retinaseg.team.queue", "queue dvc experiments, run N at a time, the cores split between them"),
    "sweep": ("retinaseg.team.sweep", "models x losses x seeds as Ray Tune trials, each logging to MLflow"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinaseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    params_help = "params file (default params.yaml; its built-in values when there is none)"
    threshold_help = "probability threshold in [0, 1]; default: the model's chosen threshold, else 0.5"

    p = sub.add_parser("validate", help="scan a dataset, write the manifest and a validation report")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument(
        "--report",
        default=DEFAULT_VALIDATION_REPORT,
        help=f"report folder (summary.json, docs/); default: ./{DEFAULT_VALIDATION_REPORT} "
        "(the pipeline's reports/validation is written by `dvc repro validate` only)",
    )
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

    p = sub.add_parser(
        "score",
        help="score predicted masks/probability maps against ground truth",
        description="Score a folder of predictions against ground truth (paired by sample id: "
        "01_test.tif, 01_manual1.gif and 01_test_mask.gif are sample 01). A `retinaseg predict` "
        "output folder is recognised: its <stem>_mask.png files are scored (--use prob: its "
        "<stem>_prob.png files) and its other outputs ignored.",
    )
    p.add_argument(
        "--pred",
        required=True,
        help="folder of predictions (masks 0/255 or probability maps), "
        "e.g. the --out folder of `retinaseg predict`",
    )
    p.add_argument("--gt", required=True, help="folder of ground-truth vessel masks")
    p.add_argument("--fov", default=None, help="folder of field-of-view masks (scores inside the FOV too)")
    p.add_argument(
        "--use",
        choices=("mask", "prob"),
        default=None,
        help="which files of a `retinaseg predict` output folder to score: its binary masks (default) "
        "or its probability maps",
    )
    p.add_argument(
        "--threshold",
        type=unit_interval,
        default=None,
        help="for probability maps, in [0, 1]; default: the threshold retinaseg predict used "
        "(its predict_report.json), else 0.5",
    )
    p.add_argument("--json", default=None, help="write the scores here")
    p.set_defaults(handler=cli_score)

    p = sub.add_parser("evaluate", help="evaluate a trained model on any supported dataset")
    p.add_argument("--model", required=True, help="models/<name> directory or an MLflow model URI")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--root", required=True)
    p.add_argument(
        "--split",
        choices=("test", "train", "all"),
        default="test",
        help="which of the dataset's own splits to score (a dataset without splits: all of it)",
    )
    p.add_argument(
        "--vessel-scale",
        type=positive_number,
        default=None,
        help="rescale input images by this factor (> 0) before inference (cross-dataset); "
        "default: match the training image width recorded in the model",
    )
    p.add_argument("--threshold", type=unit_interval, default=None, help=threshold_help)
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--json", default=None)
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: evaluate group")
    p.set_defaults(handler=cli_evaluate)

    p = sub.add_parser("predict", help="segment vessels in your own fundus images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--model",
        default=None,
        help="a model package file (from `retinaseg model export`), a models/<name> directory or an "
        "MLflow model URI "
        "(default: models:/<mlflow.registered_model>@champion, i.e. models:/retinaseg-vessels@champion)",
    )
    p.add_argument("--out", required=True, help="output folder (score it with `retinaseg score --pred`)")
    p.add_argument("--threshold", type=unit_interval, default=None, help=threshold_help)
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation (default: as a model package's threshold was chosen, else off)",
    )
    add_tta_scales_argument(
        p,
        "as a model package's threshold was chosen, else params.yaml's evaluate.tta_scales; use the "
        "scales the model's threshold was chosen with",
    )
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (>= 1)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default=None,
        help="auto: mixed precision on CUDA, fp32 elsewhere; fp32: full precision everywhere "
        "(default: params.yaml's evaluate.precision)",
    )
    p.add_argument(
        "--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: evaluate tile size and overlap"
    )
    p.set_defaults(handler=cli_predict)

    p = sub.add_parser("model", help="share a trained model: export it as one file")
    model_sub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    a = model_sub.add_parser(
        "export",
        help="write a model as one self-contained, pickle-free package file",
        description="Write a model as one file (a zip: model.json, model.safetensors, MODEL_CARD.md) that "
        "`retinaseg predict --model <file>` runs anywhere retinaseg is installed, with no params.yaml, "
        "git checkout or MLflow store. Two exports of one model are byte-identical.",
    )
    a.add_argument(
        "--model",
        default=None,
        help="models/<name> directory, an MLflow model URI (models:/<name>@<alias>, runs:/<id>/<path>) or "
        "a package (default: models:/<mlflow.registered_model>@champion)",
    )
    a.add_argument(
        "--out",
        required=True,
        help="the package file to write, e.g. unet.retinaseg.zip (an existing file is replaced only "
        "once the new package is complete)",
    )
    a.add_argument(
        "--threshold",
        type=unit_interval,
        default=None,
        help="the package's threshold (default: the model card's; for models/<name> in a checkout, "
        "the one evaluate@<name> chose on val, from reports/metrics/<name>.json)",
    )
    a.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: mlflow.registered_model")
    a.set_defaults(handler=cli_model_export)

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (/invocations, /ping) with request, queue and time limits",
    )
    p.add_argument(
        "--model",
        default=None,
        help="models/<name> directory or an MLflow model URI (default: models:/retinaseg-vessels@champion)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=positive_int, default=5001)
    p.add_argument("--max-body-mb", type=positive_number, default=70.0, help="larger requests get 413")
    p.add_argument("--max-concurrency", type=positive_int, default=2, help="requests segmented at once")
    p.add_argument("--max-queue", type=positive_int, default=8, help="requests waiting; more get 503")
    p.add_argument("--timeout-s", type=positive_number, default=60.0, help="per request; then 504")
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: mlflow.registered_model")
    p.set_defaults(handler=cli_serve)

    p = sub.add_parser(
        "promote",
        help="point @champion at a registered version, if it beats the champion on the same test data",
    )
    p.add_argument("version", type=positive_int, help="the registered version (see `mlflow ui` → Models)")
    p.add_argument("--force", action="store_true", help="promote even when the check fails (needs --reason)")
    p.add_argument("--reason", default=None, help="why --force: recorded on the version")
    p.add_argument("--params", default=str(DEFAULT_PARAMS), help=f"{params_help}: mlflow.registered_model")
    p.set_defaults(handler=cli_promote)

    for name, (_module, text) in TEAM_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)  # run by main() with the module's own parser
    return parser


def describe_os_error(exc: OSError) -> str:
    """``<path>: <reason>`` (``<path> -> <path2>`` for a rename) when the error names a file."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason if exc.errno is None else f"{reason} (errno {exc.errno})"
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TEAM_COMMANDS:  # options such as -j/-e belong to the team module's parser
        module = importlib.import_module(TEAM_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:], prog=f"retinaseg {argv[0]}"))
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except RetinasegError as exc:
        # the project's errors about user data carry the file and the problem: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # reading or writing files failed (permission denied, disk full, a folder where a file
        # should be): the path and the reason; anything else (a bug, CUDA OOM) keeps its traceback
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
