"""`retinaseg score`: score a folder of predictions against a folder of ground truth.

Files are paired by :func:`retinaseg.data.sources.sample_id`, so DRIVE's ``01_manual2.gif`` (second
observer) pairs with ``01_manual1.gif`` (truth) and ``01_test_mask.gif`` (field of view).

**A ``retinaseg predict`` output folder** (it holds ``predict_report.json``, or ``<stem>_mask.png``
beside ``<stem>_prob.png``) is recognised: its ``<stem>_mask.png`` files are scored (``use="prob"``:
its ``<stem>_prob.png`` files), the other outputs are ignored, and the id is that of the input
``<stem>`` (``01_test_mask.png`` → ``01``, the id of ``01_test.tif``). Probability maps from such a
folder are thresholded at the threshold predict used (from its report) unless one is given.

Predictions may be **binary masks** (0/255, 0/1, or two near-black/near-white palette values) or
**probability maps** (8-bit grey, read as p = value / 255, vessel where p >= threshold). When every
prediction is a probability map, ROC-AUC and PR-AUC are reported too. Scores are pooled over pixels
(the standard protocol) and also given per image (mean ± std), inside the FOV (when a FOV folder is
given) and over the whole image.

A prediction that cannot be scored (no ground truth or FOV mask for its id, an unreadable file, a size
mismatch, an empty FOV) is an error entry naming the file, passed at once to ``on_error``; the others
are still scored. Ground-truth files without a prediction are listed (``unscored_ground_truth``), not
errors: scoring predictions for some of a dataset's images against its whole truth folder is normal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaseg.core.errors import RetinasegError
from retinaseg.data.io import IMAGE_SUFFIXES, ImageReadError, binarise_mask, read_mask
from retinaseg.data.sources import sample_id
from retinaseg.evaluation import metrics as M
from retinaseg.evaluation.reporting import markdown_table

TABLE_SCORES = (
    "f1",
    "iou",
    "sensitivity",
    "specificity",
    "accuracy",
    "precision",
    "mcc",
    "auc_roc",
    "auc_pr",
)

#: What ``retinaseg predict`` writes per input ``<stem>.<ext>``: ``<stem>_<kind>.png`` for each kind,
#: and one report (:func:`retinaseg.inference.files.output_paths`; not imported: it pulls in torch).
PREDICT_KINDS: tuple[str, ...] = ("mask", "prob", "overlay")
PREDICT_REPORT = "predict_report.json"
#: The kinds of a predict output that can be scored (``use``).
SCORABLE_KINDS: tuple[str, ...] = ("mask", "prob")
DEFAULT_THRESHOLD = 0.5


class ScoreError(RetinasegError, ValueError):
    """Folders that cannot be scored at all, or one prediction that cannot be (names the file)."""


# ------------------------------------------------------------------------------------------ pairing


def _image_files(folder: Path, role: str) -> list[Path]:
    """The non-hidden entries with an image suffix in ``folder``, sorted. Entries that are not regular
    files (a folder named ``x.png``, a FIFO) are kept: reading them fails with a message naming them."""
    if not folder.exists():
        raise ScoreError(f"{folder}: {role} folder not found")
    if not folder.is_dir():
        raise ScoreError(f"{folder}: the {role} folder is not a folder")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ScoreError(f"{folder}: cannot list the {role} folder ({exc.strerror or exc})") from None
    files = [p for p in entries if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ScoreError(f"{folder}: no image files in the {role} folder ({' '.join(IMAGE_SUFFIXES)})")
    return files


def _by_id(keyed: list[tuple[str, Path]], folder: Path, role: str) -> dict[str, Path]:
    """``{id: path}``; two files for one id are an error (which one is meant is anyone's guess)."""
    index: dict[str, Path] = {}
    for key, path in keyed:
        if key in index:
            raise ScoreError(f"{folder}: two {role} files for sample {key!r}: {index[key].name}, {path.name}")
        index[key] = path
    return index


def predict_output_kind(name: str) -> tuple[str, str] | None:
    """``(input stem, kind)`` for a file name that ``retinaseg predict`` writes
    (``01_test_prob.png`` → ``("01_test", "prob")``), else None."""
    if not name.lower().endswith(".png"):
        return None
    base = name[: -len(".png")]
    for kind in PREDICT_KINDS:
        suffix = f"_{kind}"
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)], kind
    return None


