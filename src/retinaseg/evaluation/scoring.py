"""`retinaseg score`: score a folder of predictions against a folder of ground truth.

Files are paired by :func:`retinaseg.data.sources.sample_id`, so DRIVE's ``01_manual2.gif`` (second
observer) pairs with ``01_manual1.gif`` (truth) and ``01_test_mask.gif`` (field of view).

Predictions may be **binary masks** (0/255, 0/1, or two near-black/near-white palette values) or
**probability maps** (8-bit grey, read as p = value / 255, vessel where p >= threshold). When every
prediction is a probability map, ROC-AUC and PR-AUC are reported too. Scores are pooled over pixels
(the standard protocol) and also given per image (mean ± std), inside the FOV (when a FOV folder is
given) and over the whole image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaseg.data.io import IMAGE_SUFFIXES, binarise_mask, read_mask
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


def _index_folder(folder: Path, role: str) -> dict[str, Path]:
    """``{sample_id: path}`` for the image files in ``folder``; duplicate ids are an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {role} folder not found")
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        key = sample_id(path.name)
        if key in index:
            raise ValueError(f"{folder}: two {role} files for sample {key!r}: {index[key].name}, {path.name}")
        index[key] = path
    if not index:
        raise ValueError(f"{folder}: no image files in the {role} folder")
    return index


def pair_folders(
    pred_dir: Path, gt_dir: Path, fov_dir: Path | None = None
) -> list[tuple[str, Path, Path, Path | None]]:
    """``[(id, pred, gt, fov|None)]`` sorted by id.

    Unpaired predictions or truths, or pairs without a FOV mask (when ``fov_dir`` is given) → ValueError.
    """
    preds = _index_folder(Path(pred_dir), "prediction")
    gts = _index_folder(Path(gt_dir), "ground-truth")
    fovs = _index_folder(Path(fov_dir), "FOV") if fov_dir is not None else None
    problems = []
    if only_pred := sorted(set(preds) - set(gts)):
        problems.append(
            f"predictions without ground truth in {gt_dir}: {', '.join(preds[k].name for k in only_pred)}"
        )
    if only_gt := sorted(set(gts) - set(preds)):
        problems.append(
            f"ground truth without a prediction in {pred_dir}: {', '.join(gts[k].name for k in only_gt)}"
        )
    if fovs is not None and (no_fov := sorted((set(preds) & set(gts)) - set(fovs))):
        problems.append(f"no FOV mask in {fov_dir} for: {', '.join(preds[k].name for k in no_fov)}")
    if problems:
        raise ValueError("unpaired files: " + "; ".join(problems))
    return [(k, preds[k], gts[k], fovs[k] if fovs is not None else None) for k in sorted(preds)]


def read_prediction(path: Path) -> tuple[np.ndarray, bool]:
    """(probability map float32 in [0, 1], is_binary).

    Binary masks: only the values {0, 1}, or at most two values that are all near black (<= 8) or near
    white (>= 247) — DRIVE's own GIFs store 0/251 or 3/253 through their palettes; vessel = value > 127.
    Anything else is a probability map, p = value / 255.
    """
    grey = read_mask(path)
    values = set(np.unique(grey).tolist())
    if values <= {0, 1}:
        return grey.astype(np.float32), True
    if len(values) <= 2 and all(v <= 8 or v >= 247 for v in values):
        return (grey > 127).astype(np.float32), True
    return grey.astype(np.float32) / 255.0, False


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


def score_folders(
    pred_dir: str | Path, gt_dir: str | Path, fov_dir: str | Path | None = None, threshold: float = 0.5
) -> dict:
    """Score predictions against ground truth; see the module docstring for formats and pairing.

    Binary/probability detection is per file, see :func:`read_prediction`.

    Returns ``{"n_images", "prediction_kind", "threshold", "fov": {...} (with a FOV folder),
    "image": {...}, "per_image": [...]}``; region dicts hold the pooled scores, ``auc_roc``/``auc_pr``
    (probability maps only), ``f1_mean``/``f1_std`` over images and the pixel counts.
    """
    pairs = pair_folders(Path(pred_dir), Path(gt_dir), Path(fov_dir) if fov_dir is not None else None)
    regions = ("fov", "image") if fov_dir is not None else ("image",)
    conf: dict[str, list[M.Confusion]] = {r: [] for r in regions}
    f1s: dict[str, list[float]] = {r: [] for r in regions}
    probs, gts, fovs, kinds, per_image = [], [], [], [], []
    for key, pred_path, gt_path, fov_path in pairs:
        prob, is_binary = read_prediction(pred_path)
        gt = binarise_mask(read_mask(gt_path)).astype(bool)
        if prob.shape != gt.shape:
            raise ValueError(
                f"{pred_path}: size {prob.shape[::-1]} differs from {gt_path.name} {gt.shape[::-1]}"
            )
        fov = None
        if fov_path is not None:
            fov = binarise_mask(read_mask(fov_path)).astype(bool)
            if fov.shape != gt.shape:
                raise ValueError(
                    f"{fov_path}: size {fov.shape[::-1]} differs from {gt_path.name} {gt.shape[::-1]}"
                )
            if not fov.any():
                raise ValueError(f"{fov_path}: the FOV mask is empty")
        pred = prob >= threshold
        row: dict = {"id": key, "prediction": pred_path.name, "binary": is_binary}
        for region in regions:
            c = M.confusion(pred, gt, fov if region == "fov" else None)
            s = M.scores_from_confusion(*c)
            conf[region].append(c)
            f1s[region].append(s["f1"])
            row.update({f"{region}_{k}": v for k, v in s.items()})
        per_image.append(row)
        probs.append(prob)
        gts.append(gt)
        fovs.append(fov)
        kinds.append(is_binary)
    all_prob = not any(kinds)
    result: dict = {
        "n_images": len(pairs),
        "prediction_kind": "binary" if all(kinds) else "probability" if all_prob else "mixed",
        "threshold": None if all(kinds) else threshold,
    }
    for region in regions:
        curves = M.roc_pr(probs, gts, fovs if region == "fov" else None, n_points=2) if all_prob else None
        result[region] = _region_summary(conf[region], f1s[region], curves)
    result["per_image"] = per_image
    return result


def scores_table(result: dict, columns: tuple[str, ...] = TABLE_SCORES) -> str:
    """Markdown table: one row per region (FOV, whole image) × the pooled scores present."""
    regions = [r for r in ("fov", "image") if r in result]
    cols = [c for c in columns if any(result[r].get(c) is not None for r in regions)]
    rows = [
        [{"fov": "inside FOV", "image": "whole image"}[r], *(result[r].get(c) for c in cols)] for r in regions
    ]
    return markdown_table(["region (pooled pixels)", *cols], rows, digits=4)
