// Schema of the gradient-projection op family.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(oneformore, m) {
  // In place, for every layer at once: grads[i] (viewed as [out, d]) <- G - G U (I - Q) U^T with U = bases[i]
  // [d, k] float32 and Q = scales[i] [k, k] (Q = 0 when scales is None).
  m.def("project_gradients_(Tensor(a!)[] grads, Tensor[] bases, Tensor[]? scales) -> ()");
}
