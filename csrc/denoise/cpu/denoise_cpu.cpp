// CPU kernels of ddim_step / ddpm_step: one pass over memory, at::parallel_for over elements, vectorised with
// at::vec (float16/bfloat16 are widened to float32 in registers). The batch is processed in per-sample spans,
// so the per-sample coefficients are loop constants and the inner loop has no branches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cpu_vec.h"
#include "denoise/denoise.h"
#include "denoise/denoise_host.h"

namespace oneformore {
namespace denoise {
namespace {

using cpu_vec::kBlock;
using cpu_vec::load2;
using cpu_vec::store2;
using cpu_vec::Vec;

enum MaskMode { kNoMask = 0, kMaskSpan = 1 };
constexpr int64_t kSpreadChunk = 1024;  // elements per spread NHWC mask chunk

struct SpanArgs {
  const StepCoeffs* c;
  float clip;
};

// One contiguous span of n elements of one sample; with kMaskSpan the mask values are m[0..n).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, bool kClip, bool kNoise, int kMask>
void run_span(const scalar_t* x, const scalar_t* e, const scalar_t* z, const scalar_t* k,
              const acc_type<scalar_t>* m, acc_type<scalar_t> /*unused*/, scalar_t* o, int64_t n, const SpanArgs& args) {
  // float64 (gradcheck, references) runs the scalar loop in double; everything else computes in float.
  constexpr bool kDouble = std::is_same_v<scalar_t, double>;
  using acc_t = acc_type<scalar_t>;
  const StepCoeffs& c = *args.c;
  const float lo = -args.clip, hi = args.clip;
  auto step = [&](auto xv, auto ev, auto zv, auto tag) {
    using T = decltype(tag);
    if constexpr (kClip) {
      auto clamp_fn = [&](T v) {
        if constexpr (std::is_floating_point_v<T>) {
          return std::min(std::max(v, T(lo)), T(hi));
        } else {
          return at::vec::clamp(v, Vec(lo), Vec(hi));
        }
      };
      return step_clipped<T>(xv, ev, zv, T(c.x_to_x0), T(c.eps_to_x0), T(c.x0_coef), T(c.x_coef), T(c.eps_coef),
                             T(c.noise_coef), clamp_fn);
    } else {
      return step_linear<T>(xv, ev, zv, T(c.x_lin), T(c.eps_lin), T(c.noise_coef));
    }
  };
  int64_t i = 0;
  if constexpr (!kDouble) {
  for (; i + kBlock <= n; i += kBlock) {
    Vec x0, x1, e0, e1, z0(0.f), z1(0.f);
    load2(x + i, x0, x1);
    load2(e + i, e0, e1);
    if constexpr (kNoise) load2(z + i, z0, z1);
    Vec r0 = step(x0, e0, z0, Vec()), r1 = step(x1, e1, z1, Vec());
    if constexpr (kMask != kNoMask) {
      Vec k0, k1;
      load2(k + i, k0, k1);
      Vec m0, m1;
      if constexpr (kMask == kMaskSpan) {
        m0 = Vec::loadu(m + i);  // acc_t is float on this path
        m1 = Vec::loadu(m + i + Vec::size());
      }
      r0 = blend<Vec>(r0, k0, m0);
      r1 = blend<Vec>(r1, k1, m1);
    }
    store2(o + i, r0, r1);
  }
  }
  for (; i < n; ++i) {
    const acc_t zv = kNoise ? static_cast<acc_t>(z[i]) : acc_t(0);
    acc_t r = step(static_cast<acc_t>(x[i]), static_cast<acc_t>(e[i]), zv, acc_t(0));
    if constexpr (kMask != kNoMask) {
      r = blend<acc_t>(r, static_cast<acc_t>(k[i]), m[i]);
    }
    o[i] = static_cast<scalar_t>(r);
  }
}

template <typename scalar_t, bool kClip, bool kNoise, bool kHasMask>
void run_all(const StepInputs& in, const std::vector<StepCoeffs>& coeffs, float clip, at::Tensor& out) {
  const scalar_t* x = in.x_t.const_data_ptr<scalar_t>();
  const scalar_t* e = in.eps.const_data_ptr<scalar_t>();
  const scalar_t* z = kNoise ? in.noise.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* k = kHasMask ? in.known.const_data_ptr<scalar_t>() : nullptr;
  using mask_t = acc_type<scalar_t>;
  const mask_t* m = kHasMask ? in.mask.const_data_ptr<mask_t>() : nullptr;
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t numel = in.x_t.numel(), per_sample = in.per_sample, pixels = in.pixels, channels = in.channels;
  const bool cl = in.channels_last;

  at::parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / per_sample;
      const int64_t span_end = std::min(end, (b + 1) * per_sample);
      const SpanArgs args{&coeffs[b], clip};
      if constexpr (!kHasMask) {
        run_span<scalar_t, kClip, kNoise, kNoMask>(x + i, e + i, kNoise ? z + i : nullptr, nullptr, nullptr,
                                                    mask_t(0), o + i, span_end - i, args);
        i = span_end;
      } else {
        const mask_t* m_b = m + b * in.mask_batch_stride;
        if (cl) {
          // NHWC: the mask value repeats over the C channels of a pixel. Spread it into a small buffer (L1) so
          // the vectorised span loop runs for any C instead of a scalar loop per pixel.
          mask_t spread[kSpreadChunk];
          while (i < span_end) {
            const int64_t r = i - b * per_sample;
            const int64_t n = std::min<int64_t>(span_end - i, kSpreadChunk);
            int64_t pixel = r / channels, c = r % channels;
            for (int64_t j = 0; j < n; ++j) {
              spread[j] = m_b[pixel];
              if (++c == channels) {
                c = 0;
                ++pixel;
              }
            }
            run_span<scalar_t, kClip, kNoise, kMaskSpan>(x + i, e + i, kNoise ? z + i : nullptr, k + i, spread,
                                                          mask_t(0), o + i, n, args);
            i += n;
          }
          continue;
        }
        // NCHW: within one channel plane the mask index moves with the element.
        while (i < span_end) {
          const int64_t r = i - b * per_sample;
          const int64_t n = std::min(span_end - i, pixels - r % pixels);
          run_span<scalar_t, kClip, kNoise, kMaskSpan>(x + i, e + i, kNoise ? z + i : nullptr, k + i,
                                                        m_b + r % pixels, mask_t(0), o + i, n, args);
          i += n;
        }
      }
    }
  });
}

