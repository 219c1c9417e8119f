// Schema of the fused anomaly map (an inference op: it has no gradient).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(oneformore, m) {
  m.def(
      "anomaly_map(Tensor[] feats_in, Tensor[] feats_rec, int[] out_size, str distance, str fusion, "
      "float[]? weights, float sigma) -> Tensor");
}
