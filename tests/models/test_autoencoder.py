"""Autoencoder: shapes, KL vs plain, latent scale calibration, and it learns to reconstruct procedural images."""

import pytest
import torch

from oneformore.data.procedural import ProceduralDataset
from oneformore.models.autoencoder import AutoencoderConfig, AutoencoderKL
from oneformore.train import Trainer, TrainerConfig


@pytest.mark.parametrize("f", [4, 8])
@pytest.mark.parametrize("kl", [1e-6, 0.0])
def test_shapes(f, kl):
    ae = AutoencoderKL(AutoencoderConfig(channels=8, downsampling=f, kl_weight=kl, groups=4))
    x = torch.randn(2, 3, 32, 32)
    mean, logvar = ae.encode(x)
    assert mean.shape == (2, 4, 32 // f, 32 // f)
    assert (logvar is None) == (kl == 0)
    assert ae(x).shape == x.shape
    assert ae.training_loss({"image": x}, torch.Generator().manual_seed(0)).dim() == 0
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="downsampling"):
        AutoencoderConfig(downsampling=3)


def test_scale_calibration_gives_unit_variance_latents():
    ae = AutoencoderKL(AutoencoderConfig(channels=8, groups=4))
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    ae.calibrate_scale(batches)
    z = torch.cat([ae.encode_latent(b) for b in batches])
    assert z.std().item() == pytest.approx(1.0, rel=0.05)
    torch.testing.assert_close(ae.decode_latent(ae.encode_latent(batches[0])), ae(batches[0]))


def test_learns_to_reconstruct_procedural_images(tmp_path, one_thread):
    torch.manual_seed(0)
    data = ProceduralDataset("tile", "train", image_size=32, n_train=32, normalize="unit")
    ae = AutoencoderKL(AutoencoderConfig(channels=8, downsampling=4, kl_weight=1e-6, groups=4))
    cfg = TrainerConfig(steps=60, batch_size=4, lr=3e-3, warmup_steps=5, ema_decay=0.0, progress=False)
    test = ProceduralDataset("tile", "test", image_size=32, n_test_good=8, n_test_defect=0, normalize="unit")
    x = torch.stack([test[i]["image"] for i in range(len(test))])  # unseen normal samples
    with torch.no_grad():
        untrained = torch.mean((ae(x) - x) ** 2).item()
    Trainer(ae, data, cfg, tmp_path).fit()
    with torch.no_grad():
        mse = torch.mean((ae(x) - x) ** 2).item()
    # predicting each image's own mean colour per channel (a blur to a constant) as the baseline
    baseline = torch.mean((x - x.mean((2, 3), keepdim=True)) ** 2).item()
    assert untrained > baseline
    assert mse < 0.2 * baseline, (mse, baseline)  # measured: ~0.13 x baseline (PSNR ~25 dB) after 60 steps
