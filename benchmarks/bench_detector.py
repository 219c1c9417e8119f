"""Throughput of the continual detector's networks, fused ops against the eager reference ops in the same run.

Training step (``DenoisingObjective`` on random images: forward, backward, projection of the gradients of every
projectable layer of the denoiser, AdamW step), three ways:
  - ``fused``: ``GradientProjector.project()``, one ``project_gradients_`` call for all layers;
  - ``eager``: the per-layer loop ``g -= (g @ U) @ U.T`` (``eager_loop`` of bench_projection.py), same layers;
  - ``none``: no projection (the first task), for the share the projection takes.
Bases: random orthonormal U [d, d // 2] per layer (as after a first task), built once outside the timing.
One intra-op thread (OMP_NUM_THREADS=1) gives stable figures on a shared machine: with two threads and a busy other
core, every parallel region waits for a descheduled thread and single steps took up to 10x longer.

Inference (``AnomalyScorer``: encode, noise to the preset's t_start, DDIM 10 steps, then, in latent space, decode and
the backbone features of input and reconstruction, in feature space (the tiny preset) the denoised features
themselves; anomaly map): ``InferenceConfig(eager=False)`` (fused ``ddim_step`` and ``anomaly_map``) against
``eager=True`` (the references in oneformore/ops/reference), same weights and inputs; both maps are compared outside
the timing (on the untimed first call of each row).

Sizes: ``tiny`` at batch 8, 128 px (the preset: diffusion in the backbone's feature space, x0-prediction, synthetic
defects in every training image). ``base`` at batch 1: its preset (SD-1.5 widths, 937 M parameters
in the UNet + control branch, 256 px) is beyond a 2-core CPU — 74 s per training step without projection and 16 s per
denoiser call (10 per image) at 256 px, and its k = d/2 bases alone would be 16 GiB (20 TFLOP per projection) — so
it runs with the preset's architecture at reduced width and size: ``unet.channels`` = OFM_BENCH_BASE_CHANNELS
(default 80, a quarter of 320; depths, levels, attention, heads, control branch and autoencoder as the preset) and
``image_size`` = OFM_BENCH_BASE_SIZE (default 128).

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_detector.py --benchmark-only --benchmark-json=detector.json
    python benchmarks/bench_detector.py detector.json     # images/s per row and fused/eager ratios (markdown)

With ``--benchmark-disable`` (a CI smoke run) the module is skipped: every row takes seconds to minutes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import pytest
import torch

from oneformore.config import load_config
from oneformore.continual import GradientProjector
from oneformore.diffusion import NoiseSchedule
from oneformore.models.build import DiffusionNetworks, count_parameters
from oneformore.models.continual_model import ContinualDiffusionModel
from oneformore.models.inference import AnomalyScorer, InferenceConfig

BASE_CHANNELS = int(os.environ.get("OFM_BENCH_BASE_CHANNELS", "80"))
BASE_SIZE = int(os.environ.get("OFM_BENCH_BASE_SIZE", "128"))
DDIM_STEPS = 10

# preset -> (config overrides, batch size, timed rounds)
SETTINGS = {
    "tiny": ([], 8, 3),
    "base": ([f"unet.channels={BASE_CHANNELS}", f"image_size={BASE_SIZE}"], 1, 2),
}


@pytest.fixture(scope="module", autouse=True)  # module scope: decided before the (costly) module fixtures are built
def _only_when_timing(request):
    if request.config.getoption("benchmark_disable", False):
        pytest.skip("detector benchmarks take minutes; they run only when timing (not with --benchmark-disable)")


@dataclass
class Detector:
    name: str
    model: ContinualDiffusionModel
    schedule: NoiseSchedule
    images: torch.Tensor
    projector: GradientProjector

    @property
    def networks(self) -> DiffusionNetworks:
        return self.model.networks

    @property
    def label(self) -> str:
        b, _, h, _ = self.images.shape
        return (f"{self.name} ({count_parameters(self.networks.denoiser) / 1e6:.1f} M denoiser params, "
                f"batch {b}, {h} px)")


def random_orthonormal_bases(projector: GradientProjector, seed: int = 0) -> dict[str, torch.Tensor]:
    """U [d, d // 2] with orthonormal columns for every layer of the projector: the first d // 2 columns of a random
    Householder reflection I - 2 v vᵀ (|v| = 1), dense and exactly orthonormal, built in O(d k). A QR of a Gaussian
    d x k matrix costs O(d k²): over two minutes for the base row's 195 layers on this machine, for bases whose
    values do not change the cost of the products being timed."""
    gen = torch.Generator().manual_seed(seed)
    bases = {}
    for name, layer in projector.layers.items():
        d = layer.weight[0].numel()
        k = d // 2
        v = torch.randn(d, generator=gen, dtype=torch.float64)
        v /= v.norm()
        u = -2.0 * torch.outer(v, v[:k])
        u[torch.arange(k), torch.arange(k)] += 1.0
        bases[name] = u.float().contiguous()
    return bases


@pytest.fixture(scope="module", params=list(SETTINGS))
def detector(request) -> Detector:
    name = request.param
    overrides, batch, _ = SETTINGS[name]
    config = load_config(name, overrides)
    torch.manual_seed(0)
    model = ContinualDiffusionModel(config)
    projector = GradientProjector(model.networks.denoiser)
    projector.set_bases(random_orthonormal_bases(projector))
    size = config["image_size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return Detector(name, model, NoiseSchedule("linear"), images, projector)


# --- training step -----------------------------------------------------------------------------------------------

def eager_projection(projector: GradientProjector) -> None:
    """What ``projector.project()`` does, layer by layer in plain PyTorch (biases of projected layers frozen too)."""
    from bench_projection import eager_loop  # benchmarks/ is on sys.path under pytest

    names = [n for n in projector.projected_layers() if projector.layers[n].weight.grad is not None]
    for n in names:
        if projector.freeze_bias and projector.layers[n].bias is not None:
            projector.layers[n].bias.grad = None
    eager_loop([projector.layers[n].weight.grad for n in names], [projector.bases[n] for n in names])


@pytest.mark.parametrize("projection", ["fused", "eager", "none"])
def test_training_step(benchmark, detector, projection):
    objective = detector.model.objective
    objective.train()
    optimizer = torch.optim.AdamW([p for p in detector.networks.denoiser.parameters() if p.requires_grad], lr=1e-5)
    project = {"fused": detector.projector.project, "eager": lambda: eager_projection(detector.projector),
               "none": lambda: None}[projection]
    batch = {"image": detector.images}
    step = iter(range(10**6))

    def train_step():
        loss = objective.training_loss(batch, torch.Generator().manual_seed(next(step)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        project()
        optimizer.step()

    benchmark.group = f"detector training step: {detector.label}"
    benchmark.extra_info.update(images=len(detector.images), config=detector.name, kind="train", variant=projection)
    benchmark.pedantic(train_step, rounds=SETTINGS[detector.name][2], iterations=1, warmup_rounds=1)


# --- inference ---------------------------------------------------------------------------------------------------

def scorer(detector: Detector, eager: bool) -> AnomalyScorer:
    model = detector.model
    cfg = InferenceConfig(**{**model.config.get("inference", {}), "steps": DDIM_STEPS, "eager": eager})
    return AnomalyScorer(model.networks, model.backbone, detector.schedule, cfg, model.features,
                         model.objective.cfg.prediction).eval()


_maps: dict[tuple[str, str], torch.Tensor] = {}  # (config, ops) -> the maps of the untimed first call


@pytest.mark.parametrize("ops", ["fused", "eager"])
def test_inference(benchmark, detector, ops):
    model = scorer(detector, eager=ops == "eager")

    def infer():
        return model(detector.images, torch.Generator().manual_seed(2))  # the same noise on every call

    # Untimed first call (the warm-up): its maps must match the other ops' (same weights, inputs and noise).
    _maps[detector.name, ops] = infer()[0]
    other = "eager" if ops == "fused" else "fused"
    if (detector.name, other) in _maps:
        reference = _maps[detector.name, "eager"]
        torch.testing.assert_close(_maps[detector.name, "fused"], reference, rtol=1e-4,
                                   atol=1e-4 * float(reference.abs().max()))
    benchmark.group = f"detector inference, DDIM {DDIM_STEPS} steps: {detector.label}"
    benchmark.extra_info.update(images=len(detector.images), config=detector.name, kind="inference", variant=ops)
    benchmark.pedantic(infer, rounds=SETTINGS[detector.name][2], iterations=1)


# --- report ------------------------------------------------------------------------------------------------------

def table(results: dict) -> str:
    """Markdown rows from a ``--benchmark-json`` file: images/s from the median and from the minimum time per row,
    and each row's time relative to the fused row of its group (> 1: slower than fused), by median and by minimum
    (on a shared machine the minimum is the less disturbed figure)."""
    rows = [b for b in results["benchmarks"] if b.get("extra_info", {}).get("kind")]
    fused = {(b["extra_info"]["config"], b["extra_info"]["kind"]): b["stats"]
             for b in rows if b["extra_info"]["variant"] == "fused"}
    lines = ["| config | what | ops | rounds | median s | min s | images/s (median) | images/s (best) "
             "| time / fused (median) | time / fused (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in rows:
        info, stats = b["extra_info"], b["stats"]
        ref = fused.get((info["config"], info["kind"]))
        ratios = [f"{stats[k] / ref[k]:.2f}×" if ref else "" for k in ("median", "min")]
        what = "training step" if info["kind"] == "train" else f"inference, DDIM {DDIM_STEPS}"
        ops = {"none": "no projection"}.get(info["variant"], info["variant"])
        lines.append(f"| {info['config']} | {what} | {ops} | {stats['rounds']} | {stats['median']:.2f} | "
                     f"{stats['min']:.2f} | {info['images'] / stats['median']:.2f} | {info['images'] / stats['min']:.2f} | "
                     f"{ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
    else:
        with open(sys.argv[1]) as f:
            print(table(json.load(f)))