def is_predict_output(folder: str | Path) -> bool:
    """Whether ``folder`` was written by ``retinaseg predict``: it holds ``predict_report.json``,
    or some input's ``<stem>_mask.png`` beside its ``<stem>_prob.png``."""
    folder = Path(folder)
    if (folder / PREDICT_REPORT).is_file():
        return True
    kinds: dict[str, set[str]] = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        parsed = predict_output_kind(path.name)
        if parsed is not None:
            kinds.setdefault(parsed[0], set()).add(parsed[1])
    return any({"mask", "prob"} <= found for found in kinds.values())


def _predict_threshold(folder: Path) -> float | None:
    """The threshold recorded in ``predict_report.json``, when it is there and sensible."""
    try:
        value = json.loads((folder / PREDICT_REPORT).read_text()).get("threshold")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


@dataclass(frozen=True)
class Predictions:
    """The prediction files of a folder, by sample id.

    ``kind`` is the predict output kind scored (``"mask"``/``"prob"``) for a ``retinaseg predict``
    folder, None for any other folder (every image file is a prediction); ``ignored`` the image files
    not scored (a predict folder's other outputs); ``threshold`` predict's threshold, when recorded."""

    folder: Path
    files: dict[str, Path]
    kind: str | None = None
    ignored: tuple[Path, ...] = ()
    threshold: float | None = None


def index_predictions(folder: str | Path, use: str | None = None) -> Predictions:
    """The predictions in ``folder``; see the module docstring. ``use`` (``"mask"`` by default, or
    ``"prob"``) picks the files of a ``retinaseg predict`` folder; it is an error for another folder."""
    folder = Path(folder)
    if use is not None and use not in SCORABLE_KINDS:
        raise ScoreError(f"use must be one of {', '.join(SCORABLE_KINDS)}, got {use!r}")
    files = _image_files(folder, "prediction")
    if not is_predict_output(folder):
        if use is not None:
            raise ScoreError(
                f"{folder}: not a retinaseg predict output folder (no {PREDICT_REPORT}, no "
                f"<stem>_mask.png beside <stem>_prob.png), so there are no _{use} files to choose; "
                "every image file in it is a prediction (leave out --use)"
            )
        return Predictions(folder, _by_id([(sample_id(p.name), p) for p in files], folder, "prediction"))
    kind = use or "mask"
    chosen: list[tuple[str, Path]] = []
    ignored: list[Path] = []
    for path in files:
        parsed = predict_output_kind(path.name)
        if parsed is not None and parsed[1] == kind:
            chosen.append((sample_id(f"{parsed[0]}.png"), path))
        else:
            ignored.append(path)
    if not chosen:
        raise ScoreError(f"{folder}: a retinaseg predict output folder without any <stem>_{kind}.png file")
    return Predictions(
        folder,
        _by_id(chosen, folder, f"_{kind}"),
        kind,
        tuple(ignored),
        _predict_threshold(folder),
    )


def _reference(folder: str | Path, role: str) -> dict[str, Path]:
    folder = Path(folder)
    return _by_id([(sample_id(p.name), p) for p in _image_files(folder, role)], folder, role)


# ------------------------------------------------------------------------------------------ reading


def _read_grey(path: Path) -> np.ndarray:
    """:func:`read_mask`, with a file that cannot be opened (permission denied, ...) reported as such
    rather than as corrupt image data."""
    if path.is_file():
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    return read_mask(path)


