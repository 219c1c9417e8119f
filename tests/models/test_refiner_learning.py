"""The refiner learns: trained with the shared Trainer on real ``bottle`` at 128 px for a CI-sized budget, both of
its outputs separate the test set's anomalous images from the normal ones (image AUROC > 0.7)."""

import pytest
import torch
from torch.utils.data import Dataset

from oneformore.config import load_config
from oneformore.data import AnomalyTransform, MVTecAD
from oneformore.models.refiner import build_refiner
from oneformore.models.refiner.evaluation import evaluate_outputs
from oneformore.train import Trainer, TrainerConfig

pytestmark = pytest.mark.data

CI_SIZED = [
    "transformer.width=64", "transformer.depth=2", "transformer.heads=4",
    "refiner.width=64", "refiner.blocks=2", "features.norm_batches=20",
]


class InMemory(Dataset):
    """Decoded once: there is no augmentation, and decoding dominates a step of this small model."""

    def __init__(self, dataset):
        self.samples = [dataset[i] for i in range(len(dataset))]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def test_refiner_learns_bottle(shared_data, tmp_path, one_thread):
    config = load_config("refiner", CI_SIZED)
    transform = AnomalyTransform(config["image_size"])
    train = InMemory(MVTecAD(shared_data, "bottle", "train", transform))
    test = InMemory(MVTecAD(shared_data, "bottle", "test", transform))
    torch.manual_seed(0)
    model = build_refiner(config)
    cfg = TrainerConfig(steps=120, batch_size=8, lr=1e-3, warmup_steps=10, ema_decay=0.9, progress=False)
    trainer = Trainer(model, train, cfg, tmp_path, device="cpu")
    history = trainer.fit()
    assert sum(history[-10:]) < sum(history[:10])  # the loss went down
    model.load_state_dict(trainer.ema_state_dict())
    results = evaluate_outputs(model, test, batch_size=16, progress=False)
    assert list(results) == ["refined", "coarse"]
    for name in ("refined", "coarse"):
        auroc = results[name]["bottle"]["image_auroc"]
        assert auroc > 0.7, (name, results[name]["bottle"])
