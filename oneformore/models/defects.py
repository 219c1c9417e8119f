"""Synthetic defects on a training batch: what a detector's input looks like when the image is anomalous.

At test time both detectors are conditioned on the anomalous image itself: the refiner on its visible tokens and the
coarse reconstruction the transformer made from them, the continual detector on the noised features x_t and the
control branch's condition. A model that has only seen normal inputs learns to carry whatever it sees into its
output, a crack included. Training it on corrupted inputs with the clean features as the target teaches it the
opposite (One-for-More's AMN logic; the synthetic defects are the procedural dataset's scratches, holes and stains,
as DRAEM and CutPaste train on generated anomalies). Each defect is blended in at a random opacity, so faint defects
are learned too. Used by :mod:`oneformore.models.refiner.model` and :mod:`oneformore.models.objective`.
"""

from __future__ import annotations

import torch

from ..data.procedural import DEFECTS, draw_defect
from .backbone import imagenet_denormalise, imagenet_normalise


def check_defect_settings(prob: float, strength_min: float, max_defects: int,
                          names: tuple[str, str, str] = ("prob", "strength_min", "max_defects")) -> None:
    """Raises a ValueError naming the bad one (``names``: how the caller calls the three) unless ``prob`` is in
    [0, 1], ``strength_min`` in (0, 1] and ``max_defects`` >= 1."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{names[0]}: expected a probability in [0, 1], got {prob}")
    if not 0.0 < strength_min <= 1.0:
        raise ValueError(f"{names[1]}: expected in (0, 1], got {strength_min}")
    if max_defects < 1:
        raise ValueError(f"{names[2]}: expected >= 1, got {max_defects}")


def add_synthetic_defects(images: torch.Tensor, prob: float, strength_min: float, generator: torch.Generator,
                          max_defects: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(images with synthetic defects in a random subset of samples, that subset's indices [n] int64).

    ``images`` [B, 3, H, W] are ImageNet-normalised (the package's dataset convention); each sample is corrupted
    with probability ``prob`` by 1 to ``max_defects`` defects (uniform count), each of a uniformly chosen kind,
    blended at an opacity uniform in [``strength_min``, 1]. Every draw comes from ``generator``; the input is not
    modified."""
    check_defect_settings(prob, strength_min, max_defects)
    b = images.shape[0]
    chosen = torch.nonzero(torch.rand(b, generator=generator) < prob).flatten()
    out = images.clone()
    for i in chosen.tolist():
        img = imagenet_denormalise(images[i].detach().float().cpu())
        count = 1 + int(torch.randint(max_defects, (1,), generator=generator)) if max_defects > 1 else 1
        for _ in range(count):
            kind = DEFECTS[int(torch.randint(len(DEFECTS), (1,), generator=generator))]
            strength = strength_min + (1.0 - strength_min) * float(torch.rand((), generator=generator))
            defective, _ = draw_defect(img, kind, generator)
            img = img + strength * (defective - img)
        out[i] = imagenet_normalise(img).to(images.device, images.dtype)
    return out, chosen
