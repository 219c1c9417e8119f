// Vectorised loads/stores that widen float16/bfloat16 to float32 in registers (CPU kernels only).
// One Vectorized<Half/BFloat16> holds as many lanes as two float vectors, so every kernel walks its
// data in blocks of kBlock = 2 float vectors.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <tuple>
#include <type_traits>

namespace oneformore {
namespace cpu_vec {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kBlock = 2 * Vec::size();

template <typename scalar_t>
inline void load2(const scalar_t* p, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    a = Vec::loadu(p);
    b = Vec::loadu(p + Vec::size());
  } else {
    std::tie(a, b) = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p));
  }
}

template <typename scalar_t>
inline void store2(scalar_t* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    a.store(p);
    b.store(p + Vec::size());
  } else {
    at::vec::convert_from_float<scalar_t>(a, b).store(p);
  }
}

}  // namespace cpu_vec
}  // namespace oneformore
