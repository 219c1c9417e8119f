"""Fused anomaly map (``torch.ops.oneformore.anomaly_map``): the distance between input and reconstructed
features at several scales, resized, fused and smoothed in one op."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ._validate import check_list

__all__ = ["anomaly_map"]

_FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _validate(feats_in, feats_rec, out_size, distance, fusion, weights, sigma):
    feats_in = check_list("feats_in", feats_in, min_len=1)
    feats_rec = check_list("feats_rec", feats_rec)
    if len(feats_rec) != len(feats_in):
        raise ValueError(f"feats_rec: expected {len(feats_in)} feature maps (one per scale, like feats_in), "
                         f"got {len(feats_rec)}")
    device, batch = feats_in[0].device, feats_in[0].shape[0] if feats_in[0].dim() else None
    for i, (a, b) in enumerate(zip(feats_in, feats_rec)):
        for name, t in ((f"feats_in[{i}]", a), (f"feats_rec[{i}]", b)):
            if t.dim() != 4:
                raise ValueError(f"{name}: expected a 4-D tensor [B, C, h, w], got shape {tuple(t.shape)}")
            if t.dtype not in _FEATURE_DTYPES:
                raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name}: expected a tensor on {device} (like feats_in[0]), got {t.device}")
            if t.shape[0] != batch:
                raise ValueError(f"{name}: expected batch size {batch} (like feats_in[0]), got {t.shape[0]}")
            if t.shape[2] == 0 or t.shape[3] == 0:
                raise ValueError(f"{name}: expected a non-empty spatial size, got shape {tuple(t.shape)}")
        if a.shape != b.shape:
            raise ValueError(f"feats_rec[{i}]: expected shape {tuple(a.shape)} (that of feats_in[{i}]), "
                             f"got {tuple(b.shape)}")
        if a.dtype != b.dtype:
            raise TypeError(f"feats_rec[{i}]: expected dtype {a.dtype} (that of feats_in[{i}]), got {b.dtype}")
    if (not isinstance(out_size, (tuple, list)) or len(out_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out_size)):
        raise ValueError(f"out_size: expected two positive ints (H, W), got {out_size!r}")
    if distance not in ("l2", "cosine"):
        raise ValueError(f"distance: expected 'l2' or 'cosine', got {distance!r}")
    if fusion not in ("sum", "mean"):
        raise ValueError(f"fusion: expected 'sum' or 'mean', got {fusion!r}")
    if weights is not None:
        if isinstance(weights, torch.Tensor):
            weights = weights.tolist()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(feats_in):
            raise ValueError(f"weights: expected {len(feats_in)} floats (one per scale), got {weights!r}")
        weights = [float(w) for w in weights]
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights: expected finite values, got {weights}")
        if fusion == "mean" and not math.fsum(weights) > 0:
            raise ValueError(f"weights: fusion='mean' divides by the weight sum, which must be > 0, got {weights}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma: expected a finite float >= 0 (0 disables the blur), got {sigma!r}")
    return feats_in, feats_rec, weights


def anomaly_map(
    feats_in: Sequence[torch.Tensor],
    feats_rec: Sequence[torch.Tensor],
    out_size: tuple[int, int],
    *,
    distance: str = "l2",
    fusion: str = "sum",
    weights: Sequence[float] | None = None,
    sigma: float = 4.0,
) -> torch.Tensor:
    """Anomaly map from multi-scale features of an input and of its reconstruction, fused into one op.

    Per scale s: d_s = ||a − b||₂ over channels (``distance="l2"``, as One-for-More/DiAD) or
    1 − a·b / sqrt(max(|a|²|b|², 1e-16)) (``"cosine"``, the epsilon of ``F.cosine_similarity``), then a bilinear
    resize to ``out_size`` with align_corners=True. Fusion: Σ w_s·d_s (``"sum"``) or Σ w_s·d_s / Σ w_s
    (``"mean"``), w_s = 1 without ``weights``. Finally a Gaussian blur with standard deviation ``sigma`` (0
    disables it) with exactly ``scipy.ndimage.gaussian_filter``'s conventions: radius int(4σ + 0.5)
    (truncate=4.0) and mode="reflect" (half-sample symmetric edges).

    Args:
        feats_in, feats_rec: lists of [B, C_s, h_s, w_s] float32/float16/bfloat16 maps (channel counts and
            sizes may differ between scales, not between the two lists), contiguous or channels_last.
        out_size: (H, W) of the map.

    Returns:
        [B, 1, H, W] float32 (computed in float32 whatever the feature dtype).

    This is an inference op: it has no gradient (backward raises).
    """
    feats_in, feats_rec, weights = _validate(feats_in, feats_rec, out_size, distance, fusion, weights, sigma)
    return torch.ops.oneformore.anomaly_map(feats_in, feats_rec, [int(s) for s in out_size], distance, fusion,
                                            weights, float(sigma))


@torch.library.register_fake("oneformore::anomaly_map")
def _anomaly_map_fake(feats_in, feats_rec, out_size, distance, fusion, weights, sigma):
    batch = feats_in[0].shape[0]
    return feats_in[0].new_empty((batch, 1, out_size[0], out_size[1]), dtype=torch.float32)


def _no_backward(ctx, grad):
    raise RuntimeError("oneformore.ops.anomaly_map is an inference op and has no gradient; compute the map "
                       "under torch.no_grad(), or use oneformore.ops.reference.anomaly_map to differentiate")


def _setup_context(ctx, inputs, output):
    pass


torch.library.register_autograd("oneformore::anomaly_map", _no_backward, setup_context=_setup_context)
