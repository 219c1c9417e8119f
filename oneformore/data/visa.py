"""VisA as downloaded: images and masks under ``<category>/Data``, the split in ``split_csv/1cls.csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .base import AnomalyDataset, SampleRecord
from .folder import _categories, _check_split
from .layout import VISA_LAYOUT, DatasetLayoutError, require_dir
from .transforms import AnomalyTransform

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
_COLUMNS = ("object", "split", "label", "image", "mask")


def read_visa_split(root: Path, split_csv: str = "split_csv/1cls.csv") -> list[dict[str, str]]:
    path = root / split_csv
    if not path.is_file():
        raise DatasetLayoutError(f"missing split file: {path}\n{VISA_LAYOUT}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in _COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise DatasetLayoutError(f"{path}: expected a header with columns {','.join(_COLUMNS)}\n{VISA_LAYOUT}")
    return rows


class VisA(AnomalyDataset):
    """VisA in its raw layout. ``category``: one name or a list (combined). Labels come from the csv ("normal" /
    "anomaly"); VisA has no defect types, so anomalous samples have ``defect="anomaly"``. Masks store region
    indices (1, 2, ...) rather than 255, so they are binarised with ``!= 0``.
    """

    def __init__(
        self,
        root,
        category: str | Sequence[str],
        split: str,
        transform: AnomalyTransform | None = None,
        *,
        skip_bad: bool = False,
        split_csv: str = "split_csv/1cls.csv",
    ):
        _check_split(split)
        root = require_dir(Path(root), VISA_LAYOUT)
        rows = read_visa_split(root, split_csv)
        records = []
        for cat in _categories(category):
            require_dir(root / cat, VISA_LAYOUT)
            selected = [r for r in rows if r["object"] == cat and r["split"] == split]
            if not selected:
                raise DatasetLayoutError(f"{root / split_csv} lists no {split} image of category {cat!r}\n{VISA_LAYOUT}")
            for row in selected:
                image = root / row["image"]
                if not image.is_file():
                    raise DatasetLayoutError(f"missing image {image} (listed in {root / split_csv})\n{VISA_LAYOUT}")
                anomalous = row["label"].strip().lower() == "anomaly"
                mask = None
                if anomalous:
                    mask = root / row["mask"] if row["mask"] else None
                    if mask is None or not mask.is_file():
                        raise DatasetLayoutError(
                            f"image {image} has no mask: expected {mask or '(empty mask column)'}\n{VISA_LAYOUT}"
                        )
                records.append(SampleRecord(image, mask, int(anomalous), cat, "anomaly" if anomalous else "good"))
        super().__init__(records, transform, skip_bad=skip_bad, mask_threshold=1)
        self.root, self.split = root, split
