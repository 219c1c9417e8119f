// ATen compositions of the svd family, registered for CPU (cpu/svd_cpu.cpp) and CUDA (cuda/svd_cuda.cu).
#include "svd/svd_compose.h"

#include <algorithm>
#include <limits>

#include "common/checks.h"
#include "svd/svd.h"

namespace ofm {
namespace svd {

void check_layer_lists(const char* op, at::TensorList first, const char* first_name, at::TensorList blocks) {
  TORCH_CHECK(first.size() == blocks.size(), "oneformore::", op, ": '", first_name, "' has ", first.size(),
              " tensor(s) but 'blocks' has ", blocks.size(), " (one per layer expected)");
  for (size_t l = 0; l < blocks.size(); ++l) {
    const auto& a = blocks[l];
    const auto& f = first[l];
    OFM_CHECK_ARG(a.dim() == 2, "blocks", "layer ", l, ": expected a 2-D [n, d] tensor, got ", a.sizes());
    OFM_CHECK_ARG(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, "blocks", "layer ", l,
                  ": expected float32 or float64, got ", a.scalar_type());
    OFM_CHECK_ARG(f.scalar_type() == a.scalar_type(), first_name, "layer ", l, ": expected dtype ",
                  a.scalar_type(), " (like blocks), got ", f.scalar_type());
    OFM_CHECK_ARG(f.device() == a.device(), first_name, "layer ", l, ": expected device ", a.device(),
                  " (like blocks), got ", f.device());
    OFM_CHECK_ARG(f.dim() == 2 && f.size(0) == a.size(1), first_name, "layer ", l, ": expected [", a.size(1),
                  ", k] (d from blocks), got ", f.sizes());
  }
}

at::Tensor residual_product(const at::Tensor& A, const at::Tensor& U) {
  if (U.size(1) == 0) {
    return A.clone(at::MemoryFormat::Contiguous);
  }
  return at::addmm(A, at::matmul(A, U), U.t(), /*beta=*/1, /*alpha=*/-1).contiguous();
}

void gram_update_(at::TensorList grams, at::TensorList blocks) {
  check_layer_lists("gram_update_", grams, "grams", blocks);
  for (size_t l = 0; l < blocks.size(); ++l) {
    OFM_CHECK_ARG(grams[l].size(0) == grams[l].size(1), "grams", "layer ", l, ": expected a square [d, d] Gram, got ",
                  grams[l].sizes());
    // The Gram is symmetric; one GEMM (BLAS has no SYRK entry in ATen) is still a single pass over the block.
    grams[l].addmm_(blocks[l].t(), blocks[l]);
  }
}

namespace {

// ‖x‖²_F of a 2-D x, in row slices of about 64K values: ATen's cascade sum of squares is accurate to float32
// rounding (linalg_vector_norm in float32 is not: 3e-4 relative on a 512×2304 block), and the slices keep the
// squared temporary small next to the factorisation; the slice sums accumulate in double on the device.
double energy(const at::Tensor& x) {
  if (x.numel() == 0) {
    return 0.0;
  }
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, x.size(1)));
  at::Tensor total = at::zeros({}, x.options().dtype(at::kDouble));
  for (int64_t start = 0; start < x.size(0); start += step) {
    total.add_(at::square(x.narrow(0, start, std::min(step, x.size(0) - start))).sum());
  }
  return total.item<double>();
}

// Eigendecomposition of a PSD Gram scaled to a unit diagonal maximum first: activations are small numbers and
// their Grams' small eigenvalues (σ⁴-sized) sit close to the float32 underflow range, where the eigensolver's
// iterations could produce slow denormals. (Occasional multi-second calls seen on the shared CPU persisted after
// this change and coincide with machine load; the scaling is kept as a numerical safeguard.)
std::tuple<at::Tensor, at::Tensor> scaled_eigh(const at::Tensor& gram) {
  const double scale = gram.numel() > 0 ? gram.diagonal().max().item<double>() : 0.0;
  if (!(scale > 0.0)) {
    return at::linalg_eigh(gram);
  }
  auto [values, vectors] = at::linalg_eigh(gram / scale);
  return {values * scale, vectors};
}

// The small-matrix half of one Brand update: the new factorisation is U_new = U·X_top + R·Y (R = Rtᵀ, the
// chunk's residual [d, c]), with k columns and singular values S_new.
struct BrandStep {
  at::Tensor Rt;     // Rᵀ, [c, d]
  at::Tensor X_top;  // [r, k]
  at::Tensor Y;      // [c, k]
  at::Tensor S_new;  // [k]
  int64_t k;
  double dropped;  // energy of the residual directions and trailing eigenvalues left out
};

// One Brand update of (U, S) with a chunk A [c, d] of rows: the factorisation of M = [U·diag(S), Aᵀ].
// With C = UᵀAᵀ and the residual R = Aᵀ − U·C (orthogonalised twice: one Gram-Schmidt pass loses orthogonality
// in float32), R = Q·diag(sig)·Vrᵀ comes from the eigendecomposition of the small c×c Gram RᵀR, and
// M = [U, Q]·K with the small core K = [[diag(S), C], [0, diag(sig)·Vrᵀ]]. The eigendecomposition of K·Kᵀ
// ([r + c]², LAPACK syevd / cuSOLVER) rotates [U, Q] into the new basis. Only GEMMs touch d-sized data;
// Q is never formed (U_new = U·X₁ + R·(Vr·diag(1/sig)·X₂)). Symmetric eigensolvers are used instead of SVDs
// because they are several times faster on these sizes. They run in the blocks' dtype: in float32 the squared
// core resolves σ down to ~3e-4·σ_max, i.e. every direction holding more than 1e-7 of the energy, which is all
// an energy-threshold basis can use; float64 blocks get a float64 core.
// Directions of R below the Gram's precision, and trailing eigenvalues beyond max_rank, are dropped; their
// energy is returned. Dropped slots stay as zero columns with S = 0, so the output shape depends only on shapes.
BrandStep brand_step(const at::Tensor& U, const at::Tensor& S, const at::Tensor& A, int64_t max_rank) {
  const int64_t r = U.size(1);
  const int64_t c = A.size(0);
  const int64_t d = A.size(1);
  const bool is_double = A.scalar_type() == at::kDouble;
  at::Tensor Ct;  // Cᵀ = A·U, [c, r]
  at::Tensor Rt;  // Rᵀ, [c, d]
  if (r > 0) {
    Ct = at::matmul(A, U);
    Rt = at::addmm(A, Ct, U.t(), 1, -1);
    at::Tensor again = at::matmul(Rt, U);
    Rt.addmm_(again, U.t(), 1, -1);
    Ct.add_(again);
  } else {
    Rt = A.contiguous();
  }
  const double residual_energy = energy(Rt);

  // RᵀR = Vr·diag(sig²)·Vrᵀ (descending). Its eigenvectors are accurate down to sig ≈ sqrt(eps)·sig_max of the
  // Gram's dtype; directions below that are dropped (their Q column would not be orthonormal).
  auto [lam_r, Vr] = scaled_eigh(at::matmul(Rt, Rt.t()));
  lam_r = lam_r.flip(0).clamp_min(0.0);
  Vr = Vr.flip(1);
  const double lam_r_max = c > 0 ? lam_r[0].item<double>() : 0.0;
  at::Tensor keep = lam_r.gt(negligible_eigenvalue(lam_r_max, is_double)).to(A.scalar_type());
  at::Tensor sig = lam_r.sqrt().mul(keep);
  const double kept_residual = sig.to(at::kDouble).square().sum().item<double>();
  at::Tensor inv_sig = keep / sig.clamp_min(is_double ? 1e-300 : 1e-30);

  at::Tensor K = at::zeros({r + c, r + c}, A.options());
  if (r > 0) {
    K.narrow(0, 0, r).narrow(1, 0, r).diagonal().copy_(S);
    K.narrow(0, 0, r).narrow(1, r, c).copy_(Ct.t());
  }
  K.narrow(0, r, c).narrow(1, r, c).copy_(sig.unsqueeze(1) * Vr.t());
  auto [lam, X] = scaled_eigh(at::matmul(K, K.t()));
  lam = lam.flip(0).clamp_min(0.0);
  X = X.flip(1);

  const int64_t k = std::min<int64_t>({max_rank, d, r + c});
  const double lam_max = lam[0].item<double>();
  // Below the core's precision an eigenvector mixes in the zeroed directions: such slots are emptied too.
  at::Tensor live = lam.narrow(0, 0, k).gt(negligible_eigenvalue(lam_max, is_double)).to(A.scalar_type());
  at::Tensor Xk = X.narrow(1, 0, k) * live.unsqueeze(0);
  at::Tensor kept = lam.narrow(0, 0, k) * live;
  double dropped = std::max(0.0, residual_energy - kept_residual);
  dropped += (lam.narrow(0, 0, k) - kept).to(at::kDouble).sum().item<double>();
  if (lam.size(0) > k) {
    dropped += lam.narrow(0, k, lam.size(0) - k).to(at::kDouble).sum().item<double>();
  }
  // Y = Vr·diag(1/sig)·X₂, so that R·Y = Q·X₂
  at::Tensor Y = at::matmul(Vr * inv_sig.unsqueeze(0), Xk.narrow(0, r, c));
  return {Rt, Xk.narrow(0, 0, r), Y, kept.sqrt(), k, dropped};
}

// Functional form: a new U [d, k] (the input U is still needed by the caller).
double brand_update(at::Tensor& U, at::Tensor& S, const at::Tensor& A, int64_t max_rank) {
  BrandStep step = brand_step(U, S, A, max_rank);
  at::Tensor U_new = at::matmul(step.Rt.t(), step.Y);
  if (U.size(1) > 0) {
    U_new.addmm_(U, step.X_top);
  }
  U = U_new;
  S = step.S_new.contiguous();
  return step.dropped;
}

// Rows of U per panel of the in-place update: the panel's product is the only d-independent temporary.
constexpr int64_t kPanelRows = 512;

// In-place form on a fixed-width factorisation: U [d, R], S [R], the live columns a prefix (S > 0, descending),
// the rest zero. Row i of U_new reads only row i of U and column i of R, so U is overwritten panel by panel:
// no second [d, R] buffer.
double brand_update_(at::Tensor& U, at::Tensor& S, const at::Tensor& A) {
  const int64_t width = U.size(1);
  const int64_t r = S.gt(0).sum().item<int64_t>();
  BrandStep step = brand_step(U.narrow(1, 0, r), S.narrow(0, 0, r), A, width);
  const int64_t d = U.size(0);
  for (int64_t p = 0; p < d; p += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, d - p);
    at::Tensor panel = U.narrow(0, p, rows);
    at::Tensor next = at::matmul(step.Rt.narrow(1, p, rows).t(), step.Y);
    if (r > 0) {
      next.addmm_(panel.narrow(1, 0, r), step.X_top);
    }
    panel.narrow(1, 0, step.k).copy_(next);
  }
  S.narrow(0, 0, step.k).copy_(step.S_new);
  // k >= r: the columns past k were zero and stay zero
  return step.dropped;
}

