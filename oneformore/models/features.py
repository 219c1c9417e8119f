"""Frozen multi-scale backbone features aligned to one token grid, and their per-channel normalisation.

UniAD (You et al. 2022) resizes the backbone's multi-scale maps to one grid and concatenates them along channels;
the reconstruction target is that concatenation. We do the same with the package's frozen backbone
(EfficientNet-Lite0, strides 4, 8, 16 by default): every level is resized to the stride-``grid_stride`` grid
(average pooling for finer levels, which keeps their energy without aliasing; bilinear upsampling for coarser ones,
as UniAD's ``F.interpolate``) and concatenated (24 + 40 + 112 = 176 channels for Lite0).

The papers are silent on feature scaling. A diffusion model on these features (the refiner, and the continual
detector in feature space) needs them at roughly unit variance for the noise schedule to mean what it says
(Lite0's features have per-channel std ~4-13 and means up to ~13), so the aligned features are standardised per
channel with statistics accumulated over the first ``norm_batches`` training batches and then frozen (buffers,
saved with the model; frozen so a continual run's later tasks do not move the feature space of the earlier ones).
Before any statistics exist the normaliser is the identity. Under DDP every rank adds the statistics of the whole
global batch (an all-reduce), so the ranks keep the same normaliser.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import MultiScaleBackbone


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

    def levels(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """The concatenation [B, C, h, w] split back into the backbone's levels (views)."""
        return list(feats.split(self.backbone.channels, dim=1))


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
        c = x.shape[0]
        stats = torch.cat([x.new_full((1,), x.shape[1]), x.sum(dim=1), (x * x).sum(dim=1)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)  # under DDP: statistics of the global batch, the same on every rank
        self.count += stats[0]
        self.sum += stats[1 : 1 + c]
        self.sum_sq += stats[1 + c :]
        self.batches += 1
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0)
        self.mean.copy_(mean.view_as(self.mean).float())
        self.std.copy_((var.sqrt() + self.eps).view_as(self.std).float())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


class FeatureSpace(nn.Module):
    """The space a feature-space diffusion model denoises in: aligned, standardised backbone features.

    ``encode(images, update_stats, keys)`` -> [B, C, h, w] (statistics accumulate only when asked, i.e. in
    training); ``levels(feats)`` splits the concatenation back into the backbone's levels, so an anomaly map weighs
    every level the same whatever its channel count.

    With ``keys`` (the samples' paths), the aligned features of each training image are kept after their first
    computation, up to ``cache_mb`` MB: the datasets have no augmentation and the backbone is frozen, so every later
    epoch would recompute the same values (the backbone is a quarter of a tiny training step). An entry is keyed by
    the path and two checksums of the image, so a different image under the same path is never served stale."""

    def __init__(self, backbone: MultiScaleBackbone, grid_stride: int, norm_batches: int = 50, cache_mb: float = 0.0):
        super().__init__()
        if cache_mb < 0:
            raise ValueError(f"features.cache_mb: expected >= 0, got {cache_mb}")
        self.aligned = AlignedFeatures(backbone, grid_stride)
        self.normalizer = FeatureNormalizer(self.aligned.channels, norm_batches)
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def channels(self) -> int:
        return self.aligned.channels

    @property
    def grid_stride(self) -> int:
        return self.aligned.grid_stride

    def encode(self, images: torch.Tensor, update_stats: bool = False, keys: list[str] | None = None) -> torch.Tensor:
        raw = self.aligned(images) if keys is None or not self.cache_bytes else self._aligned_cached(images, keys)
        if update_stats:
            self.normalizer.update(raw)
        return self.normalizer(raw)

    @torch.no_grad()
    def _aligned_cached(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        if len(keys) != images.shape[0]:
            raise ValueError(f"keys: expected one per image ({images.shape[0]}), got {len(keys)}")
        flat = images.detach().flatten(1).double()
        ramp = torch.arange(flat.shape[1], device=flat.device, dtype=flat.dtype)
        ids = [(key, *sums) for key, sums in zip(keys, torch.stack([flat.sum(1), (flat * ramp).sum(1)], 1).tolist())]
        if all(k in self._cache for k in ids):
            return torch.stack([self._cache[k] for k in ids])
        # any miss: the whole batch, as without the cache (a sub-batch could round differently)
        raw = self.aligned(images)
        for k, feats in zip(ids, raw):
            size = feats.numel() * feats.element_size()
            if k not in self._cache and self._cached_bytes + size <= self.cache_bytes:
                self._cache[k] = feats.clone()
                self._cached_bytes += size
        return raw

    def levels(self, feats: torch.Tensor) -> list[torch.Tensor]:
        return [level.contiguous() for level in self.aligned.levels(feats)]
