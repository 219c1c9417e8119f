"""The detector's test-time path: reconstruction by DDIM from an intermediate step, then the feature anomaly map."""

import pytest
import torch
from torch import nn

from oneformore.config import load_config
from oneformore.diffusion import NoiseSchedule
from oneformore.models.amn import AMNConfig
from oneformore.models.backbone import load_backbone
from oneformore.models.build import DiffusionNetworks, build_networks
from oneformore.models.inference import AnomalyScorer, InferenceConfig


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("efficientnet_lite0")


class OracleDenoiser(nn.Module):
    """Predicts the exact noise that takes a chosen clean image to x_t, so DDIM (eta 0) lands on that image."""

    def __init__(self, schedule: NoiseSchedule, target: torch.Tensor):
        super().__init__()
        self.alphas = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64)
        self.target = target

    def forward(self, x_t, t, cond):
        a = self.alphas[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return (x_t - a.sqrt() * self.target) / (1 - a).sqrt()


def pixel_networks(denoiser: nn.Module) -> DiffusionNetworks:
    return DiffusionNetworks(denoiser=denoiser, autoencoder=None, amn=AMNConfig())


def test_a_faithful_reconstruction_scores_zero(backbone):
    schedule = NoiseSchedule("linear")
    images = torch.randn(2, 3, 64, 64)
    scorer = AnomalyScorer(pixel_networks(OracleDenoiser(schedule, images)), backbone, schedule,
                           InferenceConfig(t_start=600, steps=5))
    maps, scores, recon = scorer(images, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(recon, images, rtol=1e-4, atol=1e-4)
    assert maps.shape == (2, 1, 64, 64) and scores.shape == (2,)
    assert float(maps.abs().max()) < 1e-2


def test_a_repaired_defect_is_where_the_map_peaks(backbone):
    """The reconstruction removes a bright square (as a model of normal images would): the map must peak there
    and the defective image must outscore the normal one."""
    schedule = NoiseSchedule("linear")
    normal = torch.zeros(2, 3, 64, 64)
    images = normal.clone()
    images[1, :, 36:48, 12:24] = 3.0
    scorer = AnomalyScorer(pixel_networks(OracleDenoiser(schedule, normal)), backbone, schedule,
                           InferenceConfig(t_start=400, steps=4, sigma=2.0))
    maps, scores, _ = scorer(images)
    peak = int(maps[1, 0].flatten().argmax())
    y, x = divmod(peak, 64)
    assert 30 <= y <= 54 and 6 <= x <= 30, (y, x)
    assert scores[1] > 10 * max(float(scores[0]), 1e-6)


def test_fused_and_eager_paths_agree_on_the_tiny_latent_detector(backbone):
    torch.manual_seed(0)
    networks = build_networks(load_config("tiny", ["image_size=32", "space=latent"]))
    schedule = NoiseSchedule("linear")
    images = torch.randn(2, 3, 32, 32)
    out = {}
    for eager in (False, True):
        scorer = AnomalyScorer(networks, backbone, schedule, InferenceConfig(t_start=500, steps=3, eager=eager))
        out[eager] = scorer(images, generator=torch.Generator().manual_seed(1))
    for fused, ref in zip(out[False], out[True]):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


def test_bad_settings_are_named():
    schedule = NoiseSchedule("linear", 100)
    networks = pixel_networks(OracleDenoiser(schedule, torch.zeros(1, 3, 8, 8)))
    with pytest.raises(ValueError, match="t_start: expected < 100"):
        AnomalyScorer(networks, nn.Identity(), schedule, InferenceConfig(t_start=100))
    with pytest.raises(ValueError, match="steps: expected >= 1"):
        InferenceConfig(steps=0)


class OracleX0(nn.Module):
    """An x0-predicting denoiser that always answers a chosen clean feature map."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def forward(self, x_t, t, cond):
        return self.target.expand_as(x_t)


def test_feature_space_compares_the_input_features_with_the_denoised_ones(backbone):
    """With an x0-oracle, DDIM (eta 0) lands exactly on the oracle's features: the input whose features they are
    scores zero, and an image with a pasted square scores high, with the map's peak on the square."""
    from oneformore.models.features import FeatureSpace

    space = FeatureSpace(backbone, grid_stride=8)
    schedule = NoiseSchedule("linear")
    normal = torch.randn(1, 3, 64, 64) * 0.3
    anomalous = normal.clone()
    anomalous[..., 8:24, 36:52] = 2.5
    target = space.encode(normal)
    networks = DiffusionNetworks(denoiser=OracleX0(target), autoencoder=None, amn=AMNConfig(), feature_stride=8)
    scorer = AnomalyScorer(networks, backbone, schedule, InferenceConfig(t_start=300, steps=4, sigma=2.0),
                           features=space, prediction="x0")
    recon = scorer.reconstruct(normal, torch.Generator().manual_seed(0))
    torch.testing.assert_close(recon, target, rtol=1e-4, atol=1e-4)
    maps, scores, _ = scorer(torch.cat([normal, anomalous]), torch.Generator().manual_seed(0))
    assert maps.shape == (2, 1, 64, 64) and float(maps[0].abs().max()) < 1e-3
    y, x = divmod(int(maps[1, 0].argmax()), 64)
    assert 4 <= y <= 28 and 32 <= x <= 56, (y, x)
    assert scores[1] > 100 * max(float(scores[0]), 1e-6)


def test_fused_and_eager_paths_agree_on_the_tiny_feature_detector():
    from oneformore.models.continual_model import ContinualDiffusionModel

    torch.manual_seed(0)
    model = ContinualDiffusionModel(load_config("tiny", ["image_size=32", "unet.channels=16"]))
    for p in model.trainable.parameters():  # zero-initialised output layers would make every map the same
        p.data.add_(0.02 * torch.randn_like(p))
    schedule = NoiseSchedule("linear")
    images = torch.randn(2, 3, 32, 32)
    out = {}
    for eager in (False, True):
        scorer = AnomalyScorer(model.networks, model.backbone, schedule,
                               InferenceConfig(t_start=200, steps=3, eager=eager), model.features, "x0")
        out[eager] = scorer(images, generator=torch.Generator().manual_seed(1))
    for fused, ref in zip(out[False], out[True]):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        AnomalyScorer(model.networks, model.backbone, schedule, prediction="v")
