"""Fused diffusion denoising steps: ``ddim_step`` and ``ddpm_step`` (``torch.ops.oneformore.*``).

One pass over memory computes x0 from the predicted noise, optionally clamps it, takes the step, adds the noise
term and blends in known content under a mask. Alphas are cumulative (alpha-bar), as floats or per-sample [B]
tensors, so one batch can mix timesteps. Inputs may be float32/float16/bfloat16 (computed in float32),
contiguous or channels_last; the result has the layout of ``x_t``.
"""

from __future__ import annotations

import functools
import math

import torch

from ._validate import _is_fake, check_shape, check_tensor

__all__ = ["ddim_step", "ddpm_step"]

_OPS = torch.ops.oneformore
# float64 is computed in float64 (gradcheck, float64 pipelines); the half types are computed in float32.
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# argument checks


def _alphas_arg(name: str, value, x_t: torch.Tensor):
    """Type/shape checks of a float or 0-D/[B] tensor of cumulative alphas; returns a float or a float64 [B]
    tensor on x_t's device (values are checked by _check_alphas, with one device sync for both tensors)."""
    batch = x_t.shape[0]
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a float or a [B] tensor, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"{name}: expected a cumulative alpha in (0, 1], got {value}")
        return float(value)
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {value.dtype}")
    if value.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name}: gradients with respect to the alphas are not supported; pass a detached tensor")
    if value.dim() == 0:
        value = value.reshape(1).expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name}: expected a float or a tensor of shape ({batch},) (one per sample), "
                         f"got shape {tuple(value.shape)}")
    if value.device != x_t.device:
        raise ValueError(f"{name}: expected a tensor on {x_t.device} (like x_t), got {value.device}")
    return value.to(torch.float64)


def _sigma2_float(a_t: float, a_prev: float, eta: float) -> float:
    if eta == 0 or a_t == a_prev:
        return 0.0
    return eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def _conditions(kind: str, a_t, a_prev, eta: float):
    """(holds, message) pairs under which the step's square roots are real (the C++ kernels' verdicts);
    `holds` is a bool for floats, a bool tensor for tensors."""
    if kind == "ddpm":
        return [(a_t < 1, "alpha_t: ddpm_step needs alpha_t < 1 (the posterior is undefined at alpha_t = 1)"),
                (a_prev >= a_t, "alpha_prev: ddpm_step needs alpha_prev >= alpha_t (a step towards less noise)")]
    if eta == 0:
        return []
    sigma2 = (_sigma2(a_t, a_prev, eta) if isinstance(a_t, torch.Tensor) else _sigma2_float(a_t, a_prev, eta))
    return [(a_prev >= a_t, "alpha_prev: ddim_step with eta > 0 needs alpha_prev >= alpha_t "
                            "(sigma^2 would be negative)"),
            (1 - a_prev - sigma2 >= -1e-12,
             "eta: ddim_step needs 1 - alpha_prev - sigma^2 >= 0; eta is too large for this step")]


def _check_alphas(kind: str, a_t, a_prev, eta: float, x_t: torch.Tensor):
    """Value checks; returns both alphas as float64 [B] tensors on x_t's device. Tensors are copied to the host
    once ([2, B] floats: one sync on a GPU) and checked in Python, cheaper than a dozen tiny tensor ops."""
    tensors = [a for a in (a_t, a_prev) if isinstance(a, torch.Tensor)]
    if not tensors:
        _check_pair(kind, a_t, a_prev, eta, "")
    else:
        a_t, a_prev = (a if isinstance(a, torch.Tensor) else torch.full_like(tensors[0], a) for a in (a_t, a_prev))
        if not _is_fake(a_t) and not _is_fake(a_prev):
            for b, (t, p) in enumerate(zip(*torch.stack([a_t, a_prev]).tolist())):
                for name, v in (("alpha_t", t), ("alpha_prev", p)):
                    if not math.isfinite(v):
                        raise ValueError(f"{name}: expected finite values, found {v} at sample {b}")
                    if not 0.0 < v <= 1.0:
                        raise ValueError(f"{name}: expected cumulative alphas in (0, 1], got {v} at sample {b}")
                _check_pair(kind, t, p, eta, f" (sample {b})")
    batch = x_t.shape[0]
    if torch.compiler.is_compiling():  # traced graphs build their own
        return [a if isinstance(a, torch.Tensor) else _full(a, batch, x_t.device) for a in (a_t, a_prev)]
    inference = torch.is_inference_mode_enabled()  # inference tensors must not leak into autograd later
    return [a if isinstance(a, torch.Tensor) else _filled(a, batch, x_t.device, inference) for a in (a_t, a_prev)]


