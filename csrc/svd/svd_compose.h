// The parts of the svd ops that are compositions of ATen calls (BLAS/LAPACK on CPU, cuBLAS/cuSOLVER on CUDA):
// the same code serves both dispatch keys, so the CPU tests check the algorithm the GPU runs.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace ofm {
namespace svd {

// Checks shared by every op: float32/float64 2-D tensors on one device, matching dims. `op` names the op.
void check_layer_lists(const char* op, at::TensorList first, const char* first_name, at::TensorList blocks);

// R = A − (A·U)·Uᵀ with one GEMM for A·U and one fused GEMM-with-accumulate (addmm, beta=1, alpha=−1).
at::Tensor residual_product(const at::Tensor& A, const at::Tensor& U);

void gram_update_(at::TensorList grams, at::TensorList blocks);

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> isvd_update(
    at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t max_rank, int64_t chunk_rows);

at::Tensor isvd_update_(at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t chunk_rows);

}  // namespace svd
}  // namespace ofm
