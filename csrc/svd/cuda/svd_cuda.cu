// CUDA kernels of the svd family. block_residual: cuBLAS (through ATen) for A·U and the residual, then one
// grid-stride reduction kernel for both Frobenius energies (double accumulators, one atomic per block).
// gram_update_, isvd_update and isvd_update_ are ATen compositions (cuBLAS/cuSOLVER) shared with the CPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "svd/svd.h"
#include "svd/svd_compose.h"

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t>
__global__ void energies_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ r, int64_t n,
                                double* __restrict__ out) {
  double total = 0.0, residual = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    ofm::svd::accumulate_energy(total, residual, a[i], r[i]);
  }
  __shared__ double shared_total[kThreads / 32];
  __shared__ double shared_residual[kThreads / 32];
  total = warp_sum(total);
  residual = warp_sum(residual);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    shared_total[warp] = total;
    shared_residual[warp] = residual;
  }
  __syncthreads();
  if (warp == 0) {
    total = lane < kThreads / 32 ? shared_total[lane] : 0.0;
    residual = lane < kThreads / 32 ? shared_residual[lane] : 0.0;
    total = warp_sum(total);
    residual = warp_sum(residual);
    if (lane == 0) {
      atomicAdd(out, total);
      atomicAdd(out + 1, residual);
    }
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor> block_residual_cuda(at::TensorList blocks, at::TensorList bases) {
  ofm::svd::check_layer_lists("block_residual", bases, "bases", blocks);
  const int64_t L = static_cast<int64_t>(blocks.size());
  std::vector<at::Tensor> residuals;
  residuals.reserve(L);
  if (L == 0) {
    return {residuals, at::zeros({0, 2}, at::TensorOptions().dtype(at::kDouble))};
  }
  const c10::cuda::CUDAGuard guard(blocks[0].device());
  at::Tensor energies = at::zeros({L, 2}, blocks[0].options().dtype(at::kDouble));
  // (ATen/cuda/CUDAContext.h would pull in cuSPARSE headers the build does not need)
  auto stream = c10::cuda::getCurrentCUDAStream();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, blocks[0].get_device()));
  const int max_blocks = std::max(1, sms) * 8;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor A = blocks[l].contiguous();
    at::Tensor R = ofm::svd::residual_product(A, bases[l].contiguous());
    const int64_t n = A.numel();
    if (n > 0) {
      const int grid = static_cast<int>(std::min<int64_t>(max_blocks, (n + kThreads - 1) / kThreads));
      AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "block_residual_cuda", [&] {
        energies_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
            A.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(), n, energies.data_ptr<double>() + 2 * l);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    residuals.push_back(R);
  }
  return {residuals, energies};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneformore, CUDA, m) {
  m.impl("block_residual", &block_residual_cuda);
  m.impl("gram_update_", &ofm::svd::gram_update_);
  m.impl("isvd_update", &ofm::svd::isvd_update);
  m.impl("isvd_update_", &ofm::svd::isvd_update_);
}
