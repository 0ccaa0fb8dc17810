"""Evaluate a trained model: threshold chosen on val, metrics on test, curves, per-image table, overlays.

Protocol (the metrics file's ``protocol`` block records the dataset and where the threshold came from):

* Predictions are made at the preprocessing the model was trained with (its model card) and mapped
  back to each image's **original** resolution; ground truth and FOV are read from the original files
  (FOV derived with ``derive_fov`` when the dataset has none), exactly as the dataset ships them.
* The threshold maximises pooled F1 inside the FOV on the **val** split (0.5 when val is empty).
* Test metrics are pooled over pixels, **inside the FOV** (``fov``: the standard DRIVE protocol) and
  **over the whole image** (``image``: the Kaggle habit), at that threshold and at 0.5 (``at_0_5``);
  plus the mean ± std of per-image F1 and a bootstrap 95 % interval of pooled F1 over images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from retinaseg.core.budget import cpu_threads
from retinaseg.core.config import EvaluateParams, Params, PreprocessParams
from retinaseg.core.devices import resolve_device
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import atomic_path, write_json, write_png
from retinaseg.core.mlflow_store import tracking_uri
from retinaseg.data.io import binarise_mask, read_image, read_mask
from retinaseg.data.preprocess import derive_fov
from retinaseg.data.sources import scan_source
from retinaseg.data.split import read_split
from retinaseg.evaluation import metrics as M
from retinaseg.evaluation.overlays import error_overlay, side_by_side
from retinaseg.evaluation.reporting import markdown_table
from retinaseg.inference.overlays import probability_image
from retinaseg.inference.predictor import InferenceSettings, Predictor, scaled_preprocess
from retinaseg.models.saved import load_model, load_model_dir

REGIONS = ("fov", "image")
# Scores repeated at threshold 0.5: only those that depend on the threshold (AUCs do not).
THRESHOLD_SCORES = ("f1", "iou", "mcc", "sensitivity", "specificity", "accuracy", "precision")
METRIC_ORDER = (
    "f1",
    "iou",
    "auc_roc",
    "auc_pr",
    "mcc",
    "sensitivity",
    "specificity",
    "accuracy",
    "precision",
)


class EvaluateError(RetinasegError, ValueError):
    """Data or options that cannot be evaluated (names the file or option and the problem)."""


@dataclass
class Sample:
    """One scored image at its original resolution."""

    id: str
    image: np.ndarray  # H×W×3 uint8
    gt: np.ndarray  # H×W bool
    fov: np.ndarray  # H×W bool
    fov_derived: bool


@dataclass
class EvaluationOutputs:
    """Where :func:`evaluate_model` writes; :meth:`for_model` gives the pipeline's layout."""

    metrics_json: Path
    per_image_csv: Path
    plots_dir: Path
    overlays_dir: Path

    @classmethod
    def for_model(cls, reports_dir: str | Path, model_name: str) -> EvaluationOutputs:
        r = Path(reports_dir)
        return cls(
            metrics_json=r / "metrics" / f"{model_name}.json",
            per_image_csv=r / "per_image" / f"{model_name}.csv",
            plots_dir=r / "plots" / model_name,
            overlays_dir=r / "overlays" / model_name,
        )


# ---------------------------------------------------------------------------------------------- data


def load_sample(sample_id: str, image_path: Path, mask_path: Path, fov_path: Path | None) -> Sample:
    """Read image, binarised truth and FOV (derived from the image when ``fov_path`` is None)."""
    image = read_image(image_path)
    gt = binarise_mask(read_mask(mask_path)).astype(bool)
    if gt.shape != image.shape[:2]:
        raise EvaluateError(
            f"{mask_path}: mask size {gt.shape[::-1]} differs from the image {image.shape[1::-1]}"
        )
    if fov_path is not None:
        fov = binarise_mask(read_mask(fov_path)).astype(bool)
        if fov.shape != image.shape[:2]:
            raise EvaluateError(
                f"{fov_path}: FOV size {fov.shape[::-1]} differs from the image {image.shape[1::-1]}"
            )
    else:
        fov = derive_fov(image).astype(bool)
    if not fov.any():
        raise EvaluateError(f"{fov_path or image_path}: the field of view is empty")
    return Sample(sample_id, image, gt, fov, fov_path is None)


def split_sample_paths(frame: pd.DataFrame, data_root: Path) -> list[tuple[str, Path, Path, Path | None]]:
    """``(id, image, mask, fov or None)`` of each row of a split CSV, the arguments of :func:`load_sample`."""
    out = []
    for row in frame.itertuples(index=False):
        fov_rel = getattr(row, "fov_path", None)
        fov = data_root / fov_rel if isinstance(fov_rel, str) and fov_rel else None
        out.append((str(row.id), data_root / row.image_path, data_root / row.mask_path, fov))
    return out


