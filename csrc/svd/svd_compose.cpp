// ATen compositions of the svd family, registered for CPU (cpu/svd_cpu.cpp) and CUDA (cuda/svd_cuda.cu).
#include "svd/svd_compose.h"

#include <algorithm>

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

// One Brand update of (U, S) with a chunk A [c, d] of rows: the factorisation of M = [U·diag(S), Aᵀ].
// With C = UᵀAᵀ and the residual R = Aᵀ − U·C (orthogonalised twice: one Gram-Schmidt pass loses orthogonality
// in float32) written R = Q·Σ·Vᵀ, M = [U, Q]·K with the small core K = [[diag(S), C], [0, Σ·Vᵀ]], whose SVD
// (LAPACK/cuSOLVER, float64) rotates [U, Q] into the new basis. Returns the dropped energy.
double brand_update(at::Tensor& U, at::Tensor& S, const at::Tensor& A, int64_t max_rank) {
  const int64_t r = U.size(1);
  const int64_t c = A.size(0);
  const int64_t d = A.size(1);
  at::Tensor Ct;                                   // Cᵀ = A·U, [c, r]
  at::Tensor Rt;                                   // Rᵀ, [c, d]
  if (r > 0) {
    Ct = at::matmul(A, U);
    Rt = at::addmm(A, Ct, U.t(), 1, -1);
    at::Tensor again = at::matmul(Rt, U);
    Rt.addmm_(again, U.t(), 1, -1);
    Ct.add_(again);
  } else {
    Rt = A.contiguous();
  }
  // Rᵀ = Vr·diag(sig)·Qh, i.e. R = Qhᵀ·diag(sig)·Vrᵀ. Directions with negligible sig are noise: zeroed, so that
  // the basis [U, Q] stays orthonormal where it carries energy.
  auto [Vr, sig, Qh] = at::linalg_svd(Rt, /*full_matrices=*/false);
  Rt = at::Tensor();
  const int64_t p = sig.size(0);
  const double largest = std::max(S.numel() > 0 ? S.max().item<double>() : 0.0,
                                  p > 0 ? sig.max().item<double>() : 0.0);
  const double tol = negligible_singular_value(largest, A.scalar_type() == at::kDouble);
  at::Tensor keep = sig.gt(tol).to(sig.scalar_type());
  Qh.mul_(keep.unsqueeze(1));
  sig = sig.mul(keep);

  auto opts = A.options().dtype(at::kDouble);
  at::Tensor K = at::zeros({r + p, r + c}, opts);
  if (r > 0) {
    K.narrow(0, 0, r).narrow(1, 0, r).diagonal().copy_(S);
    K.narrow(0, 0, r).narrow(1, r, c).copy_(Ct.t());
  }
  K.narrow(0, r, p).narrow(1, r, c).copy_(sig.to(at::kDouble).unsqueeze(1) * Vr.t().to(at::kDouble));
  auto [UK, SK, VKh] = at::linalg_svd(K, /*full_matrices=*/false);
  (void)VKh;

  const int64_t k = std::min<int64_t>({max_rank, d, SK.size(0)});
  at::Tensor X = UK.narrow(1, 0, k).to(A.scalar_type());
  at::Tensor U_new = at::matmul(Qh.t(), X.narrow(0, r, p));
  if (r > 0) {
    U_new.addmm_(U, X.narrow(0, 0, r));
  }
  double dropped = 0.0;
  if (SK.size(0) > k) {
    dropped = SK.narrow(0, k, SK.size(0) - k).square().sum().item<double>();
  }
  U = U_new;
  S = SK.narrow(0, 0, k).to(A.scalar_type()).contiguous();
  return dropped;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> isvd_update(
    at::TensorList U, at::TensorList S, at::TensorList blocks, int64_t max_rank, int64_t chunk_rows) {
  check_layer_lists("isvd_update", U, "U", blocks);
  TORCH_CHECK(S.size() == blocks.size(), "oneformore::isvd_update: 'S' has ", S.size(), " tensor(s) but 'blocks' has ",
              blocks.size());
  OFM_CHECK_ARG(max_rank >= 1, "max_rank", "expected >= 1, got ", max_rank);
  OFM_CHECK_ARG(chunk_rows >= 1, "chunk_rows", "expected >= 1, got ", chunk_rows);
  const int64_t L = static_cast<int64_t>(blocks.size());
  std::vector<at::Tensor> U_out;
  std::vector<at::Tensor> S_out;
  U_out.reserve(L);
  S_out.reserve(L);
  at::Tensor energies = at::zeros({L, 2}, at::TensorOptions().dtype(at::kDouble));
  auto acc = energies.accessor<double, 2>();
  for (int64_t l = 0; l < L; ++l) {
    OFM_CHECK_ARG(S[l].dim() == 1 && S[l].size(0) == U[l].size(1) && S[l].scalar_type() == blocks[l].scalar_type() &&
                      S[l].device() == blocks[l].device(),
                  "S", "layer ", l, ": expected a 1-D ", blocks[l].scalar_type(), " tensor of ", U[l].size(1),
                  " values (one per column of U), got ", S[l].sizes(), " ", S[l].scalar_type());
    at::Tensor u = U[l].contiguous();
    at::Tensor s = S[l].contiguous();
    const at::Tensor& A = blocks[l];
    const double norm = at::linalg_vector_norm(A).item<double>();  // no float64 copy of the block
    acc[l][0] = norm * norm;
    for (int64_t start = 0; start < A.size(0); start += chunk_rows) {
      const int64_t c = std::min<int64_t>(chunk_rows, A.size(0) - start);
      acc[l][1] += brand_update(u, s, A.narrow(0, start, c), max_rank);
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
  return {U_out, S_out, energies.to(blocks.empty() ? at::Device(at::kCPU) : blocks[0].device())};
}

}  // namespace svd
}  // namespace ofm
