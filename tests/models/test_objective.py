"""The denoising objective trains the configured networks through the shared trainer."""

import pytest
import torch

from oneformore.config import load_config
from oneformore.data.procedural import ProceduralDataset
from oneformore.models.build import build_networks
from oneformore.models.objective import DenoisingObjective
from oneformore.train import Trainer, TrainerConfig


def _linear_alphas_cumprod(steps=1000):
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, steps), 0)


def _tiny(space):
    overrides = ["image_size=32", "unet.channels=16", "unet.attention_levels=[1]", "unet.channel_mult=[1,2]",
                 "control.hint_widths=[8]", "amn.patch_size=8", "autoencoder.channels=8"]
    return build_networks(load_config("tiny", overrides + [f"space={space}"]))


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_loss_starts_at_one_and_is_reproducible(space):
    objective = DenoisingObjective(_tiny(space), _linear_alphas_cumprod())
    batch = {"image": torch.randn(2, 3, 32, 32)}
    a = objective.training_loss(batch, torch.Generator().manual_seed(1))
    b = objective.training_loss(batch, torch.Generator().manual_seed(1))
    assert a.item() == pytest.approx(1.0, rel=0.5)  # zero-initialised output: the loss is E[ε²]
    assert torch.equal(a, b)
    if space == "latent":
        assert not any(p.requires_grad for p in objective.autoencoder.parameters())
        objective.train()
        assert not objective.autoencoder.training


def test_denoising_loss_decreases_on_procedural_images(tmp_path, one_thread):
    torch.manual_seed(0)
    objective = DenoisingObjective(_tiny("pixel"), _linear_alphas_cumprod())
    data = ProceduralDataset("stripes", "train", image_size=32, n_train=32)
    cfg = TrainerConfig(steps=40, batch_size=8, lr=2e-3, warmup_steps=5, ema_decay=0.99, progress=False)
    history = Trainer(objective, data, cfg, tmp_path).fit()
    assert sum(history[-10:]) / 10 < 0.6 * sum(history[:5]) / 5, history


def test_bad_schedule():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DenoisingObjective(_tiny("pixel"), torch.linspace(0, 1, 10))
