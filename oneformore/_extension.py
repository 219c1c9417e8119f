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

if not _C.cpu_simd_supported():  # pragma: no cover - only on a CPU older than the build machine's
    raise ImportError(
        f"oneformore's CPU kernels were compiled for {_C.cpu_simd()}, which this CPU lacks. Rebuild here, or "
        "for a build that runs on other machines set ONEFORMORE_CPU_BASELINE=avx2 (or default) before "
        "`pip install --no-build-isolation -e .`"
    )


def cuda_compiled() -> bool:
    """True when the CUDA kernels were compiled into this build (no GPU is needed to build them)."""
    return bool(_C.cuda_compiled())


def cuda_arch_list() -> str:
    """The TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for ('' without CUDA)."""
    return str(_C.cuda_arch_list())


def cpu_simd() -> str:
    """The SIMD level the CPU kernels were compiled for: "avx512", "avx2" or "default" (see setup.py)."""
    return str(_C.cpu_simd())


def registered_ops() -> list[str]:
    """Qualified names (``oneformore::name``) of every operator this build registered."""
    return sorted(
        name for name in torch._C._dispatch_get_all_op_names() if name.startswith("oneformore::")
    )


def backends() -> dict:
    """Which backends were compiled, and which op lacks a kernel for each."""
    ops = registered_ops()
    out = {"cpu": True, "cpu_simd": cpu_simd(), "cuda": cuda_compiled(), "cuda_arch_list": cuda_arch_list(),
           "ops": ops}
    out["missing_cpu"] = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")]
    out["missing_cuda"] = (
        [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
        if out["cuda"] else list(ops)
    )
    return out
