"""CachedDataset: each sample loaded once, the same values as the wrapped dataset, attributes forwarded."""

import pickle

import torch

from oneformore.data import CachedDataset
from oneformore.data.procedural import ProceduralDataset
from oneformore.data.source import DataSource


class Counting(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset, self.loads, self.category = dataset, 0, dataset.category

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.loads += 1
        return self.dataset[i]


def test_each_sample_is_loaded_once_with_the_same_values():
    base = ProceduralDataset("disc", "test", 32, 0)
    counting = Counting(base)
    cached = CachedDataset(counting)
    assert len(cached) == len(base) and cached.category == base.category == "disc"
    for _ in range(2):
        for i in (0, 3, -1):
            sample = cached[i]
            expected = base[i % len(base)]
            assert torch.equal(sample["image"], expected["image"]) and torch.equal(sample["mask"], expected["mask"])
    assert counting.loads == 3  # -1 and len-1 are one sample
    batch = torch.utils.data.default_collate([cached[0], cached[1]])
    batch["image"].zero_()  # a batch is a stacked copy: in-place work never reaches the cache
    assert torch.equal(cached[0]["image"], base[0]["image"])


def test_preload_pickle_and_data_source():
    cached = CachedDataset(ProceduralDataset("disc", "train", 32, 0), preload=True)
    assert len(cached._samples) == len(cached)
    clone = pickle.loads(pickle.dumps(cached))  # DataLoader workers under spawn
    assert torch.equal(clone[2]["image"], cached[2]["image"])
    source = DataSource(None, image_size=32, cache=True)
    assert isinstance(source.dataset(["disc"], "train"), CachedDataset)
    assert not isinstance(DataSource(None, image_size=32).dataset(["disc"], "train"), CachedDataset)
