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

// Eigenvalues of a Gram (the residual's, or the core's K·Kᵀ) below this are at the level of the rounding noise
// of the Gram's dtype (float32: 1e-6 of the largest, i.e. σ < 1e-3·σ_max; float64: 1e-14): their eigenvectors
// are not reliable, so their directions are dropped from the basis and their energy is reported as dropped.
OFM_HOST_DEVICE double negligible_eigenvalue(double largest, bool is_double) {
  return largest * (is_double ? 1e-14 : 1e-6);
}

}  // namespace svd
}  // namespace ofm
