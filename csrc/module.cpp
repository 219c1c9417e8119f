// The Python module oneformore._C. Importing it runs the static TORCH_LIBRARY registrations of every op
// family in csrc/; the module itself only reports how the extension was built.
#include <torch/extension.h>

#include <string>

namespace {

bool cuda_compiled() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_arch_list() {
#if defined(WITH_CUDA) && defined(ONEFORMORE_CUDA_ARCHS)
  return ONEFORMORE_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "oneformore native kernels (ops are registered under torch.ops.oneformore)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled into this build");
  m.def("cuda_arch_list", &cuda_arch_list, "TORCH_CUDA_ARCH_LIST used for the CUDA kernels ('' without CUDA)");
}
