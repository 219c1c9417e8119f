"""anomaly_map: fused vs the eager reference vs torch.compile of the reference, float32, three feature scales
(64/128/256 channels at 64/32/16 px, batch 8) to a 256x256 map with the default blur (σ = 4).

    python -m pytest benchmarks/bench_anomaly_map.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

from oneformore import ops
from oneformore.ops import reference

SCALES = [(8, 64, 64, 64), (8, 128, 32, 32), (8, 256, 16, 16)]
OUT = (256, 256)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
def test_anomaly_map(benchmark, impl, distance):
    a = [torch.randn(s) for s in SCALES]
    b = [torch.randn(s) for s in SCALES]
    benchmark.group = f"anomaly_map 3 scales -> 256x256 {distance} float32"
    if impl == "fused":
        fn = lambda: ops.anomaly_map(a, b, OUT, distance=distance)  # noqa: E731
    elif impl == "eager":
        fn = lambda: reference.anomaly_map(a, b, OUT, distance=distance)  # noqa: E731
    else:
        compiled = torch.compile(lambda a, b: reference.anomaly_map(a, b, OUT, distance=distance), fullgraph=True)
        compiled(a, b)  # compile outside the timed region
        fn = lambda: compiled(a, b)  # noqa: E731
    fn()
    benchmark(fn)
