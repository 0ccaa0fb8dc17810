"""The cross-dataset matrix: every trained model scored on every dataset of ``datasets:`` in params.yaml.

Protocol: the evaluate stage's (:mod:`retinaseg.evaluation.evaluate`), applied to other data.

* **Threshold**: the one ``evaluate@<model>`` chose on the *training* data's val split, read from
  ``reports/metrics/<model>.json`` (``threshold``): never tuned on the dataset being scored.
* **Images**: the training dataset (its ``source`` and ``root`` equal ``data.source`` and
  ``data.root``) is scored on the held-out test split the pipeline made (``data/splits/test.csv``),
  exactly the images evaluate scored (checked: the test fingerprint must equal the one in the
  metrics file), so its F1 is evaluate's F1. A part of a combined training dataset
  (``data.source: multi``, the entry's source and root those of one of ``data.parts``) is scored on
  its rows of that test split only: the rest of it was trained on. Any other dataset is scanned with
  :func:`~retinaseg.data.sources.scan_source` and scored on its own test split where it has one
  (DRIVE's ``test/``), else on all its images (CHASE_DB1, STARE).
* **Prediction**: :class:`~retinaseg.inference.predictor.Predictor` with the model card's own
  preprocessing (whatever the model was trained with, e.g. ``preprocess.scale: fov``) and the
  ``evaluate`` group's inference settings; probabilities at each image's original resolution.
* **Scores**: ground truth and FOV as the dataset ships them (the FOV derived from the image with
  ``derive_fov`` when the dataset has none, as ``retinaseg evaluate`` does); pooled over the pixels
  inside the FOV (:func:`~retinaseg.evaluation.evaluate.per_image_scores` and
  :func:`~retinaseg.evaluation.evaluate.region_block`, the code of the evaluate stage).

Memory stays flat in the number of images: one image is read, predicted by every model and scored
at a time; only its confusion counts and the FOV pixels' probabilities (for the AUCs, 5 bytes a
pixel) are kept. Datasets of more than :data:`~retinaseg.evaluation.metrics.MAX_CURVE_PIXELS`
pixels in all keep a seeded random share of each image's FOV pixels for the AUCs (evaluate
subsamples the pooled pixels instead); below it the AUCs are exactly evaluate's.

Outputs: ``reports/crossdata/<dataset>.json`` (one per dataset: the ``crossdata@<i>`` stages), then
``reports/crossdata.md`` (rows models, columns datasets, cells F1 / AUC-ROC / MCC) and
``reports/crossdata.png`` (a heat-map of FOV F1) from the ``crossdata_table`` stage, which also logs
``cross_<dataset>_{f1,auc_roc,mcc}`` and both files into each model's training run in MLflow.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from retinaseg.core.budget import cpu_threads
from retinaseg.core.config import (
    MODEL_NAMES,
    ConfigError,
    DataPartParams,
    DatasetParams,
    Params,
    PreprocessParams,
    load_params,
)
from retinaseg.core.devices import resolve_device
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_bytes, write_json, write_text
from retinaseg.data.io import probe_image
from retinaseg.data.preprocess import compute_geometry, fov_box, preprocess_mask
from retinaseg.data.sources import MULTI, scan_source
from retinaseg.data.split import read_split
from retinaseg.evaluation import metrics as M
from retinaseg.evaluation.evaluate import (
    Fingerprint,
    Sample,
    choose_threshold_on,
    iter_split_samples,
    load_sample,
    per_image_scores,
    region_block,
    split_sample_paths,
)
from retinaseg.evaluation.reporting import format_value, markdown_table
from retinaseg.inference.predictor import InferenceSettings, MeanPredictor, Predictor
from retinaseg.models.saved import load_model_dir

#: the scores kept per model and dataset (FOV, pooled, at the val-chosen threshold)
SCORES = ("f1", "auc_roc", "auc_pr", "mcc", "sensitivity", "specificity")
#: the scores of a table cell, and the ones logged to MLflow as ``cross_<dataset>_<score>``
CELL_SCORES = ("f1", "auc_roc", "mcc")

SamplePaths = tuple[str, Path, Path, Path | None]  # (id, image, mask, fov or None): load_sample's arguments


class CrossdataError(RetinasegError, ValueError):
    """A dataset, metrics file or report that the matrix cannot use (names it and the problem)."""


# ---------------------------------------------------------------------------------------- datasets


def dataset_spec(text: str) -> dict[str, str]:
    """``NAME=SOURCE:ROOT`` (a command line's ``--dataset``) -> a ``datasets:`` entry
    ``{"name", "source", "root"}``; an ``argparse.ArgumentTypeError`` naming the text otherwise."""
    name, sep, rest = text.partition("=")
    source, sep2, root = rest.partition(":")
    if not (sep and sep2 and name and source and root):
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE:ROOT, got {text!r}")
    return {"name": name, "source": source, "root": root}


def dataset_entry(params: Params, name: str) -> tuple[int, DatasetParams]:
    """``(index, entry)`` of the dataset called ``name`` in ``datasets``."""
    for i, entry in enumerate(params.datasets):
        if entry.name == name:
            return i, entry
    names = ", ".join(repr(d.name) for d in params.datasets)
    raise CrossdataError(f"no dataset named {name!r} in 'datasets' (its names: {names})")


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def is_training_dataset(params: Params, entry: DatasetParams) -> bool:
    """The dataset the models were trained on: the same source and root as ``data``."""
    return entry.source == params.data.source and _same_path(entry.root, params.data.root)


def training_part(params: Params, entry: DatasetParams) -> DataPartParams | None:
    """The part of a combined training dataset (``data.source: multi``) that ``entry`` is: the same
    source, its root ``data.root/<path>``; None when it is none."""
    if params.data.source != MULTI:
        return None
    for part in params.data.parts:
        if part.source == entry.source and _same_path(entry.root, Path(params.data.root) / part.path):
            return part
    return None


def _under(rel_path: str, folder: str) -> bool:
    """Whether ``rel_path`` (a split CSV's path, relative to data.root) lies in ``folder``."""
    inner = [p for p in PurePosixPath(folder.replace("\\", "/")).parts if p != "."]
    return list(PurePosixPath(rel_path).parts[: len(inner)]) == inner


@dataclass
class Selection:
    """The images of one dataset that the matrix scores, and how they were chosen."""

    entry: DatasetParams
    training: bool
    images: str  # which images, in words
    paths: list[SamplePaths] = field(default_factory=list)
    whole_training_set: bool = False  # exactly the images evaluate scored (then its fingerprint)


def select_images(params: Params, name: str, splits_dir: str | Path = "data/splits") -> Selection:
    """The images of dataset ``name`` to score (see the module docstring), sorted by id."""
    index, entry = dataset_entry(params, name)
    key = f"datasets[{index}].root"
    root = Path(entry.root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise CrossdataError(f"dataset {entry.name!r}: {key} {entry.root!r} {what} ({root.resolve()})")
    part = training_part(params, entry)
    if is_training_dataset(params, entry) or part is not None:
        # trained on: only its held-out test images (the split's paths are relative to data.root)
        test_csv = Path(splits_dir) / "test.csv"
        frame = read_split(splits_dir, "test")
        images = f"the test split ({test_csv.as_posix()}), the images evaluate scored"
        if part is not None:  # one part of a combined training dataset: its rows of the test split
            frame = frame[frame["image_path"].map(lambda rel: _under(str(rel), part.path))]
            images = f"its rows of the test split ({test_csv.as_posix()}, part {part.name!r} of data.parts)"
        paths = split_sample_paths(frame, Path(params.data.root))
        if not paths:
            raise CrossdataError(f"{test_csv}: no test images of dataset {entry.name!r}")
        return Selection(entry, True, images, paths, whole_training_set=part is None)
    scan = scan_source(entry.source, root)
    scan.raise_for_collisions()  # two files claiming one sample id: an error naming them
    test = [p for p in scan.pairs if p.split == "test"]
    pairs, images = (test, "its own test split") if test else (scan.pairs, "all its images (no test split)")
    if not pairs:
        raise CrossdataError(
            f"dataset {entry.name!r}: no image/mask pairs under {key} {entry.root!r} "
            f"for datasets[{index}].source {entry.source!r}"
        )
    paths = [(p.id, p.image, p.mask, p.fov) for p in sorted(pairs, key=lambda p: p.id)]
    return Selection(entry, False, images, paths)


# ------------------------------------------------------------------------------------ vessel scale


def vessel_width(mask01: np.ndarray) -> float:
    """Mean width in pixels of the vessels of a {0,1} mask: twice their area over the length of
    their outlines (holes included). A ribbon of width ``w`` and length ``L >> w`` has area ``wL``
    and outline ``2L``, so a tree of ribbons gives its area-weighted width; 0 for an empty mask.
    Hand-written: neither OpenCV nor any kept library measures a width without a skeleton, and
    OpenCV's thinning lives in opencv-contrib, which we do not install."""
    mask = (np.asarray(mask01) > 0).astype(np.uint8)
    area = int(mask.sum())
    if area == 0:
        return 0.0
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    outline = sum(cv2.arcLength(c, True) for c in contours)
    return 2.0 * area / max(outline, 1.0)


def vessel_scale(paths: Sequence[SamplePaths], pre: PreprocessParams) -> dict[str, Any]:
    """How large a dataset's eye and its annotated vessels are in the pixels a model sees with the
    preprocessing ``pre`` (its crop and resize; the padding does not matter): a diagnosis of scale
    between datasets, computed from the reference masks, never part of a score.

    Per image: ``fov_diameter`` (the longer side of the FOV's bounding box, in model pixels),
    ``vessel_share`` (the share of the FOV's pixels annotated as vessel, at the original resolution)
    and ``vessel_width`` (:func:`vessel_width` of the mask as the model's input grid holds it:
    nearest-neighbour resized like the training masks). Returns ``{"images": [...], "mean": {...},
    "min": {...}, "max": {...}}``.
    """
    rows = []
    for sample_paths in paths:
        sample = load_sample(*sample_paths)
        box = fov_box(sample.fov)
        if box is None:  # load_sample refuses an empty FOV; kept for the type checker's sake
            raise CrossdataError(f"{sample_paths[1]}: the field of view is empty")
        crop = box if pre.scale == "fov" else None
        geometry = compute_geometry(sample.gt.shape[0], sample.gt.shape[1], pre.size, crop)
        rows.append(
            {
                "id": sample.id,
                "fov_diameter": max(box[2], box[3]) * geometry.scale,
                "vessel_share": float(sample.gt[sample.fov].mean()),
                "vessel_width": vessel_width(preprocess_mask(sample.gt, geometry, pad=False)),
            }
        )
    keys = ("fov_diameter", "vessel_share", "vessel_width")
    summary = {
        how: {k: float(fn([r[k] for r in rows])) for k in keys}
        for how, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))
    }
    return {"size": pre.size, "scale": pre.scale, "images": rows, **summary}


# what error_breakdown counts; "near" and "rim" in the model's pixels (converted per image)
ERROR_NEAR_PX = 1.5  # a false positive this close to a reference vessel widens it
ERROR_RIM_PX = 10.0  # an error this close to the FOV's edge is at the rim


def error_counts(
    sample: Sample,
    prob: np.ndarray,
    thresholds: Sequence[float],
    model_px: float,
    near_px: float,
    rim_px: float,
) -> list[dict[str, int]]:
    """One image's errors at each of ``thresholds``, inside its FOV, sorted by where they lie (see
    :func:`error_breakdown`). ``model_px`` is the length of one model pixel in the image's own
    pixels (the inverse of the preprocessing scale), so ``near_px`` and ``rim_px`` mean the same on
    every dataset whatever its resolution."""
    # distances at the image's own resolution (L2, within OpenCV's 5×5 mask's accuracy), once per image
    to_vessel = cv2.distanceTransform((~sample.gt).astype(np.uint8), cv2.DIST_L2, 5)
    to_edge = cv2.distanceTransform(sample.fov.astype(np.uint8), cv2.DIST_L2, 5)
    near = to_vessel <= near_px * model_px
    rim = to_edge <= rim_px * model_px
    truth = sample.gt & sample.fov
    out = []
    for threshold in thresholds:
        marked = (prob >= threshold) & sample.fov
        fp, fn = marked & ~truth, truth & ~marked
        out.append(
            {
                **M.confusion(marked, sample.gt, sample.fov)._asdict(),
                "fp_near": int(np.count_nonzero(fp & near)),
                "fp_rim": int(np.count_nonzero(fp & rim)),
                "fn_rim": int(np.count_nonzero(fn & rim)),
            }
        )
    return out


def error_breakdown(
    predictor: Predictor,
    paths: Sequence[SamplePaths],
    thresholds: Sequence[float],
    near_px: float = ERROR_NEAR_PX,
    rim_px: float = ERROR_RIM_PX,
) -> list[dict[str, float]]:
    """Where a model's errors on a dataset lie at each of ``thresholds``, pooled over its images' FOV
    pixels (one prediction per image): a diagnosis (it reads the reference masks), never a score.

    For each threshold:

    * ``marked_over_reference``: pixels marked / pixels annotated (1 = as much as the annotators);
    * ``fp_near_share``: the share of false positives within ``near_px`` model pixels of an
      annotated vessel: vessels drawn wider than the annotators drew them, rather than vessels
      (or texture) they did not mark at all (``1 - fp_near_share``);
    * ``fp_rim_share`` / ``fn_rim_share``: the share of false positives / negatives within
      ``rim_px`` model pixels of the FOV's edge;
    * ``f1``, ``precision``, ``sensitivity``: the pooled scores these counts give (evaluate's,
      :func:`~retinaseg.evaluation.metrics.scores_from_confusion`);
    * the counts themselves (``tp``, ``fp``, ``fn``, ``tn``, ``fp_near``, ``fp_rim``, ``fn_rim``).
    """
    keys = ("tp", "fp", "fn", "tn", "fp_near", "fp_rim", "fn_rim")
    totals = [dict.fromkeys(keys, 0) for _ in thresholds]
    pre = predictor.preprocess
    for sample_paths in paths:
        sample = load_sample(*sample_paths)
        crop = fov_box(sample.fov) if pre.scale == "fov" else None
        geometry = compute_geometry(sample.gt.shape[0], sample.gt.shape[1], pre.size, crop)
        prob = predictor.probability(sample.image)
        counts = error_counts(sample, prob, thresholds, 1.0 / geometry.scale, near_px, rim_px)
        for total, image_counts in zip(totals, counts, strict=True):
            for key in keys:
                total[key] += image_counts[key]
    out = []
    for total, threshold in zip(totals, thresholds, strict=True):
        tp, fp, fn, tn = (total[k] for k in ("tp", "fp", "fn", "tn"))
        scores = M.scores_from_confusion(tp, fp, fn, tn)
        out.append(
            {
                "threshold": float(threshold),
                "near_px": float(near_px),
                "rim_px": float(rim_px),
                **total,
                **{k: scores[k] for k in ("f1", "precision", "sensitivity")},
                "marked_over_reference": (tp + fp) / max(1, tp + fn),
                "fp_near_share": total["fp_near"] / max(1, fp),
                "fp_rim_share": total["fp_rim"] / max(1, fp),
                "fn_rim_share": total["fn_rim"] / max(1, fn),
            }
        )
    return out


# ----------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class EvaluatedThreshold:
    """What ``evaluate@<model>`` wrote that the matrix needs: its threshold and test fingerprint."""

    value: float
    chosen_on: str  # protocol.threshold_from: "val" (or "default (no val images)")
    test_fingerprint: str | None
    path: Path


def read_evaluated_threshold(metrics_path: str | Path) -> EvaluatedThreshold:
    """The val-chosen threshold of ``reports/metrics/<model>.json`` (key ``threshold``)."""
    path = Path(metrics_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CrossdataError(f"{path}: not found; the evaluate stage writes it (dvc repro)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrossdataError(f"{path}: not a readable JSON metrics file ({exc})") from None
    value = data.get("threshold") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise CrossdataError(f"{path}: key 'threshold' must be a number in [0, 1], got {value!r}")
    protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
    return EvaluatedThreshold(
        float(value), str(protocol.get("threshold_from", "val")), protocol.get("test_fingerprint"), path
    )


class _Pool:
    """One model's running scores on one dataset: per-image rows and the FOV pixels for the AUCs."""

    def __init__(self) -> None:
        self.rows: list[pd.DataFrame] = []
        self.probs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, sample: Sample, prob: np.ndarray, threshold: float, keep: np.ndarray | None) -> None:
        self.rows.append(per_image_scores([sample], [prob], threshold))
        p, y = prob[sample.fov].astype(np.float32, copy=False), sample.gt[sample.fov]
        if keep is not None:
            p, y = p[keep], y[keep]
        self.probs.append(p)
        self.labels.append(y)

    def block(self, curve_points: int, seed: int) -> dict[str, float | None]:
        """The evaluate stage's FOV block (pooled scores, AUCs, per-image F1 mean and std)."""
        table = pd.concat(self.rows, ignore_index=True)
        curves = M.roc_pr(np.concatenate(self.probs), np.concatenate(self.labels), None, curve_points)
        return region_block(table, "fov", curves, n_bootstrap=0, seed=seed)


def _auc_keep(n_fov: int, rate: float, seed: int, index: int) -> np.ndarray | None:
    """Which of an image's ``n_fov`` FOV pixels go into the AUCs: all (None) when ``rate >= 1``, else a
    seeded random ``rate`` share (the same for every model, so their AUCs stay comparable)."""
    if rate >= 1.0:
        return None
    return np.random.default_rng([seed, index]).random(n_fov) < rate


def _total_pixels(paths: Sequence[SamplePaths]) -> int:
    total = 0
    for _, image, _, _ in paths:
        facts = probe_image(image)
        total += int(facts["width"]) * int(facts["height"])
    return total


def score_matrix_row(
    predictors: dict[str, tuple[Predictor, float]],
    paths: Sequence[SamplePaths],
    curve_points: int,
    seed: int,
    max_curve_pixels: int = M.MAX_CURVE_PIXELS,
) -> dict[str, Any]:
    """Score every model of ``predictors`` (``{name: (predictor, threshold)}``) on the images of
    ``paths``, one image at a time; entries that share a predictor object (one model at several
    thresholds) share its one prediction per image. Returns ``{"blocks": {model: FOV block}, "fingerprint",
    "n_fov_derived", "auc_rate", "ms_per_image": {model: ms}}``."""
    rate = min(1.0, max_curve_pixels / max(1, _total_pixels(paths)))
    pools = {name: _Pool() for name in predictors}
    seconds = dict.fromkeys(predictors, 0.0)
    fingerprint = Fingerprint()
    n_derived = 0
    for index, sample_paths in enumerate(paths):
        sample = load_sample(*sample_paths)
        fingerprint.add(sample)
        n_derived += sample.fov_derived
        keep = _auc_keep(int(np.count_nonzero(sample.fov)), rate, seed, index)
        probs: dict[int, np.ndarray] = {}  # one prediction per predictor, however many thresholds use it
        for name, (predictor, threshold) in predictors.items():
            start = time.perf_counter()
            if id(predictor) not in probs:
                probs[id(predictor)] = predictor.probability(sample.image)
            seconds[name] += time.perf_counter() - start
            pools[name].add(sample, probs[id(predictor)], threshold, keep)
    return {
        "blocks": {name: pool.block(curve_points, seed) for name, pool in pools.items()},
        "fingerprint": fingerprint.hexdigest(),
        "n_fov_derived": n_derived,
        "auc_rate": rate,
        "ms_per_image": {name: 1000.0 * s / max(1, len(paths)) for name, s in seconds.items()},
    }


def _fov_words(n_derived: int, n: int) -> str:
    if n_derived == 0:
        return "dataset"
    return "derived" if n_derived == n else f"derived for {n_derived} of {n} images"


def evaluate_on_dataset(
    params: Params,
    name: str,
    models_dir: str | Path = "models",
    metrics_dir: str | Path = "reports/metrics",
    splits_dir: str | Path = "data/splits",
    out_path: str | Path | None = None,
    model_names: Sequence[str] = MODEL_NAMES,
    max_curve_pixels: int = M.MAX_CURVE_PIXELS,
) -> dict[str, Any]:
    """Score every model of ``models_dir`` on dataset ``name``; write ``out_path`` (default
    ``reports/crossdata/<name>.json``) and return ``{"report": what was written, "ms_per_image"}``.

    The report holds only values that are the same for the same code, params and data (a DVC
    output): no durations, run ids or dates.
    """
    selection = select_images(params, name, splits_dir)
    thresholds = {m: read_evaluated_threshold(Path(metrics_dir) / f"{m}.json") for m in model_names}
    torch.set_num_threads(cpu_threads(params.base.threads))  # this job's share of the cores
    device = resolve_device(params.base.device)
    settings = InferenceSettings.from_params(params.evaluate)
    predictors = {}
    for m in model_names:
        model, card = load_model_dir(Path(models_dir) / m, device)
        predictors[m] = (Predictor.from_card(model, card, device, settings), thresholds[m].value)

    row = score_matrix_row(
        predictors, selection.paths, params.evaluate.curve_points, params.base.seed, max_curve_pixels
    )
    if selection.whole_training_set:  # the same images as evaluate, else its F1 is not comparable
        for m, t in thresholds.items():
            if t.test_fingerprint is not None and t.test_fingerprint != row["fingerprint"]:
                raise CrossdataError(
                    f"{t.path}: evaluate scored other test images (fingerprint {t.test_fingerprint[:12]}) "
                    f"than {Path(splits_dir) / 'test.csv'} holds now ({row['fingerprint'][:12]}); "
                    f"rerun evaluate@{m} (dvc repro)"
                )
    n = len(selection.paths)
    entry = selection.entry
    rate = row["auc_rate"]
    report = {
        "dataset": {
            "name": entry.name,
            "source": entry.source,
            "root": entry.root,
            "training": selection.training,
            "images": selection.images,
            "n_images": n,
            "fov": _fov_words(row["n_fov_derived"], n),
            "auc_pixels": "all FOV pixels" if rate >= 1.0 else f"a seeded {rate:.6f} share of the FOV pixels",
            "test_fingerprint": row["fingerprint"],
        },
        "models": {
            m: {
                "threshold": thresholds[m].value,
                "threshold_from": f"{Path(metrics_dir).as_posix()}/{m}.json ({thresholds[m].chosen_on})",
                **{k: row["blocks"][m][k] for k in SCORES},
            }
            for m in model_names
        },
    }
    write_json(out_path or Path("reports/crossdata") / f"{entry.name}.json", report)
    return {"report": report, "ms_per_image": row["ms_per_image"]}


# ---------------------------------------------------------------------------------------- ensemble


class _LastMap:
    """A predictor that keeps its last image's probability map, so that an ensemble's members are
    scored alone and inside the mean with one prediction each per image. It holds the image itself,
    not its ``id()``: a freed image's id can be a new image's."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._image: np.ndarray | None = None
        self._preprocess: PreprocessParams | None = None
        self._prob: np.ndarray | None = None

    def probability(self, image: np.ndarray, preprocess: PreprocessParams | None = None) -> np.ndarray:
        if self._prob is None or image is not self._image or preprocess is not self._preprocess:
            self._prob = self.predictor.probability(image, preprocess)
            self._image, self._preprocess = image, preprocess
        return self._prob

    def probabilities(
        self, images: Sequence[np.ndarray], preprocess: PreprocessParams | None = None
    ) -> list[np.ndarray]:
        return [self.probability(image, preprocess) for image in images]


def _read_splits(checkout: Path) -> dict[str, bytes]:
    splits = checkout / "data" / "splits"
    try:
        return {name: (splits / f"{name}.csv").read_bytes() for name in ("train", "val", "test")}
    except OSError as exc:
        raise CrossdataError(
            f"{checkout}: no readable split ({exc}); an ensemble member is a checkout that ran "
            "the pipeline (data/splits, models/<model>)"
        ) from None


def _checkout_seed(checkout: Path) -> int | None:
    """The ``base.seed`` a member was trained with, from its params.yaml (None without one)."""
    try:
        return load_params(checkout / "params.yaml").base.seed
    except (ConfigError, OSError):
        return None


def evaluate_ensemble_on_dataset(
    params: Params,
    name: str,
    checkouts: Sequence[str | Path],
    model_name: str = "unet",
    out_path: str | Path | None = None,
    max_curve_pixels: int = M.MAX_CURVE_PIXELS,
) -> dict[str, Any]:
    """Score the mean of ``models/<model_name>`` of several checkouts (one model trained with
    several ``base.seed``: a seed ensemble) on dataset ``name``, next to each member alone.

    The checkouts must share one split (``split.seed`` set, ``data`` the same): their
    ``data/splits/*.csv`` are compared byte for byte. Each member's threshold and the ensemble's
    are chosen on that split's val images (pooled FOV F1, as evaluate chooses), never on the scored
    dataset; then the dataset is scored as :func:`evaluate_on_dataset` scores it. ``params`` gives
    the data, the ``evaluate`` group's inference settings and ``datasets``. Writes ``out_path``
    (when given) and returns the report.
    """
    roots = [Path(c) for c in checkouts]
    if len(roots) < 2:
        raise CrossdataError(f"an ensemble needs two checkouts or more, got {len(roots)}")
    shared = _read_splits(roots[0])
    for root in roots[1:]:
        for split, data in _read_splits(root).items():
            if data != shared[split]:
                raise CrossdataError(
                    f"{root / 'data' / 'splits' / (split + '.csv')} differs from "
                    f"{roots[0] / 'data' / 'splits' / (split + '.csv')}: an ensemble's members must "
                    "share one split (train them with the same split.seed and data)"
                )
    names = [root.resolve().name for root in roots]
    if len(set(names)) != len(names):
        raise CrossdataError(f"two checkouts have one folder name ({names}): name each member's folder apart")
    splits_dir = roots[0] / "data" / "splits"
    selection = select_images(params, name, splits_dir)
    torch.set_num_threads(cpu_threads(params.base.threads))  # this job's share of the cores
    device = resolve_device(params.base.device)
    settings = InferenceSettings.from_params(params.evaluate)
    members: dict[str, _LastMap] = {}
    seeds: dict[str, int | None] = {}
    for member, root in zip(names, roots, strict=True):
        model, card = load_model_dir(root / "models" / model_name, device)
        members[member] = _LastMap(Predictor.from_card(model, card, device, settings))
        seeds[member] = _checkout_seed(root)
    ensemble = MeanPredictor(list(members.values()))

    val = read_split(splits_dir, "val")
    data_root = Path(params.data.root)
    chosen = {}
    for member, predictor in {**members, "ensemble": ensemble}.items():
        threshold, val_f1, n_val = choose_threshold_on(predictor, iter_split_samples(val, data_root))
        if n_val == 0:
            raise CrossdataError(f"{splits_dir / 'val.csv'}: no val images to choose the thresholds on")
        chosen[member] = (threshold, val_f1)

    predictors = {m: (p, chosen[m][0]) for m, p in members.items()}
    predictors["ensemble"] = (ensemble, chosen["ensemble"][0])
    row = score_matrix_row(
        predictors, selection.paths, params.evaluate.curve_points, params.base.seed, max_curve_pixels
    )
    n = len(selection.paths)
    report = {
        "dataset": {
            "name": selection.entry.name,
            "source": selection.entry.source,
            "root": selection.entry.root,
            "training": selection.training,
            "images": selection.images,
            "n_images": n,
            "fov": _fov_words(row["n_fov_derived"], n),
            "test_fingerprint": row["fingerprint"],
        },
        "model": model_name,
        "tta": bool(params.evaluate.tta),
        "tta_scales": list(params.evaluate.tta_scales),
        "members": [
            {"name": m, "checkout": str(root), "seed": seeds[m]} for m, root in zip(names, roots, strict=True)
        ],
        "scores": {
            m: {
                "threshold": chosen[m][0],
                "val_f1": chosen[m][1],
                **{k: row["blocks"][m][k] for k in SCORES},
            }
            for m in predictors
        },
    }
    if out_path is not None:
        write_json(out_path, report)
    return report


# ------------------------------------------------------------------------------------------- table


def load_matrix(params: Params, crossdata_dir: str | Path = "reports/crossdata") -> list[dict[str, Any]]:
    """The reports of every dataset in ``datasets``, in that order; each must match its entry."""
    reports = []
    for i, entry in enumerate(params.datasets):
        path = Path(crossdata_dir) / f"{entry.name}.json"
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            raise CrossdataError(
                f"{path}: not found; the crossdata stage of datasets[{i}] ({entry.name!r}) "
                "writes it (dvc repro)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CrossdataError(f"{path}: not a readable JSON report ({exc})") from None
        ds = report.get("dataset", {}) if isinstance(report, dict) else {}
        if not isinstance(report.get("models"), dict) or not isinstance(ds, dict):
            raise CrossdataError(f"{path}: not a crossdata report (keys 'dataset' and 'models' expected)")
        mine = {"name": entry.name, "source": entry.source, "root": entry.root}
        theirs = {k: ds.get(k) for k in mine}
        if theirs != mine:
            raise CrossdataError(
                f"{path}: written for {theirs}, but datasets[{i}] is {mine}; rerun its crossdata stage"
            )
        reports.append(report)
    return reports


def _models(reports: list[dict[str, Any]]) -> list[str]:
    names = list(reports[0]["models"])
    for report in reports[1:]:
        if list(report["models"]) != names:
            raise CrossdataError(
                f"the crossdata reports score different models: {names} vs {list(report['models'])} "
                f"(dataset {report['dataset']['name']!r})"
            )
    return names


def model_thresholds(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Each model's threshold; one per model across datasets (else a report is stale)."""
    out: dict[str, float] = {}
    for report in reports:
        for m, scores in report["models"].items():
            if out.setdefault(m, scores["threshold"]) != scores["threshold"]:
                raise CrossdataError(
                    f"{m}: threshold {scores['threshold']} in the report of {report['dataset']['name']!r} "
                    f"but {out[m]} in another; a crossdata report is stale (dvc repro)"
                )
    return out


def _column(report: dict[str, Any]) -> str:
    name = report["dataset"]["name"]
    return f"{name} (training)" if report["dataset"]["training"] else name


def _cell(scores: dict[str, Any]) -> str:
    return " / ".join(format_value(scores.get(k), 4) for k in CELL_SCORES)


def crossdata_markdown(reports: list[dict[str, Any]]) -> str:
    """The table (rows models, columns datasets, cells F1 / AUC-ROC / MCC) with its protocol."""
    models = _models(reports)
    thresholds = model_thresholds(reports)
    headers = ["Model", "Threshold (val)", *(_column(r) for r in reports)]
    rows = [[m, thresholds[m], *(_cell(r["models"][m]) for r in reports)] for m in models]
    table = markdown_table(headers, rows, digits=[0, 3, *([0] * len(reports))])
    lines = [
        table,
        "",
        "Cells: F1 / AUC-ROC / MCC, pooled over the pixels inside the field of view (FOV), at each model's "
        "threshold chosen on the training data's val split by `evaluate@<model>` "
        "(`reports/metrics/<model>.json`), never tuned on the dataset scored. "
        "Predictions use each model's own preprocessing (its model card) at the images' original resolution.",
        "",
        "Datasets:",
    ]
    for r in reports:
        d = r["dataset"]
        role = "trained on (scored on held-out test images only)" if d["training"] else "unseen in training"
        lines.append(
            f"- {d['name']} ({d['source']}, `{d['root']}`): {role}; {d['images']}, {d['n_images']} images; "
            f"FOV: {d['fov']}; AUCs over {d['auc_pixels']}."
        )
    return "\n".join(lines) + "\n"


def f1_matrix(reports: list[dict[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """(model names, column labels, models × datasets FOV F1; NaN where there is none)."""
    models = _models(reports)
    values = np.array(
        [
            [math.nan if r["models"][m]["f1"] is None else r["models"][m]["f1"] for r in reports]
            for m in models
        ],
        dtype=np.float64,
    )
    return models, [_column(r) for r in reports], values


def heatmap_png(reports: list[dict[str, Any]]) -> bytes:
    """A heat-map of FOV F1 (models × datasets), each cell annotated; the same bytes on every run
    (no date or software version in the PNG's metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # seconds to import: only the table stage
    from matplotlib.figure import Figure

    models, columns, values = f1_matrix(reports)
    fig = Figure(figsize=(2.2 + 1.5 * len(columns), 1.2 + 0.6 * len(models)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(models)):
        for j in range(len(columns)):
            v = values[i, j]
            missing = math.isnan(v)
            dark = not missing and v < 0.6  # viridis is dark below ~0.6: white text there
            text = "–" if missing else f"{v:.3f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(columns)), labels=[c.replace(" (training)", "\n(training)") for c in columns])
    ax.set_yticks(range(len(models)), labels=models)
    ax.set_title("FOV F1 at the val-chosen threshold", fontsize=10)
    fig.colorbar(image, ax=ax, label="F1")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def write_table(
    params: Params,
    crossdata_dir: str | Path = "reports/crossdata",
    out_md: str | Path = "reports/crossdata.md",
    out_png: str | Path = "reports/crossdata.png",
) -> list[dict[str, Any]]:
    """``reports/crossdata.md`` and ``reports/crossdata.png`` from the per-dataset reports; returns them."""
    reports = load_matrix(params, crossdata_dir)
    write_text(out_md, crossdata_markdown(reports))
    write_bytes(out_png, heatmap_png(reports))
    return reports


def mlflow_metrics(reports: list[dict[str, Any]], model: str) -> dict[str, float]:
    """``cross_<dataset>_<score>`` for one model (scores without a value are left out)."""
    out = {}
    for r in reports:
        scores = r["models"][model]
        for k in CELL_SCORES:
            if scores.get(k) is not None:
                out[f"cross_{r['dataset']['name']}_{k}"] = float(scores[k])
    return out


def log_to_mlflow(
    reports: list[dict[str, Any]],
    experiment: str,
    models_dir: str | Path = "models",
    files: Sequence[str | Path] = ("reports/crossdata.md", "reports/crossdata.png"),
) -> list[str]:
    """Log each model's ``cross_*`` metrics and ``files`` (under ``crossdata/``) into the MLflow run that
    trained it (found by its weights' sha256); returns one line per model saying what happened."""
    import mlflow  # seconds to import: only the table stage logs

    from retinaseg.tracking import training_run_id

    lines = []
    for m in _models(reports):
        model_dir = Path(models_dir) / m
        run_id = training_run_id(model_dir, m, experiment) if (model_dir / "model.pt").is_file() else None
        if not run_id:
            lines.append(
                f"{m}: no run in MLflow experiment {experiment!r} trained {model_dir}/model.pt; "
                "nothing logged"
            )
            continue
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(mlflow_metrics(reports, m))
            for path in files:
                mlflow.log_artifact(str(path), artifact_path="crossdata")
        lines.append(f"{m}: logged to MLflow run {run_id}")
    return lines
