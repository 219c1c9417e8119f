"""ControlNet-style control branch on the input image, and the controlled denoiser ε(x_t, t | image).

As in ControlNet (Zhang et al. 2023), which DiAD and One-for-More use to condition Stable Diffusion on the image
under test:

- a *hint encoder* maps the condition image (RGB, plus the AMN mask channel, see :mod:`oneformore.models.amn`) at
  pixel resolution down to the denoiser's resolution (``downsampling`` = the autoencoder's factor f, 1 in pixel
  space) with a few convs; its last conv is zero-initialised;
- a trainable copy of the UNet's encoder (time embedding, stem, input blocks, middle block) takes the noisy input
  ``x_t`` plus the hint features;
- one zero-initialised 1x1 conv per encoder output (every skip connection and the middle block) whose results are
  added to the UNet's skips and middle output.

Because every path out of the branch ends in a zero conv, at initialisation the controlled denoiser equals the bare
UNet (tested), and training grows the conditioning from there. ``ControlNet.from_unet`` copies the UNet encoder's
weights into the branch, as ControlNet does from the pretrained Stable Diffusion encoder.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .unet import TimestepEmbedder, UNet, UNetConfig, UNetEncoder, zero_module


class HintEncoder(nn.Module):
    """Condition image [B, C, H, W] -> features [B, out_channels, H/f, W/f]: pairs of 3x3 convs (SiLU), a stride-2
    conv between pairs (log2 f of them), then a zero-initialised 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, downsampling: int, widths: Sequence[int] = (16, 32)):
        super().__init__()
        steps = int(round(math.log2(downsampling)))
        if 2**steps != downsampling:
            raise ValueError(f"downsampling: expected a power of 2, got {downsampling}")
        widths = list(widths)
        widths += [widths[-1]] * max(0, steps + 1 - len(widths))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.SiLU()]
        for i in range(steps):
            layers += [nn.Conv2d(widths[i], widths[i], 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(widths[steps], out_channels, 3, padding=1)))
        self.net = nn.Sequential(*layers)
        self.downsampling = downsampling

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)


class ControlNet(nn.Module):
    """Control branch: ``forward(x_t, t, cond) -> list`` of residuals for :meth:`UNet.forward`'s ``control``."""

    def __init__(
        self,
        cfg: UNetConfig,
        cond_channels: int = 4,
        downsampling: int = 1,
        hint_widths: Sequence[int] = (16, 32),
    ):
        super().__init__()
        c = cfg.channels
        self.time = TimestepEmbedder(c, cfg.temb_dim)
        self.stem = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.hint = HintEncoder(cond_channels, c, downsampling, hint_widths)
        self.encoder = UNetEncoder(cfg)
        chans = self.encoder.skip_channels + [self.encoder.out_channels]
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(ch, ch, 1)) for ch in chans)
        self.cond_channels = cond_channels

    @classmethod
    def from_unet(cls, unet: UNet, cond_channels: int = 4, downsampling: int = 1, hint_widths=(16, 32)) -> "ControlNet":
        """A branch whose time embedding, stem and encoder start as copies of ``unet``'s (ControlNet's init)."""
        branch = cls(unet.cfg, cond_channels, downsampling, hint_widths)
        branch.time.load_state_dict(unet.time.state_dict())
        branch.stem.load_state_dict(unet.stem.state_dict())
        branch.encoder.load_state_dict(unet.encoder.state_dict())
        return branch

    def encode_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The hint features of ``cond``: what :meth:`forward` adds to the stem's output. A sampler whose condition
        is fixed computes them once and passes them as ``hint`` (the hint encoder runs at pixel resolution)."""
        if cond.shape[1] != self.cond_channels:
            raise ValueError(f"cond: expected {self.cond_channels} channels, got {cond.shape[1]}")
        return self.hint(cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                hint: torch.Tensor | None = None) -> list[torch.Tensor]:
        if hint is not None:
            if hint.shape[-2:] != x_t.shape[-2:]:
                raise ValueError(f"hint: spatial size {tuple(hint.shape[-2:])}, but x_t is {tuple(x_t.shape[-2:])}")
        else:
            hint = self.encode_condition(cond)
            if hint.shape[-2:] != x_t.shape[-2:]:
                raise ValueError(
                    f"cond: spatial size {tuple(cond.shape[-2:])} / downsampling {self.hint.downsampling} gives "
                    f"{tuple(hint.shape[-2:])}, but x_t is {tuple(x_t.shape[-2:])}"
                )
        t = torch.as_tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        temb = self.time(t)
        skips, middle = self.encoder(self.stem(x_t) + hint, temb)
        return [zc(h) for zc, h in zip(self.zero_convs, skips + [middle])]


class ControlledDenoiser(nn.Module):
    """ε(x_t, t | cond) = UNet(x_t, t, control=ControlNet(x_t, t, cond) · control_scale).

    ``cond`` is the condition at pixel resolution: the (AMN-masked during training) image concatenated with the
    mask channel, see :func:`oneformore.models.amn.condition`. ``x_t`` lives in pixel or latent space."""

    def __init__(self, unet: UNet, control: ControlNet, control_scale: float = 1.0):
        super().__init__()
        self.unet = unet
        self.control = control
        self.control_scale = control_scale

    def encode_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond``'s hint features, to pass as ``hint`` to every call with the same condition."""
        return self.control.encode_condition(cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                hint: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None and hint is None:  # the UNet alone, without control
            return self.unet(x_t, t)
        residuals = self.control(x_t, t, cond, hint)
        if self.control_scale != 1.0:
            residuals = [r * self.control_scale for r in residuals]
        return self.unet(x_t, t, control=residuals)
