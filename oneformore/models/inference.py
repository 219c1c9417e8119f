"""Test-time path of the continual diffusion detector: reconstruct the input, then score it.

As the One-for-More / DiAD code does: the input is encoded (latent space) or taken as is (pixel space), noised to
an intermediate timestep ``t_start``, denoised in ``steps`` DDIM steps (the fused ``ddim_step``) by the controlled
denoiser conditioned on the whole input (anomaly masking is a training-time device only: at test time the
condition's mask channel is zero), and decoded. The anomaly map is the fused ``anomaly_map`` between the frozen
backbone's features of the reference and of the reconstruction, where the reference is, by default
(``reference="autoencoded"``, as in the One-for-More code), the input passed through the autoencoder
(decode(encode(x))) so that the autoencoder's own error, shared by both, cancels; ``reference="input"`` compares
with the input itself (the only choice in pixel space) (per-scale L2 over channels, bilinear to the image
size with align_corners=True, summed over scales, Gaussian-smoothed); the image score follows
:func:`oneformore.metrics.image_score.image_scores`.

In feature space (``space: features``) the model denoises the backbone's aligned, standardised features
themselves (:class:`oneformore.models.features.FeatureSpace`): the input's features are noised and denoised, and
the anomaly map is the fused ``anomaly_map`` between the input's features and the denoised ones, level by level
(nothing is decoded, so there is no autoencoder error to cancel). A network trained to predict x̂0
(``objective.prediction: x0``) is turned into the ε̂ the DDIM step takes by ε̂ = (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..diffusion import NoiseSchedule, Sampler
from ..metrics.image_score import image_scores
from ..ops import reference
from .amn import condition
from .backbone import MultiScaleBackbone
from .build import DiffusionNetworks
from .control import ControlledDenoiser
from .features import FeatureSpace
from .objective import PREDICTIONS, predicted_noise


REFERENCES = ("autoencoded", "input")


@dataclass
class InferenceConfig:
    """``t_start``: timestep the input is noised to (One-for-More's code uses 999 with 1000 steps); ``steps``: DDIM
    steps from there; ``eta``: DDIM stochasticity; ``distance``/``fusion``/``sigma``: the anomaly map;
    ``image_score``/``pool_size``: the image score rule; ``reference``: "autoencoded" or "input" (see the module
    docstring); ``eager``: reference ops instead of the fused ones."""

    t_start: int = 999
    steps: int = 10
    eta: float = 0.0
    distance: str = "l2"
    fusion: str = "sum"
    sigma: float = 4.0
    image_score: str = "max"
    pool_size: int = 16
    reference: str = "autoencoded"
    eager: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.t_start < 0:
            raise ValueError(f"t_start: expected >= 0, got {self.t_start}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference: expected one of {REFERENCES}, got {self.reference!r}")


class AnomalyScorer(nn.Module):
    """Reconstructs images with the diffusion networks and scores them against the input (see module docstring)."""

    def __init__(self, networks: DiffusionNetworks, backbone: MultiScaleBackbone, schedule: NoiseSchedule,
                 cfg: InferenceConfig | None = None, features: FeatureSpace | None = None, prediction: str = "eps"):
        super().__init__()
        self.cfg = cfg or InferenceConfig()
        if self.cfg.t_start >= len(schedule):
            raise ValueError(f"t_start: expected < {len(schedule)} (the schedule's length), got {self.cfg.t_start}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
        self.denoiser, self.autoencoder, self.backbone = networks.denoiser, networks.autoencoder, backbone
        self.features, self.prediction = features, prediction
        self.sampler = Sampler(schedule, "ddim", eta=self.cfg.eta, eager=self.cfg.eager)
        self.register_buffer("alphas_cumprod", torch.as_tensor(schedule.alphas_cumprod).float(), persistent=False)

    @torch.no_grad()
    def denoise(self, x0: torch.Tensor, images: torch.Tensor, generator: torch.Generator | None = None):
        """x0 (what the model denoises: images, latents or features) noised to ``t_start`` and denoised in
        ``steps`` DDIM steps, conditioned on the whole of ``images``."""
        cond = condition(images)  # whole image, zero mask channel
        # the condition is fixed during sampling: its hint features are computed once, not at every step
        hint = self.denoiser.encode_condition(cond) if isinstance(self.denoiser, ControlledDenoiser) else None

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = self.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1).to(x.dtype)
            out = self.denoiser(x, t, cond) if hint is None else self.denoiser(x, t, cond, hint=hint)
            return predicted_noise(out, x, a, self.prediction)

        return self.sampler.reconstruct(model_fn, x0, self.cfg.t_start, self.cfg.steps, generator=generator)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The detector's "normal" version of ``images`` ([B, 3, H, W], normalised like the training images):
        an image in pixel and latent space, standardised features [B, C, h, w] in feature space."""
        if self.features is not None:
            return self.denoise(self.features.encode(images), images, generator)
        x0 = images if self.autoencoder is None else self.autoencoder.encode_latent(images)
        z = self.denoise(x0, images, generator)
        return z if self.autoencoder is None else self.autoencoder.decode_latent(z)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] float32: backbone-feature distance between ``images`` and ``reconstructions``."""
        return self._map(self.backbone(images), self.backbone(reconstructions), tuple(images.shape[-2:]))

    def _map(self, feats: list[torch.Tensor], recon_feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        op = reference.anomaly_map if self.cfg.eager else ops.anomaly_map
        return op(feats, recon_feats, size, distance=self.cfg.distance, fusion=self.cfg.fusion, sigma=self.cfg.sigma)

    @torch.no_grad()
    def reference_images(self, images: torch.Tensor) -> torch.Tensor:
        """What the reconstruction is compared with (see the module docstring)."""
        if self.autoencoder is None or self.cfg.reference == "input":
            return images
        return self.autoencoder(images)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """(maps [B, 1, H, W], image scores [B], reconstructions (see :meth:`reconstruct`))."""
        if self.features is not None:
            x = self.features.encode(images)
            recon = self.denoise(x, images, generator)
            maps = self._map(self.features.levels(x), self.features.levels(recon), tuple(images.shape[-2:]))
        else:
            recon = self.reconstruct(images, generator)
            maps = self.anomaly_map(self.reference_images(images), recon)
        return maps, image_scores(maps, self.cfg.image_score, self.cfg.pool_size), recon
