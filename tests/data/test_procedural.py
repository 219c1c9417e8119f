"""Procedural dataset: format, determinism, splits, defects confined to their masks."""

import pytest
import torch

from oneformore.data.procedural import CATEGORIES, DEFECTS, ProceduralDataset, _generator, _texture, draw_defect
from oneformore.models.backbone import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize("category", CATEGORIES)
def test_sample_format(category):
    test = ProceduralDataset(category, "test", image_size=64, n_test_good=2, n_test_defect=2)
    assert len(test) == 2 + 2 * len(DEFECTS)
    for i in range(len(test)):
        s = test[i]
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 64, 64)
        assert s["mask"].dtype == torch.float32 and s["mask"].shape == (1, 64, 64)
        assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
        assert s["category"] == category and isinstance(s["path"], str) and s["path"].startswith("procedural://")
        assert s["label"] == int(s["defect"] != "good")
        if s["label"]:
            assert s["defect"] in DEFECTS and 0 < s["mask"].mean() < 0.1
        else:
            assert s["mask"].sum() == 0
    train = ProceduralDataset(category, "train", image_size=64, n_train=5)
    assert len(train) == 5 and all(train[i]["label"] == 0 for i in range(5))


def test_deterministic_from_the_seed():
    a = ProceduralDataset("marble", "test", image_size=48, seed=3)
    b = ProceduralDataset("marble", "test", image_size=48, seed=3)
    c = ProceduralDataset("marble", "test", image_size=48, seed=4)
    for i in (0, len(a) - 1):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
        assert not torch.equal(a[i]["image"], c[i]["image"])


def test_samples_vary_and_splits_do_not_overlap():
    train = ProceduralDataset("stripes", "train", image_size=48, n_train=8)
    test = ProceduralDataset("stripes", "test", image_size=48, n_test_good=8)
    images = [train[i]["image"] for i in range(8)] + [test[i]["image"] for i in range(8)]
    for i in range(len(images)):
        for j in range(i):
            assert (images[i] - images[j]).abs().mean() > 1e-3


def test_normalisation():
    unit = ProceduralDataset("disc", "train", image_size=48, normalize="unit")[0]["image"]
    net = ProceduralDataset("disc", "train", image_size=48)[0]["image"]
    assert unit.min() >= 0 and unit.max() <= 1
    expected = (unit - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(net, expected)


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_change_the_image_inside_their_mask(category):
    ds = ProceduralDataset(category, "test", image_size=64, n_test_good=0, n_test_defect=3, normalize="unit")
    for index, (defect, i) in enumerate(ds.items):
        clean, _ = _texture(category, 64, _generator(ds.seed, category, "test", defect, i))
        img, mask, _ = ds.render(index)
        diff = (img - clean).abs().mean(0)
        inside, outside = diff[mask[0] > 0].mean(), diff[mask[0] == 0].mean()
        assert inside > 0.1, (defect, float(inside))
        assert inside > 10 * outside, (defect, float(inside), float(outside))


@pytest.mark.parametrize("kind", DEFECTS)
@pytest.mark.parametrize("shape", [(48, 48), (40, 64), (64, 40)])
def test_draw_defect_on_any_image_stays_inside_its_mask_and_region(kind, shape):
    h, w = shape
    clean = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    region = torch.zeros(h, w)
    region[h // 4: h // 2, w // 4: w // 2] = 1
    img, mask = draw_defect(clean, kind, torch.Generator().manual_seed(1), region)
    again, _ = draw_defect(clean, kind, torch.Generator().manual_seed(1), region)
    assert img.shape == clean.shape and mask.shape == (h, w) and torch.equal(img, again)
    assert img.min() >= 0 and img.max() <= 1 and set(mask.unique().tolist()) == {0.0, 1.0}
    diff = (img - clean).abs().mean(0)
    assert diff[mask > 0].mean() > 10 * diff[mask == 0].mean()
    ys, xs = torch.nonzero(mask, as_tuple=True)  # centred in the region: its centre of mass is near it
    assert h // 4 - h // 8 <= ys.float().mean() <= h // 2 + h // 8
    assert w // 4 - w // 8 <= xs.float().mean() <= w // 2 + w // 8


def test_draw_defect_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="kind: expected one of"):
        draw_defect(torch.rand(3, 32, 32), "dent", g)
    with pytest.raises(ValueError, match=r"img: expected shape \[3, H, W\]"):
        draw_defect(torch.rand(1, 32, 32), "hole", g)
    with pytest.raises(ValueError, match="region: expected a \\[32, 32\\] map with at least one nonzero pixel"):
        draw_defect(torch.rand(3, 32, 32), "hole", g, torch.zeros(32, 32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="category"):
        ProceduralDataset("bottle")
    with pytest.raises(ValueError, match="split"):
        ProceduralDataset("disc", "val")
    with pytest.raises(ValueError, match="normalize"):
        ProceduralDataset("disc", normalize="zscore")