def iter_split_samples(frame: pd.DataFrame, data_root: Path) -> Iterator[Sample]:
    """Samples of a split CSV; the FOV comes from ``fov_path`` when set, else it is derived."""
    for paths in split_sample_paths(frame, data_root):
        yield load_sample(*paths)


# ------------------------------------------------------------------------------------------- scoring


def _region_mask(sample: Sample, region: str) -> np.ndarray | None:
    return sample.fov if region == "fov" else None


def per_image_scores(samples: list[Sample], probs: list[np.ndarray], threshold: float) -> pd.DataFrame:
    """One row per image: confusion counts and scores at ``threshold`` for both regions, FOV ROC-AUC."""
    rows = []
    for s, p in zip(samples, probs, strict=True):
        row: dict[str, Any] = {
            "id": s.id,
            "height": s.gt.shape[0],
            "width": s.gt.shape[1],
            "fov_derived": s.fov_derived,
        }
        for region in REGIONS:
            c = M.confusion(p >= threshold, s.gt, _region_mask(s, region))
            row.update({f"{region}_{k}": v for k, v in c._asdict().items()})
            row.update({f"{region}_{k}": v for k, v in M.scores_from_confusion(*c).items()})
        y = s.gt[s.fov]
        row["fov_auc_roc"] = float(roc_auc_score(y, p[s.fov])) if 0 < y.sum() < y.size else None
        rows.append(row)
    return pd.DataFrame(rows)


def region_block(
    table: pd.DataFrame, region: str, curves: dict | None, n_bootstrap: int, seed: int
) -> dict[str, float | None]:
    """Pooled scores + AUCs + per-image F1 mean/std + bootstrap 95 % interval of pooled F1."""
    counts = table[[f"{region}_{k}" for k in ("tp", "fp", "fn", "tn")]].to_numpy(dtype=np.int64)
    pooled = M.scores_from_confusion(*(int(v) for v in counts.sum(axis=0)))
    low, high = M.bootstrap_ci(counts, n_bootstrap, seed) if n_bootstrap > 0 else (None, None)
    f1s = table[f"{region}_f1"].to_numpy(dtype=np.float64)
    block = {k: pooled[k] for k in METRIC_ORDER if k in pooled}
    block["auc_roc"] = curves["auc_roc"] if curves else None
    block["auc_pr"] = curves["auc_pr"] if curves else None
    block = {k: block[k] for k in METRIC_ORDER}
    block.update(f1_mean=float(f1s.mean()), f1_std=float(f1s.std()), f1_ci95_low=low, f1_ci95_high=high)
    return block


def threshold_block(samples: list[Sample], probs: list[np.ndarray], threshold: float) -> dict[str, dict]:
    """Threshold-dependent pooled scores (:data:`THRESHOLD_SCORES`) per region at ``threshold``."""
    out = {}
    for region in REGIONS:
        total = M.Confusion(0, 0, 0, 0)
        for s, p in zip(samples, probs, strict=True):
            total = total + M.confusion(p >= threshold, s.gt, _region_mask(s, region))
        scores = M.scores_from_confusion(*total)
        out[region] = {k: scores[k] for k in THRESHOLD_SCORES}
    return out


def score_samples(
    samples: list[Sample],
    probs: list[np.ndarray],
    threshold: float,
    params: EvaluateParams,
    seed: int,
) -> tuple[dict, pd.DataFrame, dict[str, dict | None]]:
    """(metrics blocks ``{"fov", "image", "at_0_5"}``, per-image table, curves per region)."""
    if not samples:
        raise EvaluateError("no images to evaluate")
    table = per_image_scores(samples, probs, threshold)
    gts = [s.gt for s in samples]
    curves = {
        "fov": M.roc_pr(probs, gts, [s.fov for s in samples], n_points=params.curve_points),
        "image": M.roc_pr(probs, gts, None, n_points=params.curve_points),
    }
    blocks: dict[str, Any] = {
        region: region_block(table, region, curves[region], params.bootstrap, seed) for region in REGIONS
    }
    blocks["at_0_5"] = threshold_block(samples, probs, 0.5)
    return blocks, table, curves


# ----------------------------------------------------------------------------------------- prediction


