"""Build script for oneformore: one extension, ``oneformore._C``, with CPU and (optionally) CUDA kernels.

CUDA sources are compiled whenever the installed torch is a CUDA build and nvcc is found. That is decided
from ``torch.version.cuda`` and ``CUDA_HOME``, never from ``torch.cuda.is_available()``: building needs no GPU.
Overrides: ``ONEFORMORE_FORCE_CUDA=1`` / ``ONEFORMORE_NO_CUDA=1``.
"""

import glob
import os
import platform

# torch guesses CUDA_HOME from `which nvcc`, which can be a wrapper script outside the toolkit
# (e.g. /usr/local/bin/nvcc). Prefer the standard toolkit location when nothing is set.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0+PTX"  # Ampere and Hopper, plus PTX for newer chips


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") == "1"


def use_cuda() -> bool:
    if _flag("ONEFORMORE_NO_CUDA"):
        return False
    if _flag("ONEFORMORE_FORCE_CUDA"):
        if torch.version.cuda is None or CUDA_HOME is None:
            raise RuntimeError(
                "ONEFORMORE_FORCE_CUDA=1 needs a CUDA build of torch and nvcc "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})"
            )
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


# at::vec picks its SIMD width from CPU_CAPABILITY (the flags ATen compiles its own kernels with).
CPU_SIMD_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}


def cpu_simd() -> str:
    """The SIMD level of the CPU kernels: ONEFORMORE_CPU_BASELINE (avx512 | avx2 | default), or with "auto" (the
    default) the build machine's, as ATen reports it (ATEN_CPU_CAPABILITY lowers it). The package is built where
    it is installed, so this is the level it runs at; a build meant for other machines sets avx2."""
    choice = os.environ.get("ONEFORMORE_CPU_BASELINE", "auto")
    if choice not in (*CPU_SIMD_FLAGS, "auto"):
        raise RuntimeError(f"ONEFORMORE_CPU_BASELINE: expected one of {sorted(CPU_SIMD_FLAGS)} or auto, got {choice!r}")
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    if choice != "auto":
        return choice
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")


def cpu_flags() -> list:
    simd = cpu_simd()
    # the C++ standard comes from torch (C++20 for torch>=2.14)
    return ["-O3", "-fopenmp", *CPU_SIMD_FLAGS[simd], f'-DONEFORMORE_CPU_SIMD="{simd}"']


def extension():
    sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    include_dirs = [os.path.join(ROOT, CSRC)]
    extra = {"cxx": cpu_flags()}
    if not use_cuda():
        return CppExtension(
            "oneformore._C", sources, include_dirs=include_dirs, extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    extra["cxx"] += ["-DWITH_CUDA", f'-DONEFORMORE_CUDA_ARCHS="{arch_list}"']
    extra["nvcc"] = ["-O3", "--use_fast_math", "-DWITH_CUDA", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "oneformore._C", sources + cuda_sources, include_dirs=include_dirs, extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["oneformore", "oneformore.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
