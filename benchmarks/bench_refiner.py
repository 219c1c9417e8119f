"""Refiner inference throughput: ``RefinerDetector.score()`` (K = 4 transformer passes, 3 refiner DDIM steps per
partition, two anomaly maps) with the fused ops (``ddim_step``, ``anomaly_map``) vs ``inference.eager: true`` (the
eager-PyTorch reference ops) vs torch.compile of the eager path. Preset ``refiner`` at 128 px, batch 8, float32,
random weights (throughput does not depend on them). ``extra_info["images_per_s"]`` holds the throughput.

    python -m pytest benchmarks/bench_refiner.py --benchmark-only --benchmark-group-by=group

A second group times only the parts the fused ops replace (the sampler's DDIM updates and the two maps) on the
same tensors, where the ratio is not diluted by the networks' convolutions and matmuls.
"""

from __future__ import annotations

import pytest
import torch

from oneformore import ops
from oneformore.config import load_config
from oneformore.diffusion import NoiseSchedule
from oneformore.models.refiner import build_refiner
from oneformore.ops import reference

BATCH, SIZE = 8, 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_refiner(load_config("refiner"))
    torch.nn.init.normal_(m.refiner.conv_out.weight, std=0.02)
    return m.eval()


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
def test_refiner_score(benchmark, model, impl):
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    benchmark.group = f"refiner score() {BATCH}x{SIZE}px float32"
    model.inference.eager = impl != "fused"
    score = model.score
    if impl == "compiled":
        score = torch.compile(model.score)
    try:
        score(images, torch.Generator().manual_seed(0))  # warm-up (and compilation) outside the timed region
        benchmark(lambda: score(images, torch.Generator().manual_seed(0)))
    finally:
        model.inference.eager = False
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_refiner_ops_only(benchmark, model, impl):
    """The op calls of one score(): 3 DDIM steps with the visible-token blend on [K·B, C, 16, 16], then the coarse
    and refined maps [B, C, 16, 16] -> [B, 1, 128, 128]."""
    k, c, h = model.mask_cfg.test_partitions, model.transformer.channels, SIZE // 8
    x = torch.randn(k * BATCH, c, h, h)
    eps = torch.randn_like(x)
    keep = (torch.rand(k * BATCH, 1, h, h) > 0.25).float()
    feats, rec = torch.randn(BATCH, c, h, h), torch.randn(BATCH, c, h, h)
    schedule = NoiseSchedule("linear")
    ts = schedule.timesteps(model.inference.t_start, model.inference.steps) + [-1]
    lib = ops if impl == "fused" else reference
    benchmark.group = f"refiner op calls of one score() {BATCH}x{SIZE}px"

    def run():
        y = x
        for t, t_prev in zip(ts[:-1], ts[1:]):
            y = lib.ddim_step(y, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_prev), mask=keep, known=x)
        return [lib.anomaly_map([feats], [r], (SIZE, SIZE), sigma=4.0) for r in (rec, y[:BATCH])]

    run()
    benchmark(run)