std::vector<StepCoeffs> coefficients(const StepInputs& in, double eta, StepKind kind) {
  const double* at_ = in.alpha_t.const_data_ptr<double>();
  const double* ap = in.alpha_prev.const_data_ptr<double>();
  std::vector<StepCoeffs> out(in.batch);
  for (int64_t b = 0; b < in.batch; ++b) {
    const char* why = alphas_error(at_[b], ap[b], eta, kind == StepKind::kDdpm);
    TORCH_CHECK(why == nullptr, "oneformore: sample ", b, " (alpha_t=", at_[b], ", alpha_prev=", ap[b], "): ", why);
    out[b] = kind == StepKind::kDdpm ? ddpm_coeffs(at_[b], ap[b]) : ddim_coeffs(at_[b], ap[b], eta);
  }
  return out;
}

void step_cpu_into(const StepInputs& in, double eta, std::optional<double> clip, StepKind kind, at::Tensor& dst) {
  if (clip) OFM_CHECK_ARG(*clip > 0.0, "clip_x0", "expected a positive bound, got ", *clip);
  const auto coeffs = coefficients(in, eta, kind);
  const float clip_f = clip ? static_cast<float>(*clip) : 0.f;
  const bool has_noise = in.noise.defined(), has_mask = in.mask.defined();
  AT_DISPATCH_SWITCH(in.x_t.scalar_type(), "oneformore_denoise_step", OFM_DENOISE_DISPATCH_CASES([&] {
    auto go = [&](auto clip_tag, auto noise_tag, auto mask_tag) {
      run_all<scalar_t, decltype(clip_tag)::value, decltype(noise_tag)::value, decltype(mask_tag)::value>(
          in, coeffs, clip_f, dst);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (clip) {
      if (has_noise) {
        has_mask ? go(T{}, T{}, T{}) : go(T{}, T{}, F{});
      } else {
        has_mask ? go(T{}, F{}, T{}) : go(T{}, F{}, F{});
      }
    } else {
      if (has_noise) {
        has_mask ? go(F{}, T{}, T{}) : go(F{}, T{}, F{});
      } else {
        has_mask ? go(F{}, F{}, T{}) : go(F{}, F{}, F{});
      }
    }
  }));
}

void step_out(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                     const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                     std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                     const std::optional<at::Tensor>& known, StepKind kind, at::Tensor& out) {
  const StepInputs in = prepare_step(x_t, eps, alpha_t, alpha_prev, noise, mask, known);
  at::Tensor dst = output_for(in, out);
  step_cpu_into(in, eta, clip_x0, kind, dst);
  finish_out(dst, out);
}

at::Tensor ddim_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                         const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                         std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                         const std::optional<at::Tensor>& known) {
  const StepInputs in = prepare_step(x_t, eps, alpha_t, alpha_prev, noise, mask, known);
  at::Tensor out = at::empty_like(in.x_t);
  step_cpu_into(in, eta, clip_x0, StepKind::kDdim, out);
  return out;
}

void ddim_step_out_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                              const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                              std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                              const std::optional<at::Tensor>& known, at::Tensor& out) {
  step_out(x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, StepKind::kDdim, out);
}

at::Tensor ddpm_step_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                         const at::Tensor& alpha_prev, const std::optional<at::Tensor>& noise,
                         std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                         const std::optional<at::Tensor>& known) {
  const StepInputs in = prepare_step(x_t, eps, alpha_t, alpha_prev, noise, mask, known);
  at::Tensor out = at::empty_like(in.x_t);
  step_cpu_into(in, 0.0, clip_x0, StepKind::kDdpm, out);
  return out;
}

void ddpm_step_out_cpu(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                              const at::Tensor& alpha_prev, const std::optional<at::Tensor>& noise,
                              std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                              const std::optional<at::Tensor>& known, at::Tensor& out) {
  step_out(x_t, eps, alpha_t, alpha_prev, 0.0, noise, clip_x0, mask, known, StepKind::kDdpm, out);
}

}  // namespace
}  // namespace denoise
}  // namespace oneformore

TORCH_LIBRARY_IMPL(oneformore, CPU, m) {
  using namespace oneformore::denoise;
  m.impl("ddim_step", &ddim_step_cpu);
  m.impl("ddim_step.out", &ddim_step_out_cpu);
  m.impl("ddpm_step", &ddpm_step_cpu);
  m.impl("ddpm_step.out", &ddpm_step_out_cpu);
}
