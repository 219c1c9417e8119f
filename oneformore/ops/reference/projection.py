"""Eager reference of project_gradients_: the per-layer loop G -= (G U)(I - Q) U^T."""

from __future__ import annotations

from typing import Sequence

import torch


def project_gradients_(
    grads: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor] | None = None,
) -> None:
    """Same contract as :func:`oneformore.ops.project_gradients_`, one layer at a time in plain PyTorch.
    Works in the bases' dtype (float64 bases give the float64 ground truth of the tests)."""
    for i, (g, u) in enumerate(zip(grads, bases)):
        if u.shape[1] == 0:
            continue
        m = g.reshape(g.shape[0], -1).to(u.dtype)
        p = m @ u
        if scales is not None:
            p = p - p @ scales[i].to(u.dtype)
        g.copy_((m - p @ u.T).view(g.shape))
