"""Fused gradient projection for continual learning (GPM, TRGP): one call projects every layer's gradient."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _extension  # noqa: F401  (registers torch.ops.oneformore.*)
from ._validate import FLOATING, check_finite, check_list, check_shape, check_tensor


def project_gradients_(
    grads: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor] | None = None,
) -> None:
    """Projects each weight gradient off its layer's old input subspace, in place, for all layers in one call.

    For each pair, ``G = grads[i]`` viewed as ``[out, d]`` (a conv weight ``[out, in, kh, kw]`` flattened like
    ``torch.nn.functional.unfold``, see :mod:`oneformore.continual.layers`) and ``U = bases[i]`` ``[d, k]``
    (orthonormal columns, float32, ``0 <= k <= d``) becomes ``G - (G U) U^T`` (GPM). With ``scales`` (TRGP),
    ``Q = scales[i]`` ``[k, k]`` float32 lets part of the old-subspace component through:
    ``G - G U U^T + G U Q U^T``. The ``d x d`` projector ``U U^T`` is never formed.

    Gradients may be float32, float16 or bfloat16 (products in float32, one rounding on write-back) and
    non-contiguous (projected in a contiguous copy). Bases with NaN/Inf are rejected; orthonormality is the
    caller's responsibility, and so is that no two gradients share memory (the layers are projected concurrently,
    each from its input values).
    """
    grads = check_list("grads", grads)
    bases = check_list("bases", bases)
    if len(bases) != len(grads):
        raise ValueError(f"bases: expected one basis per gradient ({len(grads)}), got {len(bases)}")
    if scales is not None:
        scales = check_list("scales", scales)
        if len(scales) != len(grads):
            raise ValueError(f"scales: expected one scale matrix per gradient ({len(grads)}), got {len(scales)}")
    device = grads[0].device if grads else None
    for i, (g, u) in enumerate(zip(grads, bases)):
        check_tensor(f"grads[{i}]", g, dtypes=FLOATING, device=device)
        if g.dim() < 1 or g.shape[0] == 0:
            raise ValueError(f"grads[{i}]: expected a weight gradient with at least one row, got shape {tuple(g.shape)}")
        d = g[0].numel()
        check_tensor(f"bases[{i}]", u, dtypes=(torch.float32,), ndim=2, device=device)
        if u.shape[0] != d:
            raise ValueError(
                f"bases[{i}]: expected {d} rows (grads[{i}] of shape {tuple(g.shape)} viewed as "
                f"[{g.shape[0]}, {d}]), got shape {tuple(u.shape)}"
            )
        if u.shape[1] > d:
            raise ValueError(f"bases[{i}]: expected k <= d = {d} columns, got {u.shape[1]}")
        if scales is not None:
            q = check_tensor(f"scales[{i}]", scales[i], dtypes=(torch.float32,), ndim=2, device=device)
            check_shape(f"scales[{i}]", q, (u.shape[1], u.shape[1]), f"k x k, k = bases[{i}].shape[1]")
    if not grads:
        return  # nothing to project (the raw op cannot dispatch on empty lists)
    _check_bases_finite(bases)
    torch.ops.oneformore.project_gradients_(grads, bases, scales)


def _check_bases_finite(bases: list[torch.Tensor]) -> None:
    """One fused reduction and one host sync for all bases (a NaN/Inf makes its norm non-finite)."""
    live = [u for u in bases if u.numel()]
    if not live or torch.compiler.is_compiling() or any(u.device.type == "meta" for u in live):
        return
    norms = torch.stack(torch._foreach_norm(live))
    if not bool(torch.isfinite(norms).all()):
        bad = next(i for i, u in enumerate(bases) if u.numel() and not bool(torch.isfinite(u).all()))
        check_finite(f"bases[{bad}]", bases[bad])


@torch.library.register_fake("oneformore::project_gradients_")
def _project_gradients_fake(grads, bases, scales):
    return None
