// Math shared by the CPU and CUDA kernels of the svd family (streaming subspace bases).
//
// The heavy products (A·U, AᵀA, the QR/SVD of small matrices) go to BLAS/LAPACK (CPU) or cuBLAS/cuSOLVER (CUDA)
// through ATen; what is written here is the elementwise part both backends share: the Frobenius energies of a
// block and of its residual, accumulated in double so that long streams do not lose the small residual energy.
#pragma once

#include "common/macros.h"

namespace ofm {
namespace svd {

// Adds a² to `total` and r² to `residual` (a: activation entry, r: the same entry of A − A·U·Uᵀ).
template <typename T>
OFM_HOST_DEVICE void accumulate_energy(double& total, double& residual, T a, T r) {
  const double da = static_cast<double>(a);
  const double dr = static_cast<double>(r);
  total += da * da;
  residual += dr * dr;
}

// Relative threshold under which a singular value of a residual chunk is numerical noise: its direction is
// dropped from the update basis (its energy is below float32 rounding of the largest one).
OFM_HOST_DEVICE double negligible_singular_value(double largest, bool is_double) {
  return largest * (is_double ? 1e-13 : 1e-6);
}

}  // namespace svd
}  // namespace ofm
