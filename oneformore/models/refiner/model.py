"""The multi-class diffusion-transformer refiner as one module: training loss, activation pass and scoring.

Training (one ``training_loss`` = transformer loss + weight · refiner loss, every random draw from the trainer's
generator): the frozen backbone's aligned, standardised features x [B, C, h, w]; a training mask m per sample
(:mod:`.tokens`); the transformer's prediction r = T(x, m) with the loss mean((r − x)²) over the masked tokens
(MAE's choice: visible tokens are not the task); the refiner gets the *detached* r as its coarse condition (so
its training input is distributed as at test time, and its loss does not move the transformer), the visible
input x·(1 − m), and x_t = √ᾱ_t·x + √(1 − ᾱ_t)·ε with t uniform in [0, train_t_max); its loss is the ε-objective
(DDPM) over the masked tokens. ``refiner.prediction: coarse_anchored`` reads the network's output as a correction
Δ of the coarse reconstruction (x̂0 = coarse + Δ, ε̂ = (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t)), so the untrained refiner returns the
coarse reconstruction exactly and only learns to move away from it; the loss is still the ε-objective, optionally
weighted by min(SNR, γ)/SNR (min-SNR-γ, Hang et al. 2023), which bounds the x̂0-error weight of small timesteps.
``refiner.start: coarse`` noises the training x_t from what sampling starts from (the coarse reconstruction at
the masked tokens, the input at the visible ones) instead of from x, and puts the loss on the x̂0 that the DDIM
step derives from ε̂ (x̂0 − x over the masked tokens): the refiner is trained on the inputs it sees at test time.
``refiner.defect_prob`` > 0 trains the refiner on anomalous context: that share of the images gets one to
``refiner.defect_max`` synthetic defects (:mod:`.defects`), and for them the refiner's condition and the visible
tokens of x_t come from the corrupted image's features, its coarse condition from the transformer's reconstruction
of those, while its target stays the clean x (the transformer's own loss still sees only the clean image).
The paper is silent on all four; they are our choices, measured against the plain ε-network in the README.

Scoring: the K complementary masks (:func:`.tokens.complementary_masks`) run as one batch of K·B; partition k's
coarse result is the transformer output r_k, and the coarse reconstruction takes every token from the partition that
masked it. The refiner then runs per partition too, ``inference.samples`` times from independent noise draws,
averaged: x0_k = m_k·r_k + (1 − m_k)·x, noised to ``t_start`` and denoised in ``steps`` DDIM steps (the fused
``ddim_step``) conditioned on (r_k, x·(1 − m_k), m_k), with the visible tokens held to the input noised to each
step's level (the op's ``mask``/``known`` blend, RePaint-style). So neither the coarse nor the refined value of a
token ever depends on that token's own input (only on the other partitions'), which is the point of inpainting.
Anomaly maps: the fused ``anomaly_map`` between x and each reconstruction, bilinear to the image size and
Gaussian-smoothed; image scores by :func:`oneformore.metrics.image_score.image_scores`.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import ops
from ...diffusion import NoiseSchedule, Sampler
from ...metrics.image_score import image_scores
from ...ops import reference
from .config import DiffusionConfig, InferenceConfig, MaskConfig
from ..defects import add_synthetic_defects
from .denoiser import RefinerDenoiser
from ..features import AlignedFeatures, FeatureNormalizer
from .tokens import complementary_masks, training_masks
from .transformer import MaskedReconstructor


def _check_images(name: str, images, grid_stride: int) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name}: expected a floating dtype (float32, float16, bfloat16 or float64), got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    h, w = images.shape[-2:]
    if h % grid_stride or w % grid_stride:
        raise ValueError(f"{name}: height and width must be multiples of features.grid_stride={grid_stride}, "
                         f"got {h}x{w}")
    return images.float()


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


class RefinerDetector(nn.Module):
    """Frozen features + masked transformer + diffusion refiner (see the module docstring)."""

    def __init__(self, features: AlignedFeatures, normalizer: FeatureNormalizer, transformer: MaskedReconstructor,
                 denoiser: RefinerDenoiser, schedule: NoiseSchedule, mask: MaskConfig, diffusion: DiffusionConfig,
                 inference: InferenceConfig):
        super().__init__()
        if inference.t_start >= len(schedule):
            raise ValueError(f"inference.t_start: expected < {len(schedule)} (refiner.num_steps), "
                             f"got {inference.t_start}")
        if inference.steps > inference.t_start + 1:
            raise ValueError(f"inference.steps: expected <= t_start + 1 = {inference.t_start + 1}, "
                             f"got {inference.steps}")
        self.features, self.normalizer = features, normalizer
        self.networks = nn.ModuleDict({"transformer": transformer, "refiner": denoiser})
        self.schedule, self.mask_cfg, self.diffusion_cfg = schedule, mask, diffusion
        self.inference = inference
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float(), persistent=False)

    # ----- parts -----
    @property
    def trainable(self) -> nn.Module:
        """The module holding every trainable network (transformer + refiner), not the frozen backbone."""
        return self.networks

    @property
    def transformer(self) -> MaskedReconstructor:
        return self.networks["transformer"]

    @property
    def refiner(self) -> RefinerDenoiser:
        return self.networks["refiner"]

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised aligned features [B, C, h, w] of images [B, 3, H, W]."""
        return self.normalizer(self.features(images))

    # ----- training -----
    def _losses(self, batch: dict, generator: torch.Generator, update_stats: bool):
        if not isinstance(batch, dict) or "image" not in batch:
            raise TypeError("batch: expected a dict with an 'image' tensor [B, 3, H, W]")
        _check_generator(generator)
        images = _check_images("batch['image']", batch["image"], self.features.grid_stride)
        raw = self.features(images)
        if update_stats:
            self.normalizer.update(raw)
        x = self.normalizer(raw)
        b, c, h, w = x.shape
        cfg = self.mask_cfg
        mask = training_masks(b, h, w, pattern=cfg.pattern, ratio_min=cfg.ratio_min, ratio_max=cfg.ratio_max,
                              block_size=cfg.block_size, partitions=cfg.test_partitions,
                              generator=generator).to(x.device)
        m = mask.unsqueeze(1).to(x.dtype)
        denom = m.sum() * c
        rec = self.transformer(x, mask)
        transformer_loss = ((rec - x) ** 2 * m).sum() / denom

        t = torch.randint(0, self.diffusion_cfg.train_t_max, (b,), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1).to(x.dtype)
        context, coarse = self._refiner_context(images, x, rec.detach(), mask, generator)
        from_coarse = self.diffusion_cfg.start == "coarse"
        # noised from what sampling starts from (the coarse tokens, the visible input), or from the clean features
        origin = m * (coarse if from_coarse else x) + (1 - m) * context
        x_t = a.sqrt() * origin + (1 - a).sqrt() * noise
        eps = self._eps(self.refiner(x_t, t, coarse, context * (1 - m), m), x_t, t, coarse)
        if from_coarse:
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()  # the x̂0 the DDIM step takes from this ε̂
            refiner_loss = ((x0 - x) ** 2 * m).sum() / denom
        else:
            refiner_loss = ((eps - noise) ** 2 * m * self._loss_weights(a)).sum() / denom
        return transformer_loss, refiner_loss

    def _refiner_context(self, images, x, coarse, mask, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(features the refiner sees at the visible tokens, its coarse condition): x and the transformer's
        reconstruction, or, with ``refiner.defect_prob`` > 0, both recomputed for the samples that
        :func:`.defects.add_synthetic_defects` corrupted (no gradient to the transformer, no statistics update)."""
        cfg = self.diffusion_cfg
        if cfg.defect_prob == 0:
            return x, coarse
        corrupted, chosen = add_synthetic_defects(images, cfg.defect_prob, cfg.defect_strength_min, generator,
                                                    cfg.defect_max)
        if chosen.numel() == 0:
            return x, coarse
        chosen = chosen.to(x.device)
        context, coarse = x.clone(), coarse.clone()
        with torch.no_grad():
            context[chosen] = self.normalizer(self.features(corrupted[chosen]))
            coarse[chosen] = self.transformer(context[chosen], mask[chosen])
        return context, coarse

    def _eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The refiner's predicted noise from its output (see ``refiner.prediction``)."""
        if self.diffusion_cfg.prediction == "eps":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return (x_t - a.sqrt() * (coarse + out)) / (1 - a).sqrt()

    def _loss_weights(self, a: torch.Tensor) -> torch.Tensor | float:
        gamma = self.diffusion_cfg.min_snr_gamma
        if gamma <= 0:
            return 1.0
        snr = a / (1 - a)
        return snr.clamp(max=gamma) / snr

    def training_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Scalar: transformer inpainting loss + ``refiner.loss_weight`` · refiner ε-loss (masked tokens only)."""
        transformer_loss, refiner_loss = self._losses(batch, generator, update_stats=self.training)
        return transformer_loss + self.diffusion_cfg.loss_weight * refiner_loss

    @torch.no_grad()
    def activation_pass(self, batch: dict, generator: torch.Generator) -> None:
        """One forward pass of the transformer and the refiner on inputs drawn as in training (no backward, no
        update of the feature statistics): for forward hooks that collect the layers' inputs."""
        self._losses(batch, generator, update_stats=False)

    # ----- inference -----
    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """(x, coarse, refined), each [B, C, h, w] in the standardised feature space."""
        _check_generator(generator)
        images = _check_images("images", images, self.features.grid_stride)
        x = self.encode(images.to(self.device))
        coarse, refined = self.reconstruct_features(x, generator)
        return x, coarse, refined

    @torch.no_grad()
    def reconstruct_features(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(coarse, refined) [B, C, h, w] from standardised features x: every token predicted by the partition
        that masks it (neither result at a token reads that token's value of x)."""
        b, c, h, w = x.shape
        k = self.mask_cfg.test_partitions
        masks = complementary_masks(h, w, k, self.mask_cfg.test_pattern, generator).to(x.device)
        xk = x.repeat(k, 1, 1, 1)  # partition-major: rows [k·B, (k+1)·B) are partition k
        mk = masks.repeat_interleave(b, dim=0)
        m = mk.unsqueeze(1).to(x.dtype)
        rec = self.transformer(xk, mk)
        coarse = (rec * m).view(k, b, c, h, w).sum(0)

        cfg = self.inference
        visible = xk * (1 - m)
        keep = (1 - m).contiguous()
        x0 = m * rec + visible

        condition = self.refiner.condition(rec, visible, m)  # fixed during sampling: encoded once

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._eps(self.refiner.denoise(x_t, t, condition), x_t, t, rec)

        sampler = Sampler(self.schedule, "ddim", eta=cfg.eta, eager=cfg.eager)
        refined_k = sum(sampler.reconstruct(model_fn, x0, cfg.t_start, cfg.steps, generator=generator,
                                            mask=keep, known=xk) for _ in range(cfg.samples)) / cfg.samples
        refined = (refined_k * m).view(k, b, c, h, w).sum(0)
        return coarse, refined

    def _levels(self, feats: torch.Tensor) -> list[torch.Tensor]:
        if self.inference.levels == "concat":
            return [feats]
        return self.features.levels(feats)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, reconstruction: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        cfg = self.inference
        op = reference.anomaly_map if cfg.eager else ops.anomaly_map
        return op(self._levels(x.contiguous()), self._levels(reconstruction.contiguous()), tuple(out_size),
                  distance=cfg.distance, fusion=cfg.fusion, sigma=cfg.sigma)

    @torch.no_grad()
    def score(self, images: torch.Tensor, generator: torch.Generator | None = None
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"refined": (maps [B, 1, H, W] float32, image scores [B]), "coarse": (maps, scores)}, refined first."""
        x, coarse, refined = self.reconstruct(images, generator)
        size = tuple(images.shape[-2:])
        out = {}
        for name, rec in (("refined", refined), ("coarse", coarse)):
            maps = self.anomaly_map(x, rec, size)
            out[name] = (maps, image_scores(maps, self.inference.image_score, self.inference.pool_size))
        return out
