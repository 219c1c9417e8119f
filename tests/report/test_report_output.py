"""Visual output: strips (size, panels, contours), dataset-wide calibration, plots, metrics.json and report.md."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from oneformore.metrics import AnomalyMetrics
from oneformore.report import (
    DisplayScale,
    RunWriter,
    contour,
    render_strip,
    save_strips,
    scale_from_metrics,
    scale_from_normal_maps,
)
from oneformore.report.strips import GT_CONTOUR, PRED_CONTOUR


def _sample(h=32, w=40, anomalous=True):
    mask = torch.zeros(1, h, w)
    if anomalous:
        mask[0, 8:20, 10:25] = 1
    return {"image": torch.rand(3, h, w), "mask": mask, "label": int(anomalous), "category": "widget",
            "defect": "scratch" if anomalous else "good", "path": f"/x/{'a' if anomalous else 'b'}/007.png"}


def test_contour_is_the_region_border():
    region = np.zeros((10, 10), bool)
    region[2:7, 3:8] = True
    edge = contour(region)
    assert edge[2, 3] and edge[6, 7] and not edge[4, 5] and not edge[0, 0]
    assert edge.sum() == 2 * 5 + 2 * 3


def test_strip_panels_and_contours():
    s = _sample()
    amap = torch.full((32, 40), 0.1)
    amap[11:17, 13:22] = 3.0  # predicted region strictly inside the ground truth [8:20, 10:25]
    amap[25:30, 30:36] = 2.5  # a false positive region, away from the ground truth
    scale = DisplayScale(vmin=0.1, threshold=1.0)
    strip = render_strip(s["image"], s["mask"], amap, scale)
    assert strip.shape == (32, 4 * 40, 3) and strip.dtype == np.uint8
    image_panel, gt_panel, overlay, pred_panel = np.split(strip, 4, axis=1)
    assert np.array_equal(gt_panel[..., 0] > 0, s["mask"][0].numpy() > 0)
    assert np.array_equal(pred_panel[..., 0] > 0, (amap >= 1.0).numpy())
    is_green = np.all(overlay == GT_CONTOUR, axis=-1)
    is_red = np.all(overlay == PRED_CONTOUR, axis=-1)
    assert is_red[25, 30] and is_red[29, 35]  # border of the false positive
    assert is_green[8, 10] and is_green[19, 24] and is_green[8, 17]  # ground-truth border
    assert is_red[11, 13] and is_red[16, 21]  # predicted border
    assert not is_red[27, 33] and not is_green[0, 0]  # interiors/background untouched


def test_scale_is_dataset_wide_not_per_image():
    normal = torch.rand(4, 1, 16, 16)
    scale = scale_from_normal_maps(normal, quantile=0.95)
    assert scale.threshold == pytest.approx(float(torch.quantile(normal.flatten(), 0.95)), abs=2e-2)
    faint = torch.full((8, 8), scale.threshold * 0.5)  # a uniformly low map is NOT stretched to full colour
    assert float(scale.normalise(faint).max()) < 0.5
    assert scale.normalise(torch.tensor([scale.threshold])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="quantile"):
        scale_from_normal_maps(normal, quantile=1.0)


def test_f1_calibration_uses_labels():
    masks = torch.zeros(4, 1, 8, 8)
    masks[:2, 0, 2:5, 2:5] = 1
    maps = torch.rand(masks.shape) * 0.5 + masks
    m = AnomalyMetrics()
    m.update(maps, masks)
    scale = scale_from_metrics(m)
    assert scale.threshold == pytest.approx(m.compute()["pixel_f1_threshold"])
    assert 0.5 <= scale.threshold <= 1.5 and "F1" in scale.method


def test_run_writer_outputs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    samples = [_sample(anomalous=i < 2) for i in range(3)]
    maps = torch.stack([s["mask"] for s in samples]) + 0.3 * torch.rand(3, 1, 32, 40, generator=gen)
    m = AnomalyMetrics()
    m.update(maps, torch.stack([s["mask"] for s in samples]))
    w = RunWriter(tmp_path / "run")
    values = w.add_metrics("widget", m)
    nan = float("nan")
    summary = w.add_continual([[0.9, nan], [0.8, 0.95]], ["base", "new"], metric="image_auroc")
    assert summary["fm"] == pytest.approx(0.1)
    samples[2]["path"] = "/x/c/008.png"
    paths = save_strips(tmp_path / "run" / "strips", zip(samples, maps), scale_from_metrics(m), lambda x: x.clamp(0, 1), total=3)
    w.add_strips(paths)
    report = w.finish("test run")

    assert len(paths) == 3 and all(Image.open(p).size == (4 * 40, 32) for p in paths)
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert data["metrics"]["widget"]["pixel_aupro"] == pytest.approx(values["pixel_aupro"])
    assert data["continual"]["image_auroc"]["R"][0][1] is None  # NaN written as null
    text = report.read_text()
    for png in ["plots/roc_widget.png", "plots/r_matrix_image_auroc.png", "plots/curve_image_auroc.png", "strips/widget_scratch_007.png"]:
        assert f"]({png})" in text and (tmp_path / "run" / png).is_file()
        assert Image.open(tmp_path / "run" / png).size[0] > 100
    assert "ACC 0.8750" in text
    assert not list((tmp_path / "run").rglob(".*"))  # no temporary files left behind
