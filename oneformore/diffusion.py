"""Noise schedules and reconstruction-style samplers (DDIM, DDPM) on the fused denoising ops.

Anomaly detection does not sample from pure noise: the input (or its latent) is noised to an intermediate
timestep t_start and denoised back in a few evenly spaced steps, so normal content is kept and anomalies are
"repaired". ``Sampler.noise_to`` does the first part, ``Sampler.sample`` the second; ``eager=True`` runs the plain
PyTorch reference ops instead of the fused ones (the detectors' benchmarks compare both).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import ops
from .ops import reference

__all__ = ["NoiseSchedule", "Sampler", "DDIMSampler", "DDPMSampler"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B] int64) -> predicted noise


class NoiseSchedule:
    """Discrete variance schedule β_1..β_T (float64) and its cumulative products ᾱ_t = Π (1 − β_s).

    kinds:
      - ``"linear"``: DDPM (Ho et al. 2020): β linear from ``beta_start`` (1e-4) to ``beta_end`` (0.02).
      - ``"scaled_linear"``: Stable Diffusion / LDM: √β linear from √0.00085 to √0.012 (defaults for this kind),
        the schedule of One-for-More's and DiAD's latent diffusion models.
      - ``"cosine"``: improved DDPM (Nichol & Dhariwal 2021): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
        β_t = min(1 − ᾱ(t)/ᾱ(t − 1), 0.999), s = 0.008.

    Index t = 0..T−1 is the paper's timestep t + 1; ``alphas_cumprod_prev[0] = 1`` (the clean sample).
    """

    def __init__(self, kind: str = "linear", num_steps: int = 1000, *, beta_start: float | None = None,
                 beta_end: float | None = None, cosine_s: float = 0.008, max_beta: float = 0.999):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
        t = torch.arange(num_steps, dtype=torch.float64)
        if kind == "linear":
            b0, b1 = beta_start or 1e-4, beta_end or 0.02
            betas = torch.linspace(b0, b1, num_steps, dtype=torch.float64)
        elif kind == "scaled_linear":
            b0, b1 = beta_start or 0.00085, beta_end or 0.012
            betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), num_steps, dtype=torch.float64) ** 2
        elif kind == "cosine":
            def f(u):
                return torch.cos((u / num_steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
            betas = (1 - f(t + 1) / f(t)).clamp(max=max_beta)
        else:
            raise ValueError(f"kind: expected 'linear', 'scaled_linear' or 'cosine', got {kind!r}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1); got range [{betas.min():.3g}, {betas.max():.3g}]")
        self.kind, self.num_steps = kind, num_steps
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    def __len__(self) -> int:
        return self.num_steps

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t for 0 <= t < T, and 1.0 for t = −1 (the clean sample)."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_steps:
            raise ValueError(f"t: expected -1 <= t < {self.num_steps}, got {t}")
        return float(self.alphas_cumprod[t])

    def timesteps(self, t_start: int, steps: int) -> list[int]:
        """``steps`` timesteps evenly spaced from t_start down to 0 (both included), strictly decreasing."""
        if not 0 <= t_start < self.num_steps:
            raise ValueError(f"t_start: expected 0 <= t_start < {self.num_steps}, got {t_start}")
        if not 1 <= steps <= t_start + 1:
            raise ValueError(f"steps: expected 1 <= steps <= t_start + 1 = {t_start + 1}, got {steps}")
        if steps == 1:
            return [t_start]
        return [round(t_start * (steps - 1 - k) / (steps - 1)) for k in range(steps)]


class Sampler:
    """Reconstruction-style sampler: ``x_t = noise_to(x0, t_start)``, then ``sample(model_fn, x_t, t_start, steps)``.

    Args:
        schedule: the NoiseSchedule the model was trained with.
        method: ``"ddim"`` (Song et al. 2021; ``eta`` 0 is deterministic) or ``"ddpm"`` (ancestral posterior steps,
            respaced when ``steps`` < t_start + 1).
        eta: DDIM stochasticity.
        clip_x0: clamp of the predicted x0 (None: no clamp, as for latents).
        eager: use the plain PyTorch reference ops instead of the fused ones.
    """

    def __init__(self, schedule: NoiseSchedule, method: str = "ddim", *, eta: float = 0.0,
                 clip_x0: float | None = None, eager: bool = False):
        if method not in ("ddim", "ddpm"):
            raise ValueError(f"method: expected 'ddim' or 'ddpm', got {method!r}")
        self.schedule, self.method, self.eta, self.clip_x0, self.eager = schedule, method, eta, clip_x0, eager
        self._ops = reference if eager else ops

    def noise_to(self, x0: torch.Tensor, t: int, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """q(x_t | x0): sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise (noise drawn when not given)."""
        a = self.schedule.alpha_bar(t)
        if noise is None:
            noise = _randn_like(x0, generator)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, x_t: torch.Tensor, t_start: int, steps: int, *,
               mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
               generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """Denoises x_t (at timestep t_start) to x0 in ``steps`` model calls (under torch.no_grad()).

        ``model_fn(x, t)`` gets t as an int64 [B] tensor and returns the predicted noise. With ``mask``
        ([B or 1, 1, H, W], 1 = keep) and ``known`` (clean content, like x_t), every step keeps ``known`` noised to
        the step's level under the mask (RePaint-style inpainting); the last step keeps ``known`` itself.
        """
        if (mask is None) != (known is None):
            raise ValueError("mask and known must be given together")
        ts = self.schedule.timesteps(t_start, steps)
        x = x_t
        for k, t in enumerate(tqdm(ts, desc=f"{self.method} sampling", disable=not progress)):
            t_prev = ts[k + 1] if k + 1 < len(ts) else -1
            a_t, a_prev = self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev)
            eps = model_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
            known_t = None if known is None else self.noise_to(known, t_prev, generator=generator) \
                if t_prev >= 0 else known
            stochastic = self.method == "ddpm" or self.eta > 0
            noise = _randn_like(x, generator) if stochastic else None
            if self.method == "ddim":
                x = self._ops.ddim_step(x, eps, a_t, a_prev, eta=self.eta, noise=noise, clip_x0=self.clip_x0,
                                        mask=mask, known=known_t)
            else:
                x = self._ops.ddpm_step(x, eps, a_t, a_prev, noise=noise, clip_x0=self.clip_x0, mask=mask,
                                        known=known_t)
        return x

    def reconstruct(self, model_fn: ModelFn, x0: torch.Tensor, t_start: int, steps: int, *,
                    generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """noise_to(x0, t_start) then sample(...): the reconstruction a detector compares its input with."""
        return self.sample(model_fn, self.noise_to(x0, t_start, generator=generator), t_start, steps,
                           generator=generator, **kwargs)


def DDIMSampler(schedule: NoiseSchedule, *, eta: float = 0.0, **kwargs) -> Sampler:  # noqa: N802 (class-like)
    """A DDIM :class:`Sampler`."""
    return Sampler(schedule, "ddim", eta=eta, **kwargs)


def DDPMSampler(schedule: NoiseSchedule, **kwargs) -> Sampler:  # noqa: N802 (class-like)
    """A DDPM :class:`Sampler`."""
    return Sampler(schedule, "ddpm", **kwargs)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device).contiguous(
        memory_format=torch.channels_last if x.dim() == 4 and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
