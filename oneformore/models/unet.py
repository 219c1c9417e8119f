"""The denoising UNet (DDPM / latent-diffusion layout, the family of Stable Diffusion's UNet that DiAD and
One-for-More build on), sized by a config.

- sinusoidal timestep embedding -> 2-layer MLP;
- residual blocks conditioned on the timestep by scale-shift of the normalised activations (FiLM, "use_scale_shift_norm"
  of improved DDPM): ``h = norm(h) · (1 + scale) + shift``;
- multi-head self-attention at the resolutions listed in ``attention_levels`` (low resolution, where it is cheap);
- an encoder (``UNetEncoder``: input blocks + middle block) whose per-block outputs are the skip connections, and a
  decoder consuming them. The encoder is its own module so that the ControlNet-style control branch
  (:mod:`oneformore.models.control`) is a trainable copy of it, and its outputs are added to the skips exactly as in
  ControlNet (``h = cat(h, skip + control)``; the middle output gets the last control term).

Only ``nn.Conv2d`` (groups=1) and ``nn.Linear`` carry weights besides the norms, so gradient projection can select
every weight layer (see :mod:`oneformore.continual.layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` [B] -> [B, dim] (cos half, then sin half)."""
    if t.dim() == 0:
        t = t[None]
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` dividing ``channels`` (tiny configs have few channels)."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, timestep scale-shift, GN-SiLU-dropout-conv, plus a (1x1 when channels change) skip."""

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, 2 * cout)
        self.norm2 = norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.temb(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions (1x1 convs for q, k, v and the output), residual."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 32):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Step(nn.Module):
    """A sequence of ResBlock / AttentionBlock / resampling layers, feeding the timestep embedding to ResBlocks."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, temb) if isinstance(layer, ResBlock) else layer(x)
        return x


@dataclass
class UNetConfig:
    """Sizes of the UNet. ``channel_mult[i]`` × ``channels`` is the width at level i (resolution / 2**i);
    ``attention_levels`` lists the levels with self-attention (the middle block always has it when
    ``middle_attention``)."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 32
    middle_attention: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("channel_mult", "attention_levels"):
            if k in known:
                known[k] = tuple(known[k])
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unet config: unknown keys {unknown}; expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**known)

    @property
    def temb_dim(self) -> int:
        return 4 * self.channels


class TimestepEmbedder(nn.Module):
    def __init__(self, channels: int, temb_dim: int):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.channels))


class UNetEncoder(nn.Module):
    """Input blocks and middle block. ``forward(h0, temb)`` takes the output of the stem conv and returns the list of
    every input block's output (the skips, stem output first) and the middle block's output.

    ``skip_channels`` lists the channel count of each skip, in order (the control branch's zero convs need it)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        c = cfg.channels
        self.blocks = nn.ModuleList()
        self.skip_channels = [c]
        ch = c
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, mult * c, cfg.temb_dim, cfg.dropout, cfg.groups)]
                ch = mult * c
                if level in cfg.attention_levels:
                    layers.append(AttentionBlock(ch, cfg.heads, cfg.groups))
                self.blocks.append(Step(*layers))
                self.skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.blocks.append(Step(Downsample(ch)))
                self.skip_channels.append(ch)
        middle = [ResBlock(ch, ch, cfg.temb_dim, cfg.dropout, cfg.groups)]
        if cfg.middle_attention:
            middle.append(AttentionBlock(ch, cfg.heads, cfg.groups))
        middle.append(ResBlock(ch, ch, cfg.temb_dim, cfg.dropout, cfg.groups))
        self.middle = Step(*middle)
        self.out_channels = ch

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = [h]
        for block in self.blocks:
            h = block(h, temb)
            skips.append(h)
        return skips, self.middle(h, temb)


class UNet(nn.Module):
    """Noise predictor ε(x_t, t), optionally steered by control residuals.

    ``forward(x, t, control=None)``: x [B, in_channels, H, W] with H, W divisible by 2**(levels−1); t [B] (or a
    scalar) timesteps; ``control``: a list of ``len(encoder.skip_channels) + 1`` tensors (one per skip, then one for
    the middle block) added as ControlNet does. Returns [B, out_channels, H, W]. The output conv is zero-initialised
    (as in DDPM/LDM), so an untrained UNet predicts 0."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.time = TimestepEmbedder(c, cfg.temb_dim)
        self.stem = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.encoder = UNetEncoder(cfg)
        self.decoder = nn.ModuleList()
        skips = list(self.encoder.skip_channels)
        ch = self.encoder.out_channels
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * c, cfg.temb_dim, cfg.dropout, cfg.groups)]
                ch = mult * c
                if level in cfg.attention_levels:
                    layers.append(AttentionBlock(ch, cfg.heads, cfg.groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.decoder.append(Step(*layers))
        assert not skips
        self.out = nn.Sequential(norm(ch, cfg.groups), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.cfg.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, control: list[torch.Tensor] | None = None) -> torch.Tensor:
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"x: spatial size {tuple(x.shape[-2:])} must be divisible by {self.downsampling}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = self.time(t)
        skips, h = self.encoder(self.stem(x), temb)
        if control is not None:
            if len(control) != len(skips) + 1:
                raise ValueError(f"control: expected {len(skips) + 1} tensors, got {len(control)}")
            h = h + control[-1]
            skips = [s + c for s, c in zip(skips, control[:-1])]
        for block in self.decoder:
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        return self.out(h)
