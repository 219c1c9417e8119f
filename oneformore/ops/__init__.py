"""Fused operators, as typed Python wrappers over ``torch.ops.oneformore.*``.

Every wrapper validates its arguments and raises an error that names the argument and what was
expected. The raw operators stay callable as ``torch.ops.oneformore.<name>`` (for torch.compile,
export and custom dispatch); their fake kernels live beside the wrappers.
"""

from .anomaly_map import anomaly_map  # noqa: F401
from .denoise import ddim_step, ddpm_step  # noqa: F401
from .projection import project_gradients_  # noqa: F401
from .svd import block_residual, gram_update_, isvd_update, isvd_update_, randomized_svd  # noqa: F401