def read_prediction(path: Path) -> tuple[np.ndarray, bool]:
    """(probability map float32 in [0, 1], is_binary).

    Binary masks: only the values {0, 1}, or at most two values that are all near black (<= 8) or near
    white (>= 247) — DRIVE's own GIFs store 0/251 or 3/253 through their palettes; vessel = value > 127.
    Anything else is a probability map, p = value / 255.
    """
    grey = _read_grey(Path(path))
    values = set(np.unique(grey).tolist())
    if values <= {0, 1}:
        return grey.astype(np.float32), True
    if len(values) <= 2 and all(v <= 8 or v >= 247 for v in values):
        return (grey > 127).astype(np.float32), True
    return grey.astype(np.float32) / 255.0, False


@dataclass
class _Sample:
    key: str
    pred_path: Path
    prob: np.ndarray
    is_binary: bool
    gt: np.ndarray
    fov: np.ndarray | None


def _load_sample(key: str, pred_path: Path, gt_path: Path, fov_path: Path | None) -> _Sample:
    """Read and check one (prediction, truth, FOV) triple; ``ImageReadError``/``ScoreError`` naming
    the file at fault."""
    prob, is_binary = read_prediction(pred_path)
    gt = binarise_mask(_read_grey(gt_path)).astype(bool)
    if prob.shape != gt.shape:
        raise ScoreError(f"{pred_path}: size {prob.shape[::-1]} differs from {gt_path.name} {gt.shape[::-1]}")
    fov = None
    if fov_path is not None:
        fov = binarise_mask(_read_grey(fov_path)).astype(bool)
        if fov.shape != gt.shape:
            raise ScoreError(
                f"{fov_path}: size {fov.shape[::-1]} differs from {gt_path.name} {gt.shape[::-1]}"
            )
        if not fov.any():
            raise ScoreError(f"{fov_path}: the FOV mask is empty")
    return _Sample(key, pred_path, prob, is_binary, gt, fov)


def _os_message(exc: OSError, fallback: Path) -> str:
    where = exc.filename if exc.filename is not None else fallback
    return f"{where}: {exc.strerror or exc}"


# ------------------------------------------------------------------------------------------ scoring


