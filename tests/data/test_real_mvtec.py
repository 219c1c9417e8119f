"""MVTecAD on the real images of ../shared/data: counts from its README, binary aligned masks, combining."""

import numpy as np
import pytest
import torch
from PIL import Image

from oneformore.data import AnomalyTransform, MVTecAD, get_protocol

pytestmark = pytest.mark.data

README_COUNTS = {
    "bottle": (209, {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}),
    "magnetic_tile": (714, {"good": 238, "blowhole": 82, "break": 39, "crack": 44, "fray": 19, "uneven": 85}),
    "kolektor": (261, {"good": 87, "crack": 52}),
}


@pytest.mark.parametrize("category", sorted(README_COUNTS))
def test_counts_match_readme(shared_data, category):
    n_train, test_counts = README_COUNTS[category]
    assert len(MVTecAD(shared_data, category, "train")) == n_train
    test = MVTecAD(shared_data, category, "test")
    assert test.counts() == {f"{category}/{d}": n for d, n in test_counts.items()}
    assert test.has_masks
    assert all(r.label == (r.defect != "good") for r in test.records)


def test_masks_binary_and_aligned(shared_data):
    ds = MVTecAD(shared_data, "bottle", "test", AnomalyTransform(size=256, normalisation="none"))
    for i in range(0, len(ds), 7):
        s = ds[i]
        assert s["image"].shape == (3, 256, 256) and s["image"].dtype == torch.float32
        assert s["mask"].shape == (1, 256, 256) and s["mask"].dtype == torch.float32
        assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
        if s["label"] == 1:
            raw = np.asarray(Image.open(ds.records[i].mask_path)) > 127
            assert torch.equal(s["mask"][0].bool(), torch.from_numpy(raw))  # same pixels, no shift
            raw_img = np.asarray(Image.open(s["path"]).convert("RGB"), dtype=np.float32) / 255
            assert torch.allclose(s["image"].permute(1, 2, 0), torch.from_numpy(raw_img), atol=1e-6)
        else:
            assert s["mask"].sum() == 0 and s["defect"] == "good"


def test_resize_and_crop_keep_masks_binary(shared_data):
    ds = MVTecAD(shared_data, "kolektor", "test", AnomalyTransform(size=(128, 96), crop=(112, 80)))
    s = next(ds[i] for i in range(len(ds)) if ds.records[i].label == 1)
    assert s["image"].shape == (3, 112, 80) and s["mask"].shape == (1, 112, 80)
    assert set(s["mask"].unique().tolist()) == {0.0, 1.0}
    # ImageNet normalisation by default: values leave [0, 1]
    assert s["image"].min() < 0


def test_categories_combined_and_protocol_test_sets(shared_data):
    proto = get_protocol("bottle,magnetic_tile;kolektor")
    make = lambda cats, split: MVTecAD(shared_data, cats, split)  # noqa: E731
    train0, test0 = proto.datasets(0, make)
    train1, test1 = proto.datasets(1, make)
    assert train0.categories == ["bottle", "magnetic_tile"] and len(train0) == 209 + 714
    assert train1.categories == ["kolektor"] and len(train1) == 261
    assert test0.categories == ["bottle", "magnetic_tile"]
    assert test1.categories == ["bottle", "kolektor", "magnetic_tile"]
    assert len(test1) == 83 + 507 + 139
    assert {test1[i]["category"] for i in (0, len(test1) - 1)} == {"bottle", "kolektor"}
