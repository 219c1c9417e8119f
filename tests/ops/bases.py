"""Random orthonormal bases for the projection and SVD op tests (one copy for every test file in tests/ops)."""

import torch


def orthonormal(d: int, k: int, gen: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U [d, k] with orthonormal columns: QR of a float64 Gaussian matrix, then rounded to ``dtype``."""
    if k == 0:
        return torch.zeros(d, 0, dtype=dtype)
    q, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=gen))
    return q.to(dtype).contiguous()
