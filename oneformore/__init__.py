"""oneformore: visual industrial anomaly detection with diffusion models, on fused C++/CUDA operators."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("oneformore")
except PackageNotFoundError:  # running from a source tree that was built in place but not installed
    __version__ = "0.0.0+local"

from . import _extension  # noqa: E402,F401  (loads the kernels: registers torch.ops.oneformore.*)
from . import ops  # noqa: E402,F401

__all__ = ["__version__", "ops"]
