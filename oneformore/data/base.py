"""The dataset every loader returns: a list of sample records, loaded and transformed on access."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .layout import UnreadableImageError
from .transforms import AnomalyTransform


@dataclass(frozen=True)
class SampleRecord:
    """Where one sample lives and what it is (no pixels)."""

    path: Path
    mask_path: Path | None
    label: int  # 0 normal, 1 anomalous
    category: str
    defect: str  # "good" for normal images


def _open_image(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImageError(f"cannot read image {path}: {exc}") from exc


class AnomalyDataset(Dataset):
    """Samples as dicts (the contract every oneformore dataset follows):

    - "image": float32 [3, H, W], normalised for the backbone by the transform (ImageNet mean/std by default)
    - "mask": float32 [1, H, W] in {0, 1} (zeros for normal images and where no mask exists, see "has_mask")
    - "label": int, 0 normal / 1 anomalous; "category": str; "defect": str ("good" for normal); "path": str
    - "has_mask": bool, whether "mask" comes from a ground-truth file (False: anomalous image without a mask)

    With ``skip_bad=False`` (default) an unreadable image raises :class:`UnreadableImageError` naming the file.
    With ``skip_bad=True`` the sample comes back as None with a warning; :func:`anomaly_loader` drops such
    samples from the batches and warns once at the end of each pass with the count and the files.
    """

    def __init__(
        self,
        records: list[SampleRecord],
        transform: AnomalyTransform | None = None,
        *,
        skip_bad: bool = False,
        mask_threshold: int = 1,
    ):
        self.records = list(records)
        self.transform = transform or AnomalyTransform()
        self.skip_bad = skip_bad
        self.mask_threshold = mask_threshold  # mask pixel value >= this is anomalous
        self.bad_files: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    @property
    def has_masks(self) -> bool:
        """True when every anomalous sample has a ground-truth mask (pixel metrics are then defined)."""
        return all(r.mask_path is not None for r in self.records if r.label == 1)

    def counts(self) -> dict[str, int]:
        """Number of samples per "category/defect"."""
        out: dict[str, int] = {}
        for r in self.records:
            key = f"{r.category}/{r.defect}"
            out[key] = out.get(key, 0) + 1
        return out

    def _load_mask(self, record: SampleRecord, image_size: tuple[int, int]) -> Image.Image | None:
        if record.mask_path is None:
            return None
        mask = _open_image(record.mask_path, "L")
        if mask.size != image_size:
            raise UnreadableImageError(
                f"mask {record.mask_path} is {mask.size[0]}x{mask.size[1]} but its image {record.path} is "
                f"{image_size[0]}x{image_size[1]}: they must be the same size to be aligned"
            )
        return Image.fromarray((np.asarray(mask) >= self.mask_threshold).astype(np.uint8) * 255)

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        try:
            image = _open_image(record.path, "RGB")
            mask = self._load_mask(record, image.size)
        except UnreadableImageError as exc:
            if not self.skip_bad:
                raise
            self.bad_files.append(str(record.path))
            warnings.warn(f"skipping unreadable sample: {exc}", stacklevel=2)
            return None
        return {
            "image": self.transform.image(image),
            "mask": self.transform.mask(mask),
            "label": record.label,
            "category": record.category,
            "defect": record.defect,
            "path": str(record.path),
            "has_mask": record.mask_path is not None or record.label == 0,
        }
