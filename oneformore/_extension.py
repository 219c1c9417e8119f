"""Loads the compiled extension and describes how it was built."""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (import side effect: the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - only hit with a broken install
    raise ImportError(
        "oneformore's compiled extension (oneformore._C) could not be loaded. Build it with "
        "`pip install --no-build-isolation -e .` against the torch you run with "
        f"(torch {torch.__version__}). Original error: {exc}"
    ) from exc


def cuda_compiled() -> bool:
    """True when the CUDA kernels were compiled into this build (no GPU is needed to build them)."""
    return bool(_C.cuda_compiled())


def cuda_arch_list() -> str:
    """The TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for ('' without CUDA)."""
    return str(_C.cuda_arch_list())


def registered_ops() -> list[str]:
    """Qualified names (``oneformore::name``) of every operator this build registered."""
    return sorted(
        name for name in torch._C._dispatch_get_all_op_names() if name.startswith("oneformore::")
    )


def backends() -> dict:
    """Which backends were compiled, and which op lacks a kernel for each."""
    ops = registered_ops()
    out = {"cpu": True, "cuda": cuda_compiled(), "cuda_arch_list": cuda_arch_list(), "ops": ops}
    out["missing_cpu"] = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")]
    out["missing_cuda"] = (
        [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
        if out["cuda"] else list(ops)
    )
    return out