def _region_summary(confusions: list[M.Confusion], f1s: list[float], curves: dict | None) -> dict:
    pooled = sum(confusions[1:], confusions[0])
    out: dict = {**M.scores_from_confusion(*pooled)}
    if curves is not None:
        out["auc_roc"], out["auc_pr"] = curves["auc_roc"], curves["auc_pr"]
    out["f1_mean"] = float(np.mean(f1s))
    out["f1_std"] = float(np.std(f1s))
    out["n_pixels"] = pooled.n
    out.update(tp=pooled.tp, fp=pooled.fp, fn=pooled.fn, tn=pooled.tn)
    return out


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [0, 1]; ``ScoreError`` otherwise (NaN and infinities included)."""
    value = float(threshold)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ScoreError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    return value


def score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    fov_dir: str | Path | None = None,
    threshold: float | None = None,
    use: str | None = None,
    on_error: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score predictions against ground truth; see the module docstring for formats and pairing.

    ``threshold`` (for probability maps): default the one ``retinaseg predict`` recorded in the
    folder's report, else 0.5. ``use``: which files of a predict output folder to score (``"mask"``,
    the default, or ``"prob"``). Binary/probability detection is per file, see :func:`read_prediction`.

    Raises ``ScoreError`` when a folder is missing or empty, a folder holds two files for one id, or
    no prediction at all could be scored. Returns ``{"n_images", "n_failed", "prediction_kind",
    "threshold", "threshold_from", "predictions": {"folder", "predict_output", "use", "ignored"},
    "fov": {...} (with a FOV folder), "image": {...}, "per_image": [...], "errors": [{"file", "error"}],
    "unscored_ground_truth": [names]}``; region dicts hold the pooled scores, ``auc_roc``/``auc_pr``
    (probability maps only), ``f1_mean``/``f1_std`` over images and the pixel counts.
    """
    preds = index_predictions(pred_dir, use)
    gts = _reference(gt_dir, "ground-truth")
    fovs = _reference(fov_dir, "FOV") if fov_dir is not None else None
    if threshold is not None:
        thr, thr_from = check_threshold(threshold), "given"
    elif preds.threshold is not None:
        thr, thr_from = preds.threshold, PREDICT_REPORT
    else:
        thr, thr_from = DEFAULT_THRESHOLD, "default"
    report_error = on_error or (lambda message: None)
    errors: list[dict[str, str]] = []

    def fail(path: Path, message: str) -> None:
        errors.append({"file": str(path), "error": message})
        report_error(message)

    samples: list[_Sample] = []
    for key in sorted(preds.files):
        pred_path = preds.files[key]
        if key not in gts:
            fail(pred_path, f"{pred_path}: no ground truth for sample {key!r} in {gt_dir}")
            continue
        if fovs is not None and key not in fovs:
            fail(pred_path, f"{pred_path}: no FOV mask for sample {key!r} in {fov_dir}")
            continue
        try:
            samples.append(_load_sample(key, pred_path, gts[key], fovs[key] if fovs is not None else None))
        except RetinasegError as exc:
            fail(pred_path, str(exc))
        except OSError as exc:
            fail(pred_path, _os_message(exc, pred_path))
    if not samples:
        raise ScoreError(
            f"none of the {len(preds.files)} prediction(s) in {pred_dir} could be scored "
            "(the errors name each file)"
        )

    regions = ("fov", "image") if fovs is not None else ("image",)
    conf: dict[str, list[M.Confusion]] = {r: [] for r in regions}
    f1s: dict[str, list[float]] = {r: [] for r in regions}
    per_image = []
    for s in samples:
        pred = s.prob >= thr
        row: dict = {"id": s.key, "prediction": s.pred_path.name, "binary": s.is_binary}
        for region in regions:
            c = M.confusion(pred, s.gt, s.fov if region == "fov" else None)
            scores = M.scores_from_confusion(*c)
            conf[region].append(c)
            f1s[region].append(scores["f1"])
            row.update({f"{region}_{k}": v for k, v in scores.items()})
        per_image.append(row)
    kinds = [s.is_binary for s in samples]
    all_prob = not any(kinds)
    result: dict[str, Any] = {
        "n_images": len(samples),
        "n_failed": len(errors),
        "prediction_kind": "binary" if all(kinds) else "probability" if all_prob else "mixed",
        "threshold": None if all(kinds) else thr,
        "threshold_from": None if all(kinds) else thr_from,
        "predictions": {
            "folder": str(preds.folder),
            "predict_output": preds.kind is not None,
            "use": preds.kind,
            "ignored": len(preds.ignored),
        },
    }
    for region in regions:
        curves = None
        if all_prob:
            curves = M.roc_pr(
                [s.prob for s in samples],
                [s.gt for s in samples],
                [s.fov for s in samples] if region == "fov" else None,
                n_points=2,
            )
        result[region] = _region_summary(conf[region], f1s[region], curves)
    result["per_image"] = per_image
    result["errors"] = errors
    result["unscored_ground_truth"] = [gts[k].name for k in sorted(set(gts) - set(preds.files))]
    return result


def scores_table(result: dict, columns: tuple[str, ...] = TABLE_SCORES) -> str:
    """Markdown table: one row per region (FOV, whole image) × the pooled scores present."""
    regions = [r for r in ("fov", "image") if r in result]
    cols = [c for c in columns if any(result[r].get(c) is not None for r in regions)]
    rows = [
        [{"fov": "inside FOV", "image": "whole image"}[r], *(result[r].get(c) for c in cols)] for r in regions
    ]
    return markdown_table(["region (pooled pixels)", *cols], rows, digits=4)
