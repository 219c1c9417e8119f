"""Exact rank metrics (AUROC, AP, F1-max, AUPRO) from sorted scores.

Every metric here is computed from the scores of the negatives as sorted runs (:class:`SortedRuns`, usually one
array) and the scores of the positives sorted ascending (with per-positive weights for PRO). ``searchsorted``
between the two gives every count the curves need, so nothing is binned or approximated: ties are handled exactly
as scikit-learn and MVTec's evaluation code handle them (all scores equal to a threshold enter together).
On the CPU the searches use numpy, whose searchsorted narrows each search from the previous answer when the queries
are ascending (about 2x faster than torch's here).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .sorted_runs import SortedRuns

_NAN_RANKING = {"auroc": math.nan, "ap": math.nan, "f1_max": math.nan, "f1_threshold": math.nan}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _runs(neg) -> SortedRuns:
    return neg if isinstance(neg, SortedRuns) else SortedRuns([_np(neg).astype(np.float32, copy=False)])


def ranking_metrics(neg_sorted, pos_sorted) -> dict[str, float]:
    """AUROC, AP, F1-max and the threshold reaching it, sharing the searches.

    neg_sorted: ascending negative scores (tensor/array) or :class:`SortedRuns`; pos_sorted: ascending positive
    scores. Keys: auroc, ap, f1_max, f1_threshold (all NaN when a class is empty).

    - AUROC = P(s+ > s-) + 0.5 P(s+ = s-) (Mann-Whitney), equal to the trapezoidal area under scikit-learn's ROC
      curve, ties included, in exact integer arithmetic. Never flipped: worse than chance gives < 0.5.
    - AP (scikit-learn's definition, sum over thresholds of recall step x precision), written per positive:
      (1/P) sum_p tp(>= s_p) / (tp(>= s_p) + fp(>= s_p)); tied positives share their threshold's precision.
    - F1-max: the best F1 = 2 tp / (tp + fp + P) over all thresholds. It is always reached at a positive score
      (lowering the threshold past negatives only adds false positives), so only those are evaluated;
      ``f1_threshold`` is that score (score >= threshold is anomalous).
    """
    neg = _runs(neg_sorted)
    pos = _np(pos_sorted).astype(np.float32, copy=False)
    n_neg, n_pos = neg.size, pos.size
    if n_neg == 0 or n_pos == 0:
        return dict(_NAN_RANKING)
    neg_below = neg.count_below(pos, inclusive=False)
    neg_below_or_equal = neg.count_below(pos, inclusive=True)
    tp = (n_pos - np.searchsorted(pos, pos, side="left")).astype(np.float64)
    fp = (n_neg - neg_below).astype(np.float64)
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    return {
        "auroc": int(neg_below.sum() + neg_below_or_equal.sum()) / (2.0 * n_pos * n_neg),
        "ap": float(np.sum(tp / (tp + fp))) / n_pos,
        "f1_max": float(f1[best]),
        "f1_threshold": float(pos[best]),
    }


def auroc_from_sorted(neg_sorted, pos) -> float:
    """Pixel or image AUROC; see :func:`ranking_metrics`."""
    return ranking_metrics(neg_sorted, np.sort(_np(pos)))["auroc"]


def average_precision_from_sorted(neg_sorted, pos_sorted) -> float:
    """Average precision; see :func:`ranking_metrics`."""
    return ranking_metrics(neg_sorted, pos_sorted)["ap"]


def f1_max_from_sorted(neg_sorted, pos_sorted) -> tuple[float, float]:
    """(best F1, its threshold); see :func:`ranking_metrics`."""
    r = ranking_metrics(neg_sorted, pos_sorted)
    return r["f1_max"], r["f1_threshold"]


def aupro_from_sorted(neg_sorted, pos_sorted, pos_weights_sorted, num_regions: int, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition).

    PRO(t) = mean over all ground-truth regions (8-connected components, pooled over the dataset) of the fraction
    of the region's pixels scoring >= t; FPR(t) = fraction of all normal pixels (every pixel outside the ground
    truth, good images included) scoring >= t. The curve through the points of every distinct threshold is
    integrated with the trapezoidal rule from FPR 0 to ``fpr_limit``, the PRO at the limit interpolated linearly
    on the segment that crosses it, and divided by ``fpr_limit``.

    ``pos_weights_sorted[i]`` = 1 / (size of the region of positive pixel i), aligned with ``pos_sorted``.
    Segments where only PRO changes are vertical (no area), so the area is a sum over the negatives: each normal
    pixel with score v adds 0.5 * (PRO(> v) + PRO(>= v)) / N_neg (the trapezoid of its tie group, shared among the
    group), for every group fully below the limit; the group crossing the limit adds its interpolated part.
    """
    neg = _runs(neg_sorted)
    n_neg = neg.size
    if n_neg == 0 or num_regions == 0:
        return math.nan
    pos = _np(pos_sorted).astype(np.float32, copy=False)
    cum_weights = np.zeros(pos.size + 1, dtype=np.float64)
    np.cumsum(_np(pos_weights_sorted).astype(np.float64), out=cum_weights[1:])
    total = cum_weights[-1]

    def pro(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(PRO(> v), PRO(>= v)) for ascending values."""
        idx_ge = np.searchsorted(pos, values, side="left")
        idx_gt = idx_ge.copy()
        if pos.size:
            ties = np.flatnonzero(pos[np.minimum(idx_ge, pos.size - 1)] == values)
            idx_gt[ties] = np.searchsorted(pos, values[ties], side="right")
        return (np.minimum((total - cum_weights[idx_gt]) / num_regions, 1.0),
                np.minimum((total - cum_weights[idx_ge]) / num_regions, 1.0))

    # The tie group that reaches the limit: its value is the k-th largest negative, k = floor(limit * N).
    crossing_value = neg.kth_largest(min(n_neg - 1, int(math.floor(fpr_limit * n_neg))))
    area = 0.0
    for run in neg.above(crossing_value):  # every group above it ends at FPR <= limit: fully counted
        pro_gt, pro_ge = pro(np.asarray(run))
        area += float(np.sum(pro_gt) + np.sum(pro_ge)) * 0.5 / n_neg
    v = np.array([crossing_value], dtype=np.float32)
    above = n_neg - int(neg.count_below(v, inclusive=True)[0])
    tied = n_neg - int(neg.count_below(v, inclusive=False)[0]) - above
    x0, x1 = above / n_neg, (above + tied) / n_neg
    (y0,), (y1,) = pro(v)
    if x1 <= fpr_limit:
        area += 0.5 * (y0 + y1) * (x1 - x0)
    elif x0 < fpr_limit:
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y_limit + y0) * (fpr_limit - x0)
    return float(area / fpr_limit)


def roc_points(neg_sorted, pos_sorted, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at up to ``max_points`` thresholds spread over the score quantiles, for plotting ROC curves.

    The exact metrics never use this; it only keeps plots small. With few scores every distinct score is used.
    """
    neg = _runs(neg_sorted)
    pos = _np(pos_sorted).astype(np.float32, copy=False)
    if neg.size + pos.size <= max_points:
        thresholds = np.unique(np.concatenate([np.concatenate(neg.runs) if neg.runs else pos[:0], pos]))
    else:
        half = max_points // 2
        neg_q = [neg.kth_largest(int(k)) for k in np.linspace(0, neg.size - 1, half).astype(np.int64)] if neg.size else []
        pos_q = pos[np.linspace(0, pos.size - 1, half).astype(np.int64)] if pos.size else pos
        thresholds = np.unique(np.concatenate([np.asarray(neg_q, dtype=np.float32), pos_q]))
    thresholds = thresholds[::-1]
    fpr = (neg.size - neg.count_below(thresholds, inclusive=False)) / max(1, neg.size)
    tpr = (pos.size - np.searchsorted(pos, thresholds, side="left")) / max(1, pos.size)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])
