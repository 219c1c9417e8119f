"""Argument checks shared by the op wrappers: each error names the argument and what was expected."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOATING = (torch.float32, torch.float16, torch.bfloat16)


def _dtypes(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    value,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    ndim: int | Sequence[int] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Checks that ``value`` is a tensor with an allowed dtype, rank and device; returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({_dtypes(dtypes)}), got {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a {want}-D tensor, got shape {tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (like the other inputs), got {value.device}")
    return value


def check_shape(name: str, value: torch.Tensor, shape: Sequence[int], what: str = "") -> None:
    """Checks an exact shape; ``what`` says where the expected shape comes from."""
    if tuple(value.shape) != tuple(shape):
        hint = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(shape)}{hint}, got {tuple(value.shape)}")


def check_finite(name: str, value: torch.Tensor) -> None:
    """Rejects NaN/Inf (skipped under fake tensors, which carry no data). One min/max reduction: NaN propagates
    through both and an Inf is an extreme, and unlike ``isfinite(value).all()`` it makes no value-sized mask."""
    if _is_fake(value) or value.numel() == 0:
        return
    low, high = torch.aminmax(value.detach())
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")


def check_range(name: str, value: torch.Tensor, low: float, high: float, *, low_open: bool = False) -> None:
    """Checks low <= value <= high (or low < value when ``low_open``) elementwise; NaN fails."""
    check_finite(name, value)
    if _is_fake(value):
        return
    lo_ok = bool((value > low).all()) if low_open else bool((value >= low).all())
    if not (lo_ok and bool((value <= high).all())):
        left = "(" if low_open else "["
        raise ValueError(
            f"{name}: expected values in {left}{low}, {high}], got min {value.min().item():.6g}, "
            f"max {value.max().item():.6g}"
        )


def check_list(name: str, value, *, min_len: int = 0) -> list:
    """Checks that ``value`` is a list/tuple of tensors of at least ``min_len`` items."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a list of tensors, got {type(value).__name__}")
    if len(value) < min_len:
        raise ValueError(f"{name}: expected at least {min_len} tensor(s), got {len(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"{name}[{i}]: expected a torch.Tensor, got {type(item).__name__}")
    return list(value)


def _is_fake(t: torch.Tensor) -> bool:
    """True where a value check cannot (fake/meta tensors) or must not (tracing under torch.compile) run."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.device.type == "meta" or torch.compiler.is_compiling()
