"""UNet, control branch and the configured networks: shapes, timestep conditioning, zero-initialised control."""

from __future__ import annotations

import pytest
import torch

from oneformore.config import load_config
from oneformore.models.amn import condition
from oneformore.models.build import build_networks
from oneformore.models.control import ControlledDenoiser, ControlNet
from oneformore.models.unet import UNet, UNetConfig, timestep_embedding

CFG = UNetConfig(in_channels=3, out_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_levels=(1,), heads=2, groups=4)


def _randomise_zero_inits(module: torch.nn.Module) -> None:
    """Zero-initialised output layers hide every input dependence at init; give them random values."""
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 6)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1, :3], torch.cos(10 * freqs))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_unet_shapes_and_zero_output_at_init():
    unet = UNet(CFG)
    x = torch.randn(2, 3, 16, 24)
    out = unet(x, torch.tensor([1, 999]))
    assert out.shape == x.shape
    assert out.abs().max() == 0  # zero-initialised output conv, as in DDPM/LDM
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(1, 3, 15, 16), torch.tensor([1]))


def test_timestep_conditioning_changes_the_output():
    unet = UNet(CFG)
    _randomise_zero_inits(unet)
    x = torch.randn(2, 3, 16, 16)
    a = unet(x, torch.tensor([5, 5]))
    b = unet(x, torch.tensor([500, 500]))
    c = unet(x, 5)  # a scalar timestep broadcasts over the batch
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    torch.testing.assert_close(a, c)


def test_attention_levels_have_attention():
    unet = UNet(CFG)
    names = [n for n, m in unet.named_modules() if type(m).__name__ == "AttentionBlock"]
    # level 1 of the encoder (1 block), the middle, and level 1 of the decoder (num_res_blocks + 1 blocks)
    assert len(names) == 1 + 1 + 2


def test_control_branch_is_a_no_op_at_init_and_matters_after():
    unet = UNet(CFG)
    _randomise_zero_inits(unet)
    control = ControlNet.from_unet(unet, cond_channels=4, downsampling=1, hint_widths=(4,))
    model = ControlledDenoiser(unet, control)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    cond = condition(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(model(x, t, cond), unet(x, t), rtol=0, atol=0)
    for conv in control.zero_convs:
        assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    # the control branch starts as a copy of the UNet encoder (ControlNet's initialisation)
    for (na, a), (nb, b) in zip(unet.encoder.state_dict().items(), control.encoder.state_dict().items()):
        assert na == nb and torch.equal(a, b)
    _randomise_zero_inits(control)
    assert (model(x, t, cond) - unet(x, t)).abs().mean() > 1e-4
    # and one gradient step makes the zero convs nonzero: the branch can learn
    control2 = ControlNet.from_unet(unet, 4, 1, (4,))
    ControlledDenoiser(unet, control2)(x, t, cond).square().mean().backward()
    assert any(c.weight.grad.abs().sum() > 0 for c in control2.zero_convs)


def test_control_on_a_downsampled_latent():
    cfg = UNetConfig(in_channels=4, out_channels=4, channels=8, channel_mult=(1, 2), attention_levels=(), groups=4)
    unet = UNet(cfg)
    control = ControlNet.from_unet(unet, cond_channels=4, downsampling=4, hint_widths=(4, 8))
    out = ControlledDenoiser(unet, control)(torch.randn(1, 4, 8, 8), torch.tensor([9]), condition(torch.randn(1, 3, 32, 32)))
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="cond: spatial size"):
        control(torch.randn(1, 4, 8, 8), torch.tensor([9]), condition(torch.randn(1, 3, 16, 16)))
    with pytest.raises(ValueError, match="cond: expected 4 channels"):
        control(torch.randn(1, 4, 8, 8), torch.tensor([9]), torch.randn(1, 3, 32, 32))


def test_a_precomputed_hint_gives_the_same_output():
    """Samplers encode a fixed condition once (``encode_condition``) and pass it as ``hint`` at every step."""
    cfg = UNetConfig(in_channels=4, out_channels=4, channels=8, channel_mult=(1, 2), attention_levels=(), groups=4)
    unet = UNet(cfg)
    _randomise_zero_inits(unet)
    control = ControlNet.from_unet(unet, cond_channels=4, downsampling=4, hint_widths=(4, 8))
    _randomise_zero_inits(control)
    model = ControlledDenoiser(unet, control)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([9, 400]), condition(torch.randn(2, 3, 32, 32))
    hint = model.encode_condition(cond)
    assert hint.shape == (2, 8, 8, 8)
    torch.testing.assert_close(model(x, t, None, hint=hint), model(x, t, cond), rtol=0, atol=0)
    with pytest.raises(ValueError, match="hint: spatial size"):
        model(torch.randn(2, 4, 4, 4), t, None, hint=hint)


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_presets_build_in_latent_space(preset):
    config = load_config(preset, ["space=latent"])
    if preset == "base":  # paper scale: check the structure without allocating 0.7 B parameters
        config = load_config(preset, ["unet.channels=16", "autoencoder.channels=8", "control.hint_widths=[4]"])
    nets = build_networks(config)
    assert nets.downsampling == config["autoencoder"]["downsampling"]
    assert nets.denoiser.unet.cfg.in_channels == config["autoencoder"]["latent_channels"]


def test_feature_space_switch():
    """The tiny preset: the denoiser works on the backbone's 176 aligned channels on the stride-8 grid, and its
    control branch brings the 128 px condition down to that grid."""
    config = load_config("tiny")
    assert config["space"] == "features"
    nets = build_networks(config, feature_channels=176)
    assert nets.autoencoder is None and nets.downsampling == 8 == nets.feature_stride
    unet = nets.denoiser.unet.cfg
    assert unet.in_channels == unet.out_channels == 176
    x, image = torch.randn(1, 176, 16, 16), torch.randn(1, 3, 128, 128)
    assert nets.denoiser(x, torch.tensor([3]), condition(image)).shape == x.shape
    with pytest.raises(ValueError, match="feature_channels"):
        build_networks(config)
    with pytest.raises(ValueError, match="image_size: 120 must be divisible by 16"):
        build_networks(load_config("tiny", ["image_size=120"]), feature_channels=176)


def test_pixel_space_switch():
    config = load_config("tiny", ["space=pixel", "image_size=32", "unet.channels=8", "unet.attention_levels=[]"])
    nets = build_networks(config)
    assert nets.autoencoder is None and nets.downsampling == 1
    x = torch.randn(1, 3, 32, 32)
    assert nets.denoiser(x, torch.tensor([1]), condition(x)).shape == x.shape
    with pytest.raises(ValueError, match="space"):
        build_networks(load_config("tiny", ["space=voxel"]))


def test_unet_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys \\['chanels'\\]"):
        UNetConfig.from_dict({"chanels": 8})