def predict_samples(
    predictor: Predictor,
    samples: list[Sample],
    preprocess_for: Callable[[Sample], PreprocessParams] | None = None,
) -> tuple[list[np.ndarray], float]:
    """Probability maps for the samples and the mean milliseconds per image (preprocess → restored map,
    one image at a time, after one untimed warm-up prediction).

    ``preprocess_for(sample)`` returns the :class:`PreprocessParams` for that image (default: the
    model's own).
    """

    def preprocess(sample: Sample) -> PreprocessParams | None:
        return preprocess_for(sample) if preprocess_for is not None else None

    probs, seconds = [], 0.0
    if samples:  # warm-up (allocator, kernels, thread pools) so the timing is steady-state
        predictor.probability(samples[0].image, preprocess(samples[0]))
    for s in samples:
        start = time.perf_counter()
        probs.append(predictor.probability(s.image, preprocess(s)))
        seconds += time.perf_counter() - start
    return probs, 1000.0 * seconds / max(1, len(samples))


def choose_threshold_on(predictor: Predictor, samples: Iterator[Sample]) -> tuple[float, float | None, int]:
    """(threshold, pooled val F1 at it, n images): max pooled F1 inside the FOV; 0.5 when there are none.

    Only per-image probability histograms are kept, so memory does not grow with the split.
    """
    hist, n = None, 0
    for s in samples:
        p = predictor.probability(s.image)
        h = M.threshold_histograms(p, s.gt, s.fov)
        hist = h if hist is None else hist + h
        n += 1
    if hist is None:
        return 0.5, None, 0
    t, f1 = M.best_threshold_from_histograms(hist)
    return t, f1, n


# ------------------------------------------------------------------------------------------- outputs


def write_curves(curves: dict | None, plots_dir: Path) -> None:
    """``roc.csv`` (fpr, tpr, threshold) and ``pr.csv`` (recall, precision, threshold)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name in ("roc", "pr"):
        frame = pd.DataFrame(curves[name]) if curves and curves[name] else pd.DataFrame()
        with atomic_path(plots_dir / f"{name}.csv") as tmp:
            frame.round(6).to_csv(tmp, index=False)


def write_overlays(
    samples: list[Sample], probs: list[np.ndarray], threshold: float, out_dir: Path, n: int
) -> list[Path]:
    """``<id>.png`` panels (image | probability | errors: TP green, FP red, FN blue) for the first ``n``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()  # the folder is this stage's output: stale panels must not survive a rerun
    written = []
    for s, p in list(zip(samples, probs, strict=True))[: max(0, n)]:
        panel = side_by_side(
            s.image, probability_image(p), error_overlay(s.image, p >= threshold, s.gt, s.fov)
        )
        path = out_dir / f"{s.id}.png"
        write_png(path, panel)
        written.append(path)
    return written


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write a per-image table as CSV, atomically."""
    with atomic_path(path) as tmp:
        table.round(6).to_csv(tmp, index=False)


def _mlflow_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for region in REGIONS:
        out.update({f"test_{region}_{k}": v for k, v in metrics[region].items() if v is not None})
        out.update({f"test_{region}_{k}_at_0_5": v for k, v in metrics["at_0_5"][region].items()})
    out["test_threshold"] = metrics["threshold"]
    if metrics.get("val_f1_at_threshold") is not None:
        out["val_fov_f1_at_threshold"] = metrics["val_f1_at_threshold"]
    out["test_inference_ms_per_image"] = metrics["inference_ms_per_image"]
    return out


def log_to_mlflow(run_id: str, metrics: dict, outputs: EvaluationOutputs) -> None:
    """Log test metrics and the evaluation files into the training run ``run_id``."""
    import mlflow  # seconds to import: `retinaseg evaluate` (evaluate_dataset) never logs

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(_mlflow_metrics(metrics))
        mlflow.log_artifact(str(outputs.metrics_json), artifact_path="evaluation")
        mlflow.log_artifact(str(outputs.per_image_csv), artifact_path="evaluation")
        mlflow.log_artifacts(str(outputs.plots_dir), artifact_path="evaluation/plots")
        mlflow.log_artifacts(str(outputs.overlays_dir), artifact_path="evaluation/overlays")


class Fingerprint:
    """:func:`test_fingerprint` fed one sample at a time (scorers that never hold every image)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, sample: Sample) -> None:
        for part in (
            sample.id.encode(),
            *(np.ascontiguousarray(a) for a in (sample.image, sample.gt, sample.fov)),
        ):
            if isinstance(part, np.ndarray):
                self._digest.update(f"{part.dtype}{part.shape}".encode())
                part = part.tobytes()
            self._digest.update(part)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def test_fingerprint(samples: list[Sample]) -> str:
    """sha256 over exactly what was scored (ids, images, ground truth, FOV masks, in order): two
    models' test scores are comparable only when their fingerprints are equal (the registry's
    promotion check)."""
    fingerprint = Fingerprint()
    for s in samples:
        fingerprint.add(s)
    return fingerprint.hexdigest()


