"""ddim_step: fused vs the eager reference vs torch.compile of the reference (float32), plus a copy of the same
bytes as the memory-bandwidth floor.

    python -m pytest benchmarks/bench_denoise.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

from oneformore import ops
from oneformore.ops import reference

SHAPES = {"8x4x64x64": (8, 4, 64, 64), "8x3x256x256": (8, 3, 256, 256)}
A_T, A_PREV, ETA = 0.3, 0.5, 0.5  # a stochastic DDIM step: reads x_t, eps, noise; writes x_prev


def _inputs(shape):
    return [torch.randn(shape) for _ in range(3)]


def _compiled_reference():
    fn = torch.compile(lambda x, e, z: reference.ddim_step(x, e, A_T, A_PREV, eta=ETA, noise=z), fullgraph=True)
    return fn


IMPLS = ["fused", "fused_out", "eager", "compiled", "copy_floor"]


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_ddim_step(benchmark, name, impl):
    x, e, z = _inputs(SHAPES[name])
    benchmark.group = f"ddim_step {name} float32"
    if impl == "fused":  # allocates its result, like eager and compiled
        fn = lambda: ops.ddim_step(x, e, A_T, A_PREV, eta=ETA, noise=z)  # noqa: E731
    elif impl == "fused_out":  # into a preallocated buffer (what a sampler loop can do)
        out = torch.empty_like(x)
        fn = lambda: ops.ddim_step(x, e, A_T, A_PREV, eta=ETA, noise=z, out=out)  # noqa: E731
    elif impl == "eager":
        fn = lambda: reference.ddim_step(x, e, A_T, A_PREV, eta=ETA, noise=z)  # noqa: E731
    elif impl == "compiled":
        compiled = _compiled_reference()
        compiled(x, e, z)  # compile outside the timed region
        fn = lambda: compiled(x, e, z)  # noqa: E731
    else:
        # The floor: the step moves 3 reads + 1 write; copying 2 tensors' worth (2 reads + 2 writes) moves the
        # same 4 tensors of bytes at the machine's copy bandwidth.
        src, dst = torch.cat([x, e]), torch.empty(2 * x.numel())
        fn = lambda: dst.copy_(src.view(-1))  # noqa: E731
    fn()
    benchmark(fn)
