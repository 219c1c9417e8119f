"""Gradient projection for a whole model per optimizer step: the fused op against per-layer eager PyTorch.

Parameter list: a UNet-like stack of 60 3x3 convolutions, in = out channels ramping geometrically from 64 to 1280
and back (30 down, 30 up), bases with k = d // 2 (the issue's "d from 64*9 to 1280*9, k about d/2"). At full
size that is 2.6 GiB of bases and 2.5 TFLOP per step, too much for a shared 2-core VM, so the channel counts are
multiplied by OFM_BENCH_PROJ_SCALE (default 0.25: channels 16..320, d 144..2880, 40 GFLOP per step).

Timings (pytest-benchmark): python -m pytest benchmarks/bench_projection.py --benchmark-only
Peak memory (one subprocess per method, VmHWM reset after the inputs are built):
    python benchmarks/bench_projection.py --memory
The full-size list once, fused vs eager loop alternated (minutes; 3.2 GiB):
    python benchmarks/bench_projection.py --full-scale
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import oneformore.ops  # noqa: F401  (registers the op)
from oneformore.ops import project_gradients_

SCALE = float(os.environ.get("OFM_BENCH_PROJ_SCALE", "0.25"))


def unet_channels(scale: float = SCALE, n: int = 60) -> list[int]:
    half = [max(1, round(64 * 20 ** (i / (n // 2 - 1)) * scale)) for i in range(n // 2)]
    return half + half[::-1]


def make_layers(scale: float = SCALE, dtype=torch.float32, seed: int = 0):
    """Gradients [c, c, 3, 3] and orthonormal bases [9c, 9c // 2] (float32)."""
    gen = torch.Generator().manual_seed(seed)
    grads, bases = [], []
    for c in unet_channels(scale):
        d = 9 * c
        grads.append(torch.randn(c, c, 3, 3, generator=gen).to(dtype))
        bases.append(torch.linalg.qr(torch.randn(d, d // 2, generator=gen))[0].contiguous())
    return grads, bases


# --- the methods -----------------------------------------------------------------------------------------------

def fused_raw(grads, bases, state=None):
    torch.ops.oneformore.project_gradients_(grads, bases, None)  # as GradientProjector calls it


def fused_by_layers(grads, bases, state=None):
    """The same op with the CPU kernel's other schedule: one layer after another, BLAS threaded inside each
    product (instead of row blocks taken by the threads as they become free, each running single-threaded BLAS)."""
    os.environ["ONEFORMORE_PROJECTION_CPU_SCHEDULE"] = "layers"
    try:
        torch.ops.oneformore.project_gradients_(grads, bases, None)
    finally:
        del os.environ["ONEFORMORE_PROJECTION_CPU_SCHEDULE"]


def fused_checked(grads, bases, state=None):
    project_gradients_(grads, bases)  # the public wrapper: argument checks + one NaN/Inf reduction over the bases


def eager_loop(grads, bases, state=None):
    for g, u in zip(grads, bases):
        m = g.view(g.shape[0], -1)
        if m.dtype != torch.float32:
            m32 = m.float()
            m32 -= (m32 @ u) @ u.T
            m.copy_(m32)
        else:
            m -= (m @ u) @ u.T


def dense_per_step(grads, bases, state=None):
    """GPM's dense form as written, g - g @ (U U^T), forming U U^T every step."""
    for g, u in zip(grads, bases):
        m = g.view(g.shape[0], -1)
        m.copy_(m - m @ (u @ u.T))


def dense_precomputed_state(bases):
    """What GPM keeps between steps: the d x d projector of every layer (built once per task)."""
    return [u @ u.T for u in bases]


def dense_precomputed(grads, bases, state):
    for g, p in zip(grads, state):
        m = g.view(g.shape[0], -1)
        m.copy_(m - m @ p)


METHODS = {
    "fused": fused_raw,
    "fused_by_layers": fused_by_layers,
    "fused_checked": fused_checked,
    "eager_loop": eager_loop,
    "dense_per_step": dense_per_step,
    "dense_precomputed": dense_precomputed,
}


# --- timings -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layers32():
    return make_layers()


@pytest.fixture(scope="module")
def layers_bf16():
    return make_layers(dtype=torch.bfloat16)


@pytest.mark.parametrize("method", list(METHODS))
def test_unet60_float32(benchmark, layers32, method):
    grads, bases = layers32
    state = dense_precomputed_state(bases) if method == "dense_precomputed" else None
    benchmark.group = f"projection: 60 UNet-like convs, scale {SCALE}, float32 grads"
    rounds = 2 if method == "dense_per_step" else 5
    benchmark.pedantic(METHODS[method], args=(grads, bases, state), rounds=rounds, warmup_rounds=1)


def test_unet60_float32_compiled_loop(benchmark, layers32):
    grads, bases = layers32
    compiled = torch.compile(eager_loop, fullgraph=True)
    compiled(grads, bases)  # compile outside the timing
    benchmark.group = f"projection: 60 UNet-like convs, scale {SCALE}, float32 grads"
    benchmark.pedantic(compiled, args=(grads, bases), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("method", ["fused", "fused_by_layers", "eager_loop"])
def test_unet60_small_layers(benchmark, method):
    """Small models (channels 3..64, d 27..576): per-layer dispatch and threading overheads dominate."""
    grads, bases = make_layers(scale=0.05)
    benchmark.group = "projection: 60 UNet-like convs, scale 0.05, float32 grads"
    benchmark.pedantic(METHODS[method], args=(grads, bases, None), rounds=20, warmup_rounds=2)


@pytest.mark.parametrize("method", ["fused", "eager_loop"])
def test_unet60_bfloat16(benchmark, layers_bf16, method):
    grads, bases = layers_bf16
    benchmark.group = f"projection: 60 UNet-like convs, scale {SCALE}, bfloat16 grads"
    benchmark.pedantic(METHODS[method], args=(grads, bases, None), rounds=5, warmup_rounds=1)


def detector_projector(config: str):
    """The continual detector's own denoiser (UNet + control branch, preset ``config``) with random gradients on
    every projectable layer and orthonormal bases with k = d // 2, through the real GradientProjector."""
    from oneformore.config import load_config
    from oneformore.continual import GradientProjector
    from oneformore.models.continual_model import ContinualDiffusionModel

    denoiser = ContinualDiffusionModel(load_config(config)).networks.denoiser
    projector = GradientProjector(denoiser)
    gen = torch.Generator().manual_seed(0)
    bases = {}
    for name, layer in projector.layers.items():
        layer.weight.grad = torch.randn(layer.weight.shape, generator=gen)
        d = layer.weight[0].numel()
        bases[name] = torch.linalg.qr(torch.randn(d, d // 2, generator=gen))[0].contiguous()
    projector.set_bases(bases)
    grads = [projector.layers[n].weight.grad for n in projector.projected_layers()]
    return projector, grads, [bases[n] for n in projector.projected_layers()]


@pytest.mark.parametrize("method", ["projector", "eager_loop"])
def test_detector_tiny_unet(benchmark, method):
    projector, grads, bases = detector_projector("tiny")
    benchmark.group = f"projection: the tiny detector's denoiser ({len(grads)} layers), float32 grads"
    run = (lambda: projector.project()) if method == "projector" else (lambda: eager_loop(grads, bases))
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)


# --- peak memory, one fresh process per method -------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _measure_in_this_process(method: str) -> dict:
    grads, bases = make_layers()
    before = _status_kib("VmRSS")
    state = dense_precomputed_state(bases) if method == "dense_precomputed" else None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    METHODS[method](grads, bases, state)
    METHODS[method](grads, bases, state)
    peak = _status_kib("VmHWM")
    return {"method": method, "inputs_mib": before / 1024, "peak_above_inputs_mib": (peak - before) / 1024,
            "kept_state_mib": 0.0 if state is None else sum(p.numel() * 4 for p in state) / 2**20}


def measure_memory() -> list[dict]:
    rows = []
    for method in ["fused", "eager_loop", "dense_per_step", "dense_precomputed"]:
        out = subprocess.run([sys.executable, __file__, "--memory-one", method], check=True, capture_output=True,
                             text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def time_full_scale(repeats: int = 2) -> None:
    """The issue's list at full size (d 576..11520), fused vs eager loop, alternated. The bases are scaled Gaussian
    matrices instead of orthonormal ones: the cost is the same, and 60 QRs of up to 11520 x 5760 would take longer
    than the timing itself."""
    import time

    gen = torch.Generator().manual_seed(0)
    grads, bases = [], []
    for c in unet_channels(1.0):
        d = 9 * c
        grads.append(torch.randn(c, c, 3, 3, generator=gen))
        bases.append(torch.randn(d, d // 2, generator=gen) / d**0.5)
    print(f"full scale: 60 convs, d {9 * min(unet_channels(1.0))}..{9 * max(unet_channels(1.0))}, "
          f"{sum(u.numel() * 4 for u in bases) / 2**30:.2f} GiB of bases")
    for _ in range(repeats):
        for name in ("fused", "eager_loop"):
            t0 = time.perf_counter()
            METHODS[name](grads, bases, None)
            print(f"  {name:<12}{time.perf_counter() - t0:8.2f} s", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--full-scale"]:
        time_full_scale()
    elif sys.argv[1:2] == ["--memory-one"]:
        print(json.dumps(_measure_in_this_process(sys.argv[2])))
    elif sys.argv[1:2] == ["--memory"]:
        c = unet_channels()
        print(f"60 convs, channels {c[0]}..{max(c)}, d {9 * c[0]}..{9 * max(c)}, k = d // 2 (scale {SCALE})")
        print(f"{'method':<20}{'peak above inputs (MiB)':>26}{'of which kept state (MiB)':>28}")
        for r in measure_memory():
            print(f"{r['method']:<20}{r['peak_above_inputs_mib']:>26.1f}{r['kept_state_mib']:>28.1f}")
    else:
        print(__doc__)
