"""Anomaly-masked network (AMN): the training-time masking of the control branch's condition.

Why: a diffusion detector conditioned on the image under test can learn the shortcut "copy the condition", and then
it reproduces defects instead of replacing them (the *faithfulness hallucination* One-for-More sets out to fix).
Hiding regions of the condition during training removes the shortcut there: the target is still the whole clean
normal image, so inside a hidden region the model must produce normal content from the surrounding context and
the noisy input alone. Test-time conditioning is the unmasked image (mask channel all zero).

What we chose (the One-for-More paper names the AMN but its code was not public when this was written, so the
details follow masked-image-modelling practice, MAE / SimMIM, and the inpainting conditioning of Stable Diffusion
inpainting and DiAD's ControlNet-style branch):

- the condition is ``cat(image · (1 − m) + fill · m, m)``: 3 image channels plus the mask channel, so the branch
  knows which pixels are hidden (hiding without telling makes a hidden region look like a black defect);
- ``shape="patches"``: a random subset of a ``patch_size`` grid (SimMIM-style, default 16 px at 128 px, i.e. an 8x8
  grid) whose share of cells is ``mask_ratio``; ``shape="boxes"``: random axis-aligned boxes (side 1–4 patches,
  drawn until the masked share reaches ``mask_ratio``) which resemble the compact extent of real defects;
  ``shape="mixed"``: either, per sample, with equal odds;
- ``mask_ratio`` is drawn per sample uniformly from ``[ratio_min, ratio_max]`` (default 0.1–0.5: a share large
  enough to remove the copy shortcut but leaving enough context to infer the normal appearance);
- each training sample is masked with probability ``mask_prob`` (default 0.75), so the model also sees unmasked
  conditions, as it will at test time;
- ``fill="zero"`` (the dataset mean, since images are normalised) or ``"noise"`` (standard normal).

Randomness comes from an explicit ``torch.Generator`` so the trainer's seeded, resumable runs reproduce the masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

SHAPES = ("patches", "boxes", "mixed")
FILLS = ("zero", "noise")


@dataclass
class AMNConfig:
    mask_prob: float = 0.75
    ratio_min: float = 0.1
    ratio_max: float = 0.5
    patch_size: int = 16
    shape: str = "mixed"
    fill: str = "zero"

    def __post_init__(self):
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"amn.mask_prob: expected a probability in [0, 1], got {self.mask_prob}")
        if not 0.0 <= self.ratio_min <= self.ratio_max < 1.0:
            raise ValueError(f"amn ratios: expected 0 <= ratio_min <= ratio_max < 1, got {self.ratio_min}, {self.ratio_max}")
        if self.patch_size < 1:
            raise ValueError(f"amn.patch_size: expected >= 1, got {self.patch_size}")
        if self.shape not in SHAPES:
            raise ValueError(f"amn.shape: expected one of {SHAPES}, got {self.shape!r}")
        if self.fill not in FILLS:
            raise ValueError(f"amn.fill: expected one of {FILLS}, got {self.fill!r}")


def _patch_mask(gh: int, gw: int, ratio: float, generator) -> torch.Tensor:
    n = gh * gw
    k = int(round(ratio * n))
    order = torch.randperm(n, generator=generator, device="cpu")
    grid = torch.zeros(n)
    grid[order[:k]] = 1.0
    return grid.view(gh, gw)


def _box_mask(gh: int, gw: int, ratio: float, generator) -> torch.Tensor:
    grid = torch.zeros(gh, gw)
    target = ratio * gh * gw
    for _ in range(8 * gh * gw):  # bounded: each box adds ≥ 0 cells, typically several
        if grid.sum() >= target:
            break
        bh, bw = (int(v) for v in torch.randint(1, 5, (2,), generator=generator))
        bh, bw = min(bh, gh), min(bw, gw)
        y = int(torch.randint(0, gh - bh + 1, (1,), generator=generator))
        x = int(torch.randint(0, gw - bw + 1, (1,), generator=generator))
        grid[y : y + bh, x : x + bw] = 1.0
    return grid


def sample_masks(
    batch: int, height: int, width: int, cfg: AMNConfig, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[batch, 1, height, width] float masks in {0, 1} (1 = hidden), on the ``patch_size`` grid (the last row/column
    of cells is cropped when the size is not a multiple)."""
    gh, gw = -(-height // cfg.patch_size), -(-width // cfg.patch_size)
    grids = []
    for _ in range(batch):
        masked = float(torch.rand((), generator=generator)) < cfg.mask_prob
        ratio = cfg.ratio_min + (cfg.ratio_max - cfg.ratio_min) * float(torch.rand((), generator=generator))
        shape = cfg.shape
        if shape == "mixed":
            shape = "patches" if float(torch.rand((), generator=generator)) < 0.5 else "boxes"
        if not masked or ratio == 0.0:
            grids.append(torch.zeros(gh, gw))
        elif shape == "patches":
            grids.append(_patch_mask(gh, gw, ratio, generator))
        else:
            grids.append(_box_mask(gh, gw, ratio, generator))
    grid = torch.stack(grids)[:, None]
    mask = F.interpolate(grid, scale_factor=cfg.patch_size, mode="nearest")[..., :height, :width]
    return mask.to(device)


def condition(image: torch.Tensor, mask: torch.Tensor | None = None, fill: str = "zero",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The control branch's input: ``cat(image · (1 − mask) + fill · mask, mask)`` -> [B, C+1, H, W]. With
    ``mask=None`` (test time) the image is kept whole and the mask channel is zero."""
    if mask is None:
        return torch.cat([image, image.new_zeros(image.shape[0], 1, *image.shape[-2:])], dim=1)
    if mask.shape != (image.shape[0], 1, *image.shape[-2:]):
        raise ValueError(f"mask: expected shape {(image.shape[0], 1, *image.shape[-2:])}, got {tuple(mask.shape)}")
    mask = mask.to(image.dtype)
    if fill == "zero":
        filler = torch.zeros_like(image)
    elif fill == "noise":
        filler = torch.randn(image.shape, generator=generator, device="cpu", dtype=image.dtype).to(image.device)
    else:
        raise ValueError(f"fill: expected one of {FILLS}, got {fill!r}")
    return torch.cat([image * (1 - mask) + filler * mask, mask], dim=1)


def masked_condition(image: torch.Tensor, cfg: AMNConfig, generator: torch.Generator | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time condition for a batch of normal images: (condition [B, C+1, H, W], mask [B, 1, H, W])."""
    b, _, h, w = image.shape
    mask = sample_masks(b, h, w, cfg, generator, image.device)
    return condition(image, mask, cfg.fill, generator), mask
