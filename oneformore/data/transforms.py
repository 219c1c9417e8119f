"""Joint image/mask transforms: resize (and optional centre crop) both the same way, normalise the image for the
backbone, keep the mask binary."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Per-channel (mean, std) of the RGB input each backbone family was trained with.
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision ResNet / WideResNet / EfficientNet
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain [0, 1]
}


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class AnomalyTransform:
    """Resizes image and mask to ``size`` (int or (H, W)), then centre-crops both to ``crop`` if given.

    The image is resized bilinearly (Pillow, antialiased) and normalised with the ``normalisation`` preset's
    mean/std (default ``"imagenet"``), or with an explicit ``mean``/``std``. The mask is resized with
    nearest-neighbour and re-binarised, so it stays in {0, 1} and aligned with the image pixel for pixel.
    """

    def __init__(self, size=256, crop=None, normalisation: str = "imagenet", mean=None, std=None):
        self.size = _pair(size)
        self.crop = _pair(crop) if crop is not None else None
        if self.crop and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise ValueError(f"crop: expected at most the resized size {self.size}, got {self.crop}")
        if mean is None or std is None:
            if normalisation not in NORMALISATIONS:
                raise ValueError(f"normalisation: expected one of {sorted(NORMALISATIONS)}, got {normalisation!r}")
            mean, std = NORMALISATIONS[normalisation]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop or self.size

    def _crop_box(self) -> tuple[int, int, int, int] | None:
        if self.crop is None:
            return None
        (h, w), (ch, cw) = self.size, self.crop
        top, left = (h - ch) // 2, (w - cw) // 2
        return left, top, left + cw, top + ch

    def image(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize(self.size[::-1], Image.BILINEAR)
        box = self._crop_box()
        if box:
            img = img.crop(box)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return (x - self.mean) / self.std

    def mask(self, mask: Image.Image | None) -> torch.Tensor:
        """Binary float32 [1, H, W]; ``mask`` must already be binary (0/1 or 0/255 'L' image); None gives zeros."""
        h, w = self.output_size
        if mask is None:
            return torch.zeros(1, h, w)
        mask = mask.resize(self.size[::-1], Image.NEAREST)
        box = self._crop_box()
        if box:
            mask = mask.crop(box)
        return torch.from_numpy((np.asarray(mask) != 0).astype(np.float32)).unsqueeze(0)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation, clamped to [0, 1] (for display)."""
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)
