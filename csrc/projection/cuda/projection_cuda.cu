// CUDA kernel of project_gradients_: a C++ host loop over the layers that issues, per layer, the two thin
// cuBLAS products of projection.h (P = G U, G -= P (I - Q) U^T; float32 arithmetic) on the current stream,
// with no host synchronisation and no Python per layer. Not a single grouped kernel: each layer is 2-3 gemm
// launches, which is launch-bound only for very small layers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "projection/projection.h"

namespace oneformore {
namespace projection {
namespace {

void project_gradients_cuda(at::TensorList grads, at::TensorList bases, std::optional<at::TensorList> scales) {
  check_arguments(grads, bases, scales);
  if (grads.empty()) return;
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (bases[i].size(1) == 0 || grads[i].numel() == 0) continue;
    const bool copy = !grads[i].is_contiguous();
    at::Tensor mat = as_matrix(copy ? grads[i].contiguous() : grads[i]);
    std::optional<at::Tensor> q;
    if (scales.has_value()) q = (*scales)[i].contiguous();
    project_rows_(mat, bases[i], q);
    if (copy) grads[i].copy_(mat.view(grads[i].sizes()));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(oneformore, CUDA, m) {
  m.impl("project_gradients_", &project_gradients_cuda);
}

}  // namespace projection
}  // namespace oneformore
