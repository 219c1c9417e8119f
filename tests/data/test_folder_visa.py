"""Folder and VisA on generated data: layouts, clutter ignored, documented errors, skip_bad."""

import shutil

import pytest
import torch
from make_fixtures import make_folder_category, make_visa

from oneformore.data import (
    AnomalyTransform,
    DatasetLayoutError,
    Folder,
    MVTecAD,
    UnreadableImageError,
    VisA,
    anomaly_loader,
)


@pytest.fixture
def two_categories(tmp_path):
    make_folder_category(tmp_path, "widget", seed=0)
    make_folder_category(tmp_path, "gadget", seed=1, defects=(("crack", 2),), masks=False)
    return tmp_path


def test_folder_single_category_and_clutter_ignored(two_categories):
    train = Folder(two_categories / "widget", "train")
    assert len(train) == 3 and train.categories == ["widget"]
    test = Folder(two_categories / "widget", "test")
    assert test.counts() == {"widget/good": 2, "widget/scratch": 2, "widget/dent": 1}
    s = test[2]
    assert set(s) >= {"image", "mask", "label", "category", "defect", "path"}
    assert s["image"].shape == (3, 256, 256) and s["mask"].shape == (1, 256, 256)


def test_folder_combines_categories_masks_optional(two_categories):
    test = Folder(two_categories, "test")
    assert test.categories == ["gadget", "widget"]
    assert len(test) == 4 + 5
    assert not test.has_masks  # gadget has no ground_truth
    gadget_crack = next(test[i] for i, r in enumerate(test.records) if r.category == "gadget" and r.label == 1)
    assert gadget_crack["has_mask"] is False and gadget_crack["mask"].sum() == 0
    widget_only = Folder(two_categories, "test", categories=["widget"])
    assert widget_only.has_masks and widget_only.categories == ["widget"]
    masks = [widget_only[i]["mask"] for i in range(len(widget_only))]
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    assert sum(bool(m.any()) for m in masks) == 3


def test_missing_mask_names_the_expected_file(two_categories):
    (two_categories / "widget" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"test/scratch/001\.png has no mask: expected .*ground_truth/scratch/001_mask\.png") as e:
        Folder(two_categories / "widget", "test")
    assert "expected layout" in str(e.value)


def test_mvtec_requires_masks_and_folders(two_categories):
    with pytest.raises(DatasetLayoutError, match=r"missing mask folder .*gadget/ground_truth/crack"):
        MVTecAD(two_categories, "gadget", "test")
    with pytest.raises(DatasetLayoutError, match=r"missing folder: .*nothing.*\n.*expected layout"):
        MVTecAD(two_categories, "nothing", "train")
    shutil.rmtree(two_categories / "widget" / "train")
    with pytest.raises(DatasetLayoutError, match=r"missing folder: .*widget/train"):
        MVTecAD(two_categories, "widget", "train")
    with pytest.raises(ValueError, match="split: expected one of"):
        MVTecAD(two_categories, "widget", "validation")


def test_unreadable_image_error_and_skip_bad(two_categories):
    bad = two_categories / "widget" / "test" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG truncated")
    ds = Folder(two_categories / "widget", "test")
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*good/001\.png"):
        ds[[str(r.path) for r in ds.records].index(str(bad))]
    ds = Folder(two_categories / "widget", "test", skip_bad=True)
    loader = anomaly_loader(ds, batch_size=2)
    with pytest.warns(UserWarning) as record:
        batches = list(loader)
    messages = [str(w.message) for w in record]
    assert any("skipping unreadable sample" in m and "001.png" in m for m in messages)
    assert any("1 unreadable image(s) were skipped" in m for m in messages)
    assert loader.skipped == 1 and ds.bad_files == [str(bad)]
    assert sum(len(b["label"]) for b in batches) == len(ds) - 1


def test_visa_raw_layout(tmp_path):
    root = make_visa(tmp_path)
    train = VisA(root, "candle", "train", AnomalyTransform(size=32))
    assert len(train) == 3 and all(r.label == 0 for r in train.records)
    test = VisA(root, ["candle", "pcb1"], "test", AnomalyTransform(size=(40, 48)))
    assert test.counts() == {"candle/good": 2, "candle/anomaly": 2, "pcb1/good": 2, "pcb1/anomaly": 2}
    s = next(test[i] for i, r in enumerate(test.records) if r.label == 1)
    assert s["defect"] == "anomaly" and s["image"].shape == (3, 40, 48)
    # region indices 1 and 2 both become 1 (binarised with != 0); geometry preserved at native size
    assert set(s["mask"].unique().tolist()) == {0.0, 1.0}
    assert int(s["mask"].sum()) == 10 * 20 + 5 * 5


def test_visa_errors(tmp_path):
    root = make_visa(tmp_path)
    mask = root / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=r"Anomaly/001\.JPG has no mask: expected .*Masks/Anomaly/001\.png"):
        VisA(root, "pcb1", "test")
    VisA(root, "candle", "test")  # the other category is fine
    with pytest.raises(DatasetLayoutError, match=r"lists no test image of category 'fryum'|missing folder"):
        VisA(root, "fryum", "test")
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing split file: .*split_csv/1cls\.csv\n.*VisA"):
        VisA(root, "candle", "test")


def test_transform_normalisation_and_validation():
    from PIL import Image

    t = AnomalyTransform(size=8)
    x = t.image(Image.new("RGB", (16, 16), (124, 116, 104)))
    assert torch.allclose(x, torch.zeros_like(x), atol=0.01)  # ImageNet mean maps to ~0
    assert torch.allclose(t.denormalise(x)[:, 0, 0], torch.tensor([124, 116, 104]) / 255, atol=1e-6)
    with pytest.raises(ValueError, match="normalisation: expected one of"):
        AnomalyTransform(normalisation="resnet")
    with pytest.raises(ValueError, match="crop: expected at most"):
        AnomalyTransform(size=32, crop=64)


def test_mask_of_another_size_is_reported(two_categories):
    from PIL import Image

    mask = two_categories / "widget" / "ground_truth" / "dent" / "000_mask.png"
    Image.new("L", (10, 10)).save(mask)
    ds = Folder(two_categories / "widget", "test")
    index = next(i for i, r in enumerate(ds.records) if r.mask_path == mask)
    with pytest.raises(UnreadableImageError, match=r"000_mask\.png is 10x10 but its image .*dent/000\.png is 48x40"):
        ds[index]
