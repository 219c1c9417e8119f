"""The denoising training objective of the continual detector, in the trainer's model interface.

``DenoisingObjective(networks, alphas_cumprod, cfg, features).training_loss(batch, generator)``:

1. x0 = the batch's (normal) images, their latents from the frozen autoencoder (``encode_latent``: posterior mean
   in unit-variance units) in latent space, or their aligned, standardised backbone features in feature space
   (:class:`oneformore.models.features.FeatureSpace`, whose statistics accumulate over the first training batches);
2. t ~ uniform{0 .. t_max − 1} (the whole schedule by default), ε ~ N(0, I) from the step's generator;
   x_t = √ᾱ_t · s + √(1 − ᾱ_t) · ε, where the start s is x0;
3. the condition: the image AMN-masked (:mod:`oneformore.models.amn`) with the mask as a fourth channel;
4. ``prediction: eps``: loss = mean squared error between ε and the controlled denoiser's prediction
   ε̂(x_t, t | condition) (DDPM's "simple" loss, as LDM / ControlNet / DiAD train); ``prediction: x0``: the network
   predicts x̂0 and the loss is ‖x̂0 − x0‖² (the sampler takes ε̂ = (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t) from it).

``defect_prob`` > 0 extends the AMN from hiding regions to corrupting them: that share of the images gets one to
``defect_max`` synthetic defects (:mod:`oneformore.models.defects`), and both the condition and the start s come
from the corrupted image while the target stays the clean x0. At test time everything the model sees comes from the
image under test, defect included; a model trained only on clean inputs learns that x_t and the condition are
always consistent with the answer and carries a defect through, one trained on corrupted inputs learns to replace
it (DiffusionAD, Zhang et al. 2023, trains its denoiser the same way; DRAEM and CutPaste train on generated
anomalies). With ``prediction: eps`` the target becomes the ε̂ that leads to the clean x0.

``alphas_cumprod`` ([T] float, ᾱ_t) is taken as a tensor, so any noise schedule plugs in (the package's
``oneformore.diffusion.NoiseSchedule`` provides it). The autoencoder and the backbone are frozen here; the UNet and
the control branch both train, since neither is pretrained (ControlNet locks a pretrained Stable Diffusion UNet; we
have none to lock).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .amn import masked_condition
from .build import DiffusionNetworks
from .defects import add_synthetic_defects, check_defect_settings
from .features import FeatureSpace

PREDICTIONS = ("eps", "x0")


@dataclass
class ObjectiveConfig:
    """``prediction``: what the network outputs (eps | x0); ``t_max``: training timesteps are drawn from
    [0, t_max) (None: the whole schedule); ``defect_prob``/``defect_strength_min``/``defect_max``: synthetic
    defects in the inputs (see the module docstring; 0: none)."""

    prediction: str = "eps"
    t_max: int | None = None
    defect_prob: float = 0.0
    defect_strength_min: float = 0.3
    defect_max: int = 3

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"objective.prediction: expected one of {PREDICTIONS}, got {self.prediction!r}")
        if self.t_max is not None and self.t_max < 1:
            raise ValueError(f"objective.t_max: expected >= 1 or null, got {self.t_max}")
        check_defect_settings(self.defect_prob, self.defect_strength_min, self.defect_max,
                              ("objective.defect_prob", "objective.defect_strength_min", "objective.defect_max"))


def predicted_noise(out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """ε̂ from the network's output ``out`` at x_t with ᾱ_t ``alpha_bar`` (broadcastable): the output itself
    (eps), or (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t) (x0)."""
    if prediction == "eps":
        return out
    return (x_t - alpha_bar.sqrt() * out) / (1 - alpha_bar).sqrt()


class DenoisingObjective(nn.Module):
    def __init__(self, networks: DiffusionNetworks, alphas_cumprod: torch.Tensor, cfg: ObjectiveConfig | None = None,
                 features: FeatureSpace | None = None):
        super().__init__()
        if alphas_cumprod.dim() != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
            raise ValueError("alphas_cumprod: expected a 1-D tensor of cumulative alphas in (0, 1)")
        self.cfg = cfg or ObjectiveConfig()
        if self.cfg.t_max is not None and self.cfg.t_max > len(alphas_cumprod):
            raise ValueError(f"objective.t_max: expected <= {len(alphas_cumprod)} (the schedule's length), "
                             f"got {self.cfg.t_max}")
        self.denoiser = networks.denoiser
        self.autoencoder = networks.autoencoder
        if self.autoencoder is not None:
            self.autoencoder.requires_grad_(False).eval()
        self.features = features
        self.amn = networks.amn
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone())

    def train(self, mode: bool = True) -> "DenoisingObjective":
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen
        return self

    @torch.no_grad()
    def to_x0(self, images: torch.Tensor, update_stats: bool = False, keys: list[str] | None = None) -> torch.Tensor:
        """What the model denoises: images, latents or standardised features (``update_stats``: feature space's
        statistics accumulate from these images; ``keys``: the images' paths, for its feature cache)."""
        if self.features is not None:
            return self.features.encode(images, update_stats, keys)
        return images if self.autoencoder is None else self.autoencoder.encode_latent(images)

    def training_inputs(self, images: torch.Tensor, generator: torch.Generator | None = None,
                        update_stats: bool = False, keys: list[str] | None = None):
        """(x_t, t, condition, clean x0, start s, ε, ᾱ_t [B, 1, 1, 1]) of one training step (module docstring);
        ``keys``: the images' paths (the clean images' features may then come from feature space's cache)."""
        x0 = self.to_x0(images, update_stats, keys)
        start, seen = x0, images
        cfg = self.cfg
        if cfg.defect_prob > 0:
            corrupted, chosen = add_synthetic_defects(images, cfg.defect_prob, cfg.defect_strength_min, generator,
                                                      cfg.defect_max)
            if chosen.numel():
                chosen = chosen.to(x0.device)
                seen, start = corrupted, x0.clone()
                start[chosen] = self.to_x0(corrupted[chosen])
        b = x0.shape[0]
        t = torch.randint(0, cfg.t_max or len(self.alphas_cumprod), (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1).to(x0.dtype)
        x_t = a.sqrt() * start + (1 - a).sqrt() * noise
        cond, _ = masked_condition(seen, self.amn, generator)
        return x_t, t, cond, x0, start, noise, a

    def training_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        images, keys = (batch["image"], batch.get("path")) if isinstance(batch, dict) else (batch, None)
        x_t, t, cond, x0, start, noise, a = self.training_inputs(images, generator, self.training, keys)
        out = self.denoiser(x_t, t, cond)
        if self.cfg.prediction == "x0":
            return F.mse_loss(out, x0)
        if start is x0:
            return F.mse_loss(out, noise)
        # the ε̂ that the DDIM step turns into the clean x0: ε + √ᾱ·(s − x0)/√(1 − ᾱ)
        return F.mse_loss(out, noise + a.sqrt() * (start - x0) / (1 - a).sqrt())
