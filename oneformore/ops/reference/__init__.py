"""Plain eager-PyTorch references of every fused op: the ground truth of the tests, the baseline of the
benchmarks, and the "eager" mode of the detectors."""

from .denoise import ddim_step, ddpm_step  # noqa: E402,F401
from .anomaly_map import anomaly_map  # noqa: E402,F401
