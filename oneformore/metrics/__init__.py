"""oneformore.metrics: exact, streaming anomaly-detection metrics and continual-learning metrics."""

from .accumulator import AnomalyMetrics
from .continual import (
    ContinualMatrix,
    average_accuracy,
    backward_transfer,
    continual_summary,
    forgetting,
)
from .image_score import IMAGE_SCORE_RULES, image_scores
from .sorted_runs import SortedRuns
from .ranking import (
    aupro_from_sorted,
    auroc_from_sorted,
    average_precision_from_sorted,
    f1_max_from_sorted,
    ranking_metrics,
)

__all__ = [
    "AnomalyMetrics",
    "ContinualMatrix",
    "IMAGE_SCORE_RULES",
    "aupro_from_sorted",
    "auroc_from_sorted",
    "average_accuracy",
    "average_precision_from_sorted",
    "backward_transfer",
    "continual_summary",
    "f1_max_from_sorted",
    "SortedRuns",
    "forgetting",
    "ranking_metrics",
    "image_scores",
]