# ----------------------------------------------------------------------------------------- entry points


def evaluate_model(
    params: Params,
    model_name: str,
    model_dir: str | Path,
    splits_dir: str | Path,
    data_root: str | Path,
    out: EvaluationOutputs | str | Path,
) -> dict:
    """Evaluate ``model_dir`` (a saved model) on the split CSVs; write every output; return the metrics.

    ``out`` is an :class:`EvaluationOutputs` or a reports folder (then the pipeline layout:
    ``metrics/<model>.json``, ``per_image/<model>.csv``, ``plots/<model>/{roc,pr}.csv``,
    ``overlays/<model>/``); the test metrics are also logged into the MLflow run that trained the model.
    """
    outputs = out if isinstance(out, EvaluationOutputs) else EvaluationOutputs.for_model(out, model_name)
    data_root = Path(data_root)
    ev = params.evaluate
    torch.set_num_threads(cpu_threads(params.base.threads))  # this job's share of the cores
    device = resolve_device(params.base.device)
    model, card = load_model_dir(model_dir, device)
    predictor = Predictor.from_card(model, card, device, InferenceSettings.from_params(ev))

    val = read_split(splits_dir, "val") if (Path(splits_dir) / "val.csv").is_file() else pd.DataFrame()
    val_samples = iter_split_samples(val, data_root) if len(val) else iter([])
    threshold, val_f1, n_val = choose_threshold_on(predictor, val_samples)

    test = read_split(splits_dir, "test")
    if test.empty:
        raise EvaluateError(f"{Path(splits_dir) / 'test.csv'}: the test split is empty")
    samples = list(iter_split_samples(test, data_root))
    probs, ms = predict_samples(predictor, samples)
    blocks, table, curves = score_samples(samples, probs, threshold, ev, params.base.seed)

    tta = predictor.settings.tta_words()  # "" for a plain pass
    # Keys are kept few and stable: every numeric leaf becomes a column of `dvc exp show`.
    metrics = {
        "protocol": {
            "dataset": params.data.source,
            # the threshold fits the maps it was chosen on: say when they were test-time augmented
            "threshold_from": (f"val ({tta})" if tta else "val") if n_val else "default (no val images)",
            "test_fingerprint": test_fingerprint(samples),
        },
        "threshold": threshold,
        **blocks,
        "n_val_images": n_val,
        "n_test_images": len(samples),
    }
    write_table(table, outputs.per_image_csv)
    write_curves(curves["fov"], outputs.plots_dir)
    write_overlays(samples, probs, threshold, outputs.overlays_dir, ev.n_overlays)
    write_json(outputs.metrics_json, metrics)

    # the latency differs from run to run: MLflow only, never the DVC-tracked metrics file
    from retinaseg.tracking import training_run_id  # imports mlflow (seconds): only the stage logs

    run_id = training_run_id(model_dir, model_name, params.mlflow.experiment)
    if run_id:
        timing = {"val_f1_at_threshold": val_f1, "inference_ms_per_image": round(ms, 2)}
        log_to_mlflow(run_id, {**metrics, **timing}, outputs)
        metrics_note = f"logged to MLflow run {run_id}"
    else:
        metrics_note = (
            f"no run in MLflow experiment {params.mlflow.experiment!r} trained {model_dir}/model.pt; "
            "nothing logged to MLflow"
        )
    return {
        "metrics": metrics,
        "model": model_name,
        "mlflow": metrics_note,
        "outputs": dataclasses.asdict(outputs),
    }


def summary_table(metrics: dict) -> str:
    """Markdown table of the main scores per region, at the chosen threshold (and at 0.5 if different)."""
    cols = ("f1", "iou", "auc_roc", "auc_pr", "mcc", "sensitivity", "specificity", "accuracy")
    rows = []
    for region, label in (("fov", "inside FOV"), ("image", "whole image")):
        rows.append([label, f"{metrics['threshold']:.3f}", *(metrics[region].get(c) for c in cols)])
        if abs(metrics["threshold"] - 0.5) > 1e-9:
            at = {**metrics[region], **metrics["at_0_5"][region]}  # AUCs do not depend on the threshold
            rows.append([label, "0.500", *(at.get(c) for c in cols)])
    return markdown_table(["region", "threshold", *cols], rows, digits=4)


# ------------------------------------------------------------------------------------- cross-dataset CLI


