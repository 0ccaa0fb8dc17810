"""Pixel metrics for vessel segmentation: confusion counts, scores, ROC/PR, threshold choice, bootstrap.

Conventions used everywhere in retinaseg:

* A pixel is predicted "vessel" when ``probability >= threshold``.
* Scores are **pooled**: the confusion counts of all images (inside the region that is scored: the
  field of view, or the whole image) are summed, then turned into scores once. Per-image scores are
  reported beside them (mean ± std over images).
* Degenerate cases never produce NaN. A ratio whose denominator is zero is **1.0 when the
  prediction agrees with the truth on the pixels it concerns, else 0.0**:

  ========================  =====================  ===============================================
  score                     formula                value when the denominator is 0
  ========================  =====================  ===============================================
  f1 (= Dice)               2tp / (2tp + fp + fn)  1.0 (no vessels in truth nor prediction)
  iou (= Jaccard)           tp / (tp + fp + fn)    1.0 (same)
  precision                 tp / (tp + fp)         1.0 if fn == 0 else 0.0 (nothing predicted)
  sensitivity (= recall)    tp / (tp + fn)         1.0 if fp == 0 else 0.0 (no vessels in truth)
  specificity               tn / (tn + fp)         1.0 if fn == 0 else 0.0 (no background in truth)
  accuracy                  (tp + tn) / n          n == 0 is an error (nothing to score)
  mcc                       (tp·tn − fp·fn) / √…   1.0 if fp == fn == 0 (perfect), else 0.0
  ========================  =====================  ===============================================

  scikit-learn returns 0.0 for the MCC of a perfect one-class prediction; we return 1.0 there,
  because the prediction is perfect (Chicco & Jurman, 2020, on MCC's undefined cases).

Confusion counts are computed with ``np.count_nonzero`` rather than ``sklearn.metrics.confusion_matrix``:
on millions of pixels the boolean counts are ~50× faster and allocate nothing. ROC/PR curves and
their areas come from scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

SCORE_NAMES: tuple[str, ...] = ("f1", "iou", "precision", "sensitivity", "specificity", "accuracy", "mcc")

# Above this many pooled pixels, ROC/PR are computed on a deterministic random subsample
# (the DRIVE test set is 4.5 M FOV pixels / 6.6 M whole-image pixels: below it, exact).
MAX_CURVE_PIXELS = 20_000_000


class Confusion(NamedTuple):
    """Pixel confusion counts (Python ints, so products never overflow)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: object) -> Confusion:  # type: ignore[override]
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(*(a + b for a, b in zip(self, other, strict=True)))


def confusion(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> Confusion:
    """Confusion counts of a boolean prediction against a boolean truth, optionally inside ``mask``.

    Arrays of any shape (equal shapes required); non-boolean arrays are read as ``!= 0``.
    """
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if mask is not None:
        mask = np.asarray(mask) != 0
        if mask.shape != gt.shape:
            raise ValueError(f"mask shape {mask.shape} differs from ground truth shape {gt.shape}")
        pred = pred[mask]
        gt = gt[mask]
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = int(pred.size - tp - fp - fn)
    return Confusion(tp, fp, fn, tn)


def _ratio(num: float, den: float, fallback: float) -> float:
    return float(num / den) if den > 0 else fallback


def scores_from_confusion(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Scores named in :data:`SCORE_NAMES` from confusion counts (see the module table for 0/0 cases)."""
    n = tp + fp + fn + tn
    if n <= 0:
        raise ValueError("no pixels to score (the scored region is empty)")
    perfect = fp == 0 and fn == 0
    mcc_den = math.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "sensitivity": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
        "specificity": _ratio(tn, tn + fp, 1.0 if fn == 0 else 0.0),
        "accuracy": (tp + tn) / n,
        "mcc": _ratio(float(tp) * tn - float(fp) * fn, mcc_den, 1.0 if perfect else 0.0),
    }


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Vectorised F1 (Dice) over arrays of counts; 1.0 where the denominator is 0."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1.0), 1.0)


def _pool(
    probs: np.ndarray | Sequence[np.ndarray],
    gts: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten one or several (prob, gt[, mask]) images into pooled 1-D probability and label arrays."""
    if isinstance(probs, np.ndarray):
        probs, gts = [probs], [gts]
        masks = None if masks is None else [masks]
    if len(probs) != len(gts) or (masks is not None and len(masks) != len(probs)):
        raise ValueError("probs, gts and masks must have the same number of images")
    p_parts, y_parts = [], []
    for i, (p, g) in enumerate(zip(probs, gts, strict=True)):
        p = np.asarray(p, dtype=np.float32)
        g = np.asarray(g) != 0
        if p.shape != g.shape:
            raise ValueError(f"image {i}: probability shape {p.shape} differs from ground truth {g.shape}")
        if masks is not None:
            m = np.asarray(masks[i]) != 0
            if m.shape != g.shape:
                raise ValueError(f"image {i}: mask shape {m.shape} differs from ground truth {g.shape}")
            p, g = p[m], g[m]
        p_parts.append(p.ravel())
        y_parts.append(g.ravel())
    return np.concatenate(p_parts), np.concatenate(y_parts)


def downsample_curve(x: np.ndarray, y: np.ndarray, n_points: int) -> np.ndarray:
    """Indices of at most ``n_points`` points spread evenly along the curve's arc length.

    Keeps both end points. Even spacing in arc length (not in x) keeps the steep part of a vessel
    ROC curve near FPR = 0, where an even FPR grid would put almost no points.
    """
    n = len(x)
    if n <= n_points:
        return np.arange(n)
    seg = np.hypot(np.diff(x), np.diff(y))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], n_points)
    idx = np.searchsorted(s, targets, side="left").clip(0, n - 1)
    idx[0], idx[-1] = 0, n - 1
    return np.unique(idx)


