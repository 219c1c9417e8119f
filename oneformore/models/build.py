"""Builds the continual detector's networks from a resolved config (see ``oneformore/configs/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .amn import AMNConfig
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .control import ControlledDenoiser, ControlNet
from .unet import UNet, UNetConfig

SPACES = ("pixel", "latent", "features")


@dataclass
class DiffusionNetworks:
    """``denoiser``: ε(x_t, t | cond) (or x̂0, see ``objective.prediction``); ``autoencoder``: its autoencoder in
    latent space, else None; ``amn``: the condition masking; ``feature_stride``: the feature grid's stride in
    feature space, else None."""

    denoiser: ControlledDenoiser
    autoencoder: AutoencoderKL | None
    amn: AMNConfig
    feature_stride: int | None = None

    @property
    def downsampling(self) -> int:
        """Image pixels per denoiser pixel: the autoencoder's factor, the feature grid's stride, or 1."""
        if self.autoencoder is not None:
            return self.autoencoder.downsampling
        return self.feature_stride or 1


def build_networks(config: dict, feature_channels: int | None = None) -> DiffusionNetworks:
    """UNet + control branch (+ autoencoder in latent space) for ``config`` (keys: space, image_size, unet,
    control, amn, autoencoder, features). In feature space the denoiser has ``feature_channels`` channels (the
    backbone's, concatenated) on the stride-``features.grid_stride`` grid."""
    space = config.get("space", "latent")
    if space not in SPACES:
        raise ValueError(f"space: expected one of {SPACES}, got {space!r}")
    autoencoder = None
    channels, downsampling, feature_stride = 3, 1, None
    if space == "latent":
        # "weights" (a local file to start from) is read by the model's prepare stage, not by the architecture
        autoencoder = AutoencoderKL(AutoencoderConfig(**{k: v for k, v in config["autoencoder"].items()
                                                         if k != "weights"}))
        channels, downsampling = autoencoder.cfg.latent_channels, autoencoder.downsampling
    elif space == "features":
        if not feature_channels or feature_channels < 1:
            raise ValueError(f"feature_channels: expected the backbone's channel count in feature space, "
                             f"got {feature_channels}")
        feature_stride = int(config.get("features", {}).get("grid_stride", 8))
        channels, downsampling = feature_channels, feature_stride
    unet_cfg = UNetConfig.from_dict({**config["unet"], "in_channels": channels, "out_channels": channels})
    size = config["image_size"]
    factor = downsampling * 2 ** (len(unet_cfg.channel_mult) - 1)
    if size % factor:
        raise ValueError(f"image_size: {size} must be divisible by {factor} (autoencoder factor or feature stride "
                         f"x UNet downsampling)")
    unet = UNet(unet_cfg)
    control_cfg = dict(config.get("control", {}))
    control = ControlNet.from_unet(
        unet, cond_channels=4, downsampling=downsampling,
        hint_widths=tuple(control_cfg.get("hint_widths", (16, 32))),
    )
    denoiser = ControlledDenoiser(unet, control, control_scale=float(control_cfg.get("scale", 1.0)))
    return DiffusionNetworks(denoiser, autoencoder, AMNConfig(**config.get("amn", {})), feature_stride)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