def _full(value: float, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), value, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=512)
def _filled(value: float, batch: int, device: torch.device, inference: bool) -> torch.Tensor:
    """The [B] float64 tensor of a float alpha, cached: a sampler loop reuses a handful of values, and for small
    steps building two tensors per call is a visible share of the time. The ops never write to them."""
    return torch.full((batch,), value, dtype=torch.float64, device=device)


def _check_pair(kind: str, a_t: float, a_prev: float, eta: float, where: str) -> None:
    for holds, message in _conditions(kind, a_t, a_prev, eta):
        if not holds:
            raise ValueError(message + where)


def _check_like(name: str, value, x_t: torch.Tensor) -> torch.Tensor:
    check_tensor(name, value, dtypes=(x_t.dtype,), device=x_t.device)
    check_shape(name, value, x_t.shape, "that of x_t")
    return value


def _validate(kind, x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, out):
    check_tensor("x_t", x_t, dtypes=_DTYPES)
    if x_t.dim() < 1:
        raise ValueError("x_t: expected a tensor with a batch dimension [B, ...], got a 0-D tensor")
    _check_like("eps", eps, x_t)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta: expected a finite float >= 0, got {eta!r}")
    a_t = _alphas_arg("alpha_t", alpha_t, x_t)
    a_prev = _alphas_arg("alpha_prev", alpha_prev, x_t)
    a_t, a_prev = _check_alphas(kind, a_t, a_prev, float(eta), x_t)
    if noise is not None:
        _check_like("noise", noise, x_t)
    if clip_x0 is not None:
        if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not clip_x0 > 0:
            raise ValueError(f"clip_x0: expected None or a positive float, got {clip_x0!r}")
    if (mask is None) != (known is None):
        given, missing = ("mask", "known") if known is None else ("known", "mask")
        raise ValueError(f"{missing}: {given} was given without {missing}; the blend needs both")
    if mask is not None:
        _check_like("known", known, x_t)
        if x_t.dim() != 4:
            raise ValueError(f"mask: blending needs 4-D x_t [B, C, H, W], got x_t of shape {tuple(x_t.shape)}")
        check_tensor("mask", mask, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
                     ndim=4, device=x_t.device)
        b, _, h, w = x_t.shape
        if mask.shape[0] not in (1, b) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (h, w):
            raise ValueError(f"mask: expected shape ({b} or 1, 1, {h}, {w}) (broadcast over channels), "
                             f"got {tuple(mask.shape)}")
    if out is not None:
        _check_like("out", out, x_t)
    return a_t, a_prev


def _sigma2(a_t, a_prev, eta):
    same = a_t == a_prev
    safe = torch.where(same, torch.full_like(a_t, 0.5), a_t)
    value = eta**2 * (1 - a_prev) / (1 - safe) * (1 - safe / a_prev)
    return torch.where(same | (torch.zeros_like(a_t) == eta), torch.zeros_like(a_t), value)


