"""One display scale per dataset for anomaly heatmaps (never per image, which would make every image look
anomalous somewhere)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..metrics import AnomalyMetrics


@dataclass(frozen=True)
class DisplayScale:
    """Maps scores to [0, 1] colours: ``vmin`` (the median normal pixel score) is 0, the decision ``threshold`` is
    0.5, and ``vmin + 2 * (threshold - vmin)`` and above is 1. So the same colour means the same score on every
    image, and the middle of the colour map is the decision boundary. Pixels >= ``threshold`` are predicted
    anomalous."""

    vmin: float
    threshold: float
    method: str = ""

    def __post_init__(self):
        if not (math.isfinite(self.vmin) and math.isfinite(self.threshold)):
            raise ValueError(f"DisplayScale: expected finite vmin and threshold, got {self.vmin}, {self.threshold}")

    def normalise(self, maps: torch.Tensor) -> torch.Tensor:
        span = max(2.0 * (self.threshold - self.vmin), 1e-12)
        return ((maps.float() - self.vmin) / span).clamp(0.0, 1.0)

    def predict(self, maps: torch.Tensor) -> torch.Tensor:
        return maps >= self.threshold


def _sorted_quantile(sorted_scores: torch.Tensor, q: float) -> float:
    return float(sorted_scores[min(sorted_scores.numel() - 1, int(q * sorted_scores.numel()))])


def scale_from_normal_maps(normal_maps: torch.Tensor, quantile: float = 0.99) -> DisplayScale:
    """Threshold = the ``quantile`` of the pixel scores of normal (defect-free) images, e.g. held-out good images.

    This needs no labels of anomalous images, so it is the honest choice for deployment: it fixes the rate of
    false-positive pixels on normal images at about 1 - ``quantile``.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile: expected a value in (0, 1), got {quantile}")
    scores = torch.sort(normal_maps.detach().float().reshape(-1).cpu()).values
    if scores.numel() == 0:
        raise ValueError("normal_maps: expected at least one map")
    return DisplayScale(_sorted_quantile(scores, 0.5), _sorted_quantile(scores, quantile), f"normal quantile {quantile}")


def scale_from_metrics(metrics: AnomalyMetrics) -> DisplayScale:
    """Threshold = the pixel threshold maximising F1 on the labelled data accumulated in ``metrics``.

    It uses the anomalous pixels' labels, so on a test set it is an oracle: fine for looking at results, not for
    reporting a deployable threshold. ``vmin`` is the median score of all normal pixels.
    """
    result = metrics.compute()
    if "pixel_f1_threshold" not in result or not math.isfinite(result["pixel_f1_threshold"]):
        raise ValueError("metrics: F1 calibration needs pixel masks with anomalous pixels")
    return DisplayScale(metrics.normal_pixel_quantile(0.5), result["pixel_f1_threshold"], "pixel F1-optimal")
