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


def cpu_flags() -> list:
    flags = ["-O3", "-fopenmp"]  # the C++ standard comes from torch (C++20 for torch>=2.14)
    # at::vec picks its SIMD width from CPU_CAPABILITY. AVX2+FMA is the baseline of every x86 server of the
    # last decade; ONEFORMORE_CPU_BASELINE=default builds for plain x86-64 instead.
    if platform.machine() in ("x86_64", "AMD64") and os.environ.get("ONEFORMORE_CPU_BASELINE", "avx2") == "avx2":
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


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
