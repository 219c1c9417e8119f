// Host-side preparation shared by the CPU and CUDA entry points of the denoising steps: argument checks and
// the memory layout the kernels iterate in.
//
// The kernels walk every tensor in memory order with one flat index. That is valid when all element-wise
// inputs and the output have the same dense strides; for 4-D tensors we use channels_last when x_t is
// channels_last and contiguous otherwise, and convert any input that differs (a copy only in that case).
// The batch dimension is outermost in both layouts, so element i belongs to sample i / (numel / B).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Optional.h>

#include <optional>

#include "common/checks.h"

// The element types of the kernels: float32, float16/bfloat16 computed in float32, and float64 computed in
// float64 (for gradcheck and float64 pipelines; not vectorised).
#define OFM_DENOISE_DISPATCH_CASES(...)                 \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Double, __VA_ARGS__)

namespace oneformore {
namespace denoise {

enum class StepKind { kDdim, kDdpm };

struct StepInputs {
  at::Tensor x_t, eps, noise, known, mask;  // noise/known/mask undefined when absent
  at::Tensor alpha_t, alpha_prev;           // float64 [B] on the device of x_t
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
  bool channels_last = false;
  int64_t batch = 1, per_sample = 1, channels = 1, pixels = 1;  // pixels = H * W (4-D), else per_sample
  int64_t mask_batch_stride = 0;                                // 0 when the mask is shared by the batch
};

inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.strides() == b.strides();
}

inline StepInputs prepare_step(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                               const at::Tensor& alpha_prev, const std::optional<at::Tensor>& noise,
                               const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& known) {
  OFM_CHECK_ARG(x_t.dim() >= 1, "x_t", "expected a tensor with a batch dimension, got a scalar");
  OFM_CHECK_ARG(at::isFloatingType(x_t.scalar_type()), "x_t", "expected float32, float16, bfloat16 or float64, got ",
                x_t.scalar_type());
  auto check_like = [&](const at::Tensor& t, const char* name) {
    OFM_CHECK_ARG(t.sizes() == x_t.sizes(), name, "expected shape ", x_t.sizes(), " (that of x_t), got ", t.sizes());
    OFM_CHECK_ARG(t.scalar_type() == x_t.scalar_type(), name, "expected dtype ", x_t.scalar_type(),
                  " (that of x_t), got ", t.scalar_type());
    OFM_CHECK_ARG(t.device() == x_t.device(), name, "expected device ", x_t.device(), ", got ", t.device());
  };
  check_like(eps, "eps");
  if (noise) check_like(*noise, "noise");
  OFM_CHECK_ARG(mask.has_value() == known.has_value(), mask ? "known" : "mask",
                "mask and known must be given together");
  if (known) check_like(*known, "known");

  StepInputs in;
  in.batch = x_t.size(0);
  in.per_sample = in.batch > 0 ? x_t.numel() / in.batch : 0;
  in.pixels = in.per_sample;
  in.channels_last = x_t.dim() == 4 && !x_t.is_contiguous() && x_t.is_contiguous(at::MemoryFormat::ChannelsLast);
  in.format = in.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  in.x_t = x_t.contiguous(in.format);
  in.eps = eps.contiguous(in.format);
  if (noise) in.noise = noise->contiguous(in.format);
  if (known) in.known = known->contiguous(in.format);

  for (const auto* a : {&alpha_t, &alpha_prev}) {
    const char* name = a == &alpha_t ? "alpha_t" : "alpha_prev";
    OFM_CHECK_ARG(a->dim() == 1 && a->size(0) == in.batch, name, "expected shape [", in.batch,
                  "] (one value per sample), got ", a->sizes());
    OFM_CHECK_ARG(at::isFloatingType(a->scalar_type()), name, "expected a floating tensor, got ", a->scalar_type());
    OFM_CHECK_ARG(a->device() == x_t.device(), name, "expected device ", x_t.device(), ", got ", a->device());
  }
  in.alpha_t = alpha_t.to(at::kDouble).contiguous();
  in.alpha_prev = alpha_prev.to(at::kDouble).contiguous();

  if (mask) {
    const at::Tensor& m = *mask;
    OFM_CHECK_ARG(x_t.dim() == 4, "mask", "needs 4-D x_t [B, C, H, W], got x_t of shape ", x_t.sizes());
    OFM_CHECK_ARG(m.dim() == 4 && (m.size(0) == in.batch || m.size(0) == 1) && m.size(1) == 1 &&
                      m.size(2) == x_t.size(2) && m.size(3) == x_t.size(3),
                  "mask", "expected shape [", in.batch, " or 1, 1, ", x_t.size(2), ", ", x_t.size(3), "], got ",
                  m.sizes());
    OFM_CHECK_ARG(at::isFloatingType(m.scalar_type()), "mask", "expected a floating tensor, got ", m.scalar_type());
    OFM_CHECK_ARG(m.device() == x_t.device(), "mask", "expected device ", x_t.device(), ", got ", m.device());
    // [Bm, 1, H, W]: the same memory in both layouts; in the compute type (float64 only for float64 x_t).
    in.mask = m.to(x_t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
    in.channels = x_t.size(1);
    in.pixels = x_t.size(2) * x_t.size(3);
    in.mask_batch_stride = m.size(0) == 1 ? 0 : in.pixels;
  }
  return in;
}

// The tensor the kernel writes: `out` itself when it already has the working layout, else a scratch tensor
// that finish_out copies back.
inline at::Tensor output_for(const StepInputs& in, const at::Tensor& out) {
  OFM_CHECK_ARG(out.sizes() == in.x_t.sizes(), "out", "expected shape ", in.x_t.sizes(), ", got ", out.sizes());
  OFM_CHECK_ARG(out.scalar_type() == in.x_t.scalar_type(), "out", "expected dtype ", in.x_t.scalar_type(), ", got ",
                out.scalar_type());
  OFM_CHECK_ARG(out.device() == in.x_t.device(), "out", "expected device ", in.x_t.device(), ", got ", out.device());
  return same_layout(out, in.x_t) ? out : at::empty_like(in.x_t);
}

inline void finish_out(const at::Tensor& written, at::Tensor& out) {
  if (!written.is_same(out)) out.copy_(written);
}

}  // namespace denoise
}  // namespace oneformore
