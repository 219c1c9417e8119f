"""Eager-PyTorch references of the fused denoising steps, written straight from the papers' formulas.

Same signatures as :mod:`oneformore.ops.denoise`. They compute in float64 for float64 inputs (the tests' ground
truth) and in float32 otherwise, like the fused kernels.
"""

from __future__ import annotations

import math

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(alpha, x: torch.Tensor, dtype: torch.dtype):
    """A float stays a float; a tensor becomes [B, 1, ..., 1] so it broadcasts over each sample."""
    if not isinstance(alpha, torch.Tensor):
        return float(alpha)
    alpha = alpha.to(device=x.device, dtype=dtype)
    if alpha.dim() == 0:
        return alpha
    return alpha.reshape((-1,) + (1,) * (x.dim() - 1))


def _sqrt(v):
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)


def _finish(prev, x_t, mask, known, out):
    if mask is not None:
        m = mask.to(prev.dtype)
        prev = m * known.to(prev.dtype) + (1 - m) * prev
    prev = prev.to(x_t.dtype)
    if out is not None:
        return out.copy_(prev)
    return prev


def _predict_x0(x, e, a_t, clip_x0):
    x0 = (x - _sqrt(1 - a_t) * e) / _sqrt(a_t)
    return x0.clamp(-clip_x0, clip_x0) if clip_x0 is not None else x0


def ddim_sigma(alpha_t, alpha_prev, eta):
    """sigma of DDIM (Song et al. 2021, eq. 16); 0 where eta = 0 or alpha_prev = alpha_t."""
    if isinstance(alpha_t, torch.Tensor) or isinstance(alpha_prev, torch.Tensor):
        a_t = torch.as_tensor(alpha_t, dtype=torch.float64)
        a_prev = torch.as_tensor(alpha_prev, dtype=torch.float64, device=a_t.device)
        same = a_t == a_prev
        ratio = torch.where(same, torch.zeros_like(a_t), (1 - a_prev) / torch.where(same, torch.ones_like(a_t), 1 - a_t))
        return eta * torch.sqrt(ratio * (1 - a_t / a_prev))
    if eta == 0 or alpha_t == alpha_prev:
        return 0.0
    return eta * math.sqrt((1 - alpha_prev) / (1 - alpha_t)) * math.sqrt(1 - alpha_t / alpha_prev)


def ddim_step(x_t, eps, alpha_t, alpha_prev, *, eta=0.0, noise=None, clip_x0=None, mask=None, known=None, out=None):
    """x_prev = sqrt(a_prev)·x0 + sqrt(1 − a_prev − σ²)·ε + σ·z, x0 = (x_t − sqrt(1 − a_t)·ε)/sqrt(a_t)."""
    dtype = _compute_dtype(x_t)
    x, e = x_t.to(dtype), eps.to(dtype)
    sigma = ddim_sigma(alpha_t, alpha_prev, eta)
    a_t, a_prev = _per_sample(alpha_t, x, dtype), _per_sample(alpha_prev, x, dtype)
    sigma = _per_sample(sigma, x, dtype)
    x0 = _predict_x0(x, e, a_t, clip_x0)
    prev = _sqrt(a_prev) * x0 + _sqrt(1 - a_prev - sigma**2) * e
    if noise is None and eta > 0:
        noise = torch.randn_like(x_t)
    if noise is not None:
        prev = prev + sigma * noise.to(dtype)
    return _finish(prev, x_t, mask, known, out)


def ddpm_step(x_t, eps, alpha_t, alpha_prev, *, noise=None, clip_x0=None, mask=None, known=None, out=None):
    """The DDPM posterior q(x_prev | x_t, x0) (Ho et al. 2020, eq. 6-7) between cumulative alphas a_t < a_prev."""
    dtype = _compute_dtype(x_t)
    x, e = x_t.to(dtype), eps.to(dtype)
    a_t, a_prev = _per_sample(alpha_t, x, dtype), _per_sample(alpha_prev, x, dtype)
    beta = 1 - a_t / a_prev
    x0 = _predict_x0(x, e, a_t, clip_x0)
    mean = _sqrt(a_prev) * beta / (1 - a_t) * x0 + _sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
    variance = (1 - a_prev) / (1 - a_t) * beta
    if noise is None:
        noise = torch.randn_like(x_t)
    prev = mean + _sqrt(variance) * noise.to(dtype)
    return _finish(prev, x_t, mask, known, out)
