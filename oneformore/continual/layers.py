"""Which layers take part in continual learning, and how their inputs and weights are flattened.

One convention serves the gradient projection and the subspace builder, so that a basis built from a layer's
inputs is a basis of the space its weight gradient lives in:

- ``nn.Linear(in, out)``: weight [out, d] with d = in; an input row is one feature vector.
- ``nn.Conv2d(in, out, (kh, kw))`` with groups=1: weight [out, in, kh, kw] viewed as [out, d], d = in·kh·kw;
  an input row is one column of ``torch.nn.functional.unfold`` (the receptive field of one output pixel,
  channel-major, then kh, then kw), so weight.view(out, d) @ row is the conv's output at that pixel.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED = (nn.Linear, nn.Conv2d)


def check_supported(name: str, module: nn.Module) -> None:
    """Rejects layers whose weight gradient is not one [out, d] matrix acting on input rows."""
    if not isinstance(module, SUPPORTED):
        raise TypeError(f"layer '{name}': expected nn.Linear or nn.Conv2d, got {type(module).__name__}")
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"layer '{name}': grouped/depthwise convolutions (groups={module.groups}) are not supported by "
                "gradient projection: exclude them from the selection (their weights then train freely)"
            )
        if module.padding_mode != "zeros":
            raise ValueError(f"layer '{name}': expected padding_mode='zeros', got '{module.padding_mode}'")


def select_layers(
    model: nn.Module,
    types: tuple[type, ...] = SUPPORTED,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> dict[str, nn.Module]:
    """Named layers of ``model`` of the given types whose names match ``include`` (fnmatch patterns; all when
    None) and none of ``exclude``. Grouped convolutions are skipped (they cannot be projected)."""
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    chosen = {}
    for name, module in model.named_modules():
        if not isinstance(module, types) or not isinstance(module, SUPPORTED):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        chosen[name] = module
    return chosen


def input_dim(module: nn.Module) -> int:
    """d, the number of columns of the layer's weight viewed as [out, d]."""
    w = module.weight
    return w.shape[1] if w.dim() == 2 else w[0].numel()


def weight_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A weight (or its gradient) viewed as [out, d] without a copy."""
    return tensor.view(tensor.shape[0], -1)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input ``x`` as rows [n, d] in the weight's flattening (im2col for convolutions)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"expected nn.Linear or nn.Conv2d, got {type(module).__name__}")