// Checks both isvd ops share: the lists line up, one S per U, and chunk_rows.
void check_isvd_lists(const char* op, at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t chunk_rows) {
  check_layer_lists(op, U, "U", blocks);
  TORCH_CHECK(S.size() == blocks.size(), "oneformore::", op, ": 'S' has ", S.size(), " tensor(s) but 'blocks' has ",
              blocks.size());
  OFM_CHECK_ARG(chunk_rows >= 1, "chunk_rows", "expected >= 1, got ", chunk_rows);
}

// S[l]: one value per column of U[l], in the block's dtype and on its device (contiguous too when written in place).
void check_singular_values(int64_t l, const at::Tensor& S, const at::Tensor& U, const at::Tensor& A, bool in_place) {
  OFM_CHECK_ARG(S.dim() == 1 && S.size(0) == U.size(1) && S.scalar_type() == A.scalar_type() &&
                    S.device() == A.device() && (!in_place || S.is_contiguous()),
                "S", "layer ", l, ": expected a ", in_place ? "contiguous " : "", "1-D ", A.scalar_type(),
                " tensor of ", U.size(1), " values (one per column of U), got ", S.sizes(), " ", S.scalar_type());
}

// The [L, 2] energies on the blocks' device.
at::Tensor on_blocks_device(const at::Tensor& energies, at::TensorList blocks) {
  return energies.to(blocks.empty() ? at::Device(at::kCPU) : blocks[0].device());
}

}  // namespace

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> isvd_update(
    at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t max_rank, int64_t chunk_rows) {
  check_isvd_lists("isvd_update", U, S, blocks, chunk_rows);
  OFM_CHECK_ARG(max_rank >= 1, "max_rank", "expected >= 1, got ", max_rank);
  const int64_t L = static_cast<int64_t>(blocks.size());
  std::vector<at::Tensor> U_out;
  std::vector<at::Tensor> S_out;
  U_out.reserve(L);
  S_out.reserve(L);
  at::Tensor energies = at::zeros({L, 2}, at::TensorOptions().dtype(at::kDouble));
  auto acc = energies.accessor<double, 2>();
  for (int64_t l = 0; l < L; ++l) {
    check_singular_values(l, S[l], U[l], blocks[l], /*in_place=*/false);
    at::Tensor u = U[l].contiguous();
    at::Tensor s = S[l].contiguous();
    const at::Tensor& A = blocks[l];
    for (int64_t start = 0; start < A.size(0); start += chunk_rows) {
      const int64_t c = std::min<int64_t>(chunk_rows, A.size(0) - start);
      const at::Tensor chunk = A.narrow(0, start, c);
      acc[l][0] += energy(chunk);
      acc[l][1] += brand_update(u, s, chunk, max_rank);
    }
    if (A.size(0) == 0 && u.size(1) > max_rank) {  // an empty block still honours the cap
      acc[l][1] += s.narrow(0, max_rank, s.size(0) - max_rank).to(at::kDouble).square().sum().item<double>();
      u = u.narrow(1, 0, max_rank).contiguous();
      s = s.narrow(0, 0, max_rank).contiguous();
    }
    // Outputs must not alias inputs (an empty block leaves the factorisation unchanged).
    U_out.push_back(u.is_same(U[l]) || u.data_ptr() == U[l].data_ptr() ? u.clone() : u);
    S_out.push_back(s.is_same(S[l]) || s.data_ptr() == S[l].data_ptr() ? s.clone() : s);
  }
  return {U_out, S_out, on_blocks_device(energies, blocks)};
}

