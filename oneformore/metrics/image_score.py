"""How one anomaly map becomes one image score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_SCORE_RULES = ("max", "pooled_max")


def image_scores(maps: torch.Tensor, rule: str = "max", pool_size: int = 16) -> torch.Tensor:
    """Image anomaly scores [B] float32 from maps [B, 1, H, W] or [B, H, W].

    ``rule="max"`` (default): the largest value of the map. ``rule="pooled_max"``: the largest value after a
    ``pool_size`` x ``pool_size`` average pooling with stride 1 (no padding), which ignores single hot pixels and
    rewards defects that cover an area (the window is clipped to the map when the map is smaller).
    """
    if rule not in IMAGE_SCORE_RULES:
        raise ValueError(f"rule: expected one of {IMAGE_SCORE_RULES}, got {rule!r}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps: expected shape [B, 1, H, W] or [B, H, W], got {tuple(maps.shape)}")
    maps = maps.float()
    if rule == "pooled_max":
        if pool_size < 1:
            raise ValueError(f"pool_size: expected a positive integer, got {pool_size}")
        k = (min(pool_size, maps.shape[-2]), min(pool_size, maps.shape[-1]))
        maps = F.avg_pool2d(maps, kernel_size=k, stride=1)
    return maps.flatten(1).amax(dim=1)
