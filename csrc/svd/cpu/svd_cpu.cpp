// CPU kernels of the svd family. block_residual: one BLAS GEMM for A·U, one GEMM-accumulate for the residual,
// then one vectorised, parallel pass over A and R for both Frobenius energies (double accumulators).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "svd/svd.h"
#include "svd/svd_compose.h"

namespace {

using ofm::svd::accumulate_energy;

// Sums a² and r² over n contiguous values: float SIMD lanes for a short run, flushed into double every
// kFlush elements so precision does not depend on the block size.
template <typename scalar_t>
void energies_cpu(const scalar_t* a, const scalar_t* r, int64_t n, double* total, double* residual) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t kGrain = 1 << 15;
  constexpr int64_t kFlush = 1 << 10;
  const int64_t chunks = (n + kGrain - 1) / kGrain;
  std::vector<double> part_total(chunks, 0.0), part_residual(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kGrain;
      const int64_t end = std::min(n, begin + kGrain);
      double t = 0.0, q = 0.0;
      int64_t i = begin;
      while (i + Vec::size() <= end) {
        Vec va(0), vr(0);
        const int64_t stop = std::min(end, i + kFlush);
        for (; i + Vec::size() <= stop; i += Vec::size()) {
          const Vec x = Vec::loadu(a + i);
          const Vec y = Vec::loadu(r + i);
          va = at::vec::fmadd(x, x, va);
          vr = at::vec::fmadd(y, y, vr);
        }
        scalar_t la[Vec::size()], lr[Vec::size()];
        va.store(la);
        vr.store(lr);
        for (int j = 0; j < Vec::size(); ++j) {
          t += static_cast<double>(la[j]);
          q += static_cast<double>(lr[j]);
        }
      }
      for (; i < end; ++i) {
        accumulate_energy(t, q, a[i], r[i]);
      }
      part_total[c] = t;
      part_residual[c] = q;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    *total += part_total[c];
    *residual += part_residual[c];
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor> block_residual_cpu(at::TensorList blocks, at::TensorList bases) {
  ofm::svd::check_layer_lists("block_residual", bases, "bases", blocks);
  const int64_t L = static_cast<int64_t>(blocks.size());
  std::vector<at::Tensor> residuals;
  residuals.reserve(L);
  at::Tensor energies = at::zeros({L, 2}, at::TensorOptions().dtype(at::kDouble));
  double* e = energies.data_ptr<double>();
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor A = blocks[l].contiguous();
    at::Tensor R = ofm::svd::residual_product(A, bases[l].contiguous());
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "block_residual_cpu", [&] {
      energies_cpu<scalar_t>(A.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(), A.numel(), e + 2 * l,
                             e + 2 * l + 1);
    });
    residuals.push_back(R);
  }
  return {residuals, energies};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneformore, CPU, m) {
  m.impl("block_residual", &block_residual_cpu);
  m.impl("gram_update_", &ofm::svd::gram_update_);
  m.impl("isvd_update", &ofm::svd::isvd_update);
  m.impl("isvd_update_", &ofm::svd::isvd_update_);
}
