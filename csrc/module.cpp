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

// The SIMD level the CPU kernels were compiled for (setup.py's ONEFORMORE_CPU_BASELINE), and whether this CPU
// has it: a build made on an AVX-512 machine stops with an illegal instruction elsewhere, so the Python side
// checks this first and says how to rebuild.
std::string cpu_simd() {
#ifdef ONEFORMORE_CPU_SIMD
  return ONEFORMORE_CPU_SIMD;
#else
  return "default";
#endif
}

bool cpu_simd_supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const std::string simd = cpu_simd();
  if (simd == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  }
  if (simd == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
#endif
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "oneformore native kernels (ops are registered under torch.ops.oneformore)";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled into this build");
  m.def("cuda_arch_list", &cuda_arch_list, "TORCH_CUDA_ARCH_LIST used for the CUDA kernels ('' without CUDA)");
  m.def("cpu_simd", &cpu_simd, "SIMD level of the CPU kernels: avx512, avx2 or default");
  m.def("cpu_simd_supported", &cpu_simd_supported, "True when this CPU runs the compiled SIMD level");
}
