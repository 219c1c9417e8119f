"""Eager-PyTorch reference of the fused anomaly map (same signature as :func:`oneformore.ops.anomaly_map`).

Computes in float64 when the features are float64 (the tests' ground truth), else in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-8  # that of torch.nn.functional.cosine_similarity


def channel_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """[B, C, h, w] x 2 -> [B, 1, h, w]: L2 norm of the difference, or 1 − cosine similarity, over channels."""
    if distance == "l2":
        return torch.sqrt(((a - b) ** 2).sum(dim=1, keepdim=True))
    dot = (a * b).sum(dim=1, keepdim=True)
    norms = (a * a).sum(dim=1, keepdim=True) * (b * b).sum(dim=1, keepdim=True)
    return 1 - dot / torch.sqrt(norms.clamp_min(COSINE_EPS**2))


def gaussian_kernel1d(sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """scipy.ndimage._gaussian_kernel1d with truncate=4: radius int(4σ + 0.5), normalised."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (k / k.sum()).to(dtype)


def reflect_indices(n: int, radius: int, device=None) -> torch.Tensor:
    """Indices of scipy's mode="reflect" padding (d c b a | a b c d | d c b a), periodic, for any radius."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over the last two dims of [B, 1, H, W] (mode="reflect", truncate=4)."""
    k = gaussian_kernel1d(sigma, img.dtype, img.device)
    r = (k.numel() - 1) // 2
    h, w = img.shape[-2:]
    img = img[..., :, reflect_indices(w, r, img.device)]
    img = F.conv2d(img, k.view(1, 1, 1, -1))
    img = img[..., reflect_indices(h, r, img.device), :]
    return F.conv2d(img, k.view(1, 1, -1, 1))


def anomaly_map(feats_in, feats_rec, out_size, *, distance="l2", fusion="sum", weights=None, sigma=4.0):
    """Per-scale channel distance, bilinear resize (align_corners=True), weighted sum/mean, Gaussian blur."""
    dtype = torch.float64 if feats_in[0].dtype == torch.float64 else torch.float32
    weights = [1.0] * len(feats_in) if weights is None else [float(w) for w in weights]
    total = None
    for a, b, w in zip(feats_in, feats_rec, weights):
        d = channel_distance(a.to(dtype), b.to(dtype), distance)
        d = F.interpolate(d, size=tuple(out_size), mode="bilinear", align_corners=True)
        total = w * d if total is None else total + w * d
    if fusion == "mean":
        total = total / math.fsum(weights)
    if sigma > 0:
        total = gaussian_blur(total, sigma)
    return total
