"""The fused svd ops one streaming step at a time, against eager PyTorch, float32: four layers with d = 2304
(the 20000x2304 case's width), a block of 512 rows each.

- block_residual: fused (A − A·U·Uᵀ, both energies in one pass) vs the eager reference (two GEMMs, a subtraction,
  two float64 sums of squares) vs torch.compile of the reference; U [2304, 256].
- isvd update with max_rank 256, from a full-rank state: fused in place (``isvd_update_``, chunk 128), fused
  functional (``isvd_update``), and eager PyTorch's direct way to the same factorisation: ``torch.linalg.svd`` of
  [U·diag(S), Aᵀ] ([2304, 768]). No torch.compile row: the work is LAPACK/BLAS calls that inductor hands back to
  ATen unchanged.

    python -m pytest benchmarks/bench_svd_ops.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

from oneformore import ops
from oneformore.ops.reference import svd as reference

LAYERS, D, ROWS, RANK, CHUNK = 4, 2304, 512, 256, 128


def blocks() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    scale = torch.logspace(0, -3, D).sqrt()  # a decaying spectrum, as activations have
    return [torch.randn(ROWS, D, generator=gen) * scale for _ in range(LAYERS)]


def full_state(data: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A rank-RANK factorisation per layer, as the builder holds after its first blocks."""
    U, S = [], []
    for a in data:
        u, s, _ = torch.linalg.svd(a.T, full_matrices=False)
        U.append(u[:, :RANK].contiguous())
        S.append(s[:RANK].contiguous())
    return U, S


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
def test_block_residual(benchmark, impl):
    data = blocks()
    bases = [torch.linalg.qr(torch.randn(D, RANK)).Q.contiguous() for _ in range(LAYERS)]
    benchmark.group = f"block_residual {LAYERS} layers [{ROWS}, {D}] k={RANK} float32"
    if impl == "fused":
        fn = lambda: ops.block_residual(data, bases)  # noqa: E731
    elif impl == "eager":
        fn = lambda: reference.block_residual(data, bases)  # noqa: E731
    else:
        compiled = torch.compile(reference.block_residual)
        compiled(data, bases)  # compile outside the timed region
        fn = lambda: compiled(data, bases)  # noqa: E731
    fn()
    benchmark(fn)


@pytest.mark.parametrize("impl", ["fused_in_place", "fused_functional", "eager_svd"])
def test_isvd_update(benchmark, impl):
    data = blocks()
    U, S = full_state(blocks())
    benchmark.group = f"isvd update {LAYERS} layers [{ROWS}, {D}] into rank {RANK} float32"
    if impl == "fused_in_place":
        fn = lambda: ops.isvd_update_(U, S, data, CHUNK)  # noqa: E731  (the state moves on; the cost does not)
    elif impl == "fused_functional":
        fn = lambda: ops.isvd_update(U, S, data, RANK, CHUNK)  # noqa: E731
    else:
        fn = lambda: reference.isvd_update(U, S, data, RANK, ROWS)  # noqa: E731
    fn()
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)
