// CUDA kernels of anomaly_map: per scale a grid-stride kernel reduces over channels into the small distance map
// (adjacent threads read adjacent pixels, so NCHW loads coalesce) and a second one accumulates its bilinear
// resize into the output; the Gaussian blur runs as two grid-stride 1-D passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
// Not ATen/cuda/CUDAContext.h: it pulls in cuSPARSE/cuBLAS headers that a minimal CUDA toolkit lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "anomaly_map/anomaly_map.h"
#include "anomaly_map/anomaly_map_host.h"

namespace oneformore {
namespace anomaly_map {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * 8));
}

template <typename scalar_t>
__global__ void distance_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, float* dist,
                                int64_t batch, int64_t channels, int64_t pixels, bool channels_last, int kind) {
  const int64_t n = batch * pixels;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bi = i / pixels, p = i % pixels;
    float ss = 0.f, dot = 0.f, na = 0.f, nb = 0.f;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t off = channels_last ? i * channels + c : (bi * channels + c) * pixels + p;
      const float av = static_cast<float>(a[off]), bv = static_cast<float>(b[off]);
      ss += (av - bv) * (av - bv);
      dot += av * bv;
      na += av * av;
      nb += bv * bv;
    }
    dist[i] = finish_distance(kind, ss, dot, na, nb);
  }
}

__global__ void accumulate_kernel(const float* __restrict__ dist, float* __restrict__ acc, int64_t batch, int h,
                                  int w, int height, int width, float weight) {
  const int64_t n = batch * height * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int x = static_cast<int>(i % width);
    const int y = static_cast<int>((i / width) % height);
    const int64_t bi = i / (static_cast<int64_t>(width) * height);
    const Tap ty = align_corners_tap(y, h, height), tx = align_corners_tap(x, w, width);
    const float* plane = dist + bi * h * w;
    const float top = lerp_tap(plane + static_cast<int64_t>(ty.i0) * w, tx);
    const float bottom = lerp_tap(plane + static_cast<int64_t>(ty.i1) * w, tx);
    acc[i] += weight * (top + ty.w1 * (bottom - top));
  }
}

// One 1-D Gaussian pass along rows (horizontal) or columns (vertical), reflect padding.
__global__ void blur_kernel(const float* __restrict__ src, float* __restrict__ dst, const float* __restrict__ k,
                            int radius, int64_t batch, int height, int width, bool vertical) {
  const int64_t n = batch * height * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int x = static_cast<int>(i % width);
    const int y = static_cast<int>((i / width) % height);
    const float* plane = src + (i / (static_cast<int64_t>(width) * height)) * height * width;
    float sum = 0.f;
    for (int j = -radius; j <= radius; ++j) {
      const float v = vertical ? plane[static_cast<int64_t>(reflect_index(y + j, height)) * width + x]
                               : plane[static_cast<int64_t>(y) * width + reflect_index(x + j, width)];
      sum += k[j + radius] * v;
    }
    dst[i] = sum;
  }
}

at::Tensor anomaly_map_cuda(at::TensorList feats_in, at::TensorList feats_rec, at::IntArrayRef out_size,
                            c10::string_view distance, c10::string_view fusion,
                            std::optional<at::ArrayRef<double>> weights, double sigma) {
  OFM_CHECK_ARG(std::isfinite(sigma) && sigma >= 0.0, "sigma", "expected a finite value >= 0, got ", sigma);
  const Plan plan = make_plan(feats_in, feats_rec, out_size, std::string(distance), std::string(fusion), weights);
  const c10::cuda::CUDAGuard guard(feats_in[0].device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = feats_in[0].options().dtype(at::kFloat);
  at::Tensor out = at::zeros({plan.batch, 1, plan.height, plan.width}, opts);
  const int64_t n_out = out.numel();
  if (n_out == 0) return out;
  for (const Scale& s : plan.scales) {
    const int64_t channels = s.a.size(1), h = s.a.size(2), w = s.a.size(3);
    at::Tensor dist = at::empty({plan.batch, h, w}, opts);
    AT_DISPATCH_SWITCH(s.a.scalar_type(), "oneformore_anomaly_map_cuda", OFM_ANOMALY_DISPATCH_CASES([&] {
      distance_kernel<scalar_t><<<blocks_for(dist.numel()), kThreads, 0, stream>>>(
          s.a.const_data_ptr<scalar_t>(), s.b.const_data_ptr<scalar_t>(), dist.mutable_data_ptr<float>(),
          plan.batch, channels, h * w, s.channels_last, plan.distance);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }));
    accumulate_kernel<<<blocks_for(n_out), kThreads, 0, stream>>>(
        dist.const_data_ptr<float>(), out.mutable_data_ptr<float>(), plan.batch, static_cast<int>(h),
        static_cast<int>(w), static_cast<int>(plan.height), static_cast<int>(plan.width), s.weight);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (sigma > 0.0) {
    const std::vector<float> k = gaussian_weights(sigma);
    const at::Tensor kernel = at::tensor(k, at::TensorOptions().dtype(at::kFloat)).to(out.device());
    const int radius = (static_cast<int>(k.size()) - 1) / 2;
    at::Tensor tmp = at::empty_like(out);
    for (bool vertical : {false, true}) {
      const at::Tensor& src = vertical ? tmp : out;
      at::Tensor& dst = vertical ? out : tmp;
      blur_kernel<<<blocks_for(n_out), kThreads, 0, stream>>>(
          src.const_data_ptr<float>(), dst.mutable_data_ptr<float>(), kernel.const_data_ptr<float>(), radius,
          plan.batch, static_cast<int>(plan.height), static_cast<int>(plan.width), vertical);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return out;
}

}  // namespace
}  // namespace anomaly_map
}  // namespace oneformore

TORCH_LIBRARY_IMPL(oneformore, CUDA, m) {
  m.impl("anomaly_map", &oneformore::anomaly_map::anomaly_map_cuda);
}