def roc_pr(
    probs: np.ndarray | Sequence[np.ndarray],
    gts: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None = None,
    n_points: int = 200,
    max_pixels: int = MAX_CURVE_PIXELS,
    seed: int = 0,
) -> dict:
    """Pooled ROC-AUC and PR-AUC (average precision) over the pixels of one or several images.

    Returns ``{"auc_roc", "auc_pr", "roc": {"fpr", "tpr", "threshold"}, "pr": {"recall", "precision",
    "threshold"}}`` with curves downsampled to ``n_points``. ``auc_roc`` equals
    ``sklearn.metrics.roc_auc_score`` and ``auc_pr`` equals ``average_precision_score`` (computed from
    the one sorted curve each rather than sorting the pixels twice more). With more than
    ``max_pixels`` pooled pixels a seeded random subsample of that size is used. When the labels
    hold one class only the areas are undefined and returned as NaN-free ``None``.
    """
    p, y = _pool(probs, gts, masks)
    if p.size > max_pixels:
        keep = np.random.default_rng(seed).choice(p.size, size=max_pixels, replace=False)
        p, y = p[keep], y[keep]
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        return {"auc_roc": None, "auc_pr": None, "roc": None, "pr": None}
    fpr, tpr, roc_thr = roc_curve(y, p)
    precision, recall, pr_thr = precision_recall_curve(y, p)
    # sklearn's average_precision_score: AP = sum_n (R_n - R_{n-1}) P_n over the same curve
    auc_pr = float(-np.sum(np.diff(recall) * precision[:-1]))
    roc_thr = np.minimum(roc_thr, 1.0)  # sklearn puts +inf first
    r_idx = downsample_curve(fpr, tpr, n_points)
    pr_thr = np.append(pr_thr, 1.0)  # precision/recall have one more point than thresholds
    p_idx = downsample_curve(recall, precision, n_points)
    return {
        "auc_roc": float(auc(fpr, tpr)),
        "auc_pr": auc_pr,
        "roc": {"fpr": fpr[r_idx], "tpr": tpr[r_idx], "threshold": roc_thr[r_idx]},
        "pr": {"recall": recall[p_idx], "precision": precision[p_idx], "threshold": pr_thr[p_idx]},
    }


def threshold_histograms(
    prob: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, bins: int = 1000
) -> np.ndarray:
    """Histogram of probabilities over ``bins`` equal bins of [0, 1]: a 2×bins array (vessel, background).

    Summing these over images and passing the sum to :func:`best_threshold_from_histograms` chooses a
    pooled threshold without keeping every image's pixels in memory.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    g = np.asarray(gt) != 0
    if mask is not None:
        m = np.asarray(mask) != 0
        p, g = p[m], g[m]
    edges = np.linspace(0.0, 1.0, bins + 1)
    # np.histogram corrects floating-point bin assignment so that value >= edges[i] <=> bin >= i
    pos, _ = np.histogram(p[g], bins=edges)
    neg, _ = np.histogram(p[~g], bins=edges)
    return np.stack([pos, neg]).astype(np.int64)


def best_threshold_from_histograms(hist: np.ndarray) -> tuple[float, float]:
    """(threshold, pooled F1) maximising F1 from summed :func:`threshold_histograms` counts.

    Candidate thresholds are the bin edges ``i / bins``; a pixel is vessel when ``p >= threshold``.
    Equal maxima (thresholds between which no pixel lies) resolve to the middle candidate of the tie.
    """
    pos, neg = hist[0].astype(np.float64), hist[1].astype(np.float64)
    bins = pos.size
    tp = np.cumsum(pos[::-1])[::-1]  # tp[i] = vessel pixels with p >= i / bins
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    f1 = f1_from_counts(tp, fp, fn)
    ties = np.flatnonzero(f1 >= f1.max() - 1e-12)
    i = int(ties[len(ties) // 2])
    return i / bins, float(f1[i])


def best_threshold(
    probs: np.ndarray | Sequence[np.ndarray],
    gts: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None = None,
    bins: int = 1000,
) -> tuple[float, float]:
    """The threshold (a multiple of ``1/bins``) that maximises pooled F1 over the images; (threshold, f1)."""
    if isinstance(probs, np.ndarray):
        probs, gts = [probs], [gts]
        masks = None if masks is None else [masks]
    hist = np.zeros((2, bins), dtype=np.int64)
    for i, (p, g) in enumerate(zip(probs, gts, strict=True)):
        hist += threshold_histograms(p, g, None if masks is None else masks[i], bins)
    return best_threshold_from_histograms(hist)


def bootstrap_ci(
    values: np.ndarray | Sequence, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval over images.

    ``values`` is either per-image confusion counts (an n×4 array of tp, fp, fn, tn: each resample's
    statistic is the **pooled F1** of the resampled images) or a 1-D array of per-image values (each
    resample's statistic is their mean). Images are resampled with replacement, seeded.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 4) or arr.shape[0] == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D array of values or an n×4 array of counts")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.shape[0], size=(n_resamples, arr.shape[0]))
    if arr.ndim == 2:
        sums = arr[idx].sum(axis=1)  # n_resamples × 4
        stats = f1_from_counts(sums[:, 0], sums[:, 1], sums[:, 2])
    else:
        stats = arr[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)
