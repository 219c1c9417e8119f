"""Exact rank metrics (AUROC, AP, F1-max, AUPRO) from sorted score arrays.

Every metric here is computed from two arrays: the scores of the negatives sorted ascending and the scores of the
positives (sorted ascending, with optional per-positive weights for PRO). One sort of the negatives (the bulk of
the pixels) plus ``searchsorted`` of the positives into it gives every count the curves need, so nothing is
binned or approximated: ties are handled exactly as scikit-learn and MVTec's evaluation code handle them (all
scores equal to a threshold enter together).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def sort_inplace(values: torch.Tensor) -> torch.Tensor:
    """Sorts a 1-D float tensor ascending, in place where it can.

    On the CPU numpy's SIMD sort runs in place on the tensor's memory (about 3x faster than ``torch.sort`` here
    and it allocates no int64 index array, which would triple the peak memory); on a GPU ``torch.sort``.
    """
    if values.device.type == "cpu" and values.is_contiguous():
        values.numpy().sort(kind="quicksort")
        return values
    return torch.sort(values).values


def _count_below(sorted_values: torch.Tensor, queries: torch.Tensor, *, inclusive: bool) -> torch.Tensor:
    """Number of entries of ``sorted_values`` < query (or <= query when ``inclusive``), as int64.

    On the CPU numpy's searchsorted is used: with ascending queries it narrows each search from the previous
    answer, about 2x faster than torch's here."""
    if sorted_values.device.type == "cpu" and queries.device.type == "cpu":
        side = "right" if inclusive else "left"
        return torch.from_numpy(np.searchsorted(sorted_values.numpy(), queries.numpy(), side=side).astype(np.int64))
    return torch.searchsorted(sorted_values, queries, right=inclusive)


def auroc_from_sorted(neg_sorted: torch.Tensor, pos: torch.Tensor) -> float:
    """Area under the ROC curve = P(score+ > score-) + 0.5 P(score+ = score-) (Mann-Whitney).

    This equals the trapezoidal area under scikit-learn's ROC curve, ties included. It is never flipped: a
    detector that ranks anomalies below normals gets a value below 0.5.
    """
    n_neg, n_pos = neg_sorted.numel(), pos.numel()
    if n_neg == 0 or n_pos == 0:
        return math.nan
    below = _count_below(neg_sorted, pos, inclusive=False)
    below_or_equal = _count_below(neg_sorted, pos, inclusive=True)
    twice_u = int((below + below_or_equal).sum())  # exact integer arithmetic
    return twice_u / (2.0 * n_pos * n_neg)


