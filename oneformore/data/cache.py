"""Samples kept in memory after their first load.

The datasets have no augmentation (the transform is a fixed resize/crop/normalise), so every epoch decodes and
resizes the same pixels again: for a 900x900 PNG that costs more than a CPU training step of the tiny model spends
on some layers. ``CachedDataset`` keeps each transformed sample after its first access. Memory is the transformed
size (3·H·W·4 B per image plus the mask: 260 KB at 128 px), so it is opt-in (``DataSource(cache=True)``).
Batches are stacked copies, so in-place work on a batch never reaches the cache. With DataLoader workers every
worker has its own cache (use ``persistent_workers``).
"""

from __future__ import annotations

from torch.utils.data import Dataset
from tqdm.auto import tqdm


class CachedDataset(Dataset):
    """``dataset`` with every sample kept after its first load; other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset, *, preload: bool = False, desc: str = "loading"):
        self.dataset = dataset
        self._samples: dict[int, object] = {}
        if preload:
            for i in tqdm(range(len(dataset)), desc=desc):
                self[i]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if index not in self._samples:
            self._samples[index] = self.dataset[index]
        return self._samples[index]

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("dataset", "_samples"):  # unpickling: no recursion through getattr
            raise AttributeError(name)
        return getattr(self.dataset, name)