# ---------------------------------------------------------------------------------------------------------------
# public wrappers


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: float | torch.Tensor,
    alpha_prev: float | torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12), fused.

    x0 = (x_t − sqrt(1 − a_t)·eps) / sqrt(a_t), clamped to [−clip_x0, clip_x0] when clip_x0 is given;
    x_prev = sqrt(a_prev)·x0 + sqrt(1 − a_prev − σ²)·eps + σ·noise, σ = eta·sqrt((1 − a_prev)/(1 − a_t))·sqrt(1 − a_t/a_prev);
    with ``mask``/``known``: out = mask·known + (1 − mask)·x_prev.

    Args:
        x_t: [B, ...] float32/float16/bfloat16 (computed in float32) or float64 noisy sample, contiguous or
            channels_last.
        eps: predicted noise, like x_t.
        alpha_t, alpha_prev: cumulative alphas in (0, 1], floats or [B] tensors (one timestep per sample).
            With eta > 0, alpha_prev >= alpha_t is required; with eta = 0 any pair is valid (also inversion).
        eta: 0 is deterministic DDIM, 1 matches the DDPM posterior variance.
        noise: z, like x_t. When None and eta > 0 it is drawn with ``torch.randn_like(x_t)``.
        clip_x0: clamp bound of the predicted x0 (e.g. 1.0 for images in [−1, 1]).
        mask: [B or 1, 1, H, W] blend weight in [0, 1] (1 keeps ``known``); needs 4-D x_t and ``known``.
        known: content to keep where mask = 1 (already noised to a_prev's level), like x_t.
        out: write the result here (may be x_t itself, for an in-place step); returned.

    Differentiable in x_t, eps, noise, known and mask (not in the alphas).
    """
    a_t, a_prev = _validate("ddim", x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, out)
    if noise is None and eta > 0:
        noise = torch.randn_like(x_t)
    clip = None if clip_x0 is None else float(clip_x0)
    if out is not None:
        _OPS.ddim_step.out(x_t, eps, a_t, a_prev, float(eta), noise, clip, mask, known, out=out)
        return out
    return _OPS.ddim_step(x_t, eps, a_t, a_prev, float(eta), noise, clip, mask, known)


def ddpm_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_t: float | torch.Tensor,
    alpha_prev: float | torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step, a sample of the posterior q(x_prev | x_t, x0) (Ho et al. 2020, eq. 6-7), fused.

    With β = 1 − a_t/a_prev (cumulative alphas, so respaced schedules work too):
    mean = sqrt(a_prev)·β/(1 − a_t)·x0 + sqrt(1 − β)·(1 − a_prev)/(1 − a_t)·x_t,
    β̃ = (1 − a_prev)/(1 − a_t)·β, x_prev = mean + sqrt(β̃)·noise, x0 as in :func:`ddim_step`.
    Needs alpha_t < 1 and alpha_prev >= alpha_t. ``noise`` is drawn with ``torch.randn_like`` when None
    (pass zeros for the posterior mean). Other arguments as in :func:`ddim_step`.
    """
    a_t, a_prev = _validate("ddpm", x_t, eps, alpha_t, alpha_prev, 0.0, noise, clip_x0, mask, known, out)
    if noise is None:
        noise = torch.randn_like(x_t)
    clip = None if clip_x0 is None else float(clip_x0)
    if out is not None:
        _OPS.ddpm_step.out(x_t, eps, a_t, a_prev, noise, clip, mask, known, out=out)
        return out
    return _OPS.ddpm_step(x_t, eps, a_t, a_prev, noise, clip, mask, known)


# ---------------------------------------------------------------------------------------------------------------
# fake kernels (shapes/strides for torch.compile) and autograd


def _result_like(x_t: torch.Tensor) -> torch.Tensor:
    """The kernels write channels_last when x_t is channels_last (and not also contiguous), else contiguous."""
    channels_last = (x_t.dim() == 4 and not x_t.is_contiguous()
                     and x_t.is_contiguous(memory_format=torch.channels_last))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty_like(x_t, memory_format=fmt)


@torch.library.register_fake("oneformore::ddim_step")
def _ddim_step_fake(x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known):
    return _result_like(x_t)


@torch.library.register_fake("oneformore::ddpm_step")
def _ddpm_step_fake(x_t, eps, alpha_t, alpha_prev, noise, clip_x0, mask, known):
    return _result_like(x_t)


@torch.library.register_fake("oneformore::ddim_step.out")
def _ddim_step_out_fake(x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, *, out):
    return None


@torch.library.register_fake("oneformore::ddpm_step.out")
def _ddpm_step_out_fake(x_t, eps, alpha_t, alpha_prev, noise, clip_x0, mask, known, *, out):
    return None


def step_coefficients(kind: str, alpha_t: torch.Tensor, alpha_prev: torch.Tensor, eta: float = 0.0) -> dict:
    """Per-sample float64 coefficients of the affine step (the same decomposition as csrc/denoise/denoise.h):
    x0 = x_to_x0·x_t − eps_to_x0·eps (then clamped); prev = x0_coef·x0 + x_coef·x_t + eps_coef·eps + noise_coef·z."""
    a_t, a_prev = alpha_t.to(torch.float64), alpha_prev.to(torch.float64)
    c = {"x_to_x0": 1 / torch.sqrt(a_t), "eps_to_x0": torch.sqrt((1 - a_t).clamp_min(0)) / torch.sqrt(a_t)}
    if kind == "ddim":
        sigma2 = _sigma2(a_t, a_prev, eta).clamp_min(0)
        c.update(x0_coef=torch.sqrt(a_prev), x_coef=torch.zeros_like(a_t),
                 eps_coef=torch.sqrt((1 - a_prev - sigma2).clamp_min(0)), noise_coef=torch.sqrt(sigma2))
    else:
        beta = 1 - a_t / a_prev
        c.update(x0_coef=torch.sqrt(a_prev) * beta / (1 - a_t),
                 x_coef=torch.sqrt((1 - beta).clamp_min(0)) * (1 - a_prev) / (1 - a_t),
                 eps_coef=torch.zeros_like(a_t), noise_coef=torch.sqrt(((1 - a_prev) / (1 - a_t) * beta).clamp_min(0)))
    return c


def _setup(kind):
    def setup_context(ctx, inputs, output):
        if kind == "ddim":
            x_t, eps, a_t, a_prev, eta, noise, clip, mask, known = inputs
        else:
            (x_t, eps, a_t, a_prev, noise, clip, mask, known), eta = inputs, 0.0
        ctx.kind, ctx.eta, ctx.clip = kind, eta, clip
        ctx.has_noise, ctx.has_mask = noise is not None, mask is not None
        ctx.save_for_backward(x_t, eps, a_t, a_prev, noise, mask, known)

    return setup_context


def _backward(ctx, grad):
    x_t, eps, a_t, a_prev, noise, mask, known = ctx.saved_tensors
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    c = {k: v.reshape(shape) for k, v in step_coefficients(ctx.kind, a_t, a_prev, ctx.eta).items()}
    g = grad.to(torch.float64)
    g_prev = g * (1 - mask.to(torch.float64)) if ctx.has_mask else g
    if ctx.clip is not None:
        x0 = c["x_to_x0"] * x_t.to(torch.float64) - c["eps_to_x0"] * eps.to(torch.float64)
        inside = ((x0 >= -ctx.clip) & (x0 <= ctx.clip)).to(torch.float64)
    else:
        inside = 1.0
    grad_x = g_prev * (c["x0_coef"] * c["x_to_x0"] * inside + c["x_coef"])
    grad_eps = g_prev * (c["eps_coef"] - c["x0_coef"] * c["eps_to_x0"] * inside)
    grad_noise = (g_prev * c["noise_coef"]).to(noise.dtype) if ctx.has_noise else None
    grad_mask = grad_known = None
    if ctx.has_mask:
        grad_known = (g * mask.to(torch.float64)).to(known.dtype)
        mask_index = 7 if ctx.kind == "ddim" else 6
        if ctx.needs_input_grad[mask_index]:
            # d out / d m = known − x_prev: recompute the unblended step.
            prev = _unblended(ctx, x_t, eps, a_t, a_prev, noise).to(torch.float64)
            grad_mask = (g * (known.to(torch.float64) - prev)).sum(dim=1, keepdim=True)
            if mask.shape[0] == 1:
                grad_mask = grad_mask.sum(dim=0, keepdim=True)
            grad_mask = grad_mask.to(mask.dtype)
    grads = [grad_x.to(x_t.dtype), grad_eps.to(eps.dtype), None, None]
    if ctx.kind == "ddim":
        grads.append(None)  # eta
    return tuple(grads + [grad_noise, None, grad_mask, grad_known])


def _unblended(ctx, x_t, eps, a_t, a_prev, noise):
    if ctx.kind == "ddim":
        return _OPS.ddim_step(x_t, eps, a_t, a_prev, ctx.eta, noise, ctx.clip, None, None)
    return _OPS.ddpm_step(x_t, eps, a_t, a_prev, noise, ctx.clip, None, None)


torch.library.register_autograd("oneformore::ddim_step", _backward, setup_context=_setup("ddim"))
torch.library.register_autograd("oneformore::ddpm_step", _backward, setup_context=_setup("ddpm"))
