"""MVTec-like folders: MVTec AD itself and a user's own data in the same layout."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import AnomalyDataset, SampleRecord
from .layout import MVTEC_LAYOUT, DatasetLayoutError, IMAGE_EXTENSIONS, list_images, list_subfolders, require_dir
from .transforms import AnomalyTransform

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    """``<gt_dir>/<stem>_mask.<any image extension>`` (MVTec uses .png)."""
    for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
        candidate = gt_dir / f"{image.stem}_mask{ext}"
        if candidate.is_file():
            return candidate
    return None


def scan_category(root: Path, category: str, split: str, *, require_masks: bool) -> list[SampleRecord]:
    """Records of one category folder ``root/category`` in the MVTec layout.

    Train: ``train/good`` only. Test: ``test/good`` (label 0) and every other ``test/<defect>`` (label 1), each
    defective image with its mask ``ground_truth/<defect>/<stem>_mask.png``. A defect without a ground_truth
    folder is an error when ``require_masks`` (MVTec AD), else its images have no mask; a ground_truth folder that
    lacks the mask of one of its images is always an error.
    """
    _check_split(split)
    base = require_dir(root / category, MVTEC_LAYOUT)
    split_dir = require_dir(base / split, MVTEC_LAYOUT)
    if split == "train":
        good = require_dir(split_dir / "good", MVTEC_LAYOUT)
        return [SampleRecord(p, None, 0, category, "good") for p in list_images(good)]
    records: list[SampleRecord] = []
    defects = list_subfolders(split_dir)
    if not defects:
        raise DatasetLayoutError(f"no test/<defect> or test/good folder in {split_dir}\n{MVTEC_LAYOUT}")
    for defect_dir in defects:
        defect = defect_dir.name
        images = list_images(defect_dir)
        if defect == "good":
            records += [SampleRecord(p, None, 0, category, "good") for p in images]
            continue
        gt_dir = base / "ground_truth" / defect
        if not gt_dir.is_dir():
            if require_masks:
                raise DatasetLayoutError(f"missing mask folder {gt_dir} for the images of {defect_dir}\n{MVTEC_LAYOUT}")
            records += [SampleRecord(p, None, 1, category, defect) for p in images]
            continue
        for p in images:
            mask = _find_mask(gt_dir, p)
            if mask is None:
                raise DatasetLayoutError(
                    f"image {p} has no mask: expected {gt_dir / (p.stem + '_mask.png')}\n{MVTEC_LAYOUT}"
                )
            records.append(SampleRecord(p, mask, 1, category, defect))
    return records


def _categories(categories: str | Sequence[str]) -> list[str]:
    cats = [categories] if isinstance(categories, str) else list(categories)
    if not cats:
        raise ValueError("category: expected a category name or a non-empty list of names")
    return cats


class MVTecAD(AnomalyDataset):
    """MVTec AD (``root/<category>/{train,test,ground_truth}``); ``category`` is one name or a list of names
    (combined into one dataset, each sample carrying its category). Every defective test image needs its mask.

    >>> ds = MVTecAD("/data/mvtec", ["bottle", "cable"], "test")  # doctest: +SKIP
    """

    def __init__(self, root, category: str | Sequence[str], split: str, transform: AnomalyTransform | None = None, *, skip_bad: bool = False):
        root = require_dir(Path(root), MVTEC_LAYOUT)
        records = [r for c in _categories(category) for r in scan_category(root, c, split, require_masks=True)]
        super().__init__(records, transform, skip_bad=skip_bad, mask_threshold=128)
        self.root, self.split = root, split


class Folder(AnomalyDataset):
    """A user's own images in the MVTec-like layout: train/good, test/good, test/<defect>,
    ground_truth/<defect>/<name>_mask.png (masks optional per defect folder: without them ``has_masks`` is False
    and only image metrics apply).

    ``root`` is either one category folder (it contains ``train/`` or ``test/``; the category is its name) or a
    folder of category folders; ``categories`` picks some of them (default: all that have the split).
    Masks are binarised at ``mask_threshold`` (pixel >= 128 by default, robust to JPEG-saved masks).
    """

    def __init__(
        self,
        root,
        split: str,
        categories: str | Sequence[str] | None = None,
        transform: AnomalyTransform | None = None,
        *,
        skip_bad: bool = False,
        mask_threshold: int = 128,
    ):
        _check_split(split)
        root = require_dir(Path(root), MVTEC_LAYOUT)
        if (root / "train").is_dir() or (root / "test").is_dir():
            if categories is not None and _categories(categories) != [root.name]:
                raise ValueError(f"categories: {root} is a single category folder ({root.name!r}), got {categories!r}")
            parent, cats = root.parent, [root.name]
        else:
            parent = root
            cats = _categories(categories) if categories is not None else [
                d.name for d in list_subfolders(root) if (d / split).is_dir()
            ]
            if not cats:
                raise DatasetLayoutError(f"no category folder with a {split}/ folder in {root}\n{MVTEC_LAYOUT}")
        records = [r for c in cats for r in scan_category(parent, c, split, require_masks=False)]
        super().__init__(records, transform, skip_bad=skip_bad, mask_threshold=mask_threshold)
        self.root, self.split = root, split
