// CUDA kernel of project_gradients_: the layers are projected by grouped launches, one kernel per phase for all
// layers together (P = G U; P <- P - P Q with scales; G <- G - P U^T), each block computing one 64x64 output tile
// of one layer's product in float32 (grouped_tiles.h maps blocks to layers). A layer whose projection is large
// enough to fill the GPU by itself goes to the library GEMM instead (projection.h's project_rows_: cuBLAS through
// ATen), which is faster than a hand-written tile kernel there and whose per-launch cost is nothing next to its
// work. ONEFORMORE_PROJECTION_CUDA_SCHEDULE=grouped | library forces one path for every layer (tests, benchmarks).
// Under CUDA-graph capture every layer takes the library path: the grouped launch copies its problem list from a
// host buffer that is recycled once the call returns, which a replayed graph would read again.
#include <ATen/ATen.h>
// Not ATen/cuda/CUDAContext.h: it pulls in cuSPARSE/cuBLAS headers that a minimal CUDA toolkit lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "projection/grouped_tiles.h"
#include "projection/projection.h"

namespace oneformore {
namespace projection {
namespace {

constexpr int kThreads = 256;  // 16 x 16 threads, each owning a 4 x 4 block of the 64 x 64 tile
// Above this many flops (a few thousand 64x64 tiles' worth) one layer's products occupy the whole GPU.
constexpr double kLibraryMinFlops = 4.0e9;

// One product of the group: C [m, n] = C0 + alpha * A [m, kdim] * B, with B(r, col) = b[r * ldb + col], or
// b[col * ldb + r] when the kernel reads B transposed. A and C are row-major with leading dimensions lda, ldc;
// C0 (null: 0) has C's layout and may be C itself (each element is read and written by one thread).
struct Problem {
  int64_t m, n, kdim;
  const void* a;
  const float* b;
  const void* c0;
  void* c;
  int64_t lda, ldb, ldc;
};

template <typename TA, typename TC, bool kTransB>
__global__ void __launch_bounds__(kThreads)
grouped_gemm_kernel(const int64_t* __restrict__ first, const Problem* __restrict__ problems, int64_t count,
                    float alpha) {
  __shared__ float a_tile[kTileK][kTileM + 4];  // padded: the k-major stores hit fewer banks at once
  __shared__ float b_tile[kTileK][kTileN + 4];
  const int64_t tile = blockIdx.x;
  const int64_t owner = owning_problem(first, count, tile);
  const Problem p = problems[owner];
  const int64_t local = tile - first[owner];
  const int64_t tiles_n = (p.n + kTileN - 1) / kTileN;
  const int64_t row0 = local / tiles_n * kTileM, col0 = local % tiles_n * kTileN;
  const TA* a = static_cast<const TA*>(p.a);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.kdim; k0 += kTileK) {
    for (int i = tid; i < kTileM * kTileK; i += kThreads) {  // consecutive threads walk along A's rows
      const int r = i / kTileK, kk = i % kTileK;
      const int64_t gr = row0 + r, gk = k0 + kk;
      a_tile[kk][r] = gr < p.m && gk < p.kdim ? static_cast<float>(a[gr * p.lda + gk]) : 0.f;
    }
    for (int i = tid; i < kTileK * kTileN; i += kThreads) {  // and along B's memory order
      const int c = kTransB ? i / kTileK : i % kTileN, kk = kTransB ? i % kTileK : i / kTileN;
      const int64_t gc = col0 + c, gk = k0 + kk;
      const bool inside = gc < p.n && gk < p.kdim;
      b_tile[kk][c] = inside ? p.b[kTransB ? gc * p.ldb + gk : gk * p.ldb + gc] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

  TC* c = static_cast<TC*>(p.c);
  const TC* c0 = static_cast<const TC*>(p.c0);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx + 16 * j;
      if (col >= p.n) continue;
      float v = alpha * acc[i][j];
      if (c0 != nullptr) v += static_cast<float>(c0[r * p.ldc + col]);
      c[r * p.ldc + col] = static_cast<TC>(v);  // low-precision gradients are rounded once, here
    }
  }
}

// Copies the problem list (with its first-tile numbers) to the device and launches one kernel for all of it.
template <typename TA, typename TC, bool kTransB>
void launch_group(const std::vector<Problem>& problems, float alpha, const at::Device& device) {
  if (problems.empty()) return;
  const int64_t count = static_cast<int64_t>(problems.size());
  const int64_t head = count * static_cast<int64_t>(sizeof(int64_t));
  at::Tensor host = at::empty({head + count * static_cast<int64_t>(sizeof(Problem))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* first = reinterpret_cast<int64_t*>(host.data_ptr());
  int64_t tiles = 0;
  for (int64_t i = 0; i < count; ++i) {
    first[i] = tiles;
    tiles += tiles_of(problems[i].m, problems[i].n);
  }
  std::memcpy(host.data_ptr<uint8_t>() + head, problems.data(), problems.size() * sizeof(Problem));
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "oneformore: project_gradients_: ", tiles,
              " output tiles exceed one grouped launch");
  // Asynchronous from pinned memory on the current stream; both buffers outlive the copy and the kernel
  // through the caching allocators' stream bookkeeping.
  at::Tensor blob = host.to(at::TensorOptions().device(device), /*non_blocking=*/true);
  const uint8_t* base = blob.const_data_ptr<uint8_t>();
  grouped_gemm_kernel<TA, TC, kTransB><<<static_cast<unsigned>(tiles), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const int64_t*>(base), reinterpret_cast<const Problem*>(base + head), count, alpha);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct Layer {
  at::Tensor g;                 // contiguous [rows, d] view of the gradient (a copy if it was not contiguous)
  at::Tensor u;                 // contiguous [d, k]
  std::optional<at::Tensor> q;  // contiguous [k, k]
  float* p = nullptr;           // [rows, k] workspace: P = G U
  float* w = nullptr;           // [rows, k] workspace: P - P Q = P (I - Q) (scales only)
};

template <typename TG>
void project_grouped_as(const std::vector<Layer*>& layers, bool scaled, const at::Device& device) {
  std::vector<Problem> coordinates, corrections, updates;
  for (Layer* l : layers) {
    const int64_t rows = l->g.size(0), d = l->g.size(1), k = l->u.size(1);
    const float* u = l->u.const_data_ptr<float>();
    coordinates.push_back({rows, k, d, l->g.const_data_ptr(), u, nullptr, l->p, d, k, k});
    if (scaled) corrections.push_back({rows, k, k, l->p, l->q->const_data_ptr<float>(), l->p, l->w, k, k, k});
    const float* kept = scaled ? l->w : l->p;
    updates.push_back({rows, d, k, kept, u, l->g.data_ptr(), l->g.data_ptr(), k, k, d});
  }
  launch_group<TG, float, false>(coordinates, 1.f, device);  // P = G U
  launch_group<float, float, false>(corrections, -1.f, device);  // W = P - P Q
  launch_group<float, TG, true>(updates, -1.f, device);  // G = G - W U^T
}

enum class Schedule { kAuto, kGrouped, kLibrary };

Schedule schedule_from_env() {
  const char* v = std::getenv("ONEFORMORE_PROJECTION_CUDA_SCHEDULE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Schedule::kAuto;
  if (std::strcmp(v, "grouped") == 0) return Schedule::kGrouped;
  TORCH_CHECK(std::strcmp(v, "library") == 0,
              "oneformore: ONEFORMORE_PROJECTION_CUDA_SCHEDULE: expected auto, grouped or library, got '", v, "'");
  return Schedule::kLibrary;
}

void project_gradients_cuda(at::TensorList grads, at::TensorList bases, std::optional<at::TensorList> scales) {
  check_arguments(grads, bases, scales);
  if (grads.empty()) return;
  const at::Device device = grads[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &capture));
  const Schedule schedule = capture != cudaStreamCaptureStatusNone ? Schedule::kLibrary : schedule_from_env();
  const bool scaled = scales.has_value();

  std::vector<Layer> layers(grads.size());
  std::vector<Layer*> by_dtype[3];  // float32, float16, bfloat16
  int64_t workspace = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (bases[i].size(1) == 0 || grads[i].numel() == 0) continue;
    Layer& l = layers[i];
    l.g = as_matrix(grads[i].contiguous());
    if (scaled) l.q = (*scales)[i].contiguous();
    const int64_t rows = l.g.size(0), d = l.g.size(1), k = bases[i].size(1);
    const bool library = schedule == Schedule::kLibrary ||
                         (schedule == Schedule::kAuto && projection_flops(rows, d, k, scaled) >= kLibraryMinFlops);
    if (library) {
      project_rows_(l.g, bases[i], l.q);
      continue;
    }
    l.u = bases[i].contiguous();
    const auto st = l.g.scalar_type();
    by_dtype[st == at::kFloat ? 0 : (st == at::kHalf ? 1 : 2)].push_back(&l);
    workspace += rows * k * (scaled ? 2 : 1);
  }
  if (workspace > 0) {
    at::Tensor buffer = at::empty({workspace}, grads[0].options().dtype(at::kFloat));
    float* next = buffer.data_ptr<float>();
    for (auto& group : by_dtype)
      for (Layer* l : group) {
        const int64_t n = l->g.size(0) * l->u.size(1);
        l->p = next;
        next += n;
        if (scaled) {
          l->w = next;
          next += n;
        }
      }
    project_grouped_as<float>(by_dtype[0], scaled, device);
    project_grouped_as<c10::Half>(by_dtype[1], scaled, device);
    project_grouped_as<c10::BFloat16>(by_dtype[2], scaled, device);
  }
  for (size_t i = 0; i < grads.size(); ++i)
    if (layers[i].g.defined() && !grads[i].is_contiguous()) grads[i].copy_(layers[i].g.view(grads[i].sizes()));
}

}  // namespace

TORCH_LIBRARY_IMPL(oneformore, CUDA, m) {
  m.impl("project_gradients_", &project_gradients_cuda);
}

}  // namespace projection
}  // namespace oneformore
