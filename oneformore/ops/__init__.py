"""Fused operators, as typed Python wrappers over ``torch.ops.oneformore.*``.

Every wrapper validates its arguments and raises an error that names the argument and what was
expected. The raw operators stay callable as ``torch.ops.oneformore.<name>`` (for torch.compile,
export and custom dispatch); their fake kernels live beside the wrappers.
"""

from .denoise import ddim_step, ddpm_step  # noqa: E402,F401
from .anomaly_map import anomaly_map  # noqa: E402,F401
