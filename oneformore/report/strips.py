"""One PNG strip per image: image | ground truth | heatmap overlay with contours | predicted region."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion
from tqdm.auto import tqdm

from .atomic import atomic_path
from .calibration import DisplayScale

GT_CONTOUR = (0, 255, 0)  # green
PRED_CONTOUR = (255, 0, 0)  # red


def contour(region: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean region (inner border, thickened to ``width`` pixels)."""
    region = region.astype(bool)
    edge = region & ~binary_erosion(region, border_value=0)
    if width > 1:
        edge = binary_dilation(edge, iterations=width - 1)
    return edge


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def render_strip(image: torch.Tensor, mask: torch.Tensor | None, anomaly_map: torch.Tensor, scale: DisplayScale,
                 *, alpha: float = 0.5, colormap: str = "jet", contour_width: int = 2) -> np.ndarray:
    """The strip as an [H, 4W, 3] uint8 array.

    image: [3, H, W] in [0, 1] (denormalised); mask: [1, H, W] or [H, W] binary or None; anomaly_map: [H, W] or
    [1, H, W] raw scores, coloured with the dataset-wide ``scale``.
    """
    rgb = _to_uint8_rgb(image)
    h, w = rgb.shape[:2]
    amap = anomaly_map.detach().float().cpu().reshape(h, w)
    gt = np.zeros((h, w), bool) if mask is None else mask.detach().cpu().reshape(h, w).numpy() != 0
    pred = scale.predict(amap).numpy()

    heat = colormaps[colormap](scale.normalise(amap).numpy())[..., :3]
    overlay = ((1 - alpha) * rgb / 255.0 + alpha * heat) * 255
    overlay = (overlay + 0.5).astype(np.uint8)
    overlay[contour(gt, contour_width)] = GT_CONTOUR
    overlay[contour(pred, contour_width)] = PRED_CONTOUR

    gt_panel = np.repeat((gt * 255).astype(np.uint8)[..., None], 3, axis=2)
    pred_panel = np.repeat((pred * 255).astype(np.uint8)[..., None], 3, axis=2)
    return np.concatenate([rgb, gt_panel, overlay, pred_panel], axis=1)


def save_strip(path: str | Path, *args, **kwargs) -> Path:
    """Renders with :func:`render_strip` and writes the PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(render_strip(*args, **kwargs)).save(tmp, format="PNG")
    return path


def strip_name(sample_path: str, category: str, defect: str) -> str:
    return f"{category}_{defect}_{Path(sample_path).stem}.png"


def save_strips(out_dir: str | Path, items: Iterable[tuple[dict, torch.Tensor]], scale: DisplayScale,
                denormalise, *, total: int | None = None) -> list[Path]:
    """Writes one strip per (sample dict, anomaly map) pair under ``out_dir``; ``denormalise`` turns the sample's
    normalised image back into [0, 1] (e.g. ``AnomalyTransform.denormalise``). Returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    for sample, amap in tqdm(items, total=total, desc="heatmap strips", unit="img"):
        name = strip_name(sample["path"], sample["category"], sample["defect"])
        written.append(save_strip(out_dir / name, denormalise(sample["image"]), sample.get("mask"), amap, scale))
    return written
