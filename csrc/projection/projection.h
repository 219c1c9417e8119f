// Gradient projection (GPM / TRGP), shared by the CPU and CUDA kernels.
//
// For one layer, G [rows, d] (a weight gradient viewed as [out, d]) and an orthonormal basis U [d, k]:
//   G <- G - (G U)(I - Q) U^T        (Q [k, k] the optional TRGP scale; without it, G <- G - (G U) U^T)
// computed as two thin products through P = G U [rows, k]; the d x d projector U U^T is never formed.
// Low-precision gradients are widened to float32 for the products and rounded once on the way back.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common/checks.h"
#include "common/macros.h"

namespace oneformore {
namespace projection {

// Floating-point work of projecting `rows` rows: two [rows x d x k] products, plus P Q with scales.
OFM_HOST_DEVICE double projection_flops(int64_t rows, int64_t d, int64_t k, bool scaled) {
  return 4.0 * double(rows) * double(d) * double(k) + (scaled ? 2.0 * double(rows) * double(k) * double(k) : 0.0);
}

// A row block re-reads (and BLAS re-packs) all of U (d x k): thinner blocks spend measurably more per row.
constexpr int64_t kMinBlockRows = 128;

// How many row blocks to cut a layer into: enough that no block costs much more than `target_flops`, rounded
// up to a multiple of `threads` (a large layer then splits evenly over the threads), and never blocks thinner
// than kMinBlockRows rows.
OFM_HOST_DEVICE int64_t row_blocks(int64_t rows, double flops, double target_flops, int64_t threads) {
  if (rows <= 0) return 0;
  int64_t by_cost = target_flops > 0.0 ? int64_t(flops / target_flops) + 1 : 1;
  if (by_cost > 1 && threads > 1) by_cost = (by_cost + threads - 1) / threads * threads;
  int64_t by_rows = (rows + kMinBlockRows - 1) / kMinBlockRows;
  int64_t blocks = by_cost < by_rows ? by_cost : by_rows;
  return blocks < 1 ? 1 : blocks;
}

// Views a gradient as the [out, d] matrix the basis acts on (conv weights flattened like F.unfold).
inline at::Tensor as_matrix(const at::Tensor& grad) {
  return grad.view({grad.size(0), grad.numel() / grad.size(0)});
}

// G_rows <- G_rows - G_rows U (I - Q) U^T, in place, float32 arithmetic whatever G's dtype.
// g_rows may be a row block (a view) of a gradient; it must have unit column stride.
inline void project_rows_(const at::Tensor& g_rows, const at::Tensor& u, const std::optional<at::Tensor>& q) {
  const bool widen = g_rows.scalar_type() != at::kFloat;
  at::Tensor g32 = widen ? g_rows.to(at::kFloat) : g_rows;
  at::Tensor p = at::mm(g32, u);                     // [rows, k]: G's coordinates in the old subspace
  if (q.has_value()) p = at::addmm(p, p, *q, 1, -1); // P (I - Q): TRGP lets a Q-share of them through
  g32.addmm_(p, u.t(), 1, -1);                       // G -= P U^T
  if (widen) g_rows.copy_(g32);
}

// Argument checks for callers that go straight to torch.ops.oneformore.project_gradients_
// (the Python wrapper gives the same checks first, plus the NaN/Inf check on the bases).
inline void check_arguments(at::TensorList grads, at::TensorList bases, const std::optional<at::TensorList>& scales) {
  OFM_CHECK_ARG(grads.size() == bases.size(), "bases", "expected one basis per gradient (", grads.size(),
                "), got ", bases.size());
  if (scales.has_value()) {
    OFM_CHECK_ARG(scales->size() == grads.size(), "scales", "expected one scale matrix per gradient (",
                  grads.size(), "), got ", scales->size());
  }
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    const at::Tensor& u = bases[i];
    const std::string gi = "grads[" + std::to_string(i) + "]";
    const std::string ui = "bases[" + std::to_string(i) + "]";
    OFM_CHECK_ARG(g.dim() >= 1 && g.size(0) > 0, gi, "expected a weight gradient with at least one row, got shape ",
                  g.sizes());
    auto st = g.scalar_type();
    OFM_CHECK_ARG(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, gi,
                  "expected dtype float32, float16 or bfloat16, got ", st);
    OFM_CHECK_ARG(u.dim() == 2, ui, "expected a 2-D basis [d, k], got shape ", u.sizes());
    OFM_CHECK_ARG(u.scalar_type() == at::kFloat, ui, "expected dtype float32, got ", u.scalar_type());
    OFM_CHECK_ARG(u.device() == g.device(), ui, "expected a tensor on ", g.device(), " (like ", gi, "), got ",
                  u.device());
    OFM_CHECK_ARG(g.device() == grads[0].device(), gi, "expected a tensor on ", grads[0].device(),
                  " (like grads[0]), got ", g.device());
    const int64_t d = g.numel() / g.size(0);
    OFM_CHECK_ARG(u.size(0) == d, ui, "expected ", d, " rows (", gi, " viewed as [", g.size(0), ", ", d,
                  "]), got shape ", u.sizes());
    OFM_CHECK_ARG(u.size(1) <= d, ui, "expected k <= d = ", d, " columns, got ", u.size(1));
    if (scales.has_value()) {
      const at::Tensor& q = (*scales)[i];
      const std::string qi = "scales[" + std::to_string(i) + "]";
      OFM_CHECK_ARG(q.dim() == 2 && q.size(0) == u.size(1) && q.size(1) == u.size(1), qi, "expected shape [",
                    u.size(1), ", ", u.size(1), "] (k of ", ui, "), got ", q.sizes());
      OFM_CHECK_ARG(q.scalar_type() == at::kFloat, qi, "expected dtype float32, got ", q.scalar_type());
      OFM_CHECK_ARG(q.device() == g.device(), qi, "expected a tensor on ", g.device(), ", got ", q.device());
    }
  }
}

}  // namespace projection
}  // namespace oneformore