def _pos_counts(neg_sorted: torch.Tensor, pos_sorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each positive p (ascending): tp = #positives >= p, fp = #negatives >= p (both int64)."""
    n_pos = pos_sorted.numel()
    tp = n_pos - _count_below(pos_sorted, pos_sorted, inclusive=False)
    fp = neg_sorted.numel() - _count_below(neg_sorted, pos_sorted, inclusive=False)
    return tp, fp


def average_precision_from_sorted(neg_sorted: torch.Tensor, pos_sorted: torch.Tensor) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of (recall step) x precision.

    Written per positive: AP = (1/P) * sum_p tp(>= s_p) / (tp(>= s_p) + fp(>= s_p)); tied positives share the
    precision of their threshold, exactly as in ``sklearn.metrics.average_precision_score``.
    """
    n_pos = pos_sorted.numel()
    if n_pos == 0:
        return math.nan
    tp, fp = _pos_counts(neg_sorted, pos_sorted)
    precision = tp.double() / (tp + fp).double()
    return float(precision.sum()) / n_pos


def f1_max_from_sorted(neg_sorted: torch.Tensor, pos_sorted: torch.Tensor) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (score >= threshold is predicted anomalous).

    The maximum is always at a threshold equal to a positive score (lowering the threshold past negatives only
    adds false positives), so only those are evaluated: F1 = 2 tp / (tp + fp + P).
    """
    n_pos = pos_sorted.numel()
    if n_pos == 0:
        return math.nan, math.nan
    tp, fp = _pos_counts(neg_sorted, pos_sorted)
    f1 = 2.0 * tp.double() / (tp + fp + n_pos).double()
    best = int(torch.argmax(f1))
    return float(f1[best]), float(pos_sorted[best])


def ranking_metrics(neg_sorted: torch.Tensor, pos_sorted: torch.Tensor) -> dict[str, float]:
    """AUROC, AP, F1-max and its threshold in one pass, sharing the searches (same values as the functions above).

    Keys: auroc, ap, f1_max, f1_threshold (NaN when a class is empty)."""
    n_neg, n_pos = neg_sorted.numel(), pos_sorted.numel()
    if n_neg == 0 or n_pos == 0:
        return {"auroc": math.nan, "ap": math.nan, "f1_max": math.nan, "f1_threshold": math.nan}
    neg_below = _count_below(neg_sorted, pos_sorted, inclusive=False)
    neg_below_or_equal = _count_below(neg_sorted, pos_sorted, inclusive=True)
    tp = (n_pos - _count_below(pos_sorted, pos_sorted, inclusive=False)).double()
    fp = (n_neg - neg_below).double()
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(torch.argmax(f1))
    return {
        "auroc": int((neg_below + neg_below_or_equal).sum()) / (2.0 * n_pos * n_neg),
        "ap": float((tp / (tp + fp)).sum()) / n_pos,
        "f1_max": float(f1[best]),
        "f1_threshold": float(pos_sorted[best]),
    }


def aupro_from_sorted(
    neg_sorted: torch.Tensor,
    pos_sorted: torch.Tensor,
    pos_weights_sorted: torch.Tensor,
    num_regions: int,
    fpr_limit: float = 0.3,
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition).

    PRO(t) = mean over all ground-truth regions (8-connected components, pooled over the dataset) of the fraction
    of the region's pixels scoring >= t; FPR(t) = fraction of all normal pixels (every pixel outside the ground
    truth, good images included) scoring >= t. The curve through the points of every distinct threshold is
    integrated with the trapezoidal rule from FPR 0 to ``fpr_limit``, the PRO at the limit interpolated linearly
    on the segment that crosses it, and divided by ``fpr_limit``.

    ``pos_weights_sorted[i]`` is 1 / (size of the region of positive pixel i), aligned with ``pos_sorted``.
    Segments where only PRO changes are vertical (no area), so the area is a sum over the distinct negative scores
    v: 0.5 * (PRO(> v) + PRO(>= v)) * #neg(= v) / N_neg, in descending v, cut at the limit.
    """
    n_neg = neg_sorted.numel()
    if n_neg == 0 or num_regions == 0:
        return math.nan
    neg = neg_sorted.cpu().numpy()
    pos = pos_sorted.cpu().numpy()
    # Only the top scores of the negatives matter: those whose segment starts below the FPR limit.
    needed = min(n_neg, int(math.floor(fpr_limit * n_neg)) + 1)
    start = int(np.searchsorted(neg, neg[n_neg - needed], side="left"))
    top = neg[start:]
    # Groups of equal scores, ascending: group g holds top[first[g] : first[g] + counts[g]].
    first = np.concatenate(([0], np.flatnonzero(top[1:] != top[:-1]) + 1))
    values = top[first]
    counts = np.diff(np.append(first, top.size)).astype(np.float64)
    at_or_above = (n_neg - start - first).astype(np.float64)  # negatives >= values[g]
    fpr_after = at_or_above / n_neg
    fpr_before = (at_or_above - counts) / n_neg

    cum_weights = np.zeros(pos.size + 1, dtype=np.float64)
    np.cumsum(pos_weights_sorted.cpu().double().numpy(), out=cum_weights[1:])
    total = cum_weights[-1]
    idx_ge = np.searchsorted(pos, values, side="left")
    idx_gt = idx_ge.copy()
    ties = np.flatnonzero(pos[np.minimum(idx_ge, pos.size - 1)] == values) if pos.size else np.empty(0, np.int64)
    idx_gt[ties] = np.searchsorted(pos, values[ties], side="right")
    pro_ge = np.minimum((total - cum_weights[idx_ge]) / num_regions, 1.0)
    pro_gt = np.minimum((total - cum_weights[idx_gt]) / num_regions, 1.0)

    full = fpr_after <= fpr_limit  # False for a prefix (the lowest scores), True after it
    area = float(np.sum((0.5 * (pro_gt + pro_ge) * (fpr_after - fpr_before))[full]))
    n_partial = int(np.count_nonzero(~full))
    if n_partial:
        i = n_partial - 1  # the group whose segment crosses the limit
        x0, x1, y0, y1 = fpr_before[i], fpr_after[i], pro_gt[i], pro_ge[i]
        if x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += 0.5 * (y_limit + y0) * (fpr_limit - x0)
    return area / fpr_limit


def roc_points(neg_sorted: torch.Tensor, pos_sorted: torch.Tensor, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at up to ``max_points`` thresholds spread over the score quantiles, for plotting ROC curves.

    The exact metrics never use this; it only keeps plots small. With few scores every distinct score is used.
    """
    all_scores = torch.cat([neg_sorted, pos_sorted])
    if all_scores.numel() <= max_points:
        thresholds = torch.unique(all_scores)
    else:
        q = torch.linspace(0, 1, max_points, dtype=torch.float64)
        idx = (q * (all_scores.numel() - 1)).long()
        thresholds = torch.unique(sort_inplace(all_scores.clone())[idx])
    thresholds = thresholds.flip(0)
    fpr = (neg_sorted.numel() - _count_below(neg_sorted, thresholds, inclusive=False)).double() / max(1, neg_sorted.numel())
    tpr = (pos_sorted.numel() - _count_below(pos_sorted, thresholds, inclusive=False)).double() / max(1, pos_sorted.numel())
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fpr, torch.ones(1, dtype=torch.float64)])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tpr, torch.ones(1, dtype=torch.float64)])
    return fpr.numpy(), tpr.numpy()