def cross_dataset_size(card: Any, height: int, width: int, vessel_scale: float | None) -> tuple[int, str]:
    """The preprocessed size (longest side, pixels) for one image of another dataset, and the rule used.

    The model was trained with the longest side of its training images (``L_train``, original width
    ``W_train``; both recorded in the model card's ``extra``) mapped to ``S`` = ``preprocess.size``.
    An image ``W`` wide with longest side ``L`` is first rescaled by ``f`` so that vessels are as wide
    (in pixels) as in training, then the training-time scale ``S / L_train`` is applied:

        size = round(L × f × S / L_train),   f = --vessel-scale, else W_train / W.

    So by default the image's width is matched to the training images' width. For images of the
    training dataset itself (W = W_train, L = L_train) this is exactly ``S``. A model trained with
    ``preprocess.scale: fov`` needs no rule: its preprocessing scales every image's FOV to ``S``.
    When the card records no training size, ``L_train = L`` and ``f`` = --vessel-scale or 1 (the
    model's preprocessing as is).
    """
    s = int(card.preprocess["size"])
    if card.preprocess.get("scale") == "fov" and not vessel_scale:
        # the model saw every eye with its FOV's box scaled to S: that already matches the scale
        return s, "the FOV's diameter scaled to the model's size (preprocess.scale: fov)"
    extra = card.extra or {}
    w_train, h_train = extra.get("train_orig_width"), extra.get("train_orig_height")
    longest = max(height, width)
    if w_train and h_train:
        f = vessel_scale if vessel_scale else float(w_train) / width
        rule = (
            f"--vessel-scale {vessel_scale}" if vessel_scale else f"width matched to training ({w_train} px)"
        )
        return max(8, round(longest * f * s / max(int(w_train), int(h_train)))), rule
    f = vessel_scale or 1.0
    rule = (
        f"--vessel-scale {vessel_scale} (no training size in the model card)"
        if vessel_scale
        else ("model preprocessing unchanged (no training size in the model card)")
    )
    return max(8, round(s * f)), rule


def _select_pairs(scan: Any, split: str) -> tuple[list[Any], str]:
    pairs = list(scan.pairs)
    if split == "all":
        return pairs, "all"
    if all(p.split is None for p in pairs):
        return pairs, f"all (the dataset defines no '{split}' split)"
    chosen = [p for p in pairs if p.split == split]
    if not chosen:
        raise EvaluateError(f"{scan.root}: no pairs in split {split!r} (choose test, train or all)")
    return chosen, split


def evaluate_dataset(
    model_ref: str,
    source: str,
    root: str | Path,
    split: str = "test",
    vessel_scale: float | None = None,
    threshold: float | None = None,
    device: str = "auto",
    params: EvaluateParams | None = None,
    seed: int = 0,
) -> dict:
    """Score any saved model (folder or MLflow URI) on any supported dataset at original resolution."""
    params = params or EvaluateParams()
    if vessel_scale is not None and vessel_scale <= 0:
        raise EvaluateError(f"--vessel-scale must be positive, got {vessel_scale}")
    dev = resolve_device(device)
    model, card = load_model(model_ref, dev)
    predictor = Predictor.from_card(model, card, dev, InferenceSettings.from_params(params))
    base_pre = card.preprocess_params()
    t = threshold if threshold is not None else (card.threshold if card.threshold is not None else 0.5)
    scan = scan_source(source, Path(root))
    scan.raise_for_collisions()  # two files claiming one sample id: an error naming them, not a silent pick
    pairs, split_used = _select_pairs(scan, split)
    samples = [load_sample(p.id, p.image, p.mask, p.fov) for p in sorted(pairs, key=lambda p: p.id)]
    rules: set[str] = set()

    def preprocess_for(sample: Sample) -> PreprocessParams:
        size, rule = cross_dataset_size(card, *sample.gt.shape, vessel_scale)
        rules.add(rule)
        return scaled_preprocess(base_pre, size)

    probs, ms = predict_samples(predictor, samples, preprocess_for)
    blocks, table, _ = score_samples(samples, probs, t, params, seed)
    return {
        "protocol": {
            "model": str(model_ref),
            "dataset": source,
            "root": str(root),
            "split": split_used,
            "threshold_from": "--threshold"
            if threshold is not None
            else "model card"
            if card.threshold is not None
            else "default 0.5",
            "scaling": sorted(rules),
            "resolution": "original",
            "fov": "derived" if any(s.fov_derived for s in samples) else "dataset",
        },
        "threshold": t,
        **blocks,
        "n_test_images": len(samples),
        "inference_ms_per_image": round(ms, 2),
        "per_image": table.round(6).to_dict(orient="records"),
    }
