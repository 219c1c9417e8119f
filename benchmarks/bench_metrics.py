"""Full metric suite (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max, AUPRO) on the real MVTec bottle test set at
256x256 (83 images, 5.4 M pixels): oneformore.metrics.AnomalyMetrics (streamed in batches of 16) vs the same
numbers through scikit-learn + the port of MVTec AD's reference AUPRO.

No detector exists yet, so the anomaly maps are deterministic and synthetic: the ground-truth masks blurred
(Gaussian, sigma 4) plus uniform noise and a per-image offset, which gives realistic, imperfect scores
(image AUROC 0.946, pixel AUROC 0.824, AUPRO 0.544) with continuous values.

    python -m pytest benchmarks/bench_metrics.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from oneformore.metrics import AnomalyMetrics, image_scores
from oneformore.metrics.reference import reference_suite

REPO = Path(__file__).resolve().parents[1]
KEYS = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"]


def _data_root() -> Path:
    env = os.environ.get("ONEFORMORE_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def synthetic_maps(masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(-12, 13, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * 4.0**2))
    k = k / k.sum()
    blurred = F.conv2d(F.conv2d(masks, k.view(1, 1, 1, -1), padding=(0, 12)), k.view(1, 1, -1, 1), padding=(12, 0))
    noise = torch.rand(masks.shape, generator=gen)
    offset = 1.0 * torch.rand(masks.shape[0], 1, 1, 1, generator=gen)
    return 0.6 * blurred + 0.8 * noise + offset


@pytest.fixture(scope="module")
def bottle():
    from oneformore.data import AnomalyTransform, MVTecAD

    root = _data_root()
    if not (root / "bottle").is_dir():
        pytest.skip(f"real test images not found at {root} (set ONEFORMORE_TEST_DATA)")
    ds = MVTecAD(root, "bottle", "test", AnomalyTransform(size=256))
    masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    return synthetic_maps(masks), masks


def ours(maps, masks, batch=16, **kwargs):
    m = AnomalyMetrics(**kwargs)
    for i in range(0, len(maps), batch):
        m.update(maps[i : i + batch], masks[i : i + batch])
    return m.compute()


def outside(maps, masks):
    labels = masks.flatten(1).amax(1).numpy()
    scores = image_scores(maps).numpy()
    return reference_suite(maps[:, 0].numpy(), masks[:, 0].numpy() > 0, scores, labels)


def test_ours(benchmark, bottle):
    benchmark.group = "metrics: bottle test set 256x256, full suite"
    maps, masks = bottle
    result = benchmark.pedantic(ours, args=(maps, masks), rounds=5, iterations=1, warmup_rounds=1)
    ref = outside(maps, masks)
    for k in KEYS:
        assert abs(result[k] - ref[k]) < 1e-6, (k, result[k], ref[k])
    benchmark.extra_info.update({k: result[k] for k in KEYS})


def test_ours_spilled_to_disk(benchmark, bottle, tmp_path):
    """Same, with the normal scores spilled to disk in sorted runs of 1 M (bounded memory)."""
    benchmark.group = "metrics: bottle test set 256x256, full suite"
    maps, masks = bottle
    kwargs = {"spill_dir": tmp_path, "spill_every": 1 << 20}
    result = benchmark.pedantic(ours, args=(maps, masks), kwargs=kwargs, rounds=3, iterations=1)
    ref = ours(maps, masks)
    for k in KEYS:
        assert abs(result[k] - ref[k]) < 1e-12, (k, result[k], ref[k])


def test_sklearn_and_mvtec_reference(benchmark, bottle):
    benchmark.group = "metrics: bottle test set 256x256, full suite"
    maps, masks = bottle
    result = benchmark.pedantic(outside, args=(maps, masks), rounds=2, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in KEYS})
