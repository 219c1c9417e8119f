"""A compact convolutional autoencoder for latent diffusion (the role of Stable Diffusion's KL-f8 VAE in DiAD and
One-for-More, at a size this package can train itself on a few hundred normal images).

Encoder: stem conv, per level ``num_res_blocks`` residual blocks then a stride-2 conv (log2 f levels), a residual
block, then a 3x3 conv to the latent statistics. Decoder mirrors it with nearest upsampling. ``kl_weight > 0`` makes
it KL-regularised (the encoder outputs mean and log-variance, as the LDM "AutoencoderKL"); ``kl_weight = 0`` makes it
a plain deterministic autoencoder (the mean only). Loss: L1 + ``mse_weight`` · MSE reconstruction plus
``kl_weight`` · KL per latent element.

``scale`` is the factor that brings latents to unit variance (Stable Diffusion's 0.18215), measured on training
data by :meth:`AutoencoderKL.calibrate_scale`; :meth:`encode_latent` / :meth:`decode_latent` apply it, so the
diffusion model sees unit-variance latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .unet import norm


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 32
    downsampling: int = 4
    num_res_blocks: int = 1
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    groups: int = 32

    def __post_init__(self):
        if self.downsampling not in (2, 4, 8, 16):
            raise ValueError(f"autoencoder.downsampling: expected 2, 4, 8 or 16, got {self.downsampling}")
        if self.kl_weight < 0:
            raise ValueError(f"autoencoder.kl_weight: expected >= 0, got {self.kl_weight}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.downsampling))

    @property
    def variational(self) -> bool:
        return self.kl_weight > 0


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            norm(cout, groups), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AutoencoderKL(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x̂``, ``training_loss(batch) -> scalar`` (batch: a dict with
    "image" [B, 3, H, W], or the tensor itself), ``encode_latent`` / ``decode_latent`` in scaled latent units."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        c, g = cfg.channels, cfg.groups
        widths = [c * min(2**i, 4) for i in range(cfg.levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        for i in range(cfg.levels):
            for j in range(cfg.num_res_blocks):
                enc.append(_Res(widths[i], widths[i], g))
            enc.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        enc += [_Res(widths[-1], widths[-1], g), norm(widths[-1], g), nn.SiLU()]
        stats = 2 * cfg.latent_channels if cfg.variational else cfg.latent_channels
        enc.append(nn.Conv2d(widths[-1], stats, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1), _Res(widths[-1], widths[-1], g)]
        for i in reversed(range(cfg.levels)):
            dec.append(_Up(widths[i + 1]))
            dec.append(_Res(widths[i + 1], widths[i], g))
            for j in range(cfg.num_res_blocks - 1):
                dec.append(_Res(widths[i], widths[i], g))
        dec += [norm(widths[0], g), nn.SiLU(), nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("scale", torch.ones(()))
        # set once trained and calibrated (a detector trains its autoencoder once, before the first task)
        self.register_buffer("trained", torch.zeros((), dtype=torch.bool))

    @property
    def downsampling(self) -> int:
        return self.cfg.downsampling

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"x: spatial size {tuple(x.shape[-2:])} must be divisible by {self.downsampling}")
        h = self.encoder(x)
        if not self.cfg.variational:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def sample_posterior(self, mean, logvar, generator: torch.Generator | None = None) -> torch.Tensor:
        if logvar is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device="cpu", dtype=mean.dtype).to(mean.device)
        return mean + (0.5 * logvar).exp() * noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (posterior mean)."""
        return self.decode(self.encode(x)[0])

    def training_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x = batch["image"] if isinstance(batch, dict) else batch
        mean, logvar = self.encode(x)
        rec = self.decode(self.sample_posterior(mean, logvar, generator))
        loss = F.l1_loss(rec, x) + self.cfg.mse_weight * F.mse_loss(rec, x)
        if logvar is not None:
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
            loss = loss + self.cfg.kl_weight * kl
        return loss

    @torch.no_grad()
    def calibrate_scale(self, images: Iterable[torch.Tensor]) -> float:
        """Sets ``scale`` = 1 / std of the posterior means over ``images`` (an iterable of [B, 3, H, W])."""
        total, sq, n = 0.0, 0.0, 0
        for x in images:
            z = self.encode(x)[0].double()
            total += z.sum().item()
            sq += z.pow(2).sum().item()
            n += z.numel()
        if n == 0:
            raise ValueError("images: expected at least one batch")
        std = math.sqrt(max(sq / n - (total / n) ** 2, 1e-12))
        self.scale.fill_(1.0 / std)
        return 1.0 / std

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean in unit-variance latent units (what the diffusion model denoises)."""
        return self.encode(x)[0] * self.scale

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z / self.scale)
