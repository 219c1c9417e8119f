"""DataLoader wrapper that drops unreadable samples (``skip_bad=True``) and reports them once per pass."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, default_collate

from .base import AnomalyDataset


def _collate_skipping(samples: list) -> dict:
    kept = [s for s in samples if s is not None]
    batch = default_collate(kept) if kept else {}
    batch["skipped"] = len(samples) - len(kept)
    return batch


class SkippingLoader:
    """Iterates a DataLoader whose batches may have dropped samples; at the end of each pass, if any sample was
    skipped, warns with the count (the paths are in ``dataset.bad_files`` in the main process with
    ``num_workers=0``). ``self.skipped`` holds the count of the last pass."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.skipped = 0
        for batch in self.loader:
            self.skipped += batch.pop("skipped")
            if batch:
                yield batch
        if self.skipped:
            warnings.warn(f"{self.skipped} unreadable image(s) were skipped in this pass", stacklevel=2)


def anomaly_loader(dataset: AnomalyDataset, batch_size: int = 8, shuffle: bool = False, **kwargs) -> SkippingLoader:
    """A DataLoader over ``dataset`` that tolerates the None samples of ``skip_bad=True``."""
    return SkippingLoader(DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_collate_skipping, **kwargs))


def collate_samples(samples: list) -> dict:
    """Stacks the tensors of sample dicts and keeps the rest as lists (skipping None: unreadable images)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError("batch: every sample was unreadable")
    keys = samples[0].keys()
    return {k: torch.stack([s[k] for s in samples]) if isinstance(samples[0][k], torch.Tensor)
            else torch.tensor([s[k] for s in samples]) if isinstance(samples[0][k], (int, bool))
            else [s[k] for s in samples] for k in keys}
