"""The denoising training objective of the continual detector, in the trainer's model interface.

``DenoisingObjective(networks, alphas_cumprod).training_loss(batch, generator)``:

1. x0 = the batch's (normal) images, or their latents from the frozen autoencoder (``encode_latent``: posterior
   mean in unit-variance units) in latent space;
2. t ~ uniform{0 .. T−1}, ε ~ N(0, I) from the step's generator; x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε;
3. the condition: the image AMN-masked (:mod:`oneformore.models.amn`) with the mask as a fourth channel;
4. loss = mean squared error between ε and the controlled denoiser's prediction ε̂(x_t, t | condition)
   (DDPM's "simple" loss, as LDM / ControlNet / DiAD train).

``alphas_cumprod`` ([T] float, ᾱ_t) is taken as a tensor, so any noise schedule plugs in (the package's
``oneformore.diffusion.NoiseSchedule`` provides it). The autoencoder is frozen here (trained beforehand with its own
``training_loss``); the UNet and the control branch both train, since neither is pretrained (ControlNet locks a
pretrained Stable Diffusion UNet; we have none to lock).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .amn import masked_condition
from .build import DiffusionNetworks


class DenoisingObjective(nn.Module):
    def __init__(self, networks: DiffusionNetworks, alphas_cumprod: torch.Tensor):
        super().__init__()
        if alphas_cumprod.dim() != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
            raise ValueError("alphas_cumprod: expected a 1-D tensor of cumulative alphas in (0, 1)")
        self.denoiser = networks.denoiser
        self.autoencoder = networks.autoencoder
        if self.autoencoder is not None:
            self.autoencoder.requires_grad_(False).eval()
        self.amn = networks.amn
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone())

    def train(self, mode: bool = True) -> "DenoisingObjective":
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen
        return self

    @torch.no_grad()
    def to_x0(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.autoencoder is None else self.autoencoder.encode_latent(images)

    def training_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        images = batch["image"] if isinstance(batch, dict) else batch
        x0 = self.to_x0(images)
        b = x0.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1).to(x0.dtype)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond, _ = masked_condition(images, self.amn, generator)
        return F.mse_loss(self.denoiser(x_t, t, cond), noise)
