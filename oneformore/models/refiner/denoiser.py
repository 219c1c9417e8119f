"""The diffusion refiner's noise predictor ε(x_t, t | coarse, visible): a small residual conv net on the token grid.

The paper conditions the refiner two ways (dual conditioning) and fuses the timestep into the spatial features
(spatio-temporal fusion), without fixing the layers. What we chose, and why:

- **Conditioning by concatenation** (as DiAD's SD-style denoiser and SR3 / SD-inpainting take their image
  condition): the first conv sees [x_t, coarse, visible, m] (computed as two convs, see :class:`RefinerDenoiser`), where ``coarse`` is the transformer's reconstruction,
  ``visible`` the (normalised) input features with the masked tokens zeroed, and m the mask. This is what lets the
  refiner copy detail from where it is known and correct the coarse prediction where it is not.
- **Conditioning by FiLM, spatially**: a condition encoder (two 3x3 convs) turns [coarse, visible, m] into a
  per-location embedding; the timestep embedding (sinusoidal -> MLP, as in the UNet) is added to it at every location
  (broadcast over the grid), and the sum, through SiLU, is the *spatio-temporal* embedding e[B, W, h, w]. Before
  each residual block's second conv a 1x1 conv of e gives a per-location scale and shift,
  ``h = norm(h)·(1 + scale) + shift``: improved-DDPM's scale-shift norm, but with a modulation that varies over
  space and mixes time with the two conditions, instead of one vector per sample.
- Zero-initialised output conv (as the UNet's), so training starts from ε̂ = 0.

The grid is small (16x16 at 128 px, stride 8), so no down/upsampling: ``blocks`` residual blocks of 3x3 convs at
``width`` channels give a receptive field of 2·blocks + 3 tokens. Every weight is an ``nn.Conv2d`` (groups=1) or an
``nn.Linear``, so the continual gradient projector can select all of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..unet import TimestepEmbedder, norm, zero_module


class FusedResBlock(nn.Module):
    """GN-SiLU-conv, per-location scale-shift from the spatio-temporal embedding, GN-SiLU-conv, residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = norm(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.modulation = nn.Conv2d(width, 2 * width, 1)
        self.norm2 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(emb).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class RefinerDenoiser(nn.Module):
    """``forward(x_t [B, C, h, w], t [B] int64, coarse [B, C, h, w], visible [B, C, h, w], mask [B, 1, h, w])``
    -> predicted noise [B, C, h, w]. ``visible`` must already be zero where ``mask`` is 1.

    The condition does not change during sampling, so :meth:`condition` encodes it once and :meth:`denoise` runs
    each step from that encoding: the first conv on [x_t, cond] is written as two convs (``conv_in`` on x_t plus
    ``cond_in`` on the condition, the same linear map split by input channels), so the condition's half, and the
    condition encoder, are computed once per sampling run instead of once per step (about half the FLOPs of a
    step at the preset's sizes)."""

    def __init__(self, channels: int, width: int = 128, blocks: int = 3):
        super().__init__()
        cond_channels = 2 * channels + 1
        self.time = TimestepEmbedder(width, width)
        self.cond = nn.Sequential(nn.Conv2d(cond_channels, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.cond_in = nn.Conv2d(cond_channels, width, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(FusedResBlock(width) for _ in range(blocks))
        self.norm_out = norm(width)
        self.conv_out = zero_module(nn.Conv2d(width, channels, 3, padding=1))

    def condition(self, coarse, visible, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded dual condition: (spatial embedding, its contribution to the first conv)."""
        cond = torch.cat([coarse, visible, mask.to(coarse.dtype)], dim=1)
        return self.cond(cond), self.cond_in(cond)

    def denoise(self, x_t, t, condition: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cond_emb, cond_in = condition
        emb = F.silu(cond_emb + self.time(t)[:, :, None, None])  # spatio-temporal fusion
        h = self.conv_in(x_t) + cond_in
        for block in self.blocks:
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x_t, t, coarse, visible, mask):
        return self.denoise(x_t, t, self.condition(coarse, visible, mask))
