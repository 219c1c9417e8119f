// Operator schemas of the svd family: the fused pieces of the streaming (iterative) subspace builder.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(oneformore, m) {
  // Per layer l: residuals[l] = blocks[l] − (blocks[l]·bases[l])·bases[l]ᵀ and
  // energies[l] = (‖blocks[l]‖²_F, ‖residuals[l]‖²_F) in float64. blocks[l]: [n_l, d_l]; bases[l]: [d_l, k_l].
  m.def("block_residual(Tensor[] blocks, Tensor[] bases) -> (Tensor[] residuals, Tensor energies)");
  // Per layer l, in place: grams[l] += blocks[l]ᵀ·blocks[l] (the exact streaming Gram; one call for all layers).
  m.def("gram_update_(Tensor(a!)[] grams, Tensor[] blocks) -> ()");
  // Per layer l: the rank-min(max_rank, d, r + n) factorisation (U_out, S_out) of [U·diag(S), blocksᵀ]
  // (incremental block SVD, chunk_rows rows at a time) and energies[l] = (‖block‖²_F, energy dropped by the
  // truncation to max_rank) in float64.
  m.def(
      "isvd_update(Tensor[] U, Tensor[] S, Tensor[] blocks, int max_rank, int chunk_rows) -> "
      "(Tensor[] U_out, Tensor[] S_out, Tensor energies)");
  // The same update in place on fixed-width factors U[l] [d, R], S[l] [R] (live columns a prefix with S > 0,
  // the rest zero; R is the rank cap): U is overwritten row panel by row panel, so no second [d, R] buffer.
  m.def("isvd_update_(Tensor(a!)[] U, Tensor(b!)[] S, Tensor[] blocks, int chunk_rows) -> Tensor energies");
}
