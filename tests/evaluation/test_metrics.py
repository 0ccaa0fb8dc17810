"""Pixel metrics against hand-computed values on tiny arrays, degenerate cases, threshold, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, matthews_corrcoef, roc_auc_score

from retinaseg.evaluation import metrics as M

PRED = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
GT = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=bool)


def test_confusion_counts_by_hand():
    assert M.confusion(PRED, GT) == M.Confusion(tp=2, fp=1, fn=1, tn=4)
    fov = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    assert M.confusion(PRED, GT, fov) == M.Confusion(tp=1, fp=1, fn=1, tn=1)


def test_scores_by_hand():
    s = M.scores_from_confusion(2, 1, 1, 4)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(4 / 5)
    assert s["accuracy"] == pytest.approx(6 / 8)
    # (2*4 - 1*1) / sqrt(3*3*5*5) = 7 / 15
    assert s["mcc"] == pytest.approx(7 / 15)
    assert s["mcc"] == pytest.approx(matthews_corrcoef(GT.ravel(), PRED.ravel()))


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # no vessels anywhere, none predicted: perfect
        (
            (0, 0, 0, 10),
            {
                "f1": 1.0,
                "iou": 1.0,
                "precision": 1.0,
                "sensitivity": 1.0,
                "specificity": 1.0,
                "accuracy": 1.0,
                "mcc": 1.0,
            },
        ),
        # all vessels, all predicted: perfect
        (
            (10, 0, 0, 0),
            {
                "f1": 1.0,
                "iou": 1.0,
                "precision": 1.0,
                "sensitivity": 1.0,
                "specificity": 1.0,
                "accuracy": 1.0,
                "mcc": 1.0,
            },
        ),
        # vessels present, nothing predicted
        (
            (0, 0, 4, 6),
            {
                "f1": 0.0,
                "iou": 0.0,
                "precision": 0.0,
                "sensitivity": 0.0,
                "specificity": 1.0,
                "accuracy": 0.6,
                "mcc": 0.0,
            },
        ),
        # no vessels in truth, some predicted
        (
            (0, 3, 0, 7),
            {
                "f1": 0.0,
                "iou": 0.0,
                "precision": 0.0,
                "sensitivity": 0.0,
                "specificity": 0.7,
                "accuracy": 0.7,
                "mcc": 0.0,
            },
        ),
        # everything predicted vessel, truth all vessel except none: all-positive prediction
        (
            (5, 5, 0, 0),
            {
                "f1": 10 / 15,
                "iou": 0.5,
                "precision": 0.5,
                "sensitivity": 1.0,
                "specificity": 0.0,
                "accuracy": 0.5,
                "mcc": 0.0,
            },
        ),
    ],
)
def test_degenerate_cases_are_documented_values(counts, expected):
    s = M.scores_from_confusion(*counts)
    assert all(math.isfinite(v) for v in s.values())
    assert s == pytest.approx(expected)


def test_empty_region_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        M.scores_from_confusion(0, 0, 0, 0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        M.confusion(np.zeros((2, 2)), np.zeros((2, 3)))


def test_roc_pr_matches_sklearn_and_respects_mask():
    rng = np.random.default_rng(0)
    gts = [rng.random((20, 30)) < 0.2 for _ in range(3)]
    probs = [np.clip(g * 0.3 + rng.random(g.shape) * 0.7, 0, 1).astype(np.float32) for g in gts]
    masks = [rng.random(g.shape) < 0.8 for g in gts]
    out = M.roc_pr(probs, gts, masks, n_points=50)
    y = np.concatenate([g[m] for g, m in zip(gts, masks, strict=True)])
    p = np.concatenate([q[m] for q, m in zip(probs, masks, strict=True)])
    assert out["auc_roc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert out["auc_pr"] == pytest.approx(average_precision_score(y, p), abs=1e-9)
    assert len(out["roc"]["fpr"]) <= 50 and len(out["pr"]["recall"]) <= 50
    assert out["roc"]["fpr"][0] == 0.0 and out["roc"]["tpr"][-1] == 1.0
    assert np.all(np.diff(out["roc"]["fpr"]) >= 0)


def test_roc_pr_one_class_gives_none_not_nan():
    out = M.roc_pr(np.full((4, 4), 0.3), np.zeros((4, 4), dtype=bool))
    assert out["auc_roc"] is None and out["auc_pr"] is None


def test_best_threshold_finds_the_constructed_optimum():
    # vessels have p in {0.62, 0.7, 0.9}; background p in {0.1, 0.3, 0.55, 0.65}
    probs = np.array([0.62, 0.7, 0.9, 0.1, 0.3, 0.55, 0.65])
    gts = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    # best: 0.55 < t <= 0.62 → tp=3, fp=1 → F1 = 6/7. The tie range [0.551, 0.620] resolves to its middle.
    t, f1 = M.best_threshold(probs, gts)
    assert f1 == pytest.approx(6 / 7)
    assert 0.55 < t <= 0.62
    assert t == pytest.approx(0.585, abs=0.002)
    pooled = M.scores_from_confusion(*M.confusion(probs >= t, gts))
    assert pooled["f1"] == pytest.approx(f1)


def test_best_threshold_pools_over_images_with_masks():
    p1, g1 = np.array([0.8, 0.2]), np.array([1, 0])
    p2, g2 = np.array([0.4, 0.3, 0.99]), np.array([1, 0, 0])
    m2 = np.array([1, 1, 0])  # the 0.99 background pixel is outside the mask: must not count
    t, f1 = M.best_threshold([p1, p2], [g1, g2], [np.ones(2), m2])
    assert f1 == pytest.approx(1.0) and 0.3 < t <= 0.4


def test_bootstrap_ci_pooled_f1_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    counts = np.stack(
        [
            rng.integers(50, 100, 20),
            rng.integers(5, 30, 20),
            rng.integers(5, 30, 20),
            rng.integers(500, 900, 20),
        ],
        axis=1,
    )
    low, high = M.bootstrap_ci(counts, n_resamples=500, seed=3)
    assert (low, high) == M.bootstrap_ci(counts, n_resamples=500, seed=3)
    total = counts.sum(axis=0)
    f1 = M.scores_from_confusion(*total.tolist())["f1"]
    assert low < f1 < high and high - low < 0.2


def test_bootstrap_ci_of_identical_images_is_a_point():
    counts = np.tile([10, 2, 3, 85], (5, 1))
    low, high = M.bootstrap_ci(counts, n_resamples=100, seed=0)
    assert low == pytest.approx(20 / 25) and high == pytest.approx(20 / 25)
    assert M.bootstrap_ci(np.array([0.5, 0.5, 0.5]), 50, 0) == pytest.approx((0.5, 0.5))
