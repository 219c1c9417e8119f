"""Builds the continual detector's networks from a resolved config (see ``oneformore/configs/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .amn import AMNConfig
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .control import ControlledDenoiser, ControlNet
from .unet import UNet, UNetConfig

SPACES = ("pixel", "latent")


@dataclass
class DiffusionNetworks:
    """``denoiser``: ε(x_t, t | cond); ``autoencoder``: None in pixel space; ``amn``: the condition masking."""

    denoiser: ControlledDenoiser
    autoencoder: AutoencoderKL | None
    amn: AMNConfig

    @property
    def downsampling(self) -> int:
        return self.autoencoder.downsampling if self.autoencoder is not None else 1


def build_networks(config: dict) -> DiffusionNetworks:
    """UNet + control branch (+ autoencoder in latent space) for ``config`` (keys: space, image_size, unet,
    control, amn, autoencoder)."""
    space = config.get("space", "latent")
    if space not in SPACES:
        raise ValueError(f"space: expected one of {SPACES}, got {space!r}")
    autoencoder = None
    channels = 3
    if space == "latent":
        # "weights" (a local file to start from) is read by the model's prepare stage, not by the architecture
        autoencoder = AutoencoderKL(AutoencoderConfig(**{k: v for k, v in config["autoencoder"].items()
                                                         if k != "weights"}))
        channels = autoencoder.cfg.latent_channels
    unet_cfg = UNetConfig.from_dict({**config["unet"], "in_channels": channels, "out_channels": channels})
    size = config["image_size"]
    factor = (autoencoder.downsampling if autoencoder else 1) * 2 ** (len(unet_cfg.channel_mult) - 1)
    if size % factor:
        raise ValueError(f"image_size: {size} must be divisible by {factor} (autoencoder factor x UNet downsampling)")
    unet = UNet(unet_cfg)
    control_cfg = dict(config.get("control", {}))
    control = ControlNet.from_unet(
        unet, cond_channels=4, downsampling=autoencoder.downsampling if autoencoder else 1,
        hint_widths=tuple(control_cfg.get("hint_widths", (16, 32))),
    )
    denoiser = ControlledDenoiser(unet, control, control_scale=float(control_cfg.get("scale", 1.0)))
    return DiffusionNetworks(denoiser, autoencoder, AMNConfig(**config.get("amn", {})))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
