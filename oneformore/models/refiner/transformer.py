"""The coarse reconstructor: a transformer that inpaints masked feature tokens.

UniAD reconstructs every token with a transformer and learns an "identical shortcut" (anomalous tokens are copied
through). Here, as in the paper, the masked tokens' inputs are replaced by one learned mask token before the first
layer (SimMIM-style: mask tokens go through the encoder with the visible ones, so the full grid keeps its position
structure), so nothing a masked position outputs can depend on what was there: the tests check with autograd that
the gradient of a masked output with respect to any masked input is exactly zero.

Layout (the paper gives no sizes; UniAD-like): 1x1 projection of the aligned features to ``width`` (a Linear per
token), position embeddings (``"learned"``: a parameter per grid position, initialised from the 2-D sinusoidal
table, bilinearly resized when the grid differs; ``"sinusoidal"``: the fixed 2-D table of MAE), ``depth`` pre-norm
blocks (multi-head self-attention + GELU MLP), a final LayerNorm and a Linear head back to the feature channels.
Every weight is an ``nn.Linear``, so the continual gradient projector can select all of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """[h·w, dim] fixed 2-D sine-cosine position table (MAE's ``get_2d_sincos_pos_embed``): half the channels encode
    the row, half the column."""
    if dim % 4:
        raise ValueError(f"transformer.width: expected a multiple of 4 for 2-D sinusoidal positions, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")

    def enc(pos):
        args = pos.reshape(-1, 1) * omega.view(1, -1)
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([enc(ys), enc(xs)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer.width ({width}) must be divisible by transformer.heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MaskedReconstructor(nn.Module):
    """``forward(feats [B, C, h, w], mask [B, h, w] bool) -> [B, C, h, w]``: the prediction of every token from
    the visible ones (masked inputs are never read)."""

    def __init__(self, channels: int, grid: tuple[int, int], width: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, position: str = "learned"):
        super().__init__()
        if position not in ("learned", "sinusoidal"):
            raise ValueError(f"transformer.position: expected 'learned' or 'sinusoidal', got {position!r}")
        self.channels, self.grid, self.position = channels, tuple(grid), position
        self.embed = nn.Linear(channels, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.mask_token, std=0.02)
        table = sincos_2d(*self.grid, width)
        if position == "learned":
            self.pos = nn.Parameter(table.clone())
        else:
            self.register_buffer("pos", table, persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, channels)

    def positions(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.grid:
            return self.pos
        if self.position == "sinusoidal":
            return sincos_2d(h, w, self.pos.shape[1]).to(self.pos)
        gh, gw = self.grid
        table = self.pos.t().reshape(1, -1, gh, gw)
        return F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False).reshape(-1, h * w).t()

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        if c != self.channels:
            raise ValueError(f"feats: expected {self.channels} channels, got {c}")
        if mask.shape != (b, h, w) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape {(b, h, w)}, got {mask.dtype} {tuple(mask.shape)}")
        tokens = self.embed(feats.flatten(2).transpose(1, 2))  # [B, N, width]
        m = mask.reshape(b, h * w, 1)
        # torch.where, not a blend: the masked inputs get exactly zero gradient (and NaNs there cannot leak).
        tokens = torch.where(m, self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        x = tokens + self.positions(h, w).to(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.norm(x))
        return out.transpose(1, 2).reshape(b, c, h, w)

