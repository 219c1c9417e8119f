"""Slow, obviously-correct references for the metrics: scikit-learn for AUROC/AP/F1-max and a port of MVTec AD's
evaluation code (``compute_pro`` + ``trapezoid`` from ``mvtec_ad_evaluation``) for AUPRO.

Used by the tests and the benchmark only. The port follows the reference step by step (8-connected components of
each ground truth, FPR over every normal pixel, one global sort, tied scores merged to their last point, curve
padded with (0, 0) and (1, 1), trapezoid with the value at the limit interpolated); two deliberate differences:
counts are kept in float64/uint64 instead of the original's float32 cast (which rounds FPRs at ~1e-7), so that the
comparison can be made to 1e-6 and beyond.
"""

from __future__ import annotations

from bisect import bisect

import numpy as np
from scipy.ndimage import label


def mvtec_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal area under (x, y), cut at ``x_max`` with the y value there linearly interpolated."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = bisect(x, x_max)
            assert 0 < ins < len(x)
            y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def mvtec_compute_pro(anomaly_maps: np.ndarray, ground_truth_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) curve of MVTec AD's reference evaluation for maps [N, H, W] and binary ground truths [N, H, W]."""
    structure = np.ones((3, 3), dtype=int)
    num_ok_pixels = 0
    num_gt_regions = 0
    fp_changes = np.zeros(anomaly_maps.shape, dtype=np.uint64)
    pro_changes = np.zeros(anomaly_maps.shape, dtype=np.float64)
    for i, gt in enumerate(ground_truth_maps):
        labeled, n_components = label(gt, structure)
        num_gt_regions += n_components
        ok = labeled == 0
        num_ok_pixels += int(ok.sum())
        fp_changes[i][ok] = 1
        for k in range(n_components):
            region = labeled == (k + 1)
            pro_changes[i][region] = 1.0 / region.sum()

    scores = np.asarray(anomaly_maps).ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_changes.ravel()[order]).astype(np.float64) / num_ok_pixels
    pros = np.cumsum(pro_changes.ravel()[order]) / num_gt_regions
    keep = np.append(np.diff(scores) != 0, np.True_)
    fprs = np.clip(fprs[keep], None, 1.0)
    pros = np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def mvtec_aupro(anomaly_maps: np.ndarray, ground_truth_maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO as MVTec AD's ``evaluate_experiment`` reports it: area to ``fpr_limit`` divided by ``fpr_limit``."""
    fprs, pros = mvtec_compute_pro(anomaly_maps, ground_truth_maps)
    return mvtec_trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over the thresholds of ``sklearn.metrics.precision_recall_curve``."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def reference_suite(maps: np.ndarray, masks: np.ndarray, image_scores: np.ndarray, labels: np.ndarray) -> dict:
    """Every metric of :class:`oneformore.metrics.AnomalyMetrics` computed with scikit-learn and the MVTec port."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    pix_scores, pix_labels = maps.ravel(), masks.ravel().astype(np.uint8)
    return {
        "image_auroc": float(roc_auc_score(labels, image_scores)),
        "image_ap": float(average_precision_score(labels, image_scores)),
        "image_f1_max": sklearn_f1_max(labels, image_scores),
        "pixel_auroc": float(roc_auc_score(pix_labels, pix_scores)),
        "pixel_ap": float(average_precision_score(pix_labels, pix_scores)),
        "pixel_f1_max": sklearn_f1_max(pix_labels, pix_scores),
        "pixel_aupro": mvtec_aupro(maps, masks.astype(bool)),
    }
