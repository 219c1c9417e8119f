// CUDA kernels of ddim_step / ddpm_step: one grid-stride kernel over the elements in memory order. Each block
// first computes the per-sample coefficients (double precision, from the shared header) into shared memory;
// batches too large for shared memory compute them per element instead.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
// Not ATen/cuda/CUDAContext.h: it pulls in cuSPARSE/cuBLAS headers that a minimal CUDA toolkit lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "denoise/denoise.h"
#include "denoise/denoise_host.h"

namespace oneformore {
namespace denoise {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxSharedSamples = 1024;  // 32 bytes each: 32 KiB of shared memory at most

struct KernelArgs {
  const double* alpha_t;
  const double* alpha_prev;
  const void* mask;  // float, or double for float64 inputs
  int64_t numel, batch, per_sample, channels, pixels, mask_batch_stride;
  double eta;
  float clip;
  bool ddpm, clip_x0, channels_last, shared_coeffs;
};

__device__ __forceinline__ StepCoeffs coeffs_of(const KernelArgs& a, int64_t b) {
  return a.ddpm ? ddpm_coeffs(a.alpha_t[b], a.alpha_prev[b]) : ddim_coeffs(a.alpha_t[b], a.alpha_prev[b], a.eta);
}

template <typename scalar_t>
__global__ void step_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ e,
                            const scalar_t* __restrict__ z, const scalar_t* __restrict__ k,
                            scalar_t* __restrict__ o, KernelArgs a) {
  extern __shared__ StepCoeffs shared[];
  if (a.shared_coeffs) {
    for (int64_t b = threadIdx.x; b < a.batch; b += blockDim.x) shared[b] = coeffs_of(a, b);
    __syncthreads();
  }
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;  // float64 stays float64
  const acc_t lo = -a.clip, hi = a.clip;
  auto clamp_fn = [lo, hi](acc_t v) { return v < lo ? lo : (v > hi ? hi : v); };
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel; i += stride) {
    const int64_t b = i / a.per_sample;
    const StepCoeffs c = a.shared_coeffs ? shared[b] : coeffs_of(a, b);
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t ev = static_cast<acc_t>(e[i]);
    const acc_t zv = z != nullptr ? static_cast<acc_t>(z[i]) : acc_t(0);
    acc_t r = a.clip_x0 ? step_clipped<acc_t>(xv, ev, zv, c.x_to_x0, c.eps_to_x0, c.x0_coef, c.x_coef, c.eps_coef,
                                              c.noise_coef, clamp_fn)
                        : step_linear<acc_t>(xv, ev, zv, c.x_lin, c.eps_lin, c.noise_coef);
    if (k != nullptr) {
      const int64_t r_in = i - b * a.per_sample;
      const int64_t pixel = a.channels_last ? r_in / a.channels : r_in % a.pixels;
      r = blend<acc_t>(r, static_cast<acc_t>(k[i]),
                       static_cast<const acc_t*>(a.mask)[b * a.mask_batch_stride + pixel]);
    }
    o[i] = static_cast<scalar_t>(r);
  }
}

void step_cuda_into(const StepInputs& in, double eta, std::optional<double> clip, StepKind kind, at::Tensor& dst) {
  if (clip) OFM_CHECK_ARG(*clip > 0.0, "clip_x0", "expected a positive bound, got ", *clip);
  const int64_t numel = in.x_t.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(in.x_t.device());
  KernelArgs a;
  a.alpha_t = in.alpha_t.const_data_ptr<double>();
  a.alpha_prev = in.alpha_prev.const_data_ptr<double>();
  a.mask = in.mask.defined() ? in.mask.const_data_ptr() : nullptr;
  a.numel = numel;
  a.batch = in.batch;
  a.per_sample = in.per_sample;
  a.channels = in.channels;
  a.pixels = in.pixels;
  a.mask_batch_stride = in.mask_batch_stride;
  a.eta = eta;
  a.clip = clip ? static_cast<float>(*clip) : 0.f;
  a.ddpm = kind == StepKind::kDdpm;
  a.clip_x0 = clip.has_value();
  a.channels_last = in.channels_last;
  a.shared_coeffs = in.batch <= kMaxSharedSamples;
  const size_t shared_bytes = a.shared_coeffs ? in.batch * sizeof(StepCoeffs) : 0;
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(in.x_t.scalar_type(), "oneformore_denoise_step_cuda", OFM_DENOISE_DISPATCH_CASES([&] {
    step_kernel<scalar_t><<<blocks, kThreads, shared_bytes, stream>>>(
        in.x_t.const_data_ptr<scalar_t>(), in.eps.const_data_ptr<scalar_t>(),
        in.noise.defined() ? in.noise.const_data_ptr<scalar_t>() : nullptr,
        in.known.defined() ? in.known.const_data_ptr<scalar_t>() : nullptr, dst.mutable_data_ptr<scalar_t>(), a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }));
}

at::Tensor step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                     const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                     std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                     const std::optional<at::Tensor>& known, StepKind kind) {
  const StepInputs in = prepare_step(x_t, eps, alpha_t, alpha_prev, noise, mask, known);
  at::Tensor out = at::empty_like(in.x_t);
  step_cuda_into(in, eta, clip_x0, kind, out);
  return out;
}

void step_out_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                          const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                          std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& known, StepKind kind, at::Tensor& out) {
  const StepInputs in = prepare_step(x_t, eps, alpha_t, alpha_prev, noise, mask, known);
  at::Tensor dst = output_for(in, out);
  step_cuda_into(in, eta, clip_x0, kind, dst);
  finish_out(dst, out);
}

at::Tensor ddim_step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                          const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                          std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& known) {
  return step_cuda(x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, StepKind::kDdim);
}

void ddim_step_out_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                               const at::Tensor& alpha_prev, double eta, const std::optional<at::Tensor>& noise,
                               std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& known, at::Tensor& out) {
  step_out_cuda(x_t, eps, alpha_t, alpha_prev, eta, noise, clip_x0, mask, known, StepKind::kDdim, out);
}

at::Tensor ddpm_step_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                          const at::Tensor& alpha_prev, const std::optional<at::Tensor>& noise,
                          std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& known) {
  return step_cuda(x_t, eps, alpha_t, alpha_prev, 0.0, noise, clip_x0, mask, known, StepKind::kDdpm);
}

void ddpm_step_out_cuda(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& alpha_t,
                               const at::Tensor& alpha_prev, const std::optional<at::Tensor>& noise,
                               std::optional<double> clip_x0, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& known, at::Tensor& out) {
  step_out_cuda(x_t, eps, alpha_t, alpha_prev, 0.0, noise, clip_x0, mask, known, StepKind::kDdpm, out);
}

}  // namespace
}  // namespace denoise
}  // namespace oneformore

TORCH_LIBRARY_IMPL(oneformore, CUDA, m) {
  using namespace oneformore::denoise;
  m.impl("ddim_step", &ddim_step_cuda);
  m.impl("ddim_step.out", &ddim_step_out_cuda);
  m.impl("ddpm_step", &ddpm_step_cuda);
  m.impl("ddpm_step.out", &ddpm_step_out_cuda);
}
