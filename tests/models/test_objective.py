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


@pytest.fixture(scope="module")
def feature_space():
    from oneformore.models.backbone import load_backbone
    from oneformore.models.features import FeatureSpace

    return FeatureSpace(load_backbone("efficientnet_lite0"), grid_stride=8, norm_batches=2)


def _feature_objective(space, **cfg):
    from oneformore.models.objective import ObjectiveConfig

    config = load_config("tiny", ["image_size=32", "unet.channels=16", "control.hint_widths=[8]", "amn.patch_size=8"])
    networks = build_networks(config, feature_channels=space.channels)
    return DenoisingObjective(networks, _linear_alphas_cumprod(), ObjectiveConfig(**cfg), space).eval()


def test_feature_space_inputs_come_from_the_corrupted_image_and_the_target_is_clean(feature_space):
    """Defects go into x_t's start and the condition (exactly the draws add_synthetic_defects and the AMN make from
    the same generator); the x0-loss compares the output with the clean features."""
    from oneformore.models.amn import masked_condition
    from oneformore.models.defects import add_synthetic_defects

    objective = _feature_objective(feature_space, prediction="x0", t_max=300, defect_prob=1.0, defect_max=2)
    images = ProceduralDataset("stripes", "train", image_size=32, n_train=3)
    images = torch.stack([images[i]["image"] for i in range(3)])
    x_t, t, cond, x0, start, noise, a = objective.training_inputs(images, torch.Generator().manual_seed(4))

    g = torch.Generator().manual_seed(4)
    corrupted, chosen = add_synthetic_defects(images, 1.0, 0.3, g, 2)
    expected_t = torch.randint(0, 300, (3,), generator=g)
    expected_noise = torch.randn(x0.shape, generator=g)
    expected_cond, _ = masked_condition(corrupted, objective.amn, g)
    assert chosen.tolist() == [0, 1, 2] and int(t.max()) < 300
    torch.testing.assert_close(t, expected_t, rtol=0, atol=0)
    torch.testing.assert_close(noise, expected_noise, rtol=0, atol=0)
    torch.testing.assert_close(cond, expected_cond, rtol=0, atol=0)
    torch.testing.assert_close(x0, feature_space.encode(images), rtol=0, atol=0)
    torch.testing.assert_close(start, feature_space.encode(corrupted), rtol=0, atol=0)
    assert float((start - x0).abs().max()) > 0.1  # the defects are visible in feature space
    torch.testing.assert_close(x_t, a.sqrt() * start + (1 - a).sqrt() * noise)

    out = objective.denoiser(x_t, t, cond)
    loss = objective.training_loss({"image": images}, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(out, x0))


def test_eps_prediction_with_defects_targets_the_noise_that_leads_to_the_clean_features(feature_space):
    objective = _feature_objective(feature_space, prediction="eps", defect_prob=1.0)
    images = torch.stack([ProceduralDataset("disc", "train", image_size=32, n_train=2)[i]["image"] for i in range(2)])
    x_t, t, cond, x0, start, noise, a = objective.training_inputs(images, torch.Generator().manual_seed(1))
    target = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # DDIM's x̂0 from this ε̂ is the clean x0
    out = objective.denoiser(x_t, t, cond)
    loss = objective.training_loss({"image": images}, torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(out, target), rtol=1e-4, atol=1e-6)


def test_feature_statistics_accumulate_in_training_only(feature_space):
    from oneformore.models.backbone import load_backbone
    from oneformore.models.features import FeatureSpace

    space = FeatureSpace(load_backbone("efficientnet_lite0"), 8, norm_batches=2)
    objective = _feature_objective(space, prediction="x0")
    batch = {"image": torch.randn(2, 3, 32, 32)}
    objective.eval()
    objective.training_loss(batch, torch.Generator().manual_seed(0))
    assert int(space.normalizer.batches) == 0
    objective.train()
    for _ in range(3):
        objective.training_loss(batch, torch.Generator().manual_seed(0))
    assert int(space.normalizer.batches) == 2  # frozen after norm_batches
    objective.training_inputs(batch["image"], torch.Generator().manual_seed(0))  # the bases' pass: no update
    assert int(space.normalizer.batches) == 2


def test_bad_objective_settings_are_named(feature_space):
    from oneformore.models.objective import ObjectiveConfig

    for kwargs, match in [({"prediction": "v"}, "objective.prediction"), ({"t_max": 0}, "objective.t_max"),
                          ({"defect_prob": 1.5}, "objective.defect_prob"),
                          ({"defect_strength_min": 0.0}, "objective.defect_strength_min"),
                          ({"defect_max": 0}, "objective.defect_max")]:
        with pytest.raises(ValueError, match=match):
            ObjectiveConfig(**kwargs)
    with pytest.raises(ValueError, match="objective.t_max: expected <= 1000"):
        _feature_objective(feature_space, t_max=1001)


def test_the_feature_cache_serves_the_same_features_and_never_a_stale_image():
    from oneformore.models.backbone import load_backbone
    from oneformore.models.features import FeatureSpace

    backbone = load_backbone("efficientnet_lite0")
    plain = FeatureSpace(backbone, 8)
    cached = FeatureSpace(backbone, 8, cache_mb=1.0)
    images = torch.randn(3, 3, 32, 32)
    keys = ["a.png", "b.png", "c.png"]
    first = cached.encode(images, keys=keys)
    assert len(cached._cache) == 3
    again = cached.encode(images, keys=keys)  # served from the cache
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(again, plain.encode(images), rtol=0, atol=0)
    changed = images.clone()
    changed[1] += 0.5  # another image under the same path: recomputed, not served stale
    torch.testing.assert_close(cached.encode(changed, keys=keys), plain.encode(changed), rtol=0, atol=0)
    full = FeatureSpace(backbone, 8, cache_mb=2 * 176 * 4 * 4 * 4 / 2**20)  # room for two entries
    full.encode(images, keys=keys)
    assert len(full._cache) == 2
    torch.testing.assert_close(full.encode(images, keys=keys), plain.encode(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="keys: expected one per image"):
        cached.encode(images, keys=keys[:2])
    with pytest.raises(ValueError, match="features.cache_mb"):
        FeatureSpace(backbone, 8, cache_mb=-1)
