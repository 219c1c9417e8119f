"""Frozen multi-scale backbone features aligned to one token grid, and their per-channel normalisation.

UniAD (You et al. 2022) resizes the backbone's multi-scale maps to one grid and concatenates them along channels;
the reconstruction target is that concatenation. We do the same with the package's frozen backbone
(EfficientNet-Lite0, strides 4, 8, 16 by default): every level is resized to the stride-``grid_stride`` grid
(average pooling for finer levels, which keeps their energy without aliasing; bilinear upsampling for coarser ones,
as UniAD's ``F.interpolate``) and concatenated (24 + 40 + 112 = 176 channels for Lite0).

The paper is silent on feature scaling. The diffusion refiner needs features of roughly unit variance for the noise
schedule to mean what it says (Lite0's features have per-channel std ~4-13 and means up to ~13), so the aligned
features are standardised per channel with statistics accumulated over the first ``norm_batches`` training batches
and then frozen (buffers, saved with the model; frozen so a continual run's later tasks do not move the feature
space of the earlier ones). Before any statistics exist the normaliser is the identity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..backbone import MultiScaleBackbone


class AlignedFeatures(nn.Module):
    """images [B, 3, H, W] -> [B, C, H/grid_stride, W/grid_stride]: the backbone's levels on one grid, concatenated."""

    def __init__(self, backbone: MultiScaleBackbone, grid_stride: int):
        super().__init__()
        if grid_stride not in backbone.strides:
            raise ValueError(f"features.grid_stride: expected one of the backbone strides {backbone.strides}, "
                             f"got {grid_stride}")
        self.backbone = backbone
        self.grid_stride = grid_stride
        self.channels = sum(backbone.channels)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return image_size[0] // self.grid_stride, image_size[1] // self.grid_stride

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.grid_size(tuple(images.shape[-2:]))
        levels = []
        for feat, stride in zip(self.backbone(images), self.backbone.strides):
            if stride < self.grid_stride:
                feat = F.adaptive_avg_pool2d(feat, size)
            elif feat.shape[-2:] != size:
                feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
            levels.append(feat.float())
        return torch.cat(levels, dim=1)


class FeatureNormalizer(nn.Module):
    """Per-channel standardisation with statistics accumulated over the first ``max_batches`` calls of
    :meth:`update`, then frozen (see the module docstring)."""

    def __init__(self, channels: int, max_batches: int = 50, eps: float = 1e-5):
        super().__init__()
        self.max_batches, self.eps = max_batches, eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def update(self, feats: torch.Tensor) -> None:
        if int(self.batches) >= self.max_batches:
            return
        x = feats.detach().double().transpose(0, 1).reshape(feats.shape[1], -1)
        self.count += x.shape[1]
        self.sum += x.sum(dim=1)
        self.sum_sq += (x * x).sum(dim=1)
        self.batches += 1
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0)
        self.mean.copy_(mean.view_as(self.mean).float())
        self.std.copy_((var.sqrt() + self.eps).view_as(self.std).float())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std
