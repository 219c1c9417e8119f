"""Where a run's images come from: one object that makes the dataset of any categories and split.

``DataSource(root=None)`` is the built-in procedural dataset (no files needed); otherwise ``root`` is a VisA
folder (recognised by its ``split_csv/``) or an MVTec-like folder of categories (MVTec AD itself or the user's own
data, read with :class:`~oneformore.data.Folder`, masks optional). ``kind`` forces one reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import ConcatDataset

from . import procedural
from .cache import CachedDataset
from .folder import Folder, MVTecAD
from .layout import DatasetLayoutError
from .transforms import AnomalyTransform
from .visa import VisA

KINDS = ("auto", "procedural", "mvtec", "visa", "folder")


class DataSource:
    def __init__(self, root: str | Path | None = None, kind: str = "auto", image_size: int = 128, *,
                 skip_bad: bool = False, procedural_seed: int = 0, cache: bool = False):
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if kind == "auto":
            if root is None:
                kind = "procedural"
            elif (Path(root) / "split_csv").is_dir():
                kind = "visa"
            else:
                kind = "folder"
        if kind != "procedural":
            if root is None:
                raise ValueError(f"root: a data folder is required for kind={kind!r}")
            if not Path(root).is_dir():
                raise DatasetLayoutError(f"root: no folder at {root}")
        self.root = Path(root) if root is not None else None
        self.kind, self.image_size, self.skip_bad, self.procedural_seed = kind, image_size, skip_bad, procedural_seed
        self.cache = cache  # keep decoded samples in memory (CachedDataset): every epoch after the first is free
        self.transform = AnomalyTransform(image_size)

    def __repr__(self) -> str:
        return f"DataSource(kind={self.kind!r}, root={str(self.root) if self.root else None!r})"

    def categories(self) -> list[str]:
        """Every category available (sorted)."""
        if self.kind == "procedural":
            return sorted(procedural.CATEGORIES)
        if self.kind == "visa":
            return sorted({row["object"] for row in _visa_rows(self.root)})
        return sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and (d / "train").is_dir())

    def dataset(self, categories: Sequence[str], split: str):
        """The ``split`` ("train" / "test") samples of ``categories``, each sample carrying its category (kept in
        memory after the first load with ``cache=True``)."""
        dataset = self._dataset(categories, split)
        return CachedDataset(dataset) if self.cache else dataset

    def _dataset(self, categories: Sequence[str], split: str):
        categories = list(categories)
        if not categories:
            raise ValueError("categories: expected at least one category")
        if self.kind == "procedural":
            parts = [procedural.ProceduralDataset(c, split, self.image_size, self.procedural_seed) for c in categories]
            return parts[0] if len(parts) == 1 else ConcatDataset(parts)
        if self.kind == "visa":
            return VisA(self.root, categories, split, self.transform, skip_bad=self.skip_bad)
        if self.kind == "mvtec":
            return MVTecAD(self.root, categories, split, self.transform, skip_bad=self.skip_bad)
        return Folder(self.root, split, categories, self.transform, skip_bad=self.skip_bad)

    def denormalise(self, image):
        """A sample's image back in [0, 1] for pictures (every kind is ImageNet-normalised)."""
        return self.transform.denormalise(image)


def _visa_rows(root: Path):
    from .visa import read_visa_split

    return read_visa_split(root)
