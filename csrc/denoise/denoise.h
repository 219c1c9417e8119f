// Math of the fused denoising steps, shared by the CPU and CUDA kernels.
//
// Both steps are written as one affine map of the inputs, with x0 as the only non-linear (clamped) term:
//   x0   = clamp(x_to_x0 * x_t - eps_to_x0 * eps, -clip, clip)
//   prev = x0_coef * x0 + x_coef * x_t + eps_coef * eps + noise_coef * z
//   out  = m * known + (1 - m) * prev                       (only when a mask is given)
// DDIM: x0_coef = sqrt(a_prev), x_coef = 0, eps_coef = sqrt(1 - a_prev - sigma^2), noise_coef = sigma.
// DDPM: the posterior q(x_prev | x_t, x0): x0_coef, x_coef from the posterior mean, noise_coef = sqrt(beta~).
// Coefficients are computed per sample in double (1 - a is ill-conditioned near a = 1) and applied in float.
#pragma once

#include <cmath>

#include "common/macros.h"

namespace oneformore {
namespace denoise {

struct StepCoeffs {
  float x_to_x0;     // 1 / sqrt(a_t)
  float eps_to_x0;   // sqrt(1 - a_t) / sqrt(a_t)
  float x0_coef;
  float x_coef;
  float eps_coef;
  float noise_coef;
  // Without clamping x0 folds into the other terms: prev = x_lin * x_t + eps_lin * eps + noise_coef * z.
  float x_lin;
  float eps_lin;
};

// Clamps a square-root argument that rounding pushed just below zero; callers validate real violations.
OFM_HOST_DEVICE double nonneg(double v) { return v > 0.0 ? v : 0.0; }

OFM_HOST_DEVICE void finish(StepCoeffs& c, double x_to_x0, double eps_to_x0, double x0_coef, double x_coef,
                            double eps_coef, double noise_coef) {
  c.x_to_x0 = static_cast<float>(x_to_x0);
  c.eps_to_x0 = static_cast<float>(eps_to_x0);
  c.x0_coef = static_cast<float>(x0_coef);
  c.x_coef = static_cast<float>(x_coef);
  c.eps_coef = static_cast<float>(eps_coef);
  c.noise_coef = static_cast<float>(noise_coef);
  c.x_lin = static_cast<float>(x0_coef * x_to_x0 + x_coef);
  c.eps_lin = static_cast<float>(eps_coef - x0_coef * eps_to_x0);
}

// sigma^2 of DDIM (Song et al. 2021, eq. 16): eta^2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev).
// Zero when eta = 0 or a_prev = a_t (which also covers a_t = a_prev = 1).
OFM_HOST_DEVICE double ddim_sigma2(double a_t, double a_prev, double eta) {
  if (eta == 0.0 || a_prev == a_t) return 0.0;
  return eta * eta * (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
}

OFM_HOST_DEVICE StepCoeffs ddim_coeffs(double a_t, double a_prev, double eta) {
  const double sigma2 = nonneg(ddim_sigma2(a_t, a_prev, eta));
  const double inv_sqrt_at = 1.0 / sqrt(a_t);
  StepCoeffs c;
  finish(c, inv_sqrt_at, sqrt(nonneg(1.0 - a_t)) * inv_sqrt_at, sqrt(a_prev), 0.0,
         sqrt(nonneg(1.0 - a_prev - sigma2)), sqrt(sigma2));
  return c;
}

// DDPM posterior (Ho et al. 2020, eq. 7) between cumulative alphas a_t < a_prev (any stride, so it also
// serves respaced schedules): beta = 1 - a_t / a_prev,
//   mean = sqrt(a_prev) * beta / (1 - a_t) * x0 + sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x_t,
//   var  = (1 - a_prev) / (1 - a_t) * beta.
OFM_HOST_DEVICE StepCoeffs ddpm_coeffs(double a_t, double a_prev) {
  const double beta = 1.0 - a_t / a_prev;
  const double one_minus_at = 1.0 - a_t;
  const double inv_sqrt_at = 1.0 / sqrt(a_t);
  StepCoeffs c;
  finish(c, inv_sqrt_at, sqrt(nonneg(one_minus_at)) * inv_sqrt_at, sqrt(a_prev) * beta / one_minus_at,
         sqrt(nonneg(1.0 - beta)) * (1.0 - a_prev) / one_minus_at, 0.0,
         sqrt(nonneg((1.0 - a_prev) / one_minus_at * beta)));
  return c;
}

// Why (a_t, a_prev) cannot be stepped between, or nullptr when it can. The Python wrappers give the same
// verdicts with argument names; the CPU kernel re-checks so that direct torch.ops calls fail clearly too.
OFM_HOST_DEVICE const char* alphas_error(double a_t, double a_prev, double eta, bool ddpm) {
  if (!(a_t > 0.0 && a_t <= 1.0)) return "alpha_t must lie in (0, 1]";
  if (!(a_prev > 0.0 && a_prev <= 1.0)) return "alpha_prev must lie in (0, 1]";
  if (ddpm) {
    if (!(a_t < 1.0)) return "ddpm_step needs alpha_t < 1 (the posterior is undefined at alpha_t = 1)";
    if (!(a_prev >= a_t)) return "ddpm_step needs alpha_prev >= alpha_t (a step towards less noise)";
    return nullptr;
  }
  if (!(eta >= 0.0)) return "eta must be >= 0";
  if (eta > 0.0 && !(a_prev >= a_t)) {
    return "ddim_step with eta > 0 needs alpha_prev >= alpha_t (sigma^2 would be negative)";
  }
  if (1.0 - a_prev - ddim_sigma2(a_t, a_prev, eta) < -1e-12) {
    return "ddim_step needs 1 - alpha_prev - sigma^2 >= 0 (eta too large for this step)";
  }
  return nullptr;
}

// One element. T is float here and in CUDA, at::vec::Vectorized<float> in the vectorised CPU loop, so both
// paths run the same expression; clamp_fn is std::fmin/fmax-like for the given T.
template <typename T, typename ClampFn>
OFM_HOST_DEVICE T step_clipped(T x, T e, T z, T x_to_x0, T eps_to_x0, T x0_coef, T x_coef, T eps_coef,
                               T noise_coef, ClampFn clamp_fn) {
  const T x0 = clamp_fn(x_to_x0 * x - eps_to_x0 * e);
  return x0_coef * x0 + x_coef * x + eps_coef * e + noise_coef * z;
}

template <typename T>
OFM_HOST_DEVICE T step_linear(T x, T e, T z, T x_lin, T eps_lin, T noise_coef) {
  return x_lin * x + eps_lin * e + noise_coef * z;
}

// Written as m * known + (1 - m) * prev, not prev + m * (known - prev), so that a binary mask keeps `known`
// bit-exact.
template <typename T>
OFM_HOST_DEVICE T blend(T prev, T known, T m) {
  return m * known + (T(1) - m) * prev;
}

}  // namespace denoise
}  // namespace oneformore
