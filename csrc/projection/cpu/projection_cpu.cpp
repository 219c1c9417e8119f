// CPU kernel of project_gradients_: every layer's gradient is cut into row blocks, the threads take the blocks
// longest first as they become free, and each thread projects its blocks with single-threaded BLAS products.
// A block is G[r0:r1] of one layer: P = G_blk U, then G_blk -= P U^T while G_blk is still in cache, so each
// gradient makes one trip through memory. Small layers run side by side instead of each one splitting a BLAS
// call over the threads, which is where a per-layer loop loses most of its time on many small layers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "projection/projection.h"

namespace oneformore {
namespace projection {
namespace {

struct Block {
  size_t layer;
  int64_t row0, rows;
  double flops;
};

// "layers" (one layer after another, each product threaded inside BLAS) is kept for comparison only.
bool schedule_by_layers() {
  const char* v = std::getenv("ONEFORMORE_PROJECTION_CPU_SCHEDULE");
  return v != nullptr && std::strcmp(v, "layers") == 0;
}

void project_gradients_cpu(at::TensorList grads, at::TensorList bases, std::optional<at::TensorList> scales) {
  check_arguments(grads, bases, scales);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const size_t n = grads.size();
  // Gradients that cannot be viewed as [out, d] (non-contiguous) are projected in a contiguous copy.
  std::vector<at::Tensor> mats(n);
  std::vector<std::optional<at::Tensor>> qs(n);
  std::vector<Block> blocks;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (bases[i].size(1) == 0 || grads[i].numel() == 0) continue;
    mats[i] = as_matrix(grads[i].contiguous());
    if (scales.has_value()) qs[i] = (*scales)[i].contiguous();
    total += projection_flops(mats[i].size(0), mats[i].size(1), bases[i].size(1), scales.has_value());
  }
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());

  if (schedule_by_layers() || threads == 1) {
    for (size_t i = 0; i < n; ++i)
      if (mats[i].defined()) project_rows_(mats[i], bases[i], qs[i]);
  } else {
    // Blocks of at most ~1/(2 threads) of the work balance well under list scheduling; larger blocks run the
    // products more efficiently (a thin block re-packs all of U for few rows).
    const double target = total / double(threads * 2);
    for (size_t i = 0; i < n; ++i) {
      if (!mats[i].defined()) continue;
      const int64_t rows = mats[i].size(0), d = mats[i].size(1), k = bases[i].size(1);
      const int64_t parts = row_blocks(rows, projection_flops(rows, d, k, scales.has_value()), target, threads);
      const int64_t step = (rows + parts - 1) / parts;
      for (int64_t r0 = 0; r0 < rows; r0 += step) {
        const int64_t r = std::min(step, rows - r0);
        blocks.push_back({i, r0, r, projection_flops(r, d, k, scales.has_value())});
      }
    }
    // Longest-processing-time-first list scheduling: blocks sorted by cost, each thread takes the next one
    // when it is free, so a thread slowed down (another process on its core) simply takes fewer blocks.
    std::sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.flops > b.flops; });
    std::atomic<size_t> next{0};
    // Inside the parallel region ATen runs each product single-threaded (no nested oversubscription).
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      // Worker threads do not inherit the caller's dispatch state: skip autograd for the inner products.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (size_t j = next++; j < blocks.size(); j = next++) {
        const Block& b = blocks[j];
        project_rows_(mats[b.layer].narrow(0, b.row0, b.rows), bases[b.layer], qs[b.layer]);
      }
    });
  }
  for (size_t i = 0; i < n; ++i)
    if (mats[i].defined() && !grads[i].is_contiguous()) grads[i].copy_(mats[i].view(grads[i].sizes()));
}

}  // namespace

TORCH_LIBRARY_IMPL(oneformore, CPU, m) {
  m.impl("project_gradients_", &project_gradients_cpu);
}

}  // namespace projection
}  // namespace oneformore