at::Tensor isvd_update_(at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t chunk_rows) {
  check_isvd_lists("isvd_update_", U, S, blocks, chunk_rows);
  const int64_t L = static_cast<int64_t>(blocks.size());
  at::Tensor energies = at::zeros({L, 2}, at::TensorOptions().dtype(at::kDouble));
  auto acc = energies.accessor<double, 2>();
  for (int64_t l = 0; l < L; ++l) {
    OFM_CHECK_ARG(U[l].is_contiguous() && U[l].size(1) >= 1 && U[l].size(1) <= U[l].size(0), "U", "layer ", l,
                  ": expected a contiguous [d, R] factor with 1 <= R <= d, got ", U[l].sizes());
    check_singular_values(l, S[l], U[l], blocks[l], /*in_place=*/true);
    at::Tensor u = U[l];
    at::Tensor s = S[l];
    const at::Tensor& A = blocks[l];
    for (int64_t start = 0; start < A.size(0); start += chunk_rows) {
      const at::Tensor chunk = A.narrow(0, start, std::min<int64_t>(chunk_rows, A.size(0) - start));
      acc[l][0] += energy(chunk);
      acc[l][1] += brand_update_(u, s, chunk);
    }
  }
  return on_blocks_device(energies, blocks);
}

}  // namespace svd
}  // namespace ofm
